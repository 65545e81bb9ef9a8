// MaxText's transposed kernels: the tiled (and, for 16-bit elements, register-blocked)
// transposes of MaxTextTree::to_maxtext / from_maxtext against an element-by-element
// reference, for shapes that are and are not multiples of the tile and block sizes.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "kiln/convert/maxtext_tree.h"

namespace kiln {
namespace {

// A tensor of `dtype` and `shape` whose elements are distinct bit patterns.
Tensor patterned(DType dtype, const Shape& shape, uint32_t seed) {
  Tensor t = Tensor::zeros(dtype, shape);
  std::mt19937 rng(seed);
  auto* bytes = static_cast<unsigned char*>(t.mutable_raw());
  for (size_t i = 0; i < t.nbytes(); ++i) bytes[i] = static_cast<unsigned char>(rng());
  return t;
}

// Element (i, j) of the last two axes of batch entry b, as raw bytes.
std::string element(const Tensor& t, int64_t b, int64_t i, int64_t j) {
  const int64_t rows = t.dim(-2), cols = t.dim(-1);
  const size_t es = dtype_size(t.dtype());
  const auto* p = static_cast<const char*>(t.raw()) + ((b * rows + i) * cols + j) * es;
  return std::string(p, es);
}

MaxTextArraySpec spec_of(MaxTextReshape reshape, const Shape& kiln_shape) {
  MaxTextArraySpec s;
  s.path = "decoder/layers/mlp/wo/kernel";
  s.kiln_param = "mlp/down_proj/weight";
  s.transform.reshape = reshape;
  s.kiln_shape = kiln_shape;
  s.maxtext_shape = kiln_shape;
  std::swap(s.maxtext_shape[s.maxtext_shape.size() - 2], s.maxtext_shape.back());
  return s;
}

TEST(MaxTextTranspose, MatchesElementwiseTransposeAndInvertsBitwise) {
  const std::vector<std::pair<int64_t, int64_t>> sizes = {{1, 1},   {3, 5},   {8, 8},     {16, 24},
                                                          {64, 64}, {70, 37}, {129, 200}, {256, 8}};
  int checked = 0;
  for (DType dtype : {DType::BF16, DType::F32, DType::I8, DType::F64})
    for (const auto& [rows, cols] : sizes)
      for (bool experts : {false, true}) {
        const Shape shape = experts ? Shape{3, rows, cols} : Shape{rows, cols};
        const MaxTextArraySpec spec = spec_of(
            experts ? MaxTextReshape::kExpertsTransposed : MaxTextReshape::kTransposed, shape);
        const Tensor in = patterned(dtype, shape, static_cast<uint32_t>(rows * 1000 + cols));
        const Tensor out = MaxTextTree::to_maxtext(spec, in).array.contiguous();
        ASSERT_EQ(out.shape(), spec.maxtext_shape);
        const int64_t batch = experts ? 3 : 1;
        int64_t wrong = 0;
        for (int64_t b = 0; b < batch; ++b)
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < cols; ++j)
              wrong += element(out, b, j, i) != element(in, b, i, j);
        EXPECT_EQ(wrong, 0) << dtype_name(dtype) << " [" << rows << ", " << cols << "]"
                            << (experts ? " x3 experts" : "") << ": " << wrong
                            << " misplaced elements";
        const Tensor back = MaxTextTree::from_maxtext(spec, out, Tensor()).contiguous();
        ASSERT_EQ(back.shape(), shape);
        EXPECT_EQ(std::memcmp(back.raw(), in.raw(), in.nbytes()), 0)
            << dtype_name(dtype) << " [" << rows << ", " << cols << "]: round trip differs";
        ++checked;
      }
  EXPECT_EQ(checked, 64);
}

}  // namespace
}  // namespace kiln
