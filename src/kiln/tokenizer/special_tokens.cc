#include "kiln/tokenizer/special_tokens.h"

#include <filesystem>

#include "kiln/core/error.h"
#include "kiln/io/json.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

// Ids of `key` in a generation_config.json or config.json: an integer or a list of them.
std::vector<int32_t> ids_in(const Json& config, const std::string& key, const std::string& where) {
  std::vector<int32_t> ids;
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return ids;
  const auto add = [&](const Json& value) {
    check(
        value.is_number_integer() && value.get<int64_t>() >= 0 && value.get<int64_t>() <= INT32_MAX,
        where + ": " + key + ": expected a token id or a list of them");
    ids.push_back(value.get<int32_t>());
  };
  if (it->is_array()) {
    for (const Json& value : *it) add(value);
  } else {
    add(*it);
  }
  return ids;
}

// The id of tokenizer_config.json's `key` ("eos_token": "</s>" or {"content": "</s>"}).
std::vector<int32_t> token_in(const Json& config, const std::string& key, const std::string& where,
                              const Tokenizer& tokenizer) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return {};
  const Json& value = it->is_object() && it->contains("content") ? (*it)["content"] : *it;
  check(value.is_string(), where + ": " + key + ": expected a token string");
  const auto id = tokenizer.token_to_id(value.get<std::string>());
  check(id.has_value(), where + ": " + key + ": '" + value.get<std::string>() +
                            "' is not in the tokenizer's vocabulary");
  return {*id};
}

}  // namespace

SpecialTokenIds read_special_token_ids(const std::string& model_dir, const Tokenizer& tokenizer) {
  std::vector<int32_t> bos, eos, pad;
  for (const char* name : {"generation_config.json", "config.json"}) {
    const std::string path = (fs::path(model_dir) / name).string();
    if (!fs::exists(path)) continue;
    const Json config = read_json_file(path);
    if (!config.is_object()) continue;
    if (bos.empty()) bos = ids_in(config, "bos_token_id", path);
    if (eos.empty()) eos = ids_in(config, "eos_token_id", path);
    if (pad.empty()) pad = ids_in(config, "pad_token_id", path);
  }
  const std::string tokenizer_config = (fs::path(model_dir) / "tokenizer_config.json").string();
  if (fs::exists(tokenizer_config)) {
    const Json config = read_json_file(tokenizer_config);
    if (config.is_object()) {
      if (bos.empty()) bos = token_in(config, "bos_token", tokenizer_config, tokenizer);
      if (eos.empty()) eos = token_in(config, "eos_token", tokenizer_config, tokenizer);
      if (pad.empty()) pad = token_in(config, "pad_token", tokenizer_config, tokenizer);
    }
  }
  SpecialTokenIds ids;
  if (!bos.empty()) ids.bos = bos.front();
  ids.eos = eos;
  if (!pad.empty()) ids.pad = pad.front();
  return ids;
}

}  // namespace kiln
