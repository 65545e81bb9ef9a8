// Decoders of tokenizer.json: turn the token strings of decoded ids back into text
// (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, WordPiece, Sequence, ...).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kiln/tokenizer/json_fields.h"

namespace kiln::tok {

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Rewrites the token strings in place (HF's decode_chain); the caller concatenates the
  // result.
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

// Builds the decoder described by `spec`; null `spec` gives nullptr. Throws Error naming
// `where` for unknown types or malformed fields.
std::unique_ptr<Decoder> make_decoder(const Json& spec, const std::string& where);

}  // namespace kiln::tok
