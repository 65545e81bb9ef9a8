// A model's chat template and the variables transformers renders it with
// (tokenizer.apply_chat_template): messages, add_generation_prompt, tools and documents (None
// unless given), and the special tokens of tokenizer_config.json (bos_token, eos_token, ...).
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "kiln/chat/jinja.h"

namespace kiln::chat {

struct ChatOptions {
  bool add_generation_prompt = false;
  nlohmann::ordered_json tools;                                     // null renders as None
  nlohmann::ordered_json documents;                                 // null renders as None
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();  // e.g. enable_thinking
};

class ChatTemplate {
 public:
  // `source` is parsed now (TemplateError names `origin`). `special_tokens` maps names
  // (bos_token, ...) to strings, or additional_special_tokens to a list of strings.
  ChatTemplate(std::string source, std::string origin,
               nlohmann::ordered_json special_tokens = nlohmann::ordered_json::object());

  // Finds the chat template at `path`, as transformers does:
  //  - a folder: chat_template.jinja if present, else tokenizer_config.json's
  //    "chat_template", else chat_template.json's;
  //  - a .jinja file: that file;
  //  - a .json file (tokenizer_config.json): its "chat_template";
  //  - a llama.cpp .gguf file: its tokenizer.chat_template, with bos/eos/unk/pad tokens from
  //    the tokenizer.ggml.*_token_id keys.
  // "chat_template" is a string or a list of {"name", "template"}; `name` picks one
  // (default: "default"). Special tokens come from the tokenizer_config.json (then
  // special_tokens_map.json) beside it. Throws Error naming the file and key.
  static ChatTemplate load(const std::string& path, const std::string& name = "");

  // apply_chat_template(messages, tokenize=False): `messages` is a JSON array of message
  // objects (content a string or a list of parts, passed through as they are). Throws
  // jinja::TemplateError, jinja::RaisedError (the template refused the messages) or Error.
  std::string apply(const nlohmann::ordered_json& messages, const ChatOptions& options = {}) const;

  const std::string& source() const { return source_; }
  const std::string& origin() const { return origin_; }
  const nlohmann::ordered_json& special_tokens() const { return special_tokens_; }

 private:
  std::string source_;
  std::string origin_;
  nlohmann::ordered_json special_tokens_;
  std::shared_ptr<const jinja::Template> compiled_;
};

// The special tokens of a tokenizer_config.json object as transformers' special_tokens_map:
// each of bos/eos/unk/sep/pad/cls/mask_token that is set (a string, or an AddedToken object's
// "content"), additional_special_tokens, and extra_special_tokens' entries.
nlohmann::ordered_json special_tokens_of(const nlohmann::ordered_json& tokenizer_config);

// Reads a JSON array of messages from `path` ("-": stdin). Throws Error naming the file.
nlohmann::ordered_json read_messages(const std::string& path);

}  // namespace kiln::chat
