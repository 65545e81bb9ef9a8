// CRC-32C (Castagnoli), the checksum of OCDBT nodes, zarr's crc32c codec and Kiln
// checkpoint tensors.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kiln {

// Extends `crc` (0 for a fresh checksum) over `size` bytes at `data`.
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);

}  // namespace kiln
