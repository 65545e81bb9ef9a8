// Helpers that families share to turn config.json values into ModelSpec fields.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/io/hf_config.h"
#include "kiln/models/model_spec.h"

namespace kiln {

// The activation named by `key` ("silu", "gelu", "gelu_pytorch_tanh", "relu", ...). Throws
// Error naming the config file and key for names Kiln does not know.
Activation activation_from_config(const HfConfig& config, const std::string& key);

// The RoPE of layers of `layer_type` ("" = the global one; see HfConfig::rope) for heads of
// `head_dim`: type, theta, rotary_dim (from partial_rotary_factor) and every scaling
// parameter present. Throws Error naming the config file for unknown types.
RopeSpec rope_spec_from_config(const HfConfig& config, const std::string& layer_type,
                               int64_t head_dim);

}  // namespace kiln
