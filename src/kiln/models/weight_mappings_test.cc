// Tensor transforms of weight mappings: Conv1D transposition, fused-row slices and the
// per-KV-group QKV layouts of Falcon and GPT-NeoX.
#include "kiln/models/weight_mappings.h"

#include <gtest/gtest.h>

#include <vector>

#include "kiln/core/error.h"

namespace kiln {
namespace {

// A tensor whose element at flat index i holds i.
Tensor iota(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> values(n);
  for (int64_t i = 0; i < n; ++i) values[i] = static_cast<float>(i);
  return Tensor::from_f32(shape, values);
}

std::vector<float> values_of(const Tensor& t) {
  const Tensor c = t.contiguous();
  return std::vector<float>(c.data<float>(), c.data<float>() + c.numel());
}

TEST(WeightMappings, TransposedSwapsAConv1dWeight) {
  const Tensor t = transposed(iota({2, 3}));  // [[0 1 2] [3 4 5]]
  EXPECT_EQ(t.shape(), (Shape{3, 2}));
  EXPECT_EQ(values_of(t), (std::vector<float>{0, 3, 1, 4, 2, 5}));
}

TEST(WeightMappings, FusedRowsSlicesWeightsAndBiases) {
  EXPECT_EQ(values_of(fused_rows(iota({3, 2}), 1, 1)), (std::vector<float>{2, 3}));
  EXPECT_EQ(values_of(fused_rows(iota({6}), 2, 2)), (std::vector<float>{2, 3}));
  EXPECT_THROW(fused_rows(iota({6}), 5, 2), Error);
}

TEST(WeightMappings, GroupedQkvSplitsFalconGroups) {
  // 2 KV groups of (2 query heads, key, value), head_dim 1: rows q0 q1 k0 v0 q2 q3 k1 v1.
  const Tensor fused = iota({8, 1});
  EXPECT_EQ(values_of(grouped_qkv_part(fused, 2, 2, 1, QkvPart::kQuery)),
            (std::vector<float>{0, 1, 4, 5}));
  EXPECT_EQ(values_of(grouped_qkv_part(fused, 2, 2, 1, QkvPart::kKey)), (std::vector<float>{2, 6}));
  EXPECT_EQ(values_of(grouped_qkv_part(fused, 2, 2, 1, QkvPart::kValue)),
            (std::vector<float>{3, 7}));
  EXPECT_EQ(grouped_qkv_part(fused, 2, 2, 1, QkvPart::kQuery).shape(), (Shape{4, 1}));
}

TEST(WeightMappings, GroupedQkvSplitsNeoXHeadsAndBiases) {
  // GPT-NeoX: [heads = 2, 3, head_dim = 2] rows: q0 q0 k0 k0 v0 v0 q1 q1 k1 k1 v1 v1.
  const Tensor bias = iota({12});
  EXPECT_EQ(values_of(grouped_qkv_part(bias, 2, 1, 2, QkvPart::kKey)),
            (std::vector<float>{2, 3, 8, 9}));
  const Tensor weight = iota({12, 3});
  const Tensor value = grouped_qkv_part(weight, 2, 1, 2, QkvPart::kValue);
  EXPECT_EQ(value.shape(), (Shape{4, 3}));
  EXPECT_EQ(values_of(value)[0], 4 * 3);   // row 4, column 0
  EXPECT_EQ(values_of(value)[6], 10 * 3);  // row 10, column 0
  EXPECT_THROW(grouped_qkv_part(weight, 3, 1, 2, QkvPart::kQuery), Error);
}

}  // namespace
}  // namespace kiln
