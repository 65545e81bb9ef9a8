// Writing a model as a HuggingFace folder again: its Kiln tensors mapped back to the
// checkpoint's tensors through the family's own weight mapping, inverted
// (invert_weight_mappings(), models/loader.h), for every family whatever its transforms
// (fused QKV and gate/up projections, Conv1D's transposed matrices, per-head interleaved QKV,
// stacked or interleaved experts).
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "kiln/core/dtype.h"
#include "kiln/models/loader.h"
#include "kiln/train/train_model.h"

namespace kiln::train {

// Throws Error ("training: exporting ...") when the family's mapping of `loaded` cannot be
// inverted (a transform that computes values), before anything is trained. `loaded` must come
// from a HuggingFace folder (a Kiln checkpoint has no HF names).
void check_hf_exportable(const LoadedModel& loaded);

// Writes into the existing folder `dir`: model.safetensors (every tensor of `loaded`'s
// checkpoint under its own name and shape, rebuilt from the Kiln tensors `kiln(name)` gives;
// float tensors in `dtype`, or in their source dtype when empty; a pre-quantized source's
// tensors are written dequantized), config.json (torch_dtype, and dtype when present, set to
// the dtype written; quantization_config removed) and the source folder's other files
// (tokenizer, generation config), not its weight files.
void write_hf_folder(const LoadedModel& loaded,
                     const std::function<const Tensor*(const std::string&)>& kiln,
                     const std::string& dir, std::optional<DType> dtype);

// write_hf_folder() of a TrainModel's parameters and frozen parameters.
void write_hf_folder(const LoadedModel& loaded, const TrainModel& model, const std::string& dir,
                     std::optional<DType> dtype);

// "float32", "bfloat16", "float16" (torch's names); Error for other dtypes.
std::string torch_dtype_name(DType dtype);

}  // namespace kiln::train
