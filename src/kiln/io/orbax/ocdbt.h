// OCDBT, tensorstore's key-value database on files (manifest.ocdbt + d/<id> data files),
// as orbax-checkpoint writes it: a reader of the latest version, and a streaming writer.
// Format: tensorstore's kvstore/ocdbt documentation; summarized in docs/checkpoint_format.md.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kiln/io/direct_appender.h"
#include "kiln/io/orbax/kvstore.h"

namespace kiln {

// The latest version of an OCDBT database. open() reads and checks (magic, length,
// CRC-32C, version) the manifest and every B+tree node, and indexes every key; values are
// read on demand from inline bytes or data files.
class OcdbtKvStore : public KvStore {
 public:
  // `dir` holds manifest.ocdbt. Throws Error naming the file at fault.
  static std::unique_ptr<OcdbtKvStore> open(const std::string& dir);
  // True when `dir` holds manifest.ocdbt.
  static bool present_in(const std::string& dir);

  std::optional<std::string> read(const std::string& key) const override;
  std::string where() const override { return dir_; }
  // Every key, sorted.
  std::vector<std::string> keys() const;

 private:
  struct Value {
    bool indirect = false;
    std::string bytes;  // inline value
    std::string file;   // data file, relative to the database
    uint64_t offset = 0;
    uint64_t length = 0;
  };
  void read_btree_node(const std::string& file, const std::string& transitive_path, uint64_t offset,
                       uint64_t length, int height, const std::string& prefix, int depth);
  std::string dir_;
  std::map<std::string, Value> values_;
};

// Writes a new single-version OCDBT database into `dir` (which must not hold one): values
// larger than `max_inline_value_bytes` go to one data file d/<random id> as they are added,
// smaller ones into the B+tree leaf; finish() writes the leaf node and manifest.ocdbt.
// Memory holds only the keys, locations and inline values. Not thread-safe.
class OcdbtWriter {
 public:
  // Defaults are the configuration orbax-checkpoint 0.12 creates; tensorstore refuses to
  // open a database whose configuration differs from the one orbax asks for.
  struct Options {
    bool zstd = true;  // compress the manifest and B+tree node
    int zstd_level = 0;
    uint32_t max_inline_value_bytes = 1024;
    uint32_t max_decoded_node_bytes = 100000000;
  };
  OcdbtWriter(std::string dir, Options options);
  // Adds `key` (unique; any order) with `value`. Throws Error naming the key on duplicates
  // or I/O errors.
  void add(const std::string& key, const std::string& value) {
    add(key, value.data(), value.size());
  }
  void add(const std::string& key, const char* value, size_t size);
  ~OcdbtWriter();
  OcdbtWriter(const OcdbtWriter&) = delete;
  OcdbtWriter& operator=(const OcdbtWriter&) = delete;
  // Writes the B+tree and the manifest; the writer is finished afterwards.
  void finish();

 private:
  struct Location {
    bool indirect;
    std::string bytes;  // inline value
    uint64_t offset;
    uint64_t length;
  };
  std::string dir_;
  Options options_;
  std::string data_file_;  // "d/<32 hex digits>"
  int fd_ = -1;
  // Appends to the data file (with O_DIRECT where the filesystem allows it), overlapped.
  std::unique_ptr<DirectAppender> data_;
  uint64_t data_size_ = 0;
  std::map<std::string, Location> entries_;
};

}  // namespace kiln
