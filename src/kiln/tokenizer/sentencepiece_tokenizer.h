// SentencePiece `.model` files (BPE and Unigram), encoded and decoded by Debian's
// libsentencepiece, so that Kiln matches the reference library exactly.
#pragma once

#include <memory>
#include <string>

#include "kiln/tokenizer/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace kiln::tok {

class SentencePieceTokenizer : public Tokenizer {
 public:
  // Loads a serialized ModelProto. Throws Error naming `path` when it cannot be parsed.
  static std::unique_ptr<SentencePieceTokenizer> load(const std::string& path);
  ~SentencePieceTokenizer() override;

  // add_special prepends BOS when the model has one (as Llama-style SentencePiece models
  // expect; the library itself adds nothing). Control symbols written in the text stay text.
  std::vector<int32_t> encode(std::string_view text, bool add_special) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const override;
  int64_t vocab_size() const override;
  std::optional<std::string> id_to_token(int32_t id) const override;
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  // Control symbols (<s>, </s>, ...); the unknown piece decodes as " ⁇ " like any piece, as
  // the library does.
  bool is_special(int32_t id) const override;

 private:
  SentencePieceTokenizer();
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
};

}  // namespace kiln::tok
