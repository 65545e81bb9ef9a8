// Loading a HuggingFace model folder (config.json -> family -> ModelSpec, and the weights
// mapped to Kiln names, zero-copy views where no transform applies) or a Kiln checkpoint.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kiln/core/mapped_file.h"
#include "kiln/io/hf_config.h"
#include "kiln/layers/weights.h"
#include "kiln/models/family_file.h"
#include "kiln/models/model_spec.h"

namespace kiln {

struct LoadedModel {
  std::string path;  // the model folder or Kiln checkpoint
  HfConfig config;
  ModelSpec spec;
  // Kiln name -> tensor; from a HF folder, shapes are checked against the family's mapping
  // (a Kiln checkpoint's are checked when the model is built from them).
  WeightMap weights;
  // The family that built it (built-in, generic or from a family file); null for a Kiln
  // checkpoint whose spec came from its manifest.
  std::shared_ptr<const Family> family;
};

// Loads the folder `path`: its config.json (eos ids are completed from
// generation_config.json when present) and its weights in any format open_tensor_source
// reads (safetensors, PyTorch .bin; single or sharded), or a Kiln checkpoint (either
// layout; the config is the manifest's source_config, scanned tensors become per-layer
// zero-copy views). Throws
// Error naming the file and key or tensor: unknown architecture, missing required key,
// missing tensor, wrong shape. Weights are read into memory by default, as inference streams
// them on every step (Residency::kMapped maps them instead: faster to open, may be slower to
// run; see MappedFile).
// The Kiln tensors `mappings` make of `source`'s tensors (transforms applied), each checked
// against its mapping's shape. Throws Error naming the file and tensor.
WeightMap apply_weight_mappings(const std::vector<WeightMapping>& mappings,
                                const TensorSource& source);

// The inverse of apply_weight_mappings(): `source`'s tensors rebuilt from Kiln tensors, under
// their own names and shapes, in source.names() order. `kiln(name)` gives the Kiln tensor of a
// mapping (any float dtype; nullptr is an Error naming it). One mechanism for every family:
// a transform must only select elements (rename, slice, split a fused tensor, transpose,
// de-interleave, stack experts, ...); it is run once on probe inputs whose elements hold their
// own indices, which says where each element of its output comes from, and the Kiln tensor's
// elements are written back there. A transform that changes values, or an element that two
// Kiln tensors write with different bits (tied copies trained apart), is an Error naming the
// tensors; the rebuilt tensors are then mapped forward again and must give the Kiln tensors
// back bitwise (in the output dtype). Elements no mapping reads keep the source's values, and
// tensors no mapping reads are copied from the source. `dtype`: the dtype of every float
// tensor written (empty: each keeps its dtype in the source; a quantized source's tensors
// are its dequantized ones).
std::vector<std::pair<std::string, Tensor>> invert_weight_mappings(
    const std::vector<WeightMapping>& mappings, const TensorSource& source,
    const std::function<const Tensor*(const std::string&)>& kiln,
    std::optional<DType> dtype = std::nullopt);

// Runs the probes of invert_weight_mappings() without Kiln tensors: throws the same Error for
// a transform that is not a selection (so a caller can refuse before training).
void check_weight_mappings_invertible(const std::vector<WeightMapping>& mappings,
                                      const TensorSource& source);

// `choice` picks the family (choose_family(); a Kiln checkpoint of an architecture no family
// builds runs the ModelSpec its manifest holds).
LoadedModel load_model(const std::string& path, Residency residency = Residency::kResident,
                       const FamilyChoice& choice = {});

}  // namespace kiln
