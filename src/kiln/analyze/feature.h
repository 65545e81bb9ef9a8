// One architectural feature found in a config.json, and the value formats shared by the
// raw-config detector and the ModelSpec reader, so that their values compare as strings.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/models/model_spec.h"

namespace kiln::analyze {

enum class FeatureKind {
  kInfo,    // a size or setting every build handles (heads, vocabulary, theta): needs no capability
  kSwitch,  // "none", or a description of an optional feature: needs capability (id, "yes")
  kChoice,  // one of named variants: the value's first word is the capability value
};

struct Feature {
  std::string id;     // "rope.type"; also the capability's feature name (models/capabilities.h)
  std::string value;  // "yarn", "none", "window 4096 on all 32 layers", ...
  FeatureKind kind = FeatureKind::kInfo;
  // Config keys the value was read from; empty when the architecture implies it.
  std::vector<std::string> keys;
  // False when the config does not pin the value down (architecture defaults, layouts that a
  // family may legitimately choose, such as RoPE pairing after permuting weights): then the
  // family's value is shown instead of being compared with this one.
  bool checkable = true;
};

// The capability value this feature needs ("" when it needs none): kChoice -> the first word
// of `value`; kSwitch -> "yes" unless the value is "none"; kInfo -> "".
std::string capability_value(const Feature& feature);

// Value formats. Both sides (config detector and ModelSpec reader) use these.
// Shortest faithful decimal: 10000, 0.4, 1e-06, 500000.
std::string format_number(double value);
// "mha", "gqa", "mqa" or "mla".
std::string attention_kind_value(int64_t heads, int64_t kv_heads, bool mla);
// "32 heads, 8 KV heads, head_dim 128".
std::string heads_value(int64_t heads, int64_t kv_heads, int64_t head_dim);
// "none" when `scale` is 1/sqrt(head_dim) (or 0), "1/sqrt(168)" for such a value, else the number.
std::string attention_scale_value(double scale, int64_t head_dim);
// Per-layer windows (0 = full attention): "none", "window 4096 on all 32 layers" or
// "window 512 on 22 of 26 layers, repeating SSSSSF" (S sliding, F full; see layer_pattern).
std::string windows_value(const std::vector<int64_t>& windows);
// Per-layer MoE flags: "none" when every layer is MoE, "first 3 of 61 layers" when the
// dense layers lead, else "11 of 24 layers, repeating DM" (D dense, M MoE).
std::string dense_layers_value(const std::vector<bool>& is_moe);
// "full" or "partial (32 of 80 dims)".
std::string rotary_fraction_value(int64_t rotary_dim, int64_t head_dim);
// "rms (eps 1e-06)", "rms_one_plus (eps 1e-06)", "layer_norm (eps 1e-05)", ...
std::string norm_value(NormKind kind, double eps);
std::string placement_value(NormPlacement placement, bool parallel_shared_norm);
std::string activation_value(Activation activation);
std::string rope_type_value(RopeType type);
std::string router_value(RouterKind router);
// Lists of RoPE factors: "48 values".
std::string list_value(size_t count);
// "1 shared expert, intermediate 2048" / "2 shared experts, intermediate 2816".
std::string shared_experts_value(int64_t count, int64_t intermediate);
// One letter per layer, described: "repeating SSSSSF" when a unit repeats at least twice
// (the last repetition may be cut short), else "pattern SFFFSF".
std::string layer_pattern(const std::string& letters);

}  // namespace kiln::analyze
