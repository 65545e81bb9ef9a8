// Helpers that families share to turn config.json values into ModelSpec fields (RoPE has
// its own: models/rope_config.h).
#pragma once

#include <cstdint>
#include <string>

#include "kiln/io/hf_config.h"
#include "kiln/models/model_spec.h"

namespace kiln {

// The activation named by `key` ("silu", "gelu", "gelu_pytorch_tanh", "relu", ...). Throws
// Error naming the config file and key for names Kiln does not know.
Activation activation_from_config(const HfConfig& config, const std::string& key);

}  // namespace kiln
