// SafetensorsSource: a SafetensorsSet (single file, model.safetensors or a sharded folder)
// seen through the TensorSource interface that families and the converter read from.
#pragma once

#include <string>
#include <vector>

#include "kiln/io/safetensors.h"
#include "kiln/models/family.h"

namespace kiln {

// Zero-copy, read-only views into the mapped safetensors files. Opening validates every
// header (see SafetensorsFile::open); errors name the file and tensor.
class SafetensorsSource : public TensorSource {
 public:
  // `path`: a .safetensors file or a folder with model.safetensors or
  // model.safetensors.index.json.
  explicit SafetensorsSource(const std::string& path, Residency residency = Residency::kMapped);

  std::vector<std::string> names() const override { return set_.names(); }
  bool contains(const std::string& name) const override { return set_.contains(name); }
  Tensor get(const std::string& name) const override { return set_.get(name); }
  Shape shape_of(const std::string& name) const override { return set_.shape_of(name); }
  DType dtype_of(const std::string& name) const override { return set_.dtype_of(name); }
  std::string where() const override { return path_; }

  const SafetensorsSet& set() const { return set_; }

 private:
  std::string path_;
  SafetensorsSet set_;
};

}  // namespace kiln
