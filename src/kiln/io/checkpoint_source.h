// Opening a model's weights whatever their format: Kiln checkpoint, safetensors, PyTorch
// .bin or Orbax, as one TensorSource.
#pragma once

#include <memory>
#include <string>

#include "kiln/core/mapped_file.h"
#include "kiln/models/family.h"

namespace kiln {

// "kiln", "safetensors", "torch_bin", "orbax" or "gguf" for the weights at `path` (a folder or
// a single .safetensors / .bin / .gguf file), or "" when none is recognized. A folder is checked in
// that order, so a Kiln checkpoint wins over stray files beside it.
std::string detect_checkpoint_format(const std::string& path);

// Opens the weights at `path`. Throws Error("<path>: no model weights found (looked for
// ...)") when detect_checkpoint_format finds none, or the format reader's error.
// `residency` says how Kiln and safetensors data files are held (see MappedFile); the other
// formats are read as they need.
std::unique_ptr<TensorSource> open_tensor_source(const std::string& path,
                                                 Residency residency = Residency::kMapped);

}  // namespace kiln
