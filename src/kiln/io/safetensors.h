// Safetensors files: a validating, memory-mapped reader (single files and sharded folders)
// and a writer.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kiln/core/mapped_file.h"
#include "kiln/core/tensor.h"

namespace kiln {

// One .safetensors file, memory-mapped. open() validates the whole header: its length
// fits the file, it is a JSON object, every dtype is known, every shape matches its byte
// range, every range lies inside the data section, and no two ranges overlap. Any
// violation throws Error naming the file and tensor. Tensors returned are zero-copy,
// read-only views that keep the mapping alive.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path, Residency residency = Residency::kMapped);

  const std::string& path() const { return file_->path(); }
  // Tensor names in file order (sorted by data offset).
  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  // Throws Error naming the file and tensor when absent.
  Tensor get(const std::string& name) const;
  DType dtype_of(const std::string& name) const;
  const Shape& shape_of(const std::string& name) const;
  // The "__metadata__" string map (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Entry {
    DType dtype;
    Shape shape;
    size_t begin;  // absolute offset in the file
    size_t end;
  };
  const Entry& entry(const std::string& name) const;
  std::shared_ptr<MappedFile> file_;
  std::shared_ptr<Storage> storage_;
  std::map<std::string, Entry> entries_;
  std::vector<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

// All safetensors weights of a model folder: `model.safetensors`, or the shards listed by
// `model.safetensors.index.json` (every listed shard must exist and hold the tensors the
// index says), or a single path to a .safetensors file.
class SafetensorsSet {
 public:
  static SafetensorsSet open(const std::string& path, Residency residency = Residency::kMapped);
  // True when `dir` holds model.safetensors or model.safetensors.index.json.
  static bool present_in(const std::string& dir);

  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return location_.count(name) != 0; }
  Tensor get(const std::string& name) const;
  DType dtype_of(const std::string& name) const;
  const Shape& shape_of(const std::string& name) const;
  // Which file holds `name`.
  const std::string& file_of(const std::string& name) const;

 private:
  const SafetensorsFile& file_for(const std::string& name) const;
  std::string where_;  // the path open() was given
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> location_;
};

// Writes tensors to `path` as safetensors, packed without holes as the format requires,
// ordered by decreasing element size (stable) so that every tensor is aligned to its
// element size. Names must be unique and not "__metadata__". The header is padded with
// spaces so the data section starts at a multiple of 64 bytes. Throws Error naming the file on I/O
// failure.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});
// The header bytes (8-byte length + JSON, padded so data starts at a multiple of 64) for
// tensors laid out in the given order; for writers that stream tensor data themselves. Throws Error
// on a duplicate or reserved name.
std::string safetensors_header(
    const std::vector<std::pair<std::string, std::pair<DType, Shape>>>& specs,
    const std::map<std::string, std::string>& metadata = {});

}  // namespace kiln
