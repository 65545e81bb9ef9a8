// Read-only memory mapping of a whole file (RAII).
#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace kiln {

// Maps `path` read-only. Throws Error naming the file when it cannot be opened or mapped.
// An empty file maps to data() == nullptr, size() == 0. Not copyable; share it through
// std::shared_ptr so tensor views can keep it alive.
class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const std::byte* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  const std::byte* data_;
  size_t size_;
};

}  // namespace kiln
