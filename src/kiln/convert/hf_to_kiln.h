// HuggingFace folder -> Kiln checkpoint: the family's weight mapping applied one tensor at
// a time, written unscanned or scanned (layers with identical parameters stacked).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kiln/convert/kiln_tensor_set.h"
#include "kiln/models/family_file.h"

namespace kiln {

struct ConvertOptions {
  std::string layout = "unscanned";  // or "scanned"
  // keep, f32, bf16 or f16 (floating tensors only), or a quantized format for the linear
  // kernels: int8 (Q8_0), int4 (Q4_1, groups of 32) or int4-128 (Q4_1_128); see
  // quantized_dtype_for().
  std::string dtype = "keep";
  // Quantized --dtype only: tensors whose Kiln name matches one of these globs (fnmatch, `*`
  // also matches `/`) stay unquantized in their source dtype; tensors matching `quantize`
  // are quantized even when they would not be by default (embeddings, routers).
  std::vector<std::string> keep;
  std::vector<std::string> quantize;
  // Quantized --dtype only: the format of the output matrix decoder/logits_dense/kernel (a
  // family's own head, or a tied embedding's copy): int8, int4 or int4-128; empty for the
  // default (head_dtype_default()). `keep` globs still win.
  std::string head_dtype;
  bool force = false;   // replace an existing destination
  FamilyChoice family;  // which family maps the weights (choose_family())
  uint64_t max_shard_bytes = uint64_t{4} << 30;
  // Called after each tensor with (tensors done, tensors total, bytes written so far).
  std::function<void(size_t, size_t, uint64_t)> progress;
};

// The dtype a quantized conversion (`dtype` int8, int4 or int4-128) stores tensor `name`
// (source dtype `source`, Kiln shape `shape`) in: the quantized format for linear kernels
// (`.../kernel` tensors of 2 or 3 dimensions whose last dimension is whole blocks), except
// MoE routers (`.../gate/kernel`, `shared_expert_gate`) and MLA's `wkv_b` (read outside the
// linear kernels), and the output projection `decoder/logits_dense/kernel`, stored in
// `head_dtype`'s format (int8, int4 or int4-128; empty: head_dtype_default(dtype)).
// Embeddings, norms, biases and every other tensor keep `source`. `keep` globs win over
// `head_dtype`, which wins over `quantize` globs, which win over these defaults. A bad `dtype`
// or `head_dtype` is an error naming the option.
DType quantized_dtype_for(const std::string& dtype, const std::string& name, const Shape& shape,
                          DType source, const std::vector<std::string>& keep,
                          const std::vector<std::string>& quantize,
                          const std::string& head_dtype = "");

// The output matrix's default format for a quantized `dtype` (an int8, int4 or int4-128 name):
// int8 for int8 (tinycoder: 99.11% top-1 as the bf16 head, with the table's refinement of the
// top logits); int4 and int4-128 their own (docs/performance.md, "int4's head in 4 bits").
std::string head_dtype_default(const std::string& dtype);

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
// With a quantized dtype, a tied embedding that stays unquantized is also written as the
// output matrix `decoder/logits_dense/kernel` in options.head_dtype's format (never when `keep`
// matches that name),
// which Model then multiplies with, refining each row's top logits from the table
// (docs/checkpoint_format.md).
void convert_hf_to_kiln(const std::string& source, const std::string& destination,
                        const ConvertOptions& options);

// The Kiln checkpoint convert_hf_to_kiln(source, ..., options) would write, without writing
// it: its manifest (without files, offsets or checksums) and its tensors, each computed when
// asked for (a view of the source's mapping when stored unchanged; the family transform
// and dtype change applied otherwise, the inputs' pages dropped). Scanned tensors are not
// materialized: get() of a stacked name is an Error; layer_tensor() serves every layer.
// Float dtypes only (keep, f32, bf16, f16). Lets an exporter (Orbax) stream a model straight
// from its HuggingFace files.
std::unique_ptr<KilnTensorSet> open_hf_as_kiln(const std::string& source,
                                               const ConvertOptions& options);

}  // namespace kiln
