// Config keys that have no effect on inference (training settings, bookkeeping), so that
// the analysis can tell them apart from keys Kiln does not understand.
#pragma once

#include <string>
#include <vector>

namespace kiln::analyze {

// True when `key` (a top-level config.json key) is known to be irrelevant to inference.
bool is_irrelevant_key(const std::string& key);
// The whole list, sorted.
const std::vector<std::string>& irrelevant_keys();

}  // namespace kiln::analyze
