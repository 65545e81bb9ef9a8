#include "kiln/core/tensor.h"

#include <cstdlib>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/core/quant.h"

namespace kiln {

std::shared_ptr<Storage> Storage::allocate(size_t bytes) {
  auto storage = std::shared_ptr<Storage>(new Storage());
  size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  void* p = std::aligned_alloc(64, rounded);
  if (p == nullptr) throw Error("out of memory allocating " + std::to_string(bytes) + " bytes");
  std::memset(p, 0, rounded);
  storage->data_ = static_cast<std::byte*>(p);
  storage->size_ = bytes;
  storage->owned_ = true;
  return storage;
}

std::shared_ptr<Storage> Storage::borrow(std::shared_ptr<const void> owner, const std::byte* data,
                                         size_t bytes) {
  auto storage = std::shared_ptr<Storage>(new Storage());
  storage->data_ = const_cast<std::byte*>(data);
  storage->size_ = bytes;
  storage->owned_ = false;
  storage->owner_ = std::move(owner);
  return storage;
}

Storage::~Storage() {
  if (owned_) std::free(data_);
}

std::byte* Storage::mutable_data() {
  if (!owned_) throw Error("tensor storage is read-only (memory-mapped)");
  return data_;
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_to_string(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

static Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t stride = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= shape[i];
  }
  return strides;
}

Shape byte_shape(DType dtype, const Shape& shape) {
  if (!is_quantized(dtype)) return shape;
  Shape bytes = shape;
  bytes.back() = static_cast<int64_t>(dtype_nbytes(dtype, shape.back()));
  return bytes;
}

namespace {
// Block-quantized tensors need a last dimension of whole blocks.
void check_blocked_shape(DType dtype, const Shape& shape) {
  if (!is_quantized(dtype)) return;
  check(!shape.empty() && shape.back() % dtype_block(dtype) == 0,
        std::string(dtype_name(dtype)) + " tensor of shape " + shape_to_string(shape) +
            ": the last dimension must be a multiple of its block of " +
            std::to_string(dtype_block(dtype)));
}
// Bytes from the first element of a view to element `elements` (in elements along the
// layout: a whole number of blocks for quantized dtypes).
size_t element_bytes(DType dtype, int64_t elements) {
  return dtype_nbytes(dtype, elements);
}
}  // namespace

Tensor Tensor::view_of(std::shared_ptr<Storage> storage, size_t offset, DType dtype, Shape shape) {
  for (int64_t d : shape) check(d >= 0, "negative dimension in shape " + shape_to_string(shape));
  check_blocked_shape(dtype, shape);
  size_t bytes = dtype_nbytes(dtype, shape_numel(shape));
  check(offset + bytes <= storage->size(),
        "tensor view " + shape_to_string(shape) + " extends past its storage");
  Tensor t;
  t.storage_ = std::move(storage);
  t.offset_ = offset;
  t.dtype_ = dtype;
  t.strides_ = contiguous_strides(shape);
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::zeros(DType dtype, Shape shape) {
  for (int64_t d : shape) check(d >= 0, "negative dimension in shape " + shape_to_string(shape));
  check_blocked_shape(dtype, shape);
  size_t bytes = dtype_nbytes(dtype, shape_numel(shape));
  return view_of(Storage::allocate(bytes), 0, dtype, std::move(shape));
}

Tensor Tensor::from_f32(Shape shape, const std::vector<float>& values) {
  check(
      shape_numel(shape) == static_cast<int64_t>(values.size()),
      "from_f32: " + std::to_string(values.size()) + " values for shape " + shape_to_string(shape));
  Tensor t = zeros(DType::F32, std::move(shape));
  if (!values.empty()) std::memcpy(t.mutable_raw(), values.data(), values.size() * sizeof(float));
  return t;
}

int64_t Tensor::dim(int d) const {
  int n = ndim();
  if (d < 0) d += n;
  if (d < 0 || d >= n)
    throw Error("dimension " + std::to_string(d) + " out of range for shape " + shape_string());
  return shape_[d];
}

int64_t Tensor::numel() const {
  return shape_numel(shape_);
}

bool Tensor::is_contiguous() const {
  return strides_ == contiguous_strides(shape_);
}

std::string Tensor::shape_string() const {
  return shape_to_string(shape_);
}

Tensor Tensor::reshape(Shape shape) const {
  check(is_contiguous(), "reshape of a non-contiguous tensor " + shape_string());
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      check(infer < 0, "reshape: more than one -1 in " + shape_to_string(shape));
      infer = static_cast<int>(i);
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    check(known > 0 && numel() % known == 0,
          "reshape: cannot infer -1 in " + shape_to_string(shape) + " from " + shape_string());
    shape[infer] = numel() / known;
  }
  check(shape_numel(shape) == numel(),
        "reshape: " + shape_string() + " cannot become " + shape_to_string(shape));
  check_blocked_shape(dtype_, shape);
  Tensor t = *this;
  t.strides_ = contiguous_strides(shape);
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::slice(int d, int64_t start, int64_t end) const {
  int n = ndim();
  if (d < 0) d += n;
  check(d >= 0 && d < n, "slice: bad dimension for " + shape_string());
  check(0 <= start && start <= end && end <= shape_[d],
        "slice [" + std::to_string(start) + ", " + std::to_string(end) + ") out of range for " +
            shape_string() + " dimension " + std::to_string(d));
  if (is_quantized(dtype_) && d == n - 1)
    check(start % dtype_block(dtype_) == 0 && end % dtype_block(dtype_) == 0,
          "slice [" + std::to_string(start) + ", " + std::to_string(end) + ") of " +
              std::string(dtype_name(dtype_)) + " tensor " + shape_string() +
              " cuts a quantization block");
  Tensor t = *this;
  t.offset_ += element_bytes(dtype_, start * strides_[d]);
  t.shape_[d] = end - start;
  return t;
}

Tensor Tensor::select(int d, int64_t index) const {
  int n = ndim();
  if (d < 0) d += n;
  Tensor t = slice(d, index, index + 1);
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

Tensor Tensor::transpose(int d0, int d1) const {
  int n = ndim();
  if (d0 < 0) d0 += n;
  if (d1 < 0) d1 += n;
  check(d0 >= 0 && d0 < n && d1 >= 0 && d1 < n, "transpose: bad dimensions for " + shape_string());
  check(!is_quantized(dtype_) || (d0 != n - 1 && d1 != n - 1) || d0 == d1,
        "transpose of the blocked last dimension of a " + std::string(dtype_name(dtype_)) +
            " tensor " + shape_string());
  Tensor t = *this;
  std::swap(t.shape_[d0], t.shape_[d1]);
  std::swap(t.strides_[d0], t.strides_[d1]);
  return t;
}

namespace {
// Calls fn(src_element_offset, dst_index) for every element in row-major order.
template <typename Fn>
void for_each_offset(const Shape& shape, const Shape& strides, Fn fn) {
  int64_t total = shape_numel(shape);
  if (total == 0) return;
  int n = static_cast<int>(shape.size());
  std::vector<int64_t> index(n, 0);
  int64_t offset = 0;
  for (int64_t i = 0; i < total; ++i) {
    fn(offset, i);
    for (int d = n - 1; d >= 0; --d) {
      if (++index[d] < shape[d]) {
        offset += strides[d];
        break;
      }
      offset -= strides[d] * (shape[d] - 1);
      index[d] = 0;
    }
  }
}
}  // namespace

Tensor Tensor::contiguous(bool force_copy) const {
  if (is_contiguous() && !force_copy) return *this;
  Tensor out = zeros(dtype_, shape_);
  const size_t es = is_quantized(dtype_) ? 0 : dtype_size(dtype_);
  const std::byte* src = static_cast<const std::byte*>(raw());
  std::byte* dst = static_cast<std::byte*>(out.mutable_raw());
  if (is_contiguous()) {
    std::memcpy(dst, src, nbytes());
    return out;
  }
  if (is_quantized(dtype_)) {
    // Whole blocks: the last dimension counted in blocks (stride 1 by construction).
    const int64_t block = dtype_block(dtype_);
    const size_t block_bytes = dtype_block_bytes(dtype_);
    Shape blocks = shape_, block_strides = strides_;
    blocks.back() /= block;
    for (size_t d = 0; d + 1 < block_strides.size(); ++d) block_strides[d] /= block;
    for_each_offset(blocks, block_strides, [&](int64_t off, int64_t i) {
      std::memcpy(dst + i * block_bytes, src + off * static_cast<int64_t>(block_bytes),
                  block_bytes);
    });
    return out;
  }
  for_each_offset(shape_, strides_, [&](int64_t off, int64_t i) {
    std::memcpy(dst + i * es, src + off * static_cast<int64_t>(es), es);
  });
  return out;
}

double Tensor::item_as_double(int64_t flat) const {
  check(flat >= 0 && flat < numel(), "item index out of range for " + shape_string());
  int64_t off = 0;
  for (int d = ndim() - 1; d >= 0; --d) {
    off += (flat % shape_[d]) * strides_[d];
    flat /= shape_[d];
  }
  if (is_quantized(dtype_)) {  // dequantize the block holding the element
    const int64_t block = dtype_block(dtype_);
    std::vector<float> values(static_cast<size_t>(block));
    dequantize_row(dtype_,
                   static_cast<const std::byte*>(raw()) + element_bytes(dtype_, off - off % block),
                   values.data(), block);
    return values[static_cast<size_t>(off % block)];
  }
  const std::byte* p = static_cast<const std::byte*>(raw()) + off * dtype_size(dtype_);
  switch (dtype_) {
    case DType::F32:
      return *reinterpret_cast<const float*>(p);
    case DType::F64:
      return *reinterpret_cast<const double*>(p);
    case DType::BF16:
      return bf16_to_f32(*reinterpret_cast<const uint16_t*>(p));
    case DType::F16:
      return f16_to_f32(*reinterpret_cast<const uint16_t*>(p));
    case DType::I64:
      return static_cast<double>(*reinterpret_cast<const int64_t*>(p));
    case DType::I32:
      return *reinterpret_cast<const int32_t*>(p);
    case DType::I16:
      return *reinterpret_cast<const int16_t*>(p);
    case DType::I8:
      return *reinterpret_cast<const int8_t*>(p);
    case DType::U8:
    case DType::BOOL:
      return *reinterpret_cast<const uint8_t*>(p);
    case DType::Q8_0:
    case DType::Q4_1:
    case DType::Q4_1_128:
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K:
    case DType::Q4_0:
      break;  // handled above
  }
  return 0;
}

void convert_to_f32(const void* src, DType src_type, float* dst, size_t count) {
  switch (src_type) {
    case DType::F32:
      std::memcpy(dst, src, count * 4);
      return;
    case DType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < count; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < count; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::Q8_0:
    case DType::Q4_1:
    case DType::Q4_1_128:
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K:
    case DType::Q4_0:
      dequantize_row(src_type, src, dst, static_cast<int64_t>(count));
      return;
    default: {
      Tensor view = Tensor::view_of(Storage::borrow(nullptr, static_cast<const std::byte*>(src),
                                                    count * dtype_size(src_type)),
                                    0, src_type, {static_cast<int64_t>(count)});
      for (size_t i = 0; i < count; ++i) dst[i] = static_cast<float>(view.item_as_double(i));
    }
  }
}

Tensor Tensor::to(DType dtype) const {
  Tensor src = contiguous();
  if (dtype == dtype_) return src.contiguous(true);
  Tensor out = zeros(dtype, shape_);
  size_t n = static_cast<size_t>(numel());
  if (dtype == DType::F32) {
    convert_to_f32(src.raw(), dtype_, out.mutable_data<float>(), n);
    return out;
  }
  if (is_quantized(dtype_)) return src.to(DType::F32).to(dtype);
  if (is_quantized(dtype)) {  // row by row along the blocked last dimension
    const int64_t row = shape_.back();
    std::vector<float> values(static_cast<size_t>(row));
    const size_t row_bytes = dtype_nbytes(dtype, row);
    for (int64_t r = 0; r * row < static_cast<int64_t>(n); ++r) {
      convert_to_f32(static_cast<const std::byte*>(src.raw()) + element_bytes(dtype_, r * row),
                     dtype_, values.data(), static_cast<size_t>(row));
      quantize_row(dtype, values.data(), static_cast<std::byte*>(out.mutable_raw()) + r * row_bytes,
                   row);
    }
    return out;
  }
  // Any -> bf16/f16/f64/ints goes through double/float.
  for (size_t i = 0; i < n; ++i) {
    double v = src.item_as_double(static_cast<int64_t>(i));
    std::byte* p = static_cast<std::byte*>(out.mutable_raw()) + i * dtype_size(dtype);
    switch (dtype) {
      case DType::F32:
        *reinterpret_cast<float*>(p) = static_cast<float>(v);
        break;
      case DType::F64:
        *reinterpret_cast<double*>(p) = v;
        break;
      case DType::BF16:
        *reinterpret_cast<uint16_t*>(p) = f32_to_bf16(static_cast<float>(v));
        break;
      case DType::F16:
        *reinterpret_cast<uint16_t*>(p) = f32_to_f16(static_cast<float>(v));
        break;
      case DType::I64:
        *reinterpret_cast<int64_t*>(p) = static_cast<int64_t>(v);
        break;
      case DType::I32:
        *reinterpret_cast<int32_t*>(p) = static_cast<int32_t>(v);
        break;
      case DType::I16:
        *reinterpret_cast<int16_t*>(p) = static_cast<int16_t>(v);
        break;
      case DType::I8:
        *reinterpret_cast<int8_t*>(p) = static_cast<int8_t>(v);
        break;
      case DType::U8:
      case DType::BOOL:
        *reinterpret_cast<uint8_t*>(p) = static_cast<uint8_t>(v);
        break;
      case DType::Q8_0:
      case DType::Q4_1:
      case DType::Q4_1_128:
      case DType::Q4_K:
      case DType::Q5_K:
      case DType::Q6_K:
      case DType::Q4_0:
        break;  // handled above
    }
  }
  return out;
}

}  // namespace kiln
