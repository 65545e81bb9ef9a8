// Tensor: a strided view of typed elements in an owning buffer or a memory-mapped file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "kiln/core/dtype.h"

namespace kiln {

using Shape = std::vector<int64_t>;

// The bytes a tensor views. Owning (heap) or borrowed from a shared owner (an mmap).
class Storage {
 public:
  // Allocates `bytes` zero-initialized bytes, 64-byte aligned.
  static std::shared_ptr<Storage> allocate(size_t bytes);
  // Wraps memory owned by `owner` (kept alive by this storage); read-only.
  static std::shared_ptr<Storage> borrow(std::shared_ptr<const void> owner, const std::byte* data,
                                         size_t bytes);
  ~Storage();
  const std::byte* data() const { return data_; }
  std::byte* mutable_data();
  size_t size() const { return size_; }
  bool writable() const { return owned_; }

 private:
  Storage() = default;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
  bool owned_ = false;
  std::shared_ptr<const void> owner_;
};

// A tensor is (storage, byte offset, dtype, shape, strides in elements). Block-quantized
// dtypes (core/quant.h) are blocked along the last dimension, which must be a whole number
// of blocks with stride 1; views may slice other dimensions, or the last at block bounds. Copying a
// Tensor copies the view, not the data. Views of mmap-backed storage are read-only: mutable_data()
// throws on them. All shape arguments are checked; errors throw kiln::Error.
class Tensor {
 public:
  Tensor() = default;
  // A new zero-filled contiguous tensor.
  static Tensor zeros(DType dtype, Shape shape);
  static Tensor zeros_like(const Tensor& other) { return zeros(other.dtype(), other.shape()); }
  // A contiguous f32 tensor with the given values (numel must match the shape).
  static Tensor from_f32(Shape shape, const std::vector<float>& values);
  // A contiguous view over existing storage at `offset` bytes.
  static Tensor view_of(std::shared_ptr<Storage> storage, size_t offset, DType dtype, Shape shape);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  // Size of dimension `d`; negative d counts from the end.
  int64_t dim(int d) const;
  int64_t numel() const;
  size_t nbytes() const { return dtype_nbytes(dtype_, numel()); }
  bool is_contiguous() const;
  bool writable() const { return storage_ && storage_->writable(); }
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  size_t offset() const { return offset_; }

  const void* raw() const { return storage_->data() + offset_; }
  void* mutable_raw() { return storage_->mutable_data() + offset_; }
  template <typename T>
  const T* data() const {
    return reinterpret_cast<const T*>(raw());
  }
  template <typename T>
  T* mutable_data() {
    return reinterpret_cast<T*>(mutable_raw());
  }

  // Same data, new shape (contiguous tensors only; one dimension may be -1).
  Tensor reshape(Shape shape) const;
  // Elements [start, end) of dimension d (a view).
  Tensor slice(int d, int64_t start, int64_t end) const;
  // Index `index` of dimension d, which is removed (a view).
  Tensor select(int d, int64_t index) const;
  // Swaps two dimensions (a view).
  Tensor transpose(int d0, int d1) const;
  // A contiguous copy (or *this when already contiguous and `force_copy` is false).
  Tensor contiguous(bool force_copy = false) const;
  // A contiguous copy converted to `dtype` (float <-> float, int <-> int, int -> float).
  Tensor to(DType dtype) const;
  // Reads element `flat` (row-major index over the shape) as double, any dtype.
  double item_as_double(int64_t flat) const;

  std::string shape_string() const;  // "[2, 20, 64]"

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
  DType dtype_ = DType::F32;
  Shape shape_;
  Shape strides_;
};

std::string shape_to_string(const Shape& shape);
int64_t shape_numel(const Shape& shape);

// The shape a block-quantized tensor's bytes have as a U8 array: `shape` with its last
// dimension (a whole number of blocks) replaced by its byte count; `shape` for other dtypes.
Shape byte_shape(DType dtype, const Shape& shape);

// Converts `count` elements of `src` (dtype `src_type`) to f32 into `dst` (block-quantized
// dtypes: dequantized; `count` whole blocks).
void convert_to_f32(const void* src, DType src_type, float* dst, size_t count);

}  // namespace kiln
