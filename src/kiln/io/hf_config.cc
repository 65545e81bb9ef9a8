#include "kiln/io/hf_config.h"

#include <filesystem>

#include "kiln/core/error.h"

namespace kiln {
namespace fs = std::filesystem;

HfConfig HfConfig::load(const std::string& path) {
  fs::path p(path);
  if (fs::is_directory(p)) p /= "config.json";
  check(fs::exists(p), p.string() + ": no such file");
  return from_json(read_json_file(p.string()), p.string());
}

HfConfig HfConfig::from_json(Json json, std::string source) {
  check(json.is_object(), source + ": config is not a JSON object");
  HfConfig config;
  config.json_ = std::move(json);
  config.source_ = std::move(source);
  return config;
}

const Json* HfConfig::find(const std::string& key) const {
  keys_read_.insert(key);
  auto it = json_.find(key);
  if (it == json_.end() || it->is_null()) return nullptr;
  return &*it;
}

void HfConfig::type_error(const std::string& key, const char* expected) const {
  throw Error(source_ + ": key '" + key + "' must be " + expected + ", got " +
              json_.at(key).dump());
}

bool HfConfig::has(const std::string& key) const {
  return find(key) != nullptr;
}

const Json& HfConfig::get(const std::string& key) const {
  static const Json null_json;
  const Json* v = find(key);
  return v ? *v : null_json;
}

int64_t HfConfig::get_int(const std::string& key) const {
  const Json* v = find(key);
  if (!v) throw Error(source_ + ": missing required key '" + key + "'");
  if (v->is_number_integer()) return v->get<int64_t>();
  if (v->is_number_float() && v->get<double>() == static_cast<double>(v->get<int64_t>()))
    return v->get<int64_t>();
  type_error(key, "an integer");
}
double HfConfig::get_double(const std::string& key) const {
  const Json* v = find(key);
  if (!v) throw Error(source_ + ": missing required key '" + key + "'");
  if (!v->is_number()) type_error(key, "a number");
  return v->get<double>();
}
bool HfConfig::get_bool(const std::string& key) const {
  const Json* v = find(key);
  if (!v) throw Error(source_ + ": missing required key '" + key + "'");
  if (!v->is_boolean()) type_error(key, "true or false");
  return v->get<bool>();
}
std::string HfConfig::get_string(const std::string& key) const {
  const Json* v = find(key);
  if (!v) throw Error(source_ + ": missing required key '" + key + "'");
  if (!v->is_string()) type_error(key, "a string");
  return v->get<std::string>();
}
int64_t HfConfig::get_int(const std::string& key, int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}
double HfConfig::get_double(const std::string& key, double fallback) const {
  return has(key) ? get_double(key) : fallback;
}
bool HfConfig::get_bool(const std::string& key, bool fallback) const {
  return has(key) ? get_bool(key) : fallback;
}
std::string HfConfig::get_string(const std::string& key, const std::string& fallback) const {
  return has(key) ? get_string(key) : fallback;
}

std::vector<int64_t> HfConfig::get_int_list(const std::string& key) const {
  const Json* v = find(key);
  if (!v) return {};
  if (v->is_number_integer()) return {v->get<int64_t>()};
  if (!v->is_array()) type_error(key, "an integer or a list of integers");
  std::vector<int64_t> out;
  for (const Json& e : *v) {
    if (!e.is_number_integer()) type_error(key, "an integer or a list of integers");
    out.push_back(e.get<int64_t>());
  }
  return out;
}

std::string HfConfig::architecture() const {
  const Json* v = find("architectures");
  if (!v) return "";
  if (!v->is_array()) type_error("architectures", "a list of strings");
  if (v->empty()) return "";
  if (!(*v)[0].is_string()) type_error("architectures", "a list of strings");
  return (*v)[0].get<std::string>();
}

std::string HfConfig::model_type() const {
  return get_string("model_type", "");
}

void HfConfig::mark_read(const std::vector<std::string>& keys) const {
  for (const auto& k : keys) keys_read_.insert(k);
}

namespace {
bool looks_like_rope_set(const Json& j) {
  return j.contains("rope_type") || j.contains("rope_theta") || j.contains("type") ||
         j.contains("factor");
}

RopeParameters normalize_rope(const Json& set, const std::string& where, double fallback_theta) {
  if (!set.is_object()) throw Error(where + " must be an object, got " + set.dump());
  RopeParameters rope;
  rope.theta = fallback_theta;
  for (auto it = set.begin(); it != set.end(); ++it) {
    const std::string& k = it.key();
    if (k == "rope_type" || k == "type") {
      if (!it.value().is_string()) throw Error(where + "." + k + " must be a string");
      rope.type = it.value().get<std::string>();
    } else if (k == "rope_theta") {
      if (!it.value().is_number()) throw Error(where + ".rope_theta must be a number");
      rope.theta = it.value().get<double>();
    } else {
      rope.params[k] = it.value();
    }
  }
  // Old configs call linear "linear" and dynamic "dynamic"; both spellings are HF's.
  if (rope.type == "su") rope.type = "longrope";
  return rope;
}
}  // namespace

RopeParameters HfConfig::rope(const std::string& layer_type) const {
  RopeParameters rope = rope_without_partial_factor(layer_type);
  if (has("partial_rotary_factor") && !rope.params.contains("partial_rotary_factor"))
    rope.params["partial_rotary_factor"] = get_double("partial_rotary_factor");
  return rope;
}

RopeParameters HfConfig::rope_without_partial_factor(const std::string& layer_type) const {
  const double theta = has("rope_theta") ? get_double("rope_theta") : 10000.0;
  const Json* params = find("rope_parameters");
  if (params) {
    if (!params->is_object())
      throw Error(source_ + ": key 'rope_parameters' must be an object, got " + params->dump());
    if (looks_like_rope_set(*params))
      return normalize_rope(*params, source_ + ": rope_parameters", theta);
    std::string key = layer_type;
    if (key.empty()) {
      if (params->size() == 1)
        key = params->begin().key();
      else if (params->contains("full_attention"))
        key = "full_attention";
    }
    auto it = params->find(key);
    if (it == params->end())
      throw Error(source_ + ": rope_parameters has no entry for layer type '" + key + "'");
    return normalize_rope(*it, source_ + ": rope_parameters." + key, theta);
  }
  if (layer_type == "sliding_attention" && has("rope_local_base_freq")) {
    RopeParameters local;
    local.theta = get_double("rope_local_base_freq");
    return local;
  }
  RopeParameters rope;
  const Json* scaling = find("rope_scaling");
  if (scaling) rope = normalize_rope(*scaling, source_ + ": rope_scaling", theta);
  rope.theta = theta;
  return rope;
}

}  // namespace kiln
