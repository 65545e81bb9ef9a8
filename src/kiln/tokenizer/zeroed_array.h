// Zero-filled fixed-size arrays for the tokenizer's large load-time tables and buffers. Big
// ones come straight from mmap with transparent huge pages: every 4 KiB page fault costs
// microseconds (far more on a VM), and a large tokenizer's tables span tens of megabytes.
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>

namespace kiln::tok {

// `bytes` zero bytes (nullptr when `bytes` is 0); pages are touched only when written.
// Release with release_zeroed(data, bytes). Throws std::bad_alloc.
void* allocate_zeroed(size_t bytes);
void release_zeroed(void* data, size_t bytes);

// A fixed-size array of `T` whose elements start as all-zero bytes (so `T` must be trivially
// copyable and read all-zero as its "empty" value). Move-only.
template <class T>
class ZeroedArray {
  static_assert(std::is_trivially_copyable_v<T>);

 public:
  ZeroedArray() = default;
  explicit ZeroedArray(size_t size)
      : data_(static_cast<T*>(allocate_zeroed(size * sizeof(T)))), size_(size) {}
  ~ZeroedArray() { release_zeroed(data_, size_ * sizeof(T)); }
  ZeroedArray(ZeroedArray&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  ZeroedArray& operator=(ZeroedArray&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    return *this;
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace kiln::tok
