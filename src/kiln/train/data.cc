#include "kiln/train/data.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::train {
namespace fs = std::filesystem;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  check(in.good(), path + ": cannot open");
  std::ostringstream out;
  out << in.rdbuf();
  check(!in.bad(), path + ": read failed");
  return out.str();
}

void cut(const std::vector<int32_t>& stream, int64_t window, std::vector<Window>& out) {
  for (size_t start = 0; start + 1 < stream.size(); start += static_cast<size_t>(window)) {
    Window w;
    const size_t end = std::min(stream.size(), start + static_cast<size_t>(window));
    w.tokens.assign(stream.begin() + static_cast<std::ptrdiff_t>(start),
                    stream.begin() + static_cast<std::ptrdiff_t>(end));
    w.loss.assign(w.tokens.size(), 1);
    w.loss[0] = 0;  // the first token of a window has no context to be predicted from
    if (w.tokens.size() >= 2) out.push_back(std::move(w));
  }
}

void read_jsonl(const std::string& path, const Tokenizer& tokenizer, int64_t window, int32_t eos,
                std::vector<int32_t>& text_stream, std::vector<Window>& out) {
  std::istringstream lines(read_file(path));
  std::string line;
  for (int64_t number = 1; std::getline(lines, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(number);
    Json record;
    try {
      record = Json::parse(line);
    } catch (const std::exception& e) {
      throw Error(where + ": not JSON (" + e.what() + ")");
    }
    check(record.is_object(), where + ": a record must be a JSON object");
    if (record.contains("text")) {
      check(record["text"].is_string(), where + ": \"text\" must be a string");
      for (int32_t id : tokenizer.encode(record["text"].get<std::string>(), true))
        text_stream.push_back(id);
      if (eos >= 0) text_stream.push_back(eos);
      continue;
    }
    check(record.contains("prompt") && record.contains("completion") &&
              record["prompt"].is_string() && record["completion"].is_string(),
          where + ": a record needs a string \"text\", or string \"prompt\" and \"completion\"");
    Window w;
    w.tokens = tokenizer.encode(record["prompt"].get<std::string>(), true);
    w.loss.assign(w.tokens.size(), 0);
    std::vector<int32_t> completion =
        tokenizer.encode(record["completion"].get<std::string>(), false);
    if (eos >= 0) completion.push_back(eos);
    for (int32_t id : completion) {
      w.tokens.push_back(id);
      w.loss.push_back(1);
    }
    if (static_cast<int64_t>(w.tokens.size()) > window) {
      w.tokens.resize(static_cast<size_t>(window));
      w.loss.resize(static_cast<size_t>(window));
    }
    w.loss[0] = 0;
    if (std::find(w.loss.begin(), w.loss.end(), 1) != w.loss.end()) out.push_back(std::move(w));
  }
}

}  // namespace

std::vector<Window> read_windows(const std::string& path, const Tokenizer& tokenizer,
                                 int64_t window, int32_t eos) {
  check(window >= 2, "--seq must be at least 2");
  std::error_code ec;
  check(fs::exists(path, ec), path + ": no such file or folder");
  std::vector<std::string> files;
  if (fs::is_directory(path, ec)) {
    for (const auto& entry : fs::recursive_directory_iterator(path))
      if (entry.is_regular_file()) files.push_back(entry.path().string());
    std::sort(files.begin(), files.end());
    check(!files.empty(), path + ": the folder holds no files");
  } else {
    files.push_back(path);
  }
  std::vector<Window> windows;
  std::vector<int32_t> text_stream;
  for (const std::string& file : files) {
    if (fs::path(file).extension() == ".jsonl") {
      read_jsonl(file, tokenizer, window, eos, text_stream, windows);
      continue;
    }
    const std::string text = read_file(file);
    tok::check_utf8(text, file);
    if (text.empty()) continue;
    for (int32_t id : tokenizer.encode(text, true)) text_stream.push_back(id);
    if (eos >= 0) text_stream.push_back(eos);
  }
  cut(text_stream, window, windows);
  check(!windows.empty(), path + ": the data gives no tokens to predict");
  return windows;
}

std::vector<Window> pack_windows(const std::vector<Window>& windows, int64_t window) {
  std::vector<Window> packed;
  Window current;
  int32_t documents = 0;
  for (const Window& w : windows) {
    check(static_cast<int64_t>(w.tokens.size()) <= window && (w.loss.empty() || !w.loss[0]),
          "pack_windows: a window is longer than the packed size or predicts its first token");
    if (static_cast<int64_t>(current.tokens.size() + w.tokens.size()) > window) {
      packed.push_back(std::move(current));
      current = Window{};
      documents = 0;
    }
    current.tokens.insert(current.tokens.end(), w.tokens.begin(), w.tokens.end());
    current.loss.insert(current.loss.end(), w.loss.begin(), w.loss.end());
    current.segment.insert(current.segment.end(), w.tokens.size(), documents++);
  }
  if (!current.tokens.empty()) packed.push_back(std::move(current));
  return packed;
}

}  // namespace kiln::train
