// MaxText's array layout for llama-shaped models (Llama, Mistral, Qwen2): each Kiln tensor
// as the array MaxText's llama_or_mistral_ckpt.py writes, and back, bit for bit.
// The transforms and their reasons are in docs/checkpoint_format.md ("Orbax export").
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "kiln/core/tensor.h"
#include "kiln/io/json.h"

namespace kiln {

// One Kiln tensor in MaxText's layout.
struct MaxTextArray {
  Tensor array;  // MaxText's shape and values
  // Query tensors only (scaled by 1 / query_divisor): I8 of `array`'s shape, the distance in
  // units in the last place from unscale(array) to the original element, so that import
  // restores it exactly. Undefined for every other tensor.
  Tensor residual;
};

// The divisor MaxText folds into the query projection: sqrt(head_dim) rounded to `dtype`
// (MaxText rounds it to its bf16 cast type). Throws Error for non-floating dtypes.
double maxtext_query_divisor(int64_t head_dim, DType dtype);

class MaxTextLlamaLayout {
 public:
  // The layout of the model whose config.json is `source_config` (a Kiln manifest's
  // `source_config`), or nullopt when it is not llama-shaped: a family other than llama,
  // mistral or qwen2, QK norms, partial rotary, MoE or non-gated MLPs, or layers whose head
  // counts differ.
  static std::optional<MaxTextLlamaLayout> for_config(const Json& source_config);
  // The layout recorded by to_json(). Throws Error naming `where` when malformed.
  static MaxTextLlamaLayout from_json(const Json& json, const std::string& where);
  Json to_json() const;

  // Tensor `name` (a Kiln name, unscanned "decoder/layers_3/mlp/wo/kernel" or scanned
  // "decoder/layers/mlp/wo/kernel"; the kind is read from its suffix) of one layer, or a
  // top-level tensor, in Kiln's shape -> MaxText's array for it without a layer axis.
  // Throws Error naming the tensor when its shape does not fit the model.
  MaxTextArray to_maxtext(const std::string& name, const Tensor& tensor) const;
  // The inverse: `array` in MaxText's per-layer shape and, for query tensors, the matching
  // `residual` (undefined when none was stored: all zero) -> Kiln's tensor, bit for bit.
  Tensor from_maxtext(const std::string& name, const Tensor& array, const Tensor& residual) const;

  bool rope_interleaved() const { return rope_interleaved_; }
  int64_t head_dim() const { return head_dim_; }

 private:
  int64_t num_heads_ = 0;
  int64_t num_kv_heads_ = 0;
  int64_t head_dim_ = 0;
  // HF's rotate-half q/k layout becomes interleaved pairs (MaxText's LLaMARotaryEmbedding,
  // used for llama3-type RoPE); otherwise MaxText rotates halves as HF does.
  bool rope_interleaved_ = false;
};

}  // namespace kiln
