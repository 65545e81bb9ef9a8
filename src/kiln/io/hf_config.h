// config.json of a HuggingFace model: typed access with errors that name the file and key,
// a record of which keys were read (so analysis can list the ones Kiln ignores), and RoPE
// settings normalized from both the transformers-5 `rope_parameters` form and the legacy
// `rope_scaling` + `rope_theta` form.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "kiln/io/json.h"

namespace kiln {

// RoPE settings of one layer type, in one normalized shape whatever the config's form.
struct RopeParameters {
  std::string type = "default";  // default, linear, dynamic, yarn, llama3, longrope, ...
  double theta = 10000.0;
  Json params = Json::object();  // every other key (factor, beta_fast, short_factor, ...)
};

class HfConfig {
 public:
  // Loads `path`, a config.json file or a folder that contains one.
  static HfConfig load(const std::string& path);
  // Wraps an already-parsed object; `source` names it in errors (usually the file path).
  static HfConfig from_json(Json json, std::string source);

  const Json& json() const { return json_; }
  const std::string& source() const { return source_; }

  // True when `key` is present and not null.
  bool has(const std::string& key) const;
  // Required getters: throw Error("<source>: missing required key '<key>'") or a type error.
  int64_t get_int(const std::string& key) const;
  double get_double(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  std::string get_string(const std::string& key) const;
  // Optional getters: `fallback` when absent or null.
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_double(const std::string& key, double fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
  std::string get_string(const std::string& key, const std::string& fallback) const;
  // Integer or list of integers (e.g. eos_token_id); empty when absent or null.
  std::vector<int64_t> get_int_list(const std::string& key) const;
  // The raw value (null when absent); marks the key as read.
  const Json& get(const std::string& key) const;

  // `architectures[0]` (or "" when absent) and `model_type` (or "").
  std::string architecture() const;
  std::string model_type() const;

  // RoPE for layers of `layer_type` ("" = the only/global one). Reads `rope_parameters`
  // (flat, or keyed by layer type as Gemma 3 writes it) or else `rope_theta` +
  // `rope_scaling` (`type` or `rope_type`), with `rope_local_base_freq` for
  // "sliding_attention" layers when present. A top-level `partial_rotary_factor` lands in
  // `params` unless the RoPE set has its own. Throws Error naming the key on bad values.
  RopeParameters rope(const std::string& layer_type = "") const;

  // Keys read so far through this object (top-level names).
  const std::set<std::string>& keys_read() const { return keys_read_; }
  // Marks keys as understood without reading them (e.g. training-only settings).
  void mark_read(const std::vector<std::string>& keys) const;

 private:
  RopeParameters rope_without_partial_factor(const std::string& layer_type) const;
  const Json* find(const std::string& key) const;
  [[noreturn]] void type_error(const std::string& key, const char* expected) const;
  Json json_;
  std::string source_;
  mutable std::set<std::string> keys_read_;
};

}  // namespace kiln
