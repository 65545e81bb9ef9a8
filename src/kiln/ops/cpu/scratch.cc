// Per-thread grow-only scratch buffers.
#include "kiln/ops/cpu/scratch.h"

#include <cstdlib>
#include <new>

namespace kiln::ops::cpu {

namespace {
struct Buffer {
  void* data = nullptr;
  size_t bytes = 0;
  ~Buffer() { std::free(data); }
};
}  // namespace

void* thread_scratch(ScratchSlot slot, size_t bytes) {
  thread_local Buffer buffers[static_cast<int>(ScratchSlot::kCount)];
  Buffer& buffer = buffers[static_cast<int>(slot)];
  if (buffer.bytes < bytes) {
    std::free(buffer.data);
    const size_t rounded = (bytes + 63) / 64 * 64;
    buffer.data = std::aligned_alloc(64, rounded);
    if (!buffer.data) throw std::bad_alloc();
    buffer.bytes = rounded;
  }
  return buffer.data;
}

}  // namespace kiln::ops::cpu
