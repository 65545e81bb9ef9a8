// ZipArchive: a read-only, memory-mapped view of a zip file's stored (uncompressed)
// entries, as torch.save and numpy.savez write them.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kiln/core/mapped_file.h"

namespace kiln {

// Reads the central directory (zip64 included) at open(). Entries are looked up by their
// full name. Only "stored" entries can be read; compressed ones throw Error naming the
// archive and entry. Every offset and size is checked against the file. Thread-safe for
// concurrent reads.
class ZipArchive {
 public:
  struct Entry {
    std::string name;
    uint16_t method;     // 0 = stored, 8 = deflate, ...
    size_t data_offset;  // absolute offset of the entry's bytes in the file
    size_t size;         // uncompressed size
    size_t stored_size;  // compressed size (== size for stored entries)
  };

  // Throws Error("<path>: not a zip archive ...") when no valid end of central directory.
  static ZipArchive open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  const std::shared_ptr<MappedFile>& file() const { return file_; }
  // Entry names in central-directory order.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  // Throws Error naming the archive and entry when absent.
  const Entry& entry(const std::string& name) const;
  // The bytes of a stored entry (a pointer into the mapping). Throws Error for compressed
  // entries.
  const std::byte* data(const std::string& name) const;

 private:
  std::shared_ptr<MappedFile> file_;
  std::map<std::string, Entry> entries_;
  std::vector<std::string> order_;
};

}  // namespace kiln
