// config.json -> RopeSpec, with the defaults transformers applies when it standardizes RoPE
// parameters.
#include "kiln/models/rope_config.h"

#include <cmath>
#include <map>
#include <vector>

#include "kiln/core/error.h"

namespace kiln {
namespace {

// Typed access to the scaling parameters of one RoPE set; errors name file and key path.
class RopeParameterReader {
 public:
  RopeParameterReader(const HfConfig& config, const RopeParameters& rope, std::string where)
      : config_(config), rope_(rope), where_(std::move(where)) {}

  const std::string& where() const { return where_; }
  bool has(const std::string& key) const {
    return rope_.params.contains(key) && !rope_.params.at(key).is_null();
  }
  double number(const std::string& key) const {
    if (!has(key)) fail(key, "is required for rope type '" + rope_.type + "'");
    const Json& value = rope_.params.at(key);
    if (!value.is_number()) fail(key, "must be a number, got " + value.dump());
    return value.get<double>();
  }
  double number(const std::string& key, double fallback) const {
    return has(key) ? number(key) : fallback;
  }
  bool boolean(const std::string& key, bool fallback) const {
    if (!has(key)) return fallback;
    const Json& value = rope_.params.at(key);
    if (!value.is_boolean()) fail(key, "must be true or false, got " + value.dump());
    return value.get<bool>();
  }
  std::vector<double> numbers(const std::string& key) const {
    if (!has(key)) fail(key, "is required for rope type '" + rope_.type + "'");
    const Json& value = rope_.params.at(key);
    std::vector<double> out;
    if (value.is_array()) {
      for (const Json& e : value) {
        if (!e.is_number()) break;
        out.push_back(e.get<double>());
      }
    }
    if (!value.is_array() || out.size() != value.size())
      fail(key, "must be a list of numbers, got " + value.dump());
    return out;
  }
  [[noreturn]] void fail(const std::string& key, const std::string& problem) const {
    throw Error(config_.source() + ": " + where_ + "." + key + " " + problem);
  }

 private:
  const HfConfig& config_;
  const RopeParameters& rope_;
  std::string where_;
};

// The config key that holds the RoPE set of `layer_type`, for error messages.
std::string rope_key(const HfConfig& config, const std::string& layer_type) {
  const Json& json = config.json();
  auto params = json.find("rope_parameters");
  if (params != json.end() && params->is_object()) {
    for (const std::string& nested : {layer_type, std::string("full_attention")}) {
      auto it = params->find(nested);
      if (!nested.empty() && it != params->end() && it->is_object())
        return "rope_parameters." + nested;
    }
    return "rope_parameters";
  }
  return "rope_scaling";
}

RopeType parse_type(const RopeParameterReader& reader, const std::string& type) {
  static const std::map<std::string, RopeType> kTypes = {
      {"default", RopeType::kDefault}, {"linear", RopeType::kLinear},
      {"dynamic", RopeType::kDynamic}, {"yarn", RopeType::kYarn},
      {"llama3", RopeType::kLlama3},   {"longrope", RopeType::kLongRope},
  };
  auto it = kTypes.find(type);
  if (it == kTypes.end())
    reader.fail("rope_type", "'" + type +
                                 "' is not supported (Kiln knows default, linear, dynamic, yarn, "
                                 "llama3, longrope)");
  return it->second;
}

// Rotary dimension from the partial-rotary settings; head_dim when none is given.
int64_t rotary_dim_of(const HfConfig& config, const RopeParameterReader& reader, int64_t head_dim) {
  std::string key;
  double fraction = 1.0;
  if (reader.has("partial_rotary_factor")) {
    key = reader.where() + ".partial_rotary_factor";
    fraction = reader.number("partial_rotary_factor");
  } else if (config.has("partial_rotary_factor")) {
    key = "partial_rotary_factor";
    fraction = config.get_double("partial_rotary_factor");
  } else if (config.has("rotary_pct")) {
    key = "rotary_pct";
    fraction = config.get_double("rotary_pct");
  }
  int64_t dim = static_cast<int64_t>(static_cast<double>(head_dim) * fraction);
  if (key.empty() && config.has("rotary_dim")) {
    key = "rotary_dim";
    dim = config.get_int("rotary_dim");
  }
  if (!(dim > 0 && dim % 2 == 0 && dim <= head_dim))
    throw Error(config.source() + ": " + (key.empty() ? std::string("head_dim") : key) +
                " gives a rotary dimension of " + std::to_string(dim) + " for heads of " +
                std::to_string(head_dim) + "; it must be even, positive and at most head_dim");
  return dim;
}

}  // namespace

RopeSpec rope_spec_from_config(const HfConfig& config, const std::string& layer_type,
                               int64_t head_dim) {
  const RopeParameters rope = config.rope(layer_type);
  const RopeParameterReader reader(config, rope, rope_key(config, layer_type));

  RopeSpec spec;
  spec.type = parse_type(reader, rope.type);
  spec.theta = rope.theta;
  if (!config.has("rope_parameters") && !config.has("rope_theta") && config.has("rotary_emb_base"))
    spec.theta = config.get_double("rotary_emb_base");
  if (!(spec.theta > 0))
    throw Error(config.source() + ": RoPE theta must be positive, got " +
                std::to_string(spec.theta));
  spec.rotary_dim = rotary_dim_of(config, reader, head_dim);
  spec.max_position = config.get_int("max_position_embeddings", 0);

  const bool uses_original_length = spec.type == RopeType::kLlama3 ||
                                    spec.type == RopeType::kYarn ||
                                    spec.type == RopeType::kLongRope;
  if (uses_original_length) {
    // Phi-3 keeps the pretraining length at the top level; transformers prefers it there.
    if (config.has("original_max_position_embeddings"))
      spec.original_max_position = config.get_int("original_max_position_embeddings");
    else if (reader.has("original_max_position_embeddings"))
      spec.original_max_position =
          static_cast<int64_t>(reader.number("original_max_position_embeddings"));
    else
      spec.original_max_position = spec.max_position;
    if (spec.original_max_position <= 0)
      reader.fail("original_max_position_embeddings",
                  "must be positive (or max_position_embeddings must be given)");
  }

  switch (spec.type) {
    case RopeType::kNone:
    case RopeType::kDefault:
      break;
    case RopeType::kLinear:
    case RopeType::kDynamic:
      spec.factor = reader.number("factor");
      break;
    case RopeType::kLlama3:
      spec.factor = reader.number("factor");
      spec.low_freq_factor = reader.number("low_freq_factor");
      spec.high_freq_factor = reader.number("high_freq_factor");
      if (!(spec.high_freq_factor > spec.low_freq_factor))
        reader.fail("high_freq_factor", "must exceed low_freq_factor");
      break;
    case RopeType::kYarn:
    case RopeType::kLongRope: {
      const double implied = spec.max_position > 0
                                 ? static_cast<double>(spec.max_position) /
                                       static_cast<double>(spec.original_max_position)
                                 : 1.0;
      spec.factor = reader.number("factor", implied);
      spec.attention_factor = reader.number("attention_factor", 0.0);
      if (spec.type == RopeType::kYarn) {
        spec.beta_fast = reader.number("beta_fast", 32.0);
        spec.beta_slow = reader.number("beta_slow", 1.0);
        spec.mscale = reader.number("mscale", 0.0);
        spec.mscale_all_dim = reader.number("mscale_all_dim", 0.0);
        spec.truncate = reader.boolean("truncate", true);
      } else {
        spec.short_factor = reader.numbers("short_factor");
        spec.short_mscale = reader.number("short_mscale", 0.0);
        spec.long_mscale = reader.number("long_mscale", 0.0);
        spec.long_factor = reader.numbers("long_factor");
        const size_t pairs = static_cast<size_t>(spec.rotary_dim / 2);
        if (spec.short_factor.size() != pairs)
          reader.fail("short_factor", "has " + std::to_string(spec.short_factor.size()) +
                                          " entries; the rotary dimension needs " +
                                          std::to_string(pairs));
        if (spec.long_factor.size() != pairs)
          reader.fail("long_factor", "has " + std::to_string(spec.long_factor.size()) +
                                         " entries; the rotary dimension needs " +
                                         std::to_string(pairs));
      }
      break;
    }
  }
  if (spec.type != RopeType::kDefault && !(spec.factor > 0))
    reader.fail("factor", "must be positive, got " + std::to_string(spec.factor));
  if (spec.type == RopeType::kDynamic && spec.max_position <= 0)
    throw Error(config.source() + ": dynamic RoPE needs a positive max_position_embeddings");
  return spec;
}

}  // namespace kiln
