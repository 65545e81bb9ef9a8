#include "kiln/chat/chat_template.h"

#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include "kiln/core/error.h"
#include "kiln/io/gguf.h"

namespace kiln::chat {
namespace {

namespace fs = std::filesystem;
using OrderedJson = nlohmann::ordered_json;

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) throw Error(path + ": read failed");
  return buffer.str();
}

OrderedJson parse_ordered(const std::string& text, const std::string& what) {
  try {
    return OrderedJson::parse(text);
  } catch (const OrderedJson::exception& e) {
    throw Error(what + ": malformed JSON: " + e.what());
  }
}

OrderedJson read_ordered(const std::string& path) {
  return parse_ordered(read_text(path), path);
}

// The token string of a special-token entry: "tok" or {"content": "tok", ...}.
std::optional<std::string> token_string(const OrderedJson& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string())
    return value["content"].get<std::string>();
  return std::nullopt;
}

// The "chat_template" of a tokenizer_config.json or chat_template.json: a string, or the
// entry called `name` ("default" when empty) of a list of {name, template}.
std::pair<std::string, std::string> pick_template(const OrderedJson& config,
                                                  const std::string& where,
                                                  const std::string& name) {
  const auto it = config.find("chat_template");
  if (it == config.end() || it->is_null())
    throw Error(where + ": no \"chat_template\" key (this model has no chat template)");
  if (it->is_string()) {
    if (!name.empty() && name != "default")
      throw Error(where + ": chat_template: there is a single template, no template named '" +
                  name + "'");
    return {it->get<std::string>(), where + " (chat_template)"};
  }
  if (!it->is_array())
    throw Error(where + ": chat_template: expected a string or a list of {name, template}");
  const std::string wanted = name.empty() ? "default" : name;
  std::string names;
  for (const OrderedJson& entry : *it) {
    if (!entry.is_object() || !entry.contains("name") || !entry.contains("template") ||
        !entry["name"].is_string() || !entry["template"].is_string())
      throw Error(where + ": chat_template: expected a list of {\"name\", \"template\"} strings");
    const std::string entry_name = entry["name"];
    if (entry_name == wanted)
      return {entry["template"].get<std::string>(),
              where + " (chat_template '" + entry_name + "')"};
    names += (names.empty() ? "" : ", ") + entry_name;
  }
  throw Error(where + ": chat_template: no template named '" + wanted + "' (templates: " + names +
              ")");
}

OrderedJson special_tokens_beside(const fs::path& folder) {
  OrderedJson tokens = OrderedJson::object();
  const fs::path config = folder / "tokenizer_config.json";
  if (fs::is_regular_file(config)) {
    const OrderedJson json = read_ordered(config.string());
    if (json.is_object()) tokens = special_tokens_of(json);
  }
  const fs::path map = folder / "special_tokens_map.json";
  if (fs::is_regular_file(map)) {
    const OrderedJson json = read_ordered(map.string());
    if (json.is_object()) {
      const OrderedJson more = special_tokens_of(json);
      for (const auto& [key, value] : more.items())
        if (!tokens.contains(key)) tokens[key] = value;
    }
  }
  return tokens;
}

}  // namespace

OrderedJson special_tokens_of(const OrderedJson& config) {
  OrderedJson tokens = OrderedJson::object();
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                          "cls_token", "mask_token"}) {
    const auto it = config.find(key);
    if (it == config.end()) continue;
    if (const auto token = token_string(*it); token && !token->empty()) tokens[key] = *token;
  }
  const auto extra = config.find("additional_special_tokens");
  if (extra != config.end() && extra->is_array()) {
    OrderedJson list = OrderedJson::array();
    for (const OrderedJson& entry : *extra)
      if (const auto token = token_string(entry)) list.push_back(*token);
    if (!list.empty()) tokens["additional_special_tokens"] = list;
  }
  const auto named = config.find("extra_special_tokens");
  if (named != config.end() && named->is_object()) {
    for (const auto& [key, value] : named->items())
      if (const auto token = token_string(value); token && !tokens.contains(key))
        tokens[key] = *token;
  }
  return tokens;
}

ChatTemplate::ChatTemplate(std::string source, std::string origin, OrderedJson special_tokens)
    : source_(std::move(source)),
      origin_(std::move(origin)),
      special_tokens_(std::move(special_tokens)),
      compiled_(std::make_shared<const jinja::Template>(source_, origin_)) {}

ChatTemplate ChatTemplate::load(const std::string& path, const std::string& name) {
  const fs::path p(path);
  if (!fs::exists(p)) throw Error(path + ": no such file or folder");
  if (fs::is_directory(p)) {
    const fs::path jinja_file = p / "chat_template.jinja";
    if (fs::is_regular_file(jinja_file) && (name.empty() || name == "default"))
      return ChatTemplate(read_text(jinja_file.string()), jinja_file.string(),
                          special_tokens_beside(p));
    const fs::path config = p / "tokenizer_config.json";
    const fs::path processor = p / "chat_template.json";
    if (fs::is_regular_file(config)) {
      const OrderedJson json = read_ordered(config.string());
      if (!json.is_object()) throw Error(config.string() + ": expected a JSON object");
      if (json.contains("chat_template") || !fs::is_regular_file(processor)) {
        auto [source, origin] = pick_template(json, config.string(), name);
        return ChatTemplate(std::move(source), std::move(origin), special_tokens_of(json));
      }
    }
    if (fs::is_regular_file(processor)) {
      auto [source, origin] =
          pick_template(read_ordered(processor.string()), processor.string(), name);
      return ChatTemplate(std::move(source), std::move(origin), special_tokens_beside(p));
    }
    throw Error(path + ": no chat_template.jinja or tokenizer_config.json (no chat template)");
  }
  if (p.extension() == ".gguf") {
    // llama.cpp's file: tokenizer.chat_template, special tokens from the tokenizer.ggml ids.
    const GgufFile gguf = GgufFile::open(path);
    check(gguf.has("tokenizer.chat_template"),
          path + ": no metadata key 'tokenizer.chat_template' (no chat template)");
    OrderedJson tokens = OrderedJson::object();
    const Json* vocab =
        gguf.has("tokenizer.ggml.tokens") ? &gguf.get_array("tokenizer.ggml.tokens") : nullptr;
    for (const char* name : {"bos", "eos", "unk", "pad"}) {
      const std::optional<int64_t> id =
          gguf.find_int(std::string("tokenizer.ggml.") + name + "_token_id");
      if (id && vocab != nullptr && *id >= 0 && *id < static_cast<int64_t>(vocab->size()) &&
          (*vocab)[static_cast<size_t>(*id)].is_string())
        tokens[std::string(name) + "_token"] = (*vocab)[static_cast<size_t>(*id)];
    }
    return ChatTemplate(gguf.get_string("tokenizer.chat_template"),
                        path + ": tokenizer.chat_template", std::move(tokens));
  }
  if (p.extension() == ".json") {
    const OrderedJson json = read_ordered(path);
    if (!json.is_object()) throw Error(path + ": expected a JSON object");
    auto [source, origin] = pick_template(json, path, name);
    OrderedJson tokens = special_tokens_of(json);
    if (tokens.empty()) tokens = special_tokens_beside(p.parent_path());
    return ChatTemplate(std::move(source), std::move(origin), std::move(tokens));
  }
  return ChatTemplate(read_text(path), path, special_tokens_beside(p.parent_path()));
}

std::string ChatTemplate::apply(const OrderedJson& messages, const ChatOptions& options) const {
  if (!messages.is_array()) throw Error(origin_ + ": messages must be a JSON array");
  // transformers: render(messages=..., tools=..., documents=..., add_generation_prompt=...,
  // **special_tokens_map, **kwargs).
  OrderedJson context = OrderedJson::object();
  context["messages"] = messages;
  context["tools"] = options.tools;
  context["documents"] = options.documents;
  context["add_generation_prompt"] = options.add_generation_prompt;
  for (const auto& [key, value] : special_tokens_.items()) context[key] = value;
  for (const auto& [key, value] : options.extra.items()) context[key] = value;
  return compiled_->render(context);
}

OrderedJson read_messages(const std::string& path) {
  std::string text;
  const std::string where = path == "-" ? "stdin" : path;
  if (path == "-") {
    text.assign(std::istreambuf_iterator<char>(std::cin), {});
  } else {
    text = read_text(path);
  }
  OrderedJson messages = parse_ordered(text, where);
  if (!messages.is_array()) throw Error(where + ": expected a JSON array of messages");
  for (size_t k = 0; k < messages.size(); ++k)
    if (!messages[k].is_object())
      throw Error(where + ": message " + std::to_string(k) + ": expected a JSON object");
  return messages;
}

}  // namespace kiln::chat
