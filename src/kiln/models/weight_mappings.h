// Building a family's WeightMappings: a list with shorthands for plain renames, linear
// modules and norms, and the tensor transforms HF layouts need (Conv1D's [in, out], fused
// QKV projections) to give the [out, in] matrices Kiln's layers read.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/models/family.h"

namespace kiln {

// Accumulates the WeightMappings of one model, in the order they are added.
class WeightMappingList {
 public:
  // `kiln_name` is the HF tensor `hf_name` as stored, of shape `shape`.
  void rename(const std::string& kiln_name, const std::string& hf_name, const Shape& shape);
  // `kiln_name` [shape] is `transform` applied to the HF tensor `hf_name`.
  void derive(const std::string& kiln_name, const std::string& hf_name, const Shape& shape,
              std::function<Tensor(const Tensor&)> transform);
  // An nn.Linear stored as HF does: `<kiln_module>/kernel` [out, in] from
  // `<hf_module>.weight`, and `<kiln_module>/bias` [out] from `<hf_module>.bias` when `bias`.
  void linear(const std::string& kiln_module, const std::string& hf_module, int64_t out, int64_t in,
              bool bias);
  // A norm over `dim` features: `<kiln_module>/scale` from `<hf_module>.weight` (none for
  // kinds without a weight) and `<kiln_module>/bias` from `<hf_module>.bias` (LayerNorm).
  void norm(const std::string& kiln_module, const std::string& hf_module, const NormSpec& norm,
            int64_t dim);
  std::vector<WeightMapping> take() { return std::move(mappings_); }

 private:
  std::vector<WeightMapping> mappings_;
};

// A 2-D tensor with its two dimensions swapped, as a contiguous copy: GPT-2's Conv1D
// [in, out] -> [out, in].
Tensor transposed(const Tensor& matrix);

// Rows [first, first + count) of a fused tensor whose parts are stacked along dimension 0
// (a weight [rows, in] or a bias [rows]), as a contiguous tensor.
Tensor fused_rows(const Tensor& fused, int64_t first, int64_t count);

enum class QkvPart { kQuery, kKey, kValue };

// One part of a fused QKV tensor grouped per KV head: dimension 0 is laid out
// [kv_heads, queries_per_kv + 2, head_dim] (each group's query heads, then its key head,
// then its value head), as Falcon writes it; GPT-NeoX's per-head [heads, 3, head_dim] is
// the case queries_per_kv = 1. Works for weights [rows, in] and biases [rows]; returns
// [kv_heads * queries_per_kv * head_dim, ...] for the query, [kv_heads * head_dim, ...]
// for the key or value. Throws Error when dimension 0 does not have that layout.
Tensor grouped_qkv_part(const Tensor& fused, int64_t kv_heads, int64_t queries_per_kv,
                        int64_t head_dim, QkvPart part);

}  // namespace kiln
