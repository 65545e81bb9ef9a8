// `kiln tokenize PATH [TEXT] [--special] [--jsonl]`: encodes text with a model's tokenizer (a
// tokenizer.json, a tiktoken rank file with its json, or a SentencePiece .model) and prints
// the tokens and ids; with --jsonl it encodes one JSON string per stdin line and writes one
// JSON object per line (the interface the conformance scripts drive).
#include <iostream>
#include <iterator>

#include "kiln/cli/command.h"
#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::cli {
namespace {

// JSON text of a string that may hold invalid UTF-8 (tiktoken byte tokens): bad bytes become
// U+FFFD.
std::string quoted(const std::string& text) {
  return Json(text).dump(-1, ' ', false, Json::error_handler_t::replace);
}

class TokenizeCommand : public Command {
 public:
  void configure(CLI::App& app) override {
    app.add_option("path", path_,
                   "Model folder, tokenizer.json, folder or file of a .tiktoken encoding, or a "
                   "SentencePiece .model")
        ->required();
    app.add_option("text", text_, "Text to encode (default: all of stdin)");
    app.add_flag("--special", special_,
                 "Add the special tokens of the post-processor (BOS/EOS templates)");
    app.add_flag("--jsonl", jsonl_,
                 "Read one JSON string per stdin line; write {\"ids\", \"ids_special\", "
                 "\"decoded\"} per line");
  }

  int run() override {
    const auto tokenizer = Tokenizer::load(path_);
    if (jsonl_) return run_jsonl(*tokenizer);
    std::string text = text_;
    if (text.empty()) text.assign(std::istreambuf_iterator<char>(std::cin), {});
    const std::vector<int32_t> ids = tokenizer->encode(text, special_);
    for (int32_t id : ids) {
      std::cout << id << "\t" << quoted(tokenizer->id_to_token(id).value_or(""))
                << (tokenizer->is_special(id) ? "\tspecial" : "") << "\n";
    }
    std::cout << "ids: " << Json(ids).dump() << "\n" << ids.size() << " tokens\n";
    return 0;
  }

 private:
  int run_jsonl(const Tokenizer& tokenizer) {
    std::string line;
    for (size_t line_number = 1; std::getline(std::cin, line); ++line_number) {
      const std::string where = "stdin line " + std::to_string(line_number);
      const Json value = parse_json(line, where);
      check(value.is_string(), where + ": expected a JSON string");
      const std::string text = value.get<std::string>();
      const std::vector<int32_t> ids = tokenizer.encode(text, false);
      const Json record{{"ids", ids},
                        {"ids_special", tokenizer.encode(text, true)},
                        {"decoded", tokenizer.decode(ids, false)}};
      std::cout << record.dump(-1, ' ', false, Json::error_handler_t::replace) << "\n";
    }
    return 0;
  }

  std::string path_;
  std::string text_;
  bool special_ = false;
  bool jsonl_ = false;
};

}  // namespace

KILN_COMMAND(TokenizeCommand, "tokenize", "Encode text with a model's tokenizer: tokens and ids");

}  // namespace kiln::cli
