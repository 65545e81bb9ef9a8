// A whole file held read-only in memory (RAII): mapped from the page cache, or read into
// private anonymous memory.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace kiln {

// How a file's bytes are held in memory.
enum class Residency {
  // mmap of the file: nothing is read until touched, pages are shared with the page cache and
  // can be dropped under memory pressure. Right for streaming (convert, inspect) and for
  // files read once.
  kMapped,
  // Read once into private anonymous memory (transparent huge pages where the kernel allows).
  // Right for weights read on every decode step: on some virtual machines, two threads
  // streaming page-cache pages reach a tenth of the bandwidth they reach on anonymous
  // memory (docs/performance.md).
  kResident,
};

// Opens `path` read-only, held as `residency` says. Throws Error naming the file when it cannot be
// opened or mapped. An empty file maps to data() == nullptr, size() == 0. Not copyable; share it
// through std::shared_ptr so tensor views can keep it alive.
class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const std::string& path,
                                          Residency residency = Residency::kMapped);
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
