// NumPy .npy arrays and .npz archives (a zip of .npy files), read into tensors.
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "kiln/core/tensor.h"

namespace kiln {

// Parses one .npy file image (format versions 1-3, C order, little-endian numeric dtypes).
// `where` names it in errors.
Tensor parse_npy(const std::byte* data, size_t size, const std::string& where);

// Every array of an .npz file (stored, not compressed, as numpy.savez writes), named by its
// entry name without ".npy", in archive order.
std::vector<std::pair<std::string, Tensor>> read_npz(const std::string& path);

}  // namespace kiln
