// Feature detection from a raw config.json: what the architecture needs, read from the keys
// and conventions of HuggingFace configs, independent of whether Kiln has a family for it.
#pragma once

#include <vector>

#include "kiln/analyze/feature.h"
#include "kiln/io/hf_config.h"

namespace kiln::analyze {

// Every architectural feature `config` implies (for a multimodal wrapper, pass its
// text_config). Keys are read through `config`, so afterwards `config.keys_read()` holds every
// key the detection understood. Throws Error naming the file and key when a required size
// (hidden size, layers, heads) is missing or a value has the wrong type.
std::vector<Feature> detect_features(const HfConfig& config);

}  // namespace kiln::analyze
