#include "kiln/models/model_type.h"

namespace kiln {

std::string transformers_module_path(const std::string& module) {
  static const std::pair<const char*, const char*> kRenames[] = {
      {"block_sparse_moe", "mlp"},
      {"embed_out", "lm_head"},
  };
  std::string path = module;
  for (const auto& [from, to] : kRenames) {
    const std::string f = from;
    // Whole dot-separated parts only.
    for (size_t at = path.find(f); at != std::string::npos; at = path.find(f, at + 1)) {
      const bool starts = at == 0 || path[at - 1] == '.';
      const bool ends = at + f.size() == path.size() || path[at + f.size()] == '.';
      if (starts && ends) path.replace(at, f.size(), to);
    }
  }
  return path;
}

NormConvention ModelType::norm(const HfConfig& config) const {
  NormConvention n;
  for (const char* key :
       {"rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_epsilon", "norm_eps"}) {
    if (config.has(key)) {
      n.eps_key = key;
      break;
    }
  }
  if (gemma()) {
    n.kind = NormKind::kRmsOnePlus;
  } else if (type_ == "olmo") {
    n.kind = NormKind::kNonParametric;
  } else if (type_ == "cohere") {
    n.kind = NormKind::kLayerNormNoBias;
  } else if (type_ == "phimoe") {  // nn.LayerNorm with bias, its eps named rms_norm_eps
    n.kind = NormKind::kLayerNorm;
  } else if (config.has("norm_type")) {
    n.by_norm_type = true;
    n.kind = config.get_string("norm_type").find("rms") != std::string::npos ? NormKind::kRms
                                                                             : NormKind::kLayerNorm;
  } else if (plain_mlp() || (!n.eps_key.empty() && n.eps_key != "rms_norm_eps")) {
    n.kind = NormKind::kLayerNorm;
  }
  return n;
}

}  // namespace kiln
