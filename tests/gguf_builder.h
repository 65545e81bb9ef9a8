// Writes small GGUF files byte by byte for tests, including malformed ones: every field is
// whatever the test says, nothing is checked.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace kiln::test {

class GgufBuilder {
 public:
  // Raw little-endian pieces.
  static void put_u32(std::string& out, uint32_t v) { out.append(reinterpret_cast<char*>(&v), 4); }
  static void put_u64(std::string& out, uint64_t v) { out.append(reinterpret_cast<char*>(&v), 8); }
  static void put_string(std::string& out, const std::string& s) {
    put_u64(out, s.size());
    out += s;
  }

  // Metadata of the common types (the value bytes follow the type number).
  GgufBuilder& kv_raw(const std::string& key, uint32_t type, const std::string& value_bytes) {
    put_string(kv_, key);
    put_u32(kv_, type);
    kv_ += value_bytes;
    ++kv_count_;
    return *this;
  }
  GgufBuilder& kv_string(const std::string& key, const std::string& value) {
    std::string v;
    put_string(v, value);
    return kv_raw(key, 8, v);
  }
  GgufBuilder& kv_u32(const std::string& key, uint32_t value) {
    std::string v;
    put_u32(v, value);
    return kv_raw(key, 4, v);
  }
  GgufBuilder& kv_f32(const std::string& key, float value) {
    std::string v(reinterpret_cast<char*>(&value), 4);
    return kv_raw(key, 6, v);
  }
  GgufBuilder& kv_bool(const std::string& key, bool value) {
    return kv_raw(key, 7, std::string(1, value ? '\1' : '\0'));
  }
  GgufBuilder& kv_strings(const std::string& key, const std::vector<std::string>& values) {
    std::string v;
    put_u32(v, 8);
    put_u64(v, values.size());
    for (const std::string& s : values) put_string(v, s);
    return kv_raw(key, 9, v);
  }
  GgufBuilder& kv_i32s(const std::string& key, const std::vector<int32_t>& values) {
    std::string v;
    put_u32(v, 5);
    put_u64(v, values.size());
    for (int32_t x : values) v.append(reinterpret_cast<char*>(&x), 4);
    return kv_raw(key, 9, v);
  }

  // A tensor entry: dims in GGUF order (innermost first), ggml type, offset in the data section.
  GgufBuilder& tensor(const std::string& name, const std::vector<uint64_t>& dims, uint32_t type,
                      uint64_t offset) {
    put_string(tensors_, name);
    put_u32(tensors_, static_cast<uint32_t>(dims.size()));
    for (uint64_t d : dims) put_u64(tensors_, d);
    put_u32(tensors_, type);
    put_u64(tensors_, offset);
    ++tensor_count_;
    return *this;
  }
  GgufBuilder& data(const std::string& bytes) {
    data_ += bytes;
    return *this;
  }
  GgufBuilder& version(uint32_t v) {
    version_ = v;
    return *this;
  }

  // The file: header, metadata, tensor entries, padding to `alignment`, data.
  std::string bytes(uint64_t alignment = 32) const {
    std::string out = "GGUF";
    put_u32(out, version_);
    put_u64(out, tensor_count_);
    put_u64(out, kv_count_);
    out += kv_;
    out += tensors_;
    while (out.size() % alignment != 0) out += '\0';
    return out + data_;
  }
  void write(const std::string& path, uint64_t alignment = 32) const {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes(alignment);
  }

 private:
  uint32_t version_ = 3;
  uint64_t kv_count_ = 0, tensor_count_ = 0;
  std::string kv_, tensors_, data_;
};

}  // namespace kiln::test
