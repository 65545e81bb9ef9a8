#include "kiln/models/config_to_spec.h"

#include <map>

#include "kiln/core/error.h"

namespace kiln {

Activation activation_from_config(const HfConfig& config, const std::string& key) {
  static const std::map<std::string, Activation> known = {
      {"silu", Activation::kSilu},         {"swish", Activation::kSilu},
      {"gelu", Activation::kGeluExact},    {"gelu_pytorch_tanh", Activation::kGeluTanh},
      {"gelu_new", Activation::kGeluTanh}, {"gelu_fast", Activation::kGeluTanh},
      {"relu", Activation::kRelu},         {"relu2", Activation::kReluSquared},
  };
  const std::string name = config.get_string(key, "silu");
  auto it = known.find(name);
  check(it != known.end(),
        config.source() + ": key '" + key + "': unknown activation '" + name + "'");
  return it->second;
}

namespace {
double number_or(const Json& params, const char* key, double fallback) {
  auto it = params.find(key);
  return it != params.end() && it->is_number() ? it->get<double>() : fallback;
}

std::vector<double> numbers(const Json& params, const char* key) {
  std::vector<double> out;
  auto it = params.find(key);
  if (it == params.end() || !it->is_array()) return out;
  for (const Json& v : *it)
    if (v.is_number()) out.push_back(v.get<double>());
  return out;
}
}  // namespace

RopeSpec rope_spec_from_config(const HfConfig& config, const std::string& layer_type,
                               int64_t head_dim) {
  static const std::map<std::string, RopeType> types = {
      {"default", RopeType::kDefault}, {"linear", RopeType::kLinear},
      {"dynamic", RopeType::kDynamic}, {"yarn", RopeType::kYarn},
      {"llama3", RopeType::kLlama3},   {"longrope", RopeType::kLongRope},
  };
  const RopeParameters parameters = config.rope(layer_type);
  auto type = types.find(parameters.type);
  check(type != types.end(), config.source() + ": unknown RoPE type '" + parameters.type + "'");
  const Json& p = parameters.params;
  RopeSpec rope;
  rope.type = type->second;
  rope.theta = parameters.theta;
  const double partial = number_or(p, "partial_rotary_factor", 1.0);
  rope.rotary_dim = static_cast<int64_t>(static_cast<double>(head_dim) * partial);
  rope.factor = number_or(p, "factor", 1.0);
  rope.max_position = config.get_int("max_position_embeddings", 0);
  rope.original_max_position = static_cast<int64_t>(
      number_or(p, "original_max_position_embeddings", static_cast<double>(rope.max_position)));
  rope.beta_fast = number_or(p, "beta_fast", rope.beta_fast);
  rope.beta_slow = number_or(p, "beta_slow", rope.beta_slow);
  rope.mscale = number_or(p, "mscale", 0.0);
  rope.mscale_all_dim = number_or(p, "mscale_all_dim", 0.0);
  rope.attention_factor = number_or(p, "attention_factor", 0.0);
  if (p.contains("truncate") && p["truncate"].is_boolean())
    rope.truncate = p["truncate"].get<bool>();
  rope.low_freq_factor = number_or(p, "low_freq_factor", rope.low_freq_factor);
  rope.high_freq_factor = number_or(p, "high_freq_factor", rope.high_freq_factor);
  rope.short_factor = numbers(p, "short_factor");
  rope.long_factor = numbers(p, "long_factor");
  return rope;
}

}  // namespace kiln
