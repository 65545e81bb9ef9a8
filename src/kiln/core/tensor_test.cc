#include "kiln/core/tensor.h"

#include <gtest/gtest.h>

#include "kiln/core/error.h"

namespace kiln {
namespace {

Tensor iota(Shape shape) {
  std::vector<float> v(shape_numel(shape));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  return Tensor::from_f32(shape, v);
}

TEST(Tensor, ViewsShareData) {
  Tensor t = iota({2, 3, 4});
  Tensor s = t.select(0, 1).slice(1, 1, 3);  // [3, 2]
  EXPECT_EQ(s.shape(), (Shape{3, 2}));
  EXPECT_FALSE(s.is_contiguous());
  Tensor c = s.contiguous();
  EXPECT_EQ(c.data<float>()[0], 13.0f);
  EXPECT_EQ(c.data<float>()[1], 14.0f);
  EXPECT_EQ(c.data<float>()[2], 17.0f);
  Tensor tr = t.reshape({6, 4}).transpose(0, 1).contiguous();
  EXPECT_EQ(tr.shape(), (Shape{4, 6}));
  EXPECT_EQ(tr.data<float>()[1], 4.0f);
  EXPECT_EQ(t.reshape({-1, 4}).shape(), (Shape{6, 4}));
}

TEST(Tensor, ConvertsDTypes) {
  Tensor t = Tensor::from_f32({3}, {1.0f, -2.5f, 1.0f + 3.0f / 256});
  Tensor b = t.to(DType::BF16);
  EXPECT_EQ(b.data<uint16_t>()[2], 0x3f82);
  Tensor back = b.to(DType::F32);
  EXPECT_EQ(back.data<float>()[1], -2.5f);
  Tensor h = t.to(DType::F16).to(DType::F32);
  EXPECT_EQ(h.data<float>()[0], 1.0f);
}

TEST(Tensor, BadShapesThrow) {
  Tensor t = iota({2, 3});
  EXPECT_THROW(t.reshape({4, 2}), Error);
  EXPECT_THROW(t.slice(1, 2, 5), Error);
  EXPECT_THROW(t.transpose(0, 1).reshape({6}), Error);
  EXPECT_THROW(t.dim(3), Error);
}

}  // namespace
}  // namespace kiln
