#include "kiln/tokenizer/tokenizer.h"

#include <zstd.h>

#include <filesystem>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/core/mapped_file.h"
#include "kiln/io/whole_file.h"
#include "kiln/models/gguf_model.h"
#include "kiln/tokenizer/hf_tokenizer.h"
#include "kiln/tokenizer/sentencepiece_tokenizer.h"
#include "kiln/tokenizer/tiktoken_tokenizer.h"
#include "kiln/tokenizer/utf8.h"
#include "kiln/tokenizer/zeroed_array.h"

namespace kiln {
namespace fs = std::filesystem;
namespace {

bool is_tiktoken_json(const fs::path& file) {
  return file.filename() == "tiktoken.json" || file.string().ends_with(".tiktoken.json");
}

// The tokenizer file inside a model folder, in order of preference: tokenizer.json (or its
// .zst), a tiktoken description, a SentencePiece model.
fs::path find_tokenizer_file(const fs::path& folder) {
  for (const char* name :
       {"tokenizer.json", "tokenizer.json.zst", "tiktoken.json", "tokenizer.model"}) {
    if (fs::exists(folder / name)) return folder / name;
  }
  std::vector<fs::path> tiktoken, sentencepiece;
  for (const auto& entry : fs::directory_iterator(folder)) {
    const std::string name = entry.path().filename().string();
    if (name.ends_with(".tiktoken") || name.ends_with(".tiktoken.zst")) tiktoken.push_back(entry);
    if (name.ends_with(".model")) sentencepiece.push_back(entry);
  }
  if (tiktoken.size() == 1) return tiktoken[0];
  if (sentencepiece.size() == 1) return sentencepiece[0];
  throw Error(folder.string() +
              ": no tokenizer.json, tiktoken.json, single .tiktoken or single .model file here");
}

// The json that describes a .tiktoken rank file: <name>.json or tiktoken.json beside it.
fs::path tiktoken_json_for(const fs::path& ranks) {
  std::string stem = ranks.filename().string();
  stem = stem.substr(0, stem.find(".tiktoken"));
  for (const fs::path& candidate :
       {ranks.parent_path() / (stem + ".json"), ranks.parent_path() / "tiktoken.json"}) {
    if (fs::exists(candidate)) return candidate;
  }
  throw Error(ranks.string() + ": no " + stem +
              ".json or tiktoken.json beside it (pattern and "
              "special tokens)");
}

// The bytes of a (large) tokenizer file without copies: a plain file is mapped, a .zst one is
// decompressed in one shot into huge pages. Anything unusual (an unmappable file, a frame
// without a recorded size, corrupt data) goes through read_whole_file, which names the fault.
class FileText {
 public:
  explicit FileText(const std::string& path) {
    try {
      mapping_ = MappedFile::open(path);
    } catch (const Error&) {
      owned_ = read_whole_file(path);
      text_ = owned_;
      return;
    }
    const char* data = reinterpret_cast<const char*>(mapping_->data());
    if (!path.ends_with(".zst")) {
      text_ = std::string_view(data, mapping_->size());
      return;
    }
    const unsigned long long size = ZSTD_getFrameContentSize(data, mapping_->size());
    if (size != ZSTD_CONTENTSIZE_UNKNOWN && size != ZSTD_CONTENTSIZE_ERROR && size < (1ull << 34)) {
      decompressed_ = tok::ZeroedArray<char>(size);
      const size_t got = ZSTD_decompress(decompressed_.data(), size, data, mapping_->size());
      if (!ZSTD_isError(got) && got == size) {
        text_ = std::string_view(decompressed_.data(), size);
        return;
      }
    }
    owned_ = read_whole_file(path);
    text_ = owned_;
  }
  std::string_view text() const { return text_; }

 private:
  std::shared_ptr<MappedFile> mapping_;
  tok::ZeroedArray<char> decompressed_;
  std::string owned_;
  std::string_view text_;
};

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& path) {
  if (!fs::exists(path)) throw Error(path + ": no such file or folder");
  const fs::path file = fs::is_directory(path) ? find_tokenizer_file(path) : fs::path(path);
  const std::string name = file.filename().string();
  if (name.ends_with(".gguf")) {
    const GgufFile gguf = GgufFile::open(file.string());
    return tok::HfTokenizer::from_json_text(gguf_tokenizer_json(gguf),
                                            file.string() + ": tokenizer.ggml.*");
  }
  if (is_tiktoken_json(file)) return tok::TiktokenTokenizer::load(file.string(), "");
  if (name.ends_with(".tiktoken") || name.ends_with(".tiktoken.zst")) {
    return tok::TiktokenTokenizer::load(tiktoken_json_for(file).string(), file.string());
  }
  if (name.ends_with(".model") || name.ends_with(".model.zst")) {
    return tok::SentencePieceTokenizer::load(file.string());
  }
  return tok::HfTokenizer::from_json_text(FileText(file.string()).text(), file.string());
}

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

std::string StreamDecoder::push(int32_t id) {
  ids_.push_back(id);
  std::string text = tokenizer_.decode(ids_, skip_special_);
  if (text.size() <= prefix_text_.size() || tok::ends_with_replacement_char(text) ||
      !text.starts_with(prefix_text_)) {
    return {};
  }
  std::string piece = text.substr(prefix_text_.size());
  // Keep only the ids that were pending as context for the next piece.
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(prefix_ids_));
  prefix_ids_ = ids_.size();
  prefix_text_ = tokenizer_.decode(ids_, skip_special_);
  return piece;
}

std::string StreamDecoder::finish() {
  std::string text = tokenizer_.decode(ids_, skip_special_);
  std::string piece = text.starts_with(prefix_text_) ? text.substr(prefix_text_.size()) : text;
  ids_.clear();
  prefix_ids_ = 0;
  prefix_text_.clear();
  return piece;
}

}  // namespace kiln
