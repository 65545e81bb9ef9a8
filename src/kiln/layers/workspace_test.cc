// The workspace: stack-ordered buffers, growth by blocks, merging at reset, views.
#include "kiln/layers/workspace.h"

#include <gtest/gtest.h>

#include <cstdint>

#include "kiln/core/error.h"

namespace kiln {
namespace {

TEST(Workspace, ScopesGiveBackTheirBuffersInStackOrder) {
  Workspace workspace;
  float* kept = workspace.take<float>(10);
  float* inner = nullptr;
  {
    Workspace::Scope scope(workspace);
    inner = workspace.take<float>(100);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(inner) % 64, 0u);
    EXPECT_NE(inner, kept);
  }
  Workspace::Scope scope(workspace);
  EXPECT_EQ(workspace.take<float>(100), inner);  // the same memory again
}

TEST(Workspace, ResetMergesBlocksSoThatTheSamePassFitsInOne) {
  Workspace workspace;
  const int64_t big = int64_t{1} << 20;  // 4 MiB of floats: more than the first block
  float* first = workspace.take<float>(16);
  float* second = workspace.take<float>(big);
  first[0] = 1.0f;
  second[big - 1] = 2.0f;  // both stay usable while the workspace grows
  EXPECT_EQ(first[0], 1.0f);
  const size_t grown = workspace.capacity();
  workspace.reset();
  const size_t merged = workspace.capacity();
  EXPECT_LT(merged, grown);
  workspace.take<float>(16);
  workspace.take<float>(big);
  EXPECT_EQ(workspace.capacity(), merged);  // no new block
  std::cout << "workspace: grown to " << grown << " bytes, merged into " << merged << std::endl;
}

TEST(Workspace, ViewsSeeWorkspaceMemoryOnly) {
  Workspace workspace;
  float* data = workspace.take<float>(6);
  for (int i = 0; i < 6; ++i) data[i] = static_cast<float>(i);
  const Tensor view = workspace.view(data + 2, {2, 2});
  EXPECT_EQ(view.shape(), (Shape{2, 2}));
  EXPECT_EQ(view.item_as_double(3), 5.0);
  const float outside = 0.0f;
  EXPECT_THROW(workspace.view(&outside, {1}), Error);
}

}  // namespace
}  // namespace kiln
