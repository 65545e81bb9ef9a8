#include "kiln/models/capabilities.h"

#include <set>

namespace kiln {

static std::set<std::pair<std::string, std::string>>& registry() {
  static std::set<std::pair<std::string, std::string>> declared;
  return declared;
}

bool declare_capability(const std::string& feature, const std::string& value) {
  registry().emplace(feature, value);
  return true;
}

bool has_capability(const std::string& feature, const std::string& value) {
  return registry().count({feature, value}) > 0;
}

std::vector<std::pair<std::string, std::string>> capabilities() {
  return {registry().begin(), registry().end()};
}

}  // namespace kiln
