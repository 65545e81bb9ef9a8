#include "kiln/analyze/feature.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

namespace kiln::analyze {

std::string capability_value(const Feature& feature) {
  switch (feature.kind) {
    case FeatureKind::kInfo:
      return "";
    case FeatureKind::kSwitch:
      return feature.value == "none" ? "" : "yes";
    case FeatureKind::kChoice:
      if (feature.value == "none") return "";
      return feature.value.substr(0, feature.value.find_first_of(" ("));
  }
  return "";
}

std::string format_number(double value) {
  if (std::isfinite(value) && value == std::floor(value) && std::fabs(value) < 1e15) {
    return std::to_string(static_cast<int64_t>(value));
  }
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.6g", value);
  return buffer;
}

std::string attention_kind_value(int64_t heads, int64_t kv_heads, bool mla) {
  if (mla) return "mla";
  if (kv_heads == heads) return "mha";
  if (kv_heads == 1) return "mqa";
  return "gqa";
}

std::string heads_value(int64_t heads, int64_t kv_heads, int64_t head_dim) {
  return std::to_string(heads) + " heads, " + std::to_string(kv_heads) + " KV heads, head_dim " +
         std::to_string(head_dim);
}

std::string attention_scale_value(double scale, int64_t head_dim) {
  if (scale == 0) return "none";
  double inverse_square = 1.0 / (scale * scale);
  if (head_dim > 0 && std::fabs(inverse_square - static_cast<double>(head_dim)) < 1e-3 * head_dim)
    return "none";
  double rounded = std::round(inverse_square);
  if (rounded >= 1 && std::fabs(inverse_square - rounded) < 1e-4 * rounded)
    return "1/sqrt(" + format_number(rounded) + ")";
  return format_number(scale);
}

std::string layer_pattern(const std::string& letters) {
  for (size_t p = 1; 2 * p <= letters.size(); ++p) {
    bool periodic = true;
    for (size_t i = p; i < letters.size() && periodic; ++i) periodic = letters[i] == letters[i % p];
    if (periodic) return "repeating " + letters.substr(0, p);
  }
  return "pattern " + letters;
}

std::string windows_value(const std::vector<int64_t>& windows) {
  std::set<int64_t> sizes;
  std::string letters;
  for (int64_t w : windows) {
    if (w > 0) sizes.insert(w);
    letters += w > 0 ? 'S' : 'F';
  }
  if (sizes.empty()) return "none";
  std::string window;
  for (int64_t w : sizes) {
    if (!window.empty()) window += '/';
    window += std::to_string(w);
  }
  size_t sliding = static_cast<size_t>(std::count(letters.begin(), letters.end(), 'S'));
  std::string n = std::to_string(windows.size());
  if (sliding == windows.size()) return "window " + window + " on all " + n + " layers";
  return "window " + window + " on " + std::to_string(sliding) + " of " + n + " layers, " +
         layer_pattern(letters);
}

std::string dense_layers_value(const std::vector<bool>& is_moe) {
  std::string letters;
  for (bool moe : is_moe) letters += moe ? 'M' : 'D';
  size_t dense = static_cast<size_t>(std::count(letters.begin(), letters.end(), 'D'));
  if (dense == 0) return "none";
  std::string n = std::to_string(is_moe.size());
  if (letters.find('M') == std::string::npos) return "all " + n + " layers";
  if (letters.find_last_of('D') + 1 == dense)
    return "first " + std::to_string(dense) + " of " + n + " layers";
  return std::to_string(dense) + " of " + n + " layers, " + layer_pattern(letters);
}

std::string rotary_fraction_value(int64_t rotary_dim, int64_t head_dim) {
  if (rotary_dim <= 0 || rotary_dim >= head_dim) return "full";
  return "partial (" + std::to_string(rotary_dim) + " of " + std::to_string(head_dim) + " dims)";
}

std::string norm_value(NormKind kind, double eps) {
  return std::string(norm_kind_name(kind)) + " (eps " + format_number(static_cast<float>(eps)) +
         ")";
}

std::string placement_value(NormPlacement placement, bool parallel_shared_norm) {
  if (placement == NormPlacement::kParallel && parallel_shared_norm) return "parallel_shared_norm";
  return placement_name(placement);
}

std::string activation_value(Activation activation) {
  return activation_name(activation);
}

std::string rope_type_value(RopeType type) {
  return rope_type_name(type);
}

std::string router_value(RouterKind router) {
  return router_name(router);
}

std::string list_value(size_t count) {
  return std::to_string(count) + " values";
}

std::string shared_experts_value(int64_t count, int64_t intermediate) {
  return std::to_string(count) + (count == 1 ? " shared expert" : " shared experts") +
         ", intermediate " + std::to_string(intermediate);
}

}  // namespace kiln::analyze
