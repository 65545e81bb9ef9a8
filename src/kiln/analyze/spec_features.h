// The analysis features as a built ModelSpec states them, in the same value formats as the
// raw-config detector, so that a family that drops or misreads a setting shows up.
#pragma once

#include <map>
#include <string>

#include "kiln/models/model_spec.h"

namespace kiln::analyze {

// Feature id -> value for every feature the ModelSpec can express. Features it cannot
// express (quantization, ...) are absent; a feature the
// detector finds that is absent here cannot be carried by any family yet.
std::map<std::string, std::string> spec_feature_values(const ModelSpec& spec);

}  // namespace kiln::analyze
