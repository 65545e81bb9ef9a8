// The special token ids generation needs (BOS, EOS, PAD), read from a model folder's configs
// the way HF generation resolves them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kiln/tokenizer/tokenizer.h"

namespace kiln {

struct SpecialTokenIds {
  std::optional<int32_t> bos;
  std::vector<int32_t> eos;  // generation stops at any of these; may be empty
  std::optional<int32_t> pad;
};

// Reads `model_dir`'s generation_config.json, then config.json, then tokenizer_config.json
// (token strings such as "eos_token": "</s>" resolved with `tokenizer`); the first file that
// names a token wins for that token. Missing files are skipped. Throws Error naming the file
// and key when a value has the wrong type or names an unknown token.
SpecialTokenIds read_special_token_ids(const std::string& model_dir, const Tokenizer& tokenizer);

}  // namespace kiln
