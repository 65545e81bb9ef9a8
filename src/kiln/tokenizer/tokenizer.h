// Tokenizers: text <-> token ids. One interface over HF tokenizer.json (BPE, Unigram,
// WordPiece with their normalizers, pre-tokenizers, post-processors and decoders),
// tiktoken rank files and SentencePiece .model files.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Loads a tokenizer from `path`: a model folder (tokenizer.json, or a .tiktoken file, or
  // tokenizer.model), or one of those files, or a llama.cpp .gguf file (its tokenizer.ggml.*
  // metadata, see models/gguf_model.h). Throws Error naming the file and key when it
  // is missing or malformed.
  static std::unique_ptr<Tokenizer> load(const std::string& path);

  // Encodes UTF-8 text. `add_special` applies the post-processor (BOS/EOS templates) as HF
  // does with add_special_tokens=True. Special/added tokens in the text are matched
  // before pre-tokenization. Throws Error("invalid UTF-8 at byte N") on invalid input.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special) const = 0;
  // Decodes ids to text; `skip_special` drops special tokens. Throws Error on ids outside
  // the vocabulary. Byte sequences that are not valid UTF-8 become U+FFFD, as HF does.
  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special) const = 0;

  virtual int64_t vocab_size() const = 0;
  // The token string of `id` (as stored in the vocabulary), or nullopt when out of range.
  virtual std::optional<std::string> id_to_token(int32_t id) const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual bool is_special(int32_t id) const = 0;
};

// Turns a stream of generated ids into text pieces without ever emitting half a UTF-8
// character: push() returns the newly completed text (possibly empty); finish() returns
// whatever is left (incomplete bytes as U+FFFD). It decodes a short window of recent ids and
// emits the growth of the text, so decoders that look at neighbours (leading-space rules,
// byte fallback) give the same text as one decode() of all ids.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = true);
  std::string push(int32_t id);
  std::string finish();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::vector<int32_t> ids_;  // the window: already emitted context, then pending ids
  size_t prefix_ids_ = 0;     // how many ids of the window are already emitted
  std::string prefix_text_;   // decode of the first prefix_ids_ ids of the window
};

}  // namespace kiln
