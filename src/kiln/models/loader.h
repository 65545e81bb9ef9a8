// Loading a HuggingFace model folder: config.json -> family -> ModelSpec, and the weights
// mapped to Kiln names (zero-copy views where no transform applies).
#pragma once

#include <string>

#include "kiln/core/mapped_file.h"
#include "kiln/io/hf_config.h"
#include "kiln/layers/weights.h"
#include "kiln/models/model_spec.h"

namespace kiln {

struct LoadedModel {
  std::string path;  // the model folder
  HfConfig config;
  ModelSpec spec;
  WeightMap weights;  // Kiln name -> tensor, shapes checked against the family's mapping
};

// Loads the folder `path`: its config.json (eos ids are completed from
// generation_config.json when present) and its weights in any format open_tensor_source
// reads (safetensors, PyTorch .bin; single or sharded). Throws
// Error naming the file and key or tensor: unknown architecture, missing required key,
// missing tensor, wrong shape. Weights are read into memory by default, as inference streams
// them on every step (Residency::kMapped maps them instead: faster to open, may be slower to
// run; see MappedFile).
LoadedModel load_model(const std::string& path, Residency residency = Residency::kResident);

}  // namespace kiln
