// HuggingFace tokenizer.json: the pipeline added tokens -> normalizer -> pre-tokenizer ->
// model -> post-processor for encoding, and the decoder chain for decoding.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "kiln/tokenizer/added_vocabulary.h"
#include "kiln/tokenizer/decoders.h"
#include "kiln/tokenizer/model.h"
#include "kiln/tokenizer/normalizers.h"
#include "kiln/tokenizer/post_processors.h"
#include "kiln/tokenizer/pre_tokenizers.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::tok {

class HfTokenizer : public Tokenizer {
 public:
  // Parses the text of a tokenizer.json; `path` names it in error messages.
  static std::unique_ptr<HfTokenizer> from_json_text(std::string_view text,
                                                     const std::string& path);

  std::vector<int32_t> encode(std::string_view text, bool add_special) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const override;
  int64_t vocab_size() const override;
  std::optional<std::string> id_to_token(int32_t id) const override;
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  bool is_special(int32_t id) const override;

 private:
  HfTokenizer() = default;
  // Normalizes, pre-tokenizes and tokenizes one piece of text between raw added tokens.
  void encode_segment(std::string_view segment, bool starts_text, std::vector<int32_t>& ids) const;

  AddedVocabulary added_;
  std::unique_ptr<Normalizer> normalizer_;       // may be null
  std::unique_ptr<PreTokenizer> pre_tokenizer_;  // may be null
  std::unique_ptr<Model> model_;
  std::unique_ptr<PostProcessor> post_processor_;  // may be null
  std::unique_ptr<Decoder> decoder_;               // may be null
};

}  // namespace kiln::tok
