#include "kiln/train/sft.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "kiln/core/error.h"

namespace kiln::train {
namespace {

using OrderedJson = nlohmann::ordered_json;

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

std::string render(const chat::ChatTemplate& t, const OrderedJson& messages, size_t count,
                   bool generation_prompt, const std::string& where) {
  OrderedJson head = OrderedJson::array();
  for (size_t i = 0; i < count; ++i) head.push_back(messages[i]);
  chat::ChatOptions options;
  options.add_generation_prompt = generation_prompt;
  try {
    return t.apply(head, options);
  } catch (const std::exception& e) {
    throw Error(where + ": the chat template refused the first " + std::to_string(count) +
                " message(s): " + e.what());
  }
}

std::string trim(const std::string& s) {
  const char* space = " \t\n\r";
  const size_t a = s.find_first_not_of(space);
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(space) - a + 1);
}

// The end-of-turn text at the start of `tail` (what a template renders after an assistant's
// content): up to and including its first special token; all of it when it has none.
std::string end_of_turn(const Tokenizer& tokenizer, const std::string& tail) {
  const std::vector<int32_t> ids = tokenizer.encode(tail, false);
  for (size_t k = 0; k < ids.size(); ++k)
    if (tokenizer.is_special(ids[k])) {
      const std::string text =
          tokenizer.decode(std::vector<int32_t>(ids.begin(), ids.begin() + k + 1), false);
      if (starts_with(tail, text)) return text;
      break;
    }
  return tail;
}

}  // namespace

ChatExample render_chat(const chat::ChatTemplate& chat_template, const Tokenizer& tokenizer,
                        const OrderedJson& messages, const std::string& where) {
  check(messages.is_array() && !messages.empty(),
        where + ": \"messages\" must be a non-empty array");
  for (const OrderedJson& m : messages)
    check(m.is_object() && m.contains("role") && m["role"].is_string(),
          where + ": every message must be an object with a string \"role\"");
  for (size_t i = 0; i < messages.size(); ++i)
    if (messages[i]["role"] == "assistant")
      check(messages[i].contains("content") && messages[i]["content"].is_string(),
            where + ": assistant message " + std::to_string(i) + " needs a string \"content\"");
  ChatExample ex;
  ex.text = render(chat_template, messages, messages.size(), false, where);
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i]["role"] != "assistant") continue;
    check(i > 0, where + ": the first message is an assistant message (nothing to answer)");
    const std::string before = render(chat_template, messages, i, true, where);
    const std::string with = render(chat_template, messages, i + 1, false, where);
    check(starts_with(ex.text, before),
          where + ": the chat template renders the conversation before assistant message " +
              std::to_string(i) + " differently from the whole conversation");
    // The content as rendered (templates may trim it), at or after the turn's start.
    std::string content = messages[i]["content"];
    size_t at = ex.text.find(content, before.size());
    if (at == std::string::npos) {
      content = trim(content);
      at = ex.text.find(content, before.size());
    }
    const size_t from = starts_with(with, before) ? before.size() : 0;
    const size_t in_with = with.find(content, from);
    check(at != std::string::npos && in_with != std::string::npos,
          where + ": cannot find assistant message " + std::to_string(i) +
              "'s content in the rendered conversation");
    size_t end = at + content.size();
    const std::string eot = end_of_turn(tokenizer, with.substr(in_with + content.size()));
    if (ex.text.compare(end, eot.size(), eot) == 0) end += eot.size();
    ex.spans.emplace_back(before.size(), end);
  }
  check(!ex.spans.empty(), where + ": the conversation has no assistant message");

  ex.tokens = tokenizer.encode(ex.text, false);
  // Character offsets of each token: decoding one more token at a time grows the text.
  StreamDecoder stream(tokenizer, /*skip_special=*/false);
  std::string decoded;
  ex.loss.assign(ex.tokens.size(), 0);
  for (size_t k = 0; k < ex.tokens.size(); ++k) {
    const size_t begin = decoded.size();
    decoded += stream.push(ex.tokens[k]);
    const size_t end = decoded.size();
    for (const auto& [a, b] : ex.spans)
      if (begin < b && end > a) ex.loss[k] = 1;
  }
  decoded += stream.finish();
  check(decoded == ex.text,
        where +
            ": the tokenizer does not decode its tokens of the rendered conversation back "
            "to the text; cannot locate the assistant tokens");
  return ex;
}

bool is_chat_jsonl(const std::string& path) {
  if (std::filesystem::path(path).extension() != ".jsonl") return false;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      const OrderedJson record = OrderedJson::parse(line);
      return record.is_object() && record.contains("messages");
    } catch (const std::exception&) {
      return false;
    }
  }
  return false;
}

std::vector<Window> read_chat_windows(const std::string& path,
                                      const chat::ChatTemplate& chat_template,
                                      const Tokenizer& tokenizer, int64_t window) {
  check(window >= 2, "--seq must be at least 2");
  std::ifstream in(path, std::ios::binary);
  check(in.good(), path + ": cannot open");
  std::vector<Window> out;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(number);
    OrderedJson record;
    try {
      record = OrderedJson::parse(line);
    } catch (const std::exception& e) {
      throw Error(where + ": not JSON (" + e.what() + ")");
    }
    check(record.is_object() && record.contains("messages"),
          where + ": a chat record needs \"messages\"");
    ChatExample ex = render_chat(chat_template, tokenizer, record["messages"], where);
    Window w;
    w.tokens = std::move(ex.tokens);
    w.loss = std::move(ex.loss);
    if (static_cast<int64_t>(w.tokens.size()) > window) {
      w.tokens.resize(static_cast<size_t>(window));
      w.loss.resize(static_cast<size_t>(window));
    }
    if (!w.loss.empty()) w.loss[0] = 0;
    if (std::find(w.loss.begin(), w.loss.end(), 1) != w.loss.end()) out.push_back(std::move(w));
  }
  check(!out.empty(), path + ": the data gives no assistant tokens to predict");
  return out;
}

}  // namespace kiln::train
