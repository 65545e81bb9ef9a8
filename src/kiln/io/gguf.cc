#include "kiln/io/gguf.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>

#include "kiln/core/error.h"

namespace kiln {
namespace fs = std::filesystem;
namespace {

constexpr uint64_t kMaxDims = 4;  // GGML_MAX_DIMS

struct TypeTraits {
  const char* name;
  int64_t block;  // elements per block; 0: not read by Kiln
  int64_t bytes;  // bytes per block
};

// Indexed by the ggml type number; names of the types Kiln does not read are kept for errors.
TypeTraits traits_of(uint32_t type) {
  switch (type) {
    case 0:
      return {"F32", 1, 4};
    case 1:
      return {"F16", 1, 2};
    case 2:
      return {"Q4_0", 32, 18};
    case 3:
      return {"Q4_1", 32, 20};
    case 6:
      return {"Q5_0", 32, 22};
    case 7:
      return {"Q5_1", 32, 24};
    case 8:
      return {"Q8_0", 32, 34};
    case 9:
      return {"Q8_1", 0, 0};
    case 10:
      return {"Q2_K", 0, 0};
    case 11:
      return {"Q3_K", 0, 0};
    case 12:
      return {"Q4_K", 256, 144};
    case 13:
      return {"Q5_K", 256, 176};
    case 14:
      return {"Q6_K", 256, 210};
    case 15:
      return {"Q8_K", 0, 0};
    case 16:
      return {"IQ2_XXS", 0, 0};
    case 17:
      return {"IQ2_XS", 0, 0};
    case 18:
      return {"IQ3_XXS", 0, 0};
    case 19:
      return {"IQ1_S", 0, 0};
    case 20:
      return {"IQ4_NL", 0, 0};
    case 21:
      return {"IQ3_S", 0, 0};
    case 22:
      return {"IQ2_S", 0, 0};
    case 23:
      return {"IQ4_XS", 0, 0};
    case 24:
      return {"I8", 1, 1};
    case 25:
      return {"I16", 1, 2};
    case 26:
      return {"I32", 1, 4};
    case 27:
      return {"I64", 1, 8};
    case 28:
      return {"F64", 1, 8};
    case 29:
      return {"IQ1_M", 0, 0};
    case 30:
      return {"BF16", 1, 2};
    case 34:
      return {"TQ1_0", 0, 0};
    case 35:
      return {"TQ2_0", 0, 0};
    case 39:
      return {"MXFP4", 0, 0};
    default:
      return {nullptr, 0, 0};
  }
}

std::string supported_list() {
  std::string out;
  for (uint32_t t = 0; t < 64; ++t)
    if (traits_of(t).block > 0) out += (out.empty() ? "" : ", ") + std::string(traits_of(t).name);
  return out;
}

// Reads little-endian values from the mapped bytes, each bounded by the file's end; errors
// name the file and what was being read.
class Cursor {
 public:
  Cursor(const std::byte* data, uint64_t size, const std::string& path)
      : data_(data), size_(size), path_(path) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  template <typename T>
  T read(const std::string& what) {
    check(left() >= sizeof(T), path_ + ": truncated at byte " + std::to_string(pos_) +
                                   " (file of " + std::to_string(size_) + " bytes) reading " +
                                   what);
    T value;
    std::memcpy(&value, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

  std::string read_string(const std::string& what) {
    const uint64_t length = read<uint64_t>("the length of " + what);
    check(length <= left(), path_ + ": " + what + ": string length " + std::to_string(length) +
                                " at byte " + std::to_string(pos_ - 8) +
                                " runs past the end of the file (" + std::to_string(left()) +
                                " bytes left)");
    std::string s(reinterpret_cast<const char*>(data_ + pos_), length);
    pos_ += length;
    return s;
  }

 private:
  const std::byte* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& path_;
};

// The smallest encoding of one value of `type` (strings: their 8-byte length), for bounding
// counts by the bytes left; 0 for an unknown type.
uint64_t min_value_bytes(uint32_t type) {
  switch (static_cast<GgufType>(type)) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kBool:
      return 1;
    case GgufType::kU16:
    case GgufType::kI16:
      return 2;
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kF32:
      return 4;
    case GgufType::kString:
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kF64:
      return 8;
    case GgufType::kArray:
      return 12;
  }
  return 0;
}

Json read_scalar(Cursor& in, GgufType type, const std::string& what, const std::string& path) {
  switch (type) {
    case GgufType::kU8:
      return in.read<uint8_t>(what);
    case GgufType::kI8:
      return in.read<int8_t>(what);
    case GgufType::kU16:
      return in.read<uint16_t>(what);
    case GgufType::kI16:
      return in.read<int16_t>(what);
    case GgufType::kU32:
      return in.read<uint32_t>(what);
    case GgufType::kI32:
      return in.read<int32_t>(what);
    case GgufType::kF32:
      return static_cast<double>(in.read<float>(what));
    case GgufType::kU64:
      return in.read<uint64_t>(what);
    case GgufType::kI64:
      return in.read<int64_t>(what);
    case GgufType::kF64:
      return in.read<double>(what);
    case GgufType::kBool: {
      const uint8_t b = in.read<uint8_t>(what);
      check(b <= 1, path + ": " + what + ": bool value " + std::to_string(b) + " is not 0 or 1");
      return b == 1;
    }
    case GgufType::kString:
      return in.read_string(what);
    case GgufType::kArray:
      break;
  }
  throw Error(path + ": " + what + ": unknown value type " +
              std::to_string(static_cast<uint32_t>(type)));
}

GgufValue read_value(Cursor& in, uint32_t type, const std::string& what, const std::string& path) {
  check(min_value_bytes(type) > 0,
        path + ": " + what + ": unknown value type " + std::to_string(type));
  GgufValue v;
  v.type = static_cast<GgufType>(type);
  if (v.type != GgufType::kArray) {
    v.value = read_scalar(in, v.type, what, path);
    return v;
  }
  const uint32_t element = in.read<uint32_t>(what + " (array element type)");
  check(min_value_bytes(element) > 0 && element != static_cast<uint32_t>(GgufType::kArray),
        path + ": " + what + ": unsupported array element type " + std::to_string(element) +
            (element == 9 ? " (nested arrays)" : ""));
  v.element_type = static_cast<GgufType>(element);
  const uint64_t count = in.read<uint64_t>(what + " (array length)");
  check(count <= in.left() / min_value_bytes(element),
        path + ": " + what + ": array of " + std::to_string(count) + " " +
            gguf_type_name(v.element_type) + " values cannot fit in the " +
            std::to_string(in.left()) + " bytes left in the file");
  v.value = Json::array();
  v.value.get_ref<Json::array_t&>().reserve(count);
  for (uint64_t i = 0; i < count; ++i)
    v.value.push_back(read_scalar(in, v.element_type, what + "[" + std::to_string(i) + "]", path));
  return v;
}

}  // namespace

std::string gguf_type_name(GgufType type) {
  switch (type) {
    case GgufType::kU8:
      return "u8";
    case GgufType::kI8:
      return "i8";
    case GgufType::kU16:
      return "u16";
    case GgufType::kI16:
      return "i16";
    case GgufType::kU32:
      return "u32";
    case GgufType::kI32:
      return "i32";
    case GgufType::kF32:
      return "f32";
    case GgufType::kBool:
      return "bool";
    case GgufType::kString:
      return "string";
    case GgufType::kArray:
      return "array";
    case GgufType::kU64:
      return "u64";
    case GgufType::kI64:
      return "i64";
    case GgufType::kF64:
      return "f64";
  }
  return "type " + std::to_string(static_cast<uint32_t>(type));
}

std::string ggml_type_name(uint32_t type) {
  const TypeTraits t = traits_of(type);
  return t.name != nullptr ? t.name : "type " + std::to_string(type);
}

bool ggml_type_supported(uint32_t type) {
  return traits_of(type).block > 0;
}

int64_t ggml_block_size(GgmlType type) {
  return traits_of(static_cast<uint32_t>(type)).block;
}
int64_t ggml_type_size(GgmlType type) {
  return traits_of(static_cast<uint32_t>(type)).bytes;
}
bool ggml_is_quantized(GgmlType type) {
  return ggml_block_size(type) > 1;
}

bool GgufFile::is_gguf_path(const std::string& path) {
  std::error_code ec;
  return path.ends_with(".gguf") && fs::is_regular_file(path, ec);
}

GgufFile GgufFile::open(const std::string& path, Residency residency) {
  GgufFile g;
  g.path_ = path;
  g.file_ = MappedFile::open(path, residency);
  const uint64_t size = g.file_->size();
  g.storage_ = Storage::borrow(g.file_, g.file_->data(), size);
  Cursor in(g.file_->data(), size, path);
  check(size >= 4 && std::memcmp(g.file_->data(), "GGUF", 4) == 0,
        path + ": not a GGUF file (no 'GGUF' magic at the start)");
  in.read<uint32_t>("the magic");
  g.version_ = in.read<uint32_t>("the version");
  check(g.version_ != 0x02000000 && g.version_ != 0x03000000,
        path + ": a big-endian GGUF file; Kiln reads little-endian GGUF only");
  check(g.version_ == 2 || g.version_ == 3, path + ": GGUF version " + std::to_string(g.version_) +
                                                " is not supported (Kiln reads versions 2 and 3)");
  const uint64_t tensor_count = in.read<uint64_t>("the tensor count");
  const uint64_t kv_count = in.read<uint64_t>("the metadata count");
  // Each key/value takes at least 13 bytes (key length, type, one byte), each tensor entry 28
  // (name length, dimension count, one dimension, type, offset).
  check(kv_count <= in.left() / 13, path + ": metadata count " + std::to_string(kv_count) +
                                        " cannot fit in a file of " + std::to_string(size) +
                                        " bytes");
  check(tensor_count <= in.left() / 28, path + ": tensor count " + std::to_string(tensor_count) +
                                            " cannot fit in a file of " + std::to_string(size) +
                                            " bytes");

  for (uint64_t i = 0; i < kv_count; ++i) {
    const std::string what = "metadata entry " + std::to_string(i);
    std::string key = in.read_string("the key of " + what);
    check(!key.empty(), path + ": " + what + " has an empty key");
    const std::string where = "metadata key '" + key + "'";
    const uint32_t type = in.read<uint32_t>("the type of " + where);
    GgufValue value = read_value(in, type, where, path);
    check(g.metadata_.emplace(key, std::move(value)).second,
          path + ": " + where + " appears twice");
    g.keys_.push_back(std::move(key));
  }

  if (const GgufValue* a = g.find("general.alignment")) {
    check(
        a->type == GgufType::kU32,
        path + ": metadata key 'general.alignment' must be a u32, not " + gguf_type_name(a->type));
    const uint64_t alignment = a->value.get<uint64_t>();
    check(alignment != 0 && (alignment & (alignment - 1)) == 0,
          path + ": metadata key 'general.alignment' is " + std::to_string(alignment) +
              ", not a power of two");
    g.alignment_ = alignment;
  }

  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensorInfo t;
    t.name = in.read_string("the name of tensor " + std::to_string(i));
    const std::string where = path + ": tensor '" + t.name + "'";
    check(!t.name.empty(), path + ": tensor " + std::to_string(i) + " has an empty name");
    const uint32_t n_dims = in.read<uint32_t>("the dimension count of tensor '" + t.name + "'");
    check(n_dims >= 1 && n_dims <= kMaxDims,
          where + ": " + std::to_string(n_dims) + " dimensions (GGUF allows 1 to 4)");
    for (uint32_t d = 0; d < n_dims; ++d)
      t.dims.push_back(in.read<uint64_t>("the dimensions of tensor '" + t.name + "'"));
    const uint32_t type = in.read<uint32_t>("the type of tensor '" + t.name + "'");
    const TypeTraits traits = traits_of(type);
    check(traits.name != nullptr, where + ": unknown ggml type " + std::to_string(type));
    check(traits.block > 0, where + ": type " + std::string(traits.name) +
                                " is not supported (Kiln reads " + supported_list() + ")");
    t.type = static_cast<GgmlType>(type);
    t.offset = in.read<uint64_t>("the offset of tensor '" + t.name + "'");
    // Size: rows of dims[0] elements, whole blocks each; every product is bounded by the file.
    check(t.dims[0] % static_cast<uint64_t>(traits.block) == 0,
          where + ": row length " + std::to_string(t.dims[0]) + " is not a multiple of the " +
              traits.name + " block size " + std::to_string(traits.block));
    uint64_t bytes =
        t.dims[0] / static_cast<uint64_t>(traits.block) * static_cast<uint64_t>(traits.bytes);
    bool overflow = t.dims[0] > (uint64_t{1} << 62) || bytes > size;
    for (size_t d = 1; d < t.dims.size() && !overflow; ++d) {
      if (t.dims[d] > (uint64_t{1} << 62) || (t.dims[d] != 0 && bytes > size / t.dims[d]))
        overflow = true;
      else
        bytes *= t.dims[d];
    }
    std::string dims_text;
    for (uint64_t d : t.dims) dims_text += (dims_text.empty() ? "" : ", ") + std::to_string(d);
    check(!overflow, where + ": dimensions [" + dims_text + "] of " + traits.name +
                         " need more bytes than the file's " + std::to_string(size));
    t.nbytes = bytes;
    for (size_t d = t.dims.size(); d-- > 0;) t.shape.push_back(static_cast<int64_t>(t.dims[d]));
    check(g.tensor_index_.emplace(t.name, g.tensors_.size()).second, where + ": appears twice");
    g.tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment.
  const uint64_t header_end = in.pos();
  const uint64_t data_start = (header_end + g.alignment_ - 1) / g.alignment_ * g.alignment_;
  check(data_start <= size || g.tensors_.empty(),
        path + ": truncated: the data section would start at byte " + std::to_string(data_start) +
            " of a file of " + std::to_string(size) + " bytes");
  const uint64_t data_size = data_start <= size ? size - data_start : 0;
  std::vector<const GgufTensorInfo*> by_offset;
  for (GgufTensorInfo& t : g.tensors_) {
    const std::string where = path + ": tensor '" + t.name + "'";
    check(t.offset % g.alignment_ == 0, where + ": offset " + std::to_string(t.offset) +
                                            " is not a multiple of the alignment " +
                                            std::to_string(g.alignment_));
    check(t.offset <= data_size && t.nbytes <= data_size - t.offset,
          where + ": bytes [" + std::to_string(t.offset) + ", " +
              std::to_string(t.offset + t.nbytes) + ") of the data section run past its end (" +
              std::to_string(data_size) + " bytes; file truncated?)");
    t.offset += data_start;
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
  const GgufTensorInfo* furthest = nullptr;
  for (const GgufTensorInfo* t : by_offset) {
    if (t->nbytes == 0) continue;
    if (furthest != nullptr)
      check(t->offset >= furthest->offset + furthest->nbytes,
            path + ": tensors '" + furthest->name + "' and '" + t->name +
                "' have overlapping byte ranges");
    if (furthest == nullptr || t->offset + t->nbytes > furthest->offset + furthest->nbytes)
      furthest = t;
  }
  return g;
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

namespace {
bool is_integer_type(GgufType t) {
  return t == GgufType::kU8 || t == GgufType::kI8 || t == GgufType::kU16 || t == GgufType::kI16 ||
         t == GgufType::kU32 || t == GgufType::kI32 || t == GgufType::kU64 || t == GgufType::kI64;
}
}  // namespace

std::optional<int64_t> GgufFile::find_int(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return std::nullopt;
  check(is_integer_type(v->type),
        path_ + ": metadata key '" + key + "' must be an integer, not " + gguf_type_name(v->type));
  check(!v->value.is_number_unsigned() ||
            v->value.get<uint64_t>() <= uint64_t(std::numeric_limits<int64_t>::max()),
        path_ + ": metadata key '" + key + "' is too large");
  return v->value.get<int64_t>();
}

std::optional<double> GgufFile::find_float(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return std::nullopt;
  check(v->type == GgufType::kF32 || v->type == GgufType::kF64 || is_integer_type(v->type),
        path_ + ": metadata key '" + key + "' must be a number, not " + gguf_type_name(v->type));
  return v->value.get<double>();
}

int64_t GgufFile::get_int(const std::string& key) const {
  auto v = find_int(key);
  check(v.has_value(), path_ + ": missing metadata key '" + key + "'");
  return *v;
}

double GgufFile::get_float(const std::string& key) const {
  auto v = find_float(key);
  check(v.has_value(), path_ + ": missing metadata key '" + key + "'");
  return *v;
}

bool GgufFile::get_bool(const std::string& key) const {
  const GgufValue* v = find(key);
  check(v != nullptr, path_ + ": missing metadata key '" + key + "'");
  check(v->type == GgufType::kBool,
        path_ + ": metadata key '" + key + "' must be a bool, not " + gguf_type_name(v->type));
  return v->value.get<bool>();
}

std::string GgufFile::get_string(const std::string& key) const {
  const GgufValue* v = find(key);
  check(v != nullptr, path_ + ": missing metadata key '" + key + "'");
  check(v->type == GgufType::kString,
        path_ + ": metadata key '" + key + "' must be a string, not " + gguf_type_name(v->type));
  return v->value.get<std::string>();
}

const Json& GgufFile::get_array(const std::string& key) const {
  const GgufValue* v = find(key);
  check(v != nullptr, path_ + ": missing metadata key '" + key + "'");
  check(v->type == GgufType::kArray,
        path_ + ": metadata key '" + key + "' must be an array, not " + gguf_type_name(v->type));
  return v->value;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensorInfo& GgufFile::tensor_info(const std::string& name) const {
  const GgufTensorInfo* t = find_tensor(name);
  check(t != nullptr, path_ + ": no tensor named '" + name + "'");
  return *t;
}

const std::byte* GgufFile::tensor_data(const GgufTensorInfo& info) const {
  return file_->data() + info.offset;
}

DType GgufFile::read_dtype(const GgufTensorInfo& info, DType dequantized) {
  switch (info.type) {
    case GgmlType::kF32:
      return DType::F32;
    case GgmlType::kF16:
      return DType::F16;
    case GgmlType::kBF16:
      return DType::BF16;
    case GgmlType::kI8:
      return DType::I8;
    case GgmlType::kI16:
      return DType::I16;
    case GgmlType::kI32:
      return DType::I32;
    case GgmlType::kI64:
      return DType::I64;
    case GgmlType::kF64:
      return DType::F64;
    default:
      return dequantized;
  }
}

Tensor GgufFile::read(const std::string& name, DType dequantized) const {
  const GgufTensorInfo& info = tensor_info(name);
  check(dequantized == DType::F32 || dequantized == DType::BF16,
        path_ + ": tensor '" + name + "': quantized tensors dequantize to F32 or BF16 only");
  const DType dtype = read_dtype(info, dequantized);
  if (!ggml_is_quantized(info.type)) {
    if (info.offset % dtype_size(dtype) == 0)
      return Tensor::view_of(storage_, info.offset, dtype, info.shape);
    Tensor out = Tensor::zeros(dtype, info.shape);
    std::memcpy(out.mutable_raw(), tensor_data(info), info.nbytes);
    return out;
  }
  Tensor out = Tensor::zeros(dtype, info.shape);
  const int64_t row = static_cast<int64_t>(info.dims[0]);
  const int64_t rows = row == 0 ? 0 : out.numel() / row;
  const int64_t row_bytes = row / ggml_block_size(info.type) * ggml_type_size(info.type);
  if (dtype == DType::F32) {
    for (int64_t r = 0; r < rows; ++r)
      ggml_dequantize(info.type, tensor_data(info) + r * row_bytes, row,
                      out.mutable_data<float>() + r * row);
    return out;
  }
  std::vector<float> buffer(static_cast<size_t>(row));
  uint16_t* dst = out.mutable_data<uint16_t>();
  for (int64_t r = 0; r < rows; ++r) {
    ggml_dequantize(info.type, tensor_data(info) + r * row_bytes, row, buffer.data());
    for (int64_t i = 0; i < row; ++i)
      dst[r * row + i] = f32_to_bf16(buffer[static_cast<size_t>(i)]);
  }
  return out;
}

}  // namespace kiln
