// Where in src/kiln/ each architectural feature is (or would be) implemented, for the
// "where it would go" column of the analysis.
#pragma once

#include <string>

namespace kiln::analyze {

// "src/kiln/ops/rope.cc: yarn frequency scaling" for feature `id` with value `value`.
std::string feature_location(const std::string& id, const std::string& value);

}  // namespace kiln::analyze
