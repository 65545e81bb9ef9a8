#include "kiln/models/weight_mappings.h"

#include "kiln/core/error.h"
#include "kiln/models/weight_names.h"

namespace kiln {

void WeightMappingList::rename(const std::string& kiln_name, const std::string& hf_name,
                               const Shape& shape) {
  mappings_.push_back({kiln_name, {hf_name}, shape, {}});
}

void WeightMappingList::derive(const std::string& kiln_name, const std::string& hf_name,
                               const Shape& shape, std::function<Tensor(const Tensor&)> transform) {
  mappings_.push_back({kiln_name,
                       {hf_name},
                       shape,
                       [transform = std::move(transform)](const std::vector<Tensor>& inputs) {
                         return transform(inputs.at(0));
                       }});
}

void WeightMappingList::linear(const std::string& kiln_module, const std::string& hf_module,
                               int64_t out, int64_t in, bool bias) {
  rename(names::kernel(kiln_module), hf_module + ".weight", {out, in});
  if (bias) rename(names::bias(kiln_module), hf_module + ".bias", {out});
}

void WeightMappingList::norm(const std::string& kiln_module, const std::string& hf_module,
                             const NormSpec& norm, int64_t dim) {
  if (norm.kind == NormKind::kNone || norm.kind == NormKind::kNonParametric) return;
  rename(names::scale(kiln_module), hf_module + ".weight", {dim});
  if (norm.kind == NormKind::kLayerNorm)
    rename(names::bias(kiln_module), hf_module + ".bias", {dim});
}

Tensor transposed(const Tensor& matrix) {
  check(matrix.ndim() == 2, "transposed: expected a 2-D tensor, got " + matrix.shape_string());
  return matrix.transpose(0, 1).contiguous(true);
}

Tensor fused_rows(const Tensor& fused, int64_t first, int64_t count) {
  check(fused.ndim() >= 1 && first >= 0 && count > 0 && first + count <= fused.dim(0),
        "fused_rows: rows [" + std::to_string(first) + ", " + std::to_string(first + count) +
            ") lie outside a tensor of shape " + fused.shape_string());
  return fused.slice(0, first, first + count).contiguous(true);
}

Tensor grouped_qkv_part(const Tensor& fused, int64_t kv_heads, int64_t queries_per_kv,
                        int64_t head_dim, QkvPart part) {
  const int64_t group = queries_per_kv + 2;
  check(fused.ndim() >= 1 && fused.dim(0) == kv_heads * group * head_dim,
        "grouped_qkv_part: a fused QKV tensor of shape " + fused.shape_string() +
            " does not hold " + std::to_string(kv_heads) + " groups of " + std::to_string(group) +
            " heads of " + std::to_string(head_dim));
  const int64_t first = part == QkvPart::kQuery ? 0
                        : part == QkvPart::kKey ? queries_per_kv
                                                : queries_per_kv + 1;
  const int64_t count = part == QkvPart::kQuery ? queries_per_kv : 1;
  Shape out_shape = fused.shape();
  out_shape[0] = kv_heads * count * head_dim;
  return fused.contiguous()
      .reshape({kv_heads, group, -1})
      .slice(1, first, first + count)
      .contiguous(true)
      .reshape(out_shape);
}

}  // namespace kiln
