#include "kiln/tokenizer/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "kiln/core/error.h"
#include "kiln/tokenizer/hf_tokenizer.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln {
namespace fs = std::filesystem;
namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& path) {
  std::string file = path;
  if (fs::is_directory(path)) {
    file = (fs::path(path) / "tokenizer.json").string();
    if (!fs::exists(file)) throw Error(path + ": no tokenizer.json in this folder");
  } else if (!fs::exists(path)) {
    throw Error(path + ": no such file or folder");
  }
  return tok::HfTokenizer::from_json_text(read_file(file), file);
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
