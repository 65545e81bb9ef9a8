#include "kiln/tokenizer/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include "kiln/core/error.h"
#include "kiln/io/whole_file.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::tok {

SentencePieceTokenizer::SentencePieceTokenizer()
    : processor_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::load(const std::string& path) {
  std::unique_ptr<SentencePieceTokenizer> tokenizer(new SentencePieceTokenizer());
  const std::string bytes = read_whole_file(path);
  const auto status = tokenizer->processor_->LoadFromSerializedProto(bytes);
  if (!status.ok()) throw Error(path + ": not a SentencePiece model: " + status.ToString());
  return tokenizer;
}

std::vector<int32_t> SentencePieceTokenizer::encode(std::string_view text, bool add_special) const {
  check_utf8(text, "text to encode");
  std::vector<int> pieces;
  const auto status = processor_->Encode(text, &pieces);
  if (!status.ok()) throw Error("SentencePiece encode failed: " + status.ToString());
  std::vector<int32_t> ids;
  ids.reserve(pieces.size() + 1);
  if (add_special && processor_->bos_id() >= 0) ids.push_back(processor_->bos_id());
  ids.insert(ids.end(), pieces.begin(), pieces.end());
  return ids;
}

std::string SentencePieceTokenizer::decode(const std::vector<int32_t>& ids,
                                           bool skip_special) const {
  std::vector<int> kept;
  kept.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) {
      throw Error("decode: token id " + std::to_string(id) + " is outside the vocabulary (size " +
                  std::to_string(vocab_size()) + ")");
    }
    if (skip_special && is_special(id)) continue;
    kept.push_back(id);
  }
  std::string text;
  const auto status = processor_->Decode(kept, &text);
  if (!status.ok()) throw Error("SentencePiece decode failed: " + status.ToString());
  return text;
}

int64_t SentencePieceTokenizer::vocab_size() const {
  return processor_->GetPieceSize();
}

std::optional<std::string> SentencePieceTokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return std::nullopt;
  return processor_->IdToPiece(id);
}

std::optional<int32_t> SentencePieceTokenizer::token_to_id(std::string_view token) const {
  const int id = processor_->PieceToId(token);
  if (id < 0 || processor_->IdToPiece(id) != token) return std::nullopt;
  return id;
}

bool SentencePieceTokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && processor_->IsControl(id);
}

}  // namespace kiln::tok
