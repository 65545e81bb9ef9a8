// Weight transforms over tensor views; each returns a contiguous copy.
#include "kiln/models/weight_transforms.h"

#include "kiln/core/error.h"

namespace kiln {

WeightTransform take_rows(int64_t begin, int64_t end) {
  return [begin, end](const std::vector<Tensor>& in) {
    return in.at(0).slice(0, begin, end).contiguous(true);
  };
}

WeightTransform take_per_head_part(int64_t heads, int64_t parts, int64_t head_dim, int64_t part) {
  return [=](const std::vector<Tensor>& in) {
    const Tensor& t = in.at(0).contiguous();
    check(t.dim(0) == heads * parts * head_dim,
          "fused projection of " + t.shape_string() + " is not " + std::to_string(heads) + " x " +
              std::to_string(parts) + " x " + std::to_string(head_dim) + " rows");
    Shape grouped = {heads, parts, head_dim};  // [heads, parts, head_dim, rest...]
    Shape result = {heads * head_dim};         // [heads * head_dim, rest...]
    for (int d = 1; d < t.ndim(); ++d) {
      grouped.push_back(t.dim(d));
      result.push_back(t.dim(d));
    }
    return t.reshape(grouped).select(1, part).contiguous(true).reshape(result);
  };
}

}  // namespace kiln
