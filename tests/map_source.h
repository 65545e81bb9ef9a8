// An in-memory TensorSource for tests: tensors by name.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/models/family.h"

namespace kiln::test {

class MapSource : public TensorSource {
 public:
  std::map<std::string, Tensor> tensors;
  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const auto& [name, t] : tensors) out.push_back(name);
    return out;
  }
  bool contains(const std::string& name) const override { return tensors.count(name) != 0; }
  Tensor get(const std::string& name) const override { return tensors.at(name); }
  Shape shape_of(const std::string& name) const override { return tensors.at(name).shape(); }
  DType dtype_of(const std::string& name) const override { return tensors.at(name).dtype(); }
  std::string where() const override { return "memory"; }
};

}  // namespace kiln::test
