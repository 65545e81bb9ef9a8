// GGUF files (llama.cpp's single-file model format, versions 2 and 3): the metadata
// key/values of every GGUF value type and the tensor directory, read from a mapped file and
// checked before any tensor is touched. Quantized tensors (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
// Q4_K, Q5_K, Q6_K) are dequantized on read, one tensor at a time, exactly as ggml defines
// the block formats (or kept in Kiln's block formats: gguf_direct.h); F32, F16, BF16 and the
// integer types are zero-copy views.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kiln/core/mapped_file.h"
#include "kiln/core/tensor.h"
#include "kiln/io/json.h"

namespace kiln {

// GGUF metadata value types (the numbers the file stores).
enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};
// "u32", "string", "array[string]"-style name of a value type.
std::string gguf_type_name(GgufType type);

// One metadata value. `value` holds it as JSON: integers as integers, floats as doubles,
// bools, strings (bytes as stored), arrays as JSON arrays of their element values.
struct GgufValue {
  GgufType type = GgufType::kU8;
  GgufType element_type = GgufType::kU8;  // arrays only
  Json value;
};

// ggml tensor types (the numbers the file stores). Only the ones Kiln reads are named here;
// ggml_type_name() knows the names of the others for error messages.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
};
// "Q4_K", "BF16", ... or "type N" for numbers ggml does not define.
std::string ggml_type_name(uint32_t type);
// True for the types Kiln reads (listed above).
bool ggml_type_supported(uint32_t type);
// Elements per block and bytes per block (1 and the element size for plain types).
int64_t ggml_block_size(GgmlType type);
int64_t ggml_type_size(GgmlType type);
bool ggml_is_quantized(GgmlType type);

// Dequantizes `count` elements (a multiple of the block size) of `type` from `blocks` into
// `out`, with ggml's arithmetic (f32, no fused multiply-add), so values equal ggml's and
// gguf-py's dequantization bit for bit. Plain float types are converted.
void ggml_dequantize(GgmlType type, const std::byte* blocks, int64_t count, float* out);

struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::kF32;
  std::vector<uint64_t> dims;  // GGUF order: dims[0] is the contiguous (innermost) one
  Shape shape;                 // PyTorch order (dims reversed): [rows, ..., dims[0]]
  uint64_t offset = 0;         // in the file
  uint64_t nbytes = 0;
};

class GgufFile {
 public:
  // Opens and checks `path`: magic, version (2 or 3), every key/value and tensor entry
  // (lengths, counts and sizes bounded by the file, known types, offsets aligned to
  // general.alignment and inside the data section, no overlaps, no duplicate keys or names).
  // Throws Error naming the file and the key or tensor at fault.
  static GgufFile open(const std::string& path, Residency residency = Residency::kMapped);
  // True when `path` is a regular file whose name ends in .gguf.
  static bool is_gguf_path(const std::string& path);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }

  // Metadata in file order.
  const std::vector<std::string>& keys() const { return keys_; }
  const GgufValue* find(const std::string& key) const;
  bool has(const std::string& key) const { return find(key) != nullptr; }
  // Typed getters: throw Error("<file>: metadata key '<key>' ...") when missing or of
  // another kind. Integers accept any integer type (checked for range), floats any number.
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  std::string get_string(const std::string& key) const;
  const Json& get_array(const std::string& key) const;
  std::optional<int64_t> find_int(const std::string& key) const;
  std::optional<double> find_float(const std::string& key) const;

  // Tensors in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  const GgufTensorInfo& tensor_info(const std::string& name) const;  // throws when absent
  // The raw bytes of a tensor (blocks for quantized types).
  const std::byte* tensor_data(const GgufTensorInfo& info) const;
  // The file's bytes (mapped or read into memory) that tensor views share.
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  // The DType read() returns for `info` given `dequantized` (the dtype quantized tensors
  // become: F32 keeps ggml's values exactly, BF16 rounds them).
  static DType read_dtype(const GgufTensorInfo& info, DType dequantized);
  // The tensor in PyTorch shape: a read-only view of the mapping for F32, F16, BF16 and
  // integer types (a copy when misaligned), else a new tensor dequantized into `dequantized`
  // (F32 or BF16), one row at a time.
  Tensor read(const std::string& name, DType dequantized = DType::F32) const;

 private:
  std::string path_;
  std::shared_ptr<MappedFile> file_;
  std::shared_ptr<Storage> storage_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::vector<std::string> keys_;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace kiln
