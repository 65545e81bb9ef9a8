// Normalizers of tokenizer.json: text rewrites applied before pre-tokenization
// (Sequence, Replace, Prepend, Strip, NFC/NFD/NFKC/NFKD, Lowercase, ...).
#pragma once

#include <memory>
#include <string>

#include "kiln/tokenizer/json_fields.h"

namespace kiln::tok {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Rewrites valid UTF-8 `text` in place; the result is valid UTF-8.
  virtual void normalize(std::string& text) const = 0;
};

// Builds the normalizer described by `spec` (an object with "type"); null `spec` gives
// nullptr. Throws Error naming `where` for unknown types or malformed fields.
std::unique_ptr<Normalizer> make_normalizer(const Json& spec, const std::string& where);

}  // namespace kiln::tok
