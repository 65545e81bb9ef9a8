// Pre-tokenizers of tokenizer.json: cut normalized text into the words that the model
// tokenizes independently (ByteLevel, Split, Sequence, Metaspace, Whitespace, ...).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kiln/tokenizer/json_fields.h"

namespace kiln::tok {

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` (valid UTF-8, in text order) by their pre-tokens, in order; empty
  // pre-tokens are dropped. `starts_text` tells whether pieces[0] begins at the start of the
  // input text (and not after an added token); Metaspace's "first" scheme needs it.
  virtual void pre_tokenize(std::vector<std::string>& pieces, bool starts_text) const = 0;
};

// Builds the pre-tokenizer described by `spec`; null `spec` gives nullptr. Throws Error
// naming `where` for unknown types or malformed fields.
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& spec, const std::string& where);

}  // namespace kiln::tok
