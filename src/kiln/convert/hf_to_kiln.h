// HuggingFace folder -> Kiln checkpoint: the family's weight mapping applied one tensor at
// a time, written unscanned or scanned (layers with identical parameters stacked).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "kiln/models/family_file.h"

namespace kiln {

struct ConvertOptions {
  std::string layout = "unscanned";  // or "scanned"
  std::string dtype = "keep";        // keep, f32, bf16 or f16 (floating tensors only)
  bool force = false;                // replace an existing destination
  FamilyChoice family;               // which family maps the weights (choose_family())
  uint64_t max_shard_bytes = uint64_t{4} << 30;
  // Called after each tensor with (tensors done, tensors total, bytes written so far).
  std::function<void(size_t, size_t, uint64_t)> progress;
};

// Converts the model folder `source` (config.json + safetensors or .bin weights, any
// format open_tensor_source reads) into a Kiln checkpoint at `destination`, atomically
// (AtomicOutputDir). Memory stays bounded whatever the model size: tensors stored as they
// are (no transform, same dtype) are copied file to file (copy_file_range, checksummed
// through an 8 MiB buffer); the others are read from the mapping, whose pages are dropped once
// written, and only a tensor that a transform or a dtype change rebuilds is held whole. Tokenizer
// files (every format Tokenizer::load reads) and generation_config.json are copied. Scanned: layer
// i's tensor decoder/layers_i/<param> goes to decoder/<group>/<param> at the position of i in its
// group, stacked on axis 1 (axis 0 for scalars); layers with the same parameter names,
// shapes and dtypes form one group ("layers" when all layers are alike, else
// "layers_group<k>"). Errors name the tensor or file.
// `source` may also be a llama.cpp .gguf file: its metadata is the config, its vocabulary is
// written as tokenizer.json and quantized tensors are dequantized (models/gguf_model.h).
void convert_hf_to_kiln(const std::string& source, const std::string& destination,
                        const ConvertOptions& options);

}  // namespace kiln
