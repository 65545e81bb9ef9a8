// Workspace: grow-only memory for the activations of forward passes, reused from call to
// call so that a steady decode loop allocates nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "kiln/core/tensor.h"

namespace kiln {

// Buffers are taken in stack order: a Scope gives back, when it ends, every buffer taken
// since it began, and reset() gives back all of them. Memory comes from blocks that never
// move while they hold buffers. A pass that outgrows the blocks adds one; the next reset()
// then merges the blocks into one of the peak size, so that every later pass of the same
// (or smaller) shapes takes all its buffers from that block without allocating.
// Not thread-safe: one workspace per concurrent forward pass.
class Workspace {
 private:
  // Where the next buffer goes, and the bytes held by live buffers.
  struct Position {
    size_t block = 0;
    size_t offset = 0;
    size_t in_use = 0;
  };

 public:
  Workspace() = default;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  // `count` elements of T, 64-byte aligned, contents unspecified; valid until the enclosing
  // Scope ends or reset().
  template <typename T>
  T* take(int64_t count) {
    return static_cast<T*>(take_bytes(static_cast<size_t>(count) * sizeof(T)));
  }
  // Gives back every buffer (see the class comment).
  void reset();
  // Bytes of memory held.
  size_t capacity() const;
  // A contiguous f32 tensor `shape` over `data`, memory returned by take() (the view keeps
  // it alive). Building a Tensor allocates its shape: meant for observers, not the steady
  // path. Throws Error when `data` is not workspace memory.
  Tensor view(const float* data, Shape shape) const;

  // Gives back, when it ends, every buffer taken since it began.
  class Scope {
   public:
    explicit Scope(Workspace& workspace) : workspace_(workspace), mark_(workspace.top_) {}
    ~Scope() { workspace_.top_ = mark_; }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    Workspace& workspace_;
    Position mark_;
  };

 private:
  void* take_bytes(size_t bytes);

  std::vector<std::shared_ptr<Storage>> blocks_;
  Position top_;
  size_t peak_ = 0;  // most bytes held by live buffers at once, over the workspace's life
};

}  // namespace kiln
