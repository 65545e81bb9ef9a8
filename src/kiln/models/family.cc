#include "kiln/models/family.h"

#include <algorithm>

#include "kiln/core/error.h"

namespace kiln {

static std::vector<std::shared_ptr<const Family>>& mutable_families() {
  static std::vector<std::shared_ptr<const Family>> registry;
  return registry;
}

bool register_family(std::shared_ptr<const Family> family) {
  mutable_families().push_back(std::move(family));
  return true;
}

const std::vector<std::shared_ptr<const Family>>& families() {
  return mutable_families();
}

const Family* family_named(const std::string& name) {
  for (const auto& family : families())
    if (family->name() == name) return family.get();
  return nullptr;
}

const Family& family_for(const HfConfig& config) {
  std::string arch = config.architecture();
  std::string type = config.model_type();
  for (const auto& f : families()) {
    auto archs = f->architectures();
    if (!arch.empty() && std::find(archs.begin(), archs.end(), arch) != archs.end()) return *f;
  }
  for (const auto& f : families()) {
    auto types = f->model_types();
    if (!type.empty() && std::find(types.begin(), types.end(), type) != types.end()) return *f;
  }
  std::string supported;
  for (const auto& f : families()) supported += (supported.empty() ? "" : ", ") + f->name();
  throw Error(config.source() + ": unknown architecture '" + arch + "' (model_type '" + type +
              "'); supported families: " + supported);
}

ModelSpec spec_from_config(const HfConfig& config) {
  const Family& family = family_for(config);
  ModelSpec spec = family.build_spec(config);
  spec.family = family.name();
  return spec;
}

}  // namespace kiln
