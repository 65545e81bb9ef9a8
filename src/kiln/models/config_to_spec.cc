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

}  // namespace kiln
