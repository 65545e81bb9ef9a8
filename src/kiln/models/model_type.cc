#include "kiln/models/model_type.h"

namespace kiln {

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
