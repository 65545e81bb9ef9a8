// Key-value stores that hold zarr arrays: a plain directory of files, or (ocdbt.h) an
// OCDBT database.
#pragma once

#include <optional>
#include <string>

namespace kiln {

// Byte values by '/'-separated key. Implementations are read-only and thread-safe.
class KvStore {
 public:
  virtual ~KvStore() = default;
  // The value of `key`, or nullopt when absent. Throws Error naming the store and key on
  // I/O or format errors.
  virtual std::optional<std::string> read(const std::string& key) const = 0;
  // Where the store lives, for error messages.
  virtual std::string where() const = 0;
};

// Keys are file paths relative to `root`.
class DirectoryKvStore : public KvStore {
 public:
  explicit DirectoryKvStore(std::string root) : root_(std::move(root)) {}
  std::optional<std::string> read(const std::string& key) const override;
  std::string where() const override { return root_; }

 private:
  std::string root_;
};

// Reads the whole file at `path`; nullopt when it does not exist. Throws Error on I/O errors.
std::optional<std::string> read_file_bytes(const std::string& path);
// Reads `length` bytes at `offset` of `path`. Throws Error naming the file when the range
// does not lie inside it.
std::string read_file_range(const std::string& path, uint64_t offset, uint64_t length);

}  // namespace kiln
