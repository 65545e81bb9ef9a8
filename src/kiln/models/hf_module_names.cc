#include "kiln/models/hf_module_names.h"

#include <cstdint>
#include <utility>
#include <vector>

#include "kiln/models/weight_names.h"

namespace kiln {

namespace {
std::string layer_path(const HfModuleNames& names, int64_t i) {
  std::string path = names.layer;
  const size_t at = path.find("{i}");
  if (at != std::string::npos) path.replace(at, 3, std::to_string(i));
  return path;
}

// `parent` + "." + `child`, or "" when either is missing.
std::string join(const std::string& parent, const std::string& child) {
  return parent.empty() || child.empty() ? "" : parent + "." + child;
}
}  // namespace

std::string hf_module_for(const HfModuleNames& names, const std::string& kiln_activation) {
  if (kiln_activation == names::token_embedder()) return names.embedding;
  if (kiln_activation == names::final_norm()) return names.final_norm;
  if (kiln_activation == names::lm_head()) return names.lm_head;
  const std::string prefix = names::layer(0).substr(0, names::layer(0).size() - 1);
  if (kiln_activation.rfind(prefix, 0) != 0) return "";
  const size_t digits_end = kiln_activation.find('/', prefix.size());
  const std::string index_text = kiln_activation.substr(prefix.size(), digits_end - prefix.size());
  if (index_text.empty() || index_text.find_first_not_of("0123456789") != std::string::npos)
    return "";
  const int64_t i = std::stoll(index_text);
  const std::string layer = layer_path(names, i);
  const std::string attention = join(layer, names.attention);
  const std::vector<std::pair<std::string, std::string>> table = {
      {names::layer(i), layer},
      {names::input_norm(i), join(layer, names.input_norm)},
      {names::child(names::attention(i), "query"), join(attention, names.query)},
      {names::child(names::attention(i), "key"), join(attention, names.key)},
      {names::child(names::attention(i), "value"), join(attention, names.value)},
      {names::child(names::attention(i), "query_norm"), join(attention, names.query_norm)},
      {names::child(names::attention(i), "key_norm"), join(attention, names.key_norm)},
      {names::attention(i),
       names.attention_output.empty() ? attention : join(layer, names.attention_output)},
      {names::post_attention_norm(i), join(layer, names.post_attention_norm)},
      {names::pre_ffw_norm(i), join(layer, names.pre_ffw_norm)},
      {names::mlp(i), join(layer, names.mlp_output.empty() ? names.mlp : names.mlp_output)},
  };
  for (const auto& [kiln, hf] : table)
    if (kiln == kiln_activation) return hf;
  return "";
}

}  // namespace kiln
