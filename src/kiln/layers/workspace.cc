// The workspace's blocks: bump allocation in stack order, merged at reset().
#include "kiln/layers/workspace.h"

#include <algorithm>

#include "kiln/core/error.h"

namespace kiln {

namespace {
constexpr size_t kAlignment = 64;
constexpr size_t kSmallestBlock = size_t{1} << 20;
}  // namespace

void* Workspace::take_bytes(size_t bytes) {
  const size_t rounded = std::max<size_t>(1, (bytes + kAlignment - 1) / kAlignment) * kAlignment;
  auto fits = [&](size_t block, size_t offset) {
    return block < blocks_.size() && offset + rounded <= blocks_[block]->size();
  };
  if (!fits(top_.block, top_.offset)) {
    // Blocks after the current one hold no live buffers: use the next, or replace it and
    // the rest by a block large enough.
    const size_t next = blocks_.empty() ? 0 : top_.block + 1;
    if (!fits(next, 0)) {
      const size_t size = std::max({rounded, capacity(), kSmallestBlock});
      blocks_.resize(next);
      blocks_.push_back(Storage::allocate(size));
    }
    top_.block = next;
    top_.offset = 0;
  }
  std::byte* data = blocks_[top_.block]->mutable_data() + top_.offset;
  top_.offset += rounded;
  top_.in_use += rounded;
  peak_ = std::max(peak_, top_.in_use);
  return data;
}

void Workspace::reset() {
  top_ = {};
  if (blocks_.size() > 1) {
    blocks_.clear();
    blocks_.push_back(Storage::allocate(peak_));
  }
}

size_t Workspace::capacity() const {
  size_t bytes = 0;
  for (const auto& block : blocks_) bytes += block->size();
  return bytes;
}

Tensor Workspace::view(const float* data, Shape shape) const {
  const auto* p = reinterpret_cast<const std::byte*>(data);
  for (const auto& block : blocks_)
    if (p >= block->data() && p < block->data() + block->size())
      return Tensor::view_of(block, static_cast<size_t>(p - block->data()), DType::F32,
                             std::move(shape));
  throw Error("workspace view: the data is not workspace memory");
}

}  // namespace kiln
