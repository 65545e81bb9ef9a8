// The one generic reading of a HuggingFace config.json into a complete ModelSpec, with no
// family involved: sizes under every name configs use for them, and the conventions of the
// architectures config.json does not spell out (Gemma's 1 + w norms, parallel blocks,
// learned positions, ...) looked up by model_type. Built-in families start from it;
// the generic route (`--family auto`) refines it from the checkpoint's tensors
// (models/auto_family.h).
#pragma once

#include "kiln/io/hf_config.h"
#include "kiln/models/model_spec.h"

namespace kiln {

// config.json -> ModelSpec (spec.family left empty). Throws Error naming the config file and
// key when a required size is missing or a value is of the wrong type or unknown (an
// activation, a RoPE type, a layer type Kiln does not compute).
ModelSpec detect_spec(const HfConfig& config);

}  // namespace kiln
