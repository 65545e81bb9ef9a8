#include "kiln/ops/embedding.h"

#include <gtest/gtest.h>

#include <vector>

#include "kiln/core/error.h"

namespace kiln::ops {
namespace {

TEST(Embedding, LooksUpConvertsScalesAndChecksIds) {
  const uint16_t table[] = {f32_to_bf16(1.0f), f32_to_bf16(2.0f), f32_to_bf16(-3.0f),
                            f32_to_bf16(0.5f)};  // [2, 2] bf16
  const int32_t ids[] = {1, 0};
  float out[4];
  embedding_lookup(table, DType::BF16, 2, 2, ids, 2, 2.0f, out);
  EXPECT_EQ(std::vector<float>(out, out + 4), (std::vector<float>{-6, 1, 2, 4}));
  const int32_t bad[] = {2};
  EXPECT_THROW(embedding_lookup(table, DType::BF16, 2, 2, bad, 1, 1.0f, out), Error);
}

}  // namespace
}  // namespace kiln::ops
