#include "kiln/models/hf_module_names.h"

#include <algorithm>

#include "kiln/models/weight_names.h"

namespace kiln {

namespace {
// `parent` + "." + `child`, or "" when either is missing.
std::string join(const std::string& parent, const std::string& child) {
  return parent.empty() || child.empty() ? "" : parent + "." + child;
}

// The HF child of `parts` that Kiln's `kiln_part` is, or "".
std::string part_named(const std::vector<std::pair<std::string, std::string>>& parts,
                       const std::string& kiln_part) {
  for (const auto& [kiln, hf] : parts)
    if (kiln == kiln_part) return hf;
  return "";
}

// The layer index of a Kiln activation under names::layer(i), or -1.
int64_t layer_index(const std::string& kiln_activation) {
  const std::string prefix = names::layer(0).substr(0, names::layer(0).size() - 1);
  if (kiln_activation.rfind(prefix, 0) != 0) return -1;
  const size_t end = std::min(kiln_activation.find('/', prefix.size()), kiln_activation.size());
  const std::string digits = kiln_activation.substr(prefix.size(), end - prefix.size());
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(digits);
}

// The non-empty entries of `paths`.
std::vector<std::string> present(std::vector<std::string> paths) {
  paths.erase(std::remove(paths.begin(), paths.end(), ""), paths.end());
  return paths;
}
}  // namespace

std::string hf_layer_path(const HfModuleNames& names, int64_t i) {
  return names.layers + "." + std::to_string(i);
}

std::vector<std::string> hf_modules_for(const HfModuleNames& names,
                                        const std::string& kiln_activation) {
  if (kiln_activation == names::token_embedder()) return present({names.embedding});
  if (kiln_activation == names::final_norm()) return present({names.final_norm});
  if (kiln_activation == names::lm_head()) return present({names.lm_head});
  const int64_t i = layer_index(kiln_activation);
  if (i < 0) return {};
  const std::string layer = hf_layer_path(names, i);
  const std::string attention = join(layer, names.attention);
  const std::string mlp = join(layer, names.mlp);
  if (kiln_activation == names::layer(i)) return {layer};
  if (kiln_activation == names::input_norm(i)) return present({join(layer, names.input_norm)});
  if (kiln_activation == names::post_attention_norm(i))
    return present({join(layer, names.post_attention_norm)});
  if (kiln_activation == names::pre_ffw_norm(i)) return present({join(layer, names.pre_ffw_norm)});
  if (kiln_activation == names::attention(i))
    return present(
        {names.attention_output.empty() ? attention : join(layer, names.attention_output)});
  if (kiln_activation == names::mlp(i))
    return present({names.mlp_output.empty() ? mlp : join(layer, names.mlp_output)});
  const std::string attention_prefix = names::attention(i) + "/";
  if (kiln_activation.rfind(attention_prefix, 0) == 0) {
    const std::string part = kiln_activation.substr(attention_prefix.size());
    const bool branch = part == "out" && !names.attention_output.empty();
    return present(
        {join(attention, part_named(names.attention_parts, part)), branch ? attention : ""});
  }
  const std::string mlp_prefix = names::mlp(i) + "/";
  if (kiln_activation.rfind(mlp_prefix, 0) == 0) {
    const std::string part = kiln_activation.substr(mlp_prefix.size());
    const bool branch = part == "wo" && !names.mlp_output.empty();
    return present({join(mlp, part_named(names.mlp_parts, part)), branch ? mlp : ""});
  }
  return {};
}

std::string hf_not_compared_reason(const HfModuleNames& names, const std::string& module,
                                   const std::vector<std::string>& compared) {
  std::string relative = module;
  const std::string layers = names.layers + ".";
  if (module.rfind(layers, 0) == 0) {
    const size_t dot = module.find('.', layers.size());
    relative = dot == std::string::npos ? "" : module.substr(dot + 1);
  }
  for (const auto& [path, reason] : names.not_compared)
    if (path == module || path == relative) return reason;
  for (const auto& [parent, parts] :
       {std::pair{names.attention, &names.attention_parts}, std::pair{names.mlp, &names.mlp_parts}})
    for (const auto& [kiln, hf] : *parts)
      if (relative == join(parent, hf))
        return "the model Kiln built has no " + kiln + " in " + parent +
               " (HF's module for it ran): a part the spec lacks";
  if (module.substr(module.rfind('.') + 1).find("dropout") != std::string::npos)
    return "dropout: the identity at inference (its input is compared)";
  for (size_t dot = module.rfind('.'); dot != std::string::npos && dot > 0;
       dot = module.rfind('.', dot - 1)) {
    const std::string ancestor = module.substr(0, dot);
    if (std::find(compared.begin(), compared.end(), ancestor) != compared.end())
      return "inside " + ancestor +
             ", which is compared; Kiln reports no activation of its own for it";
  }
  return "Kiln reports no activation for it";
}

}  // namespace kiln
