// Zstandard compression of byte strings (libzstd), for zarr chunks and OCDBT nodes.
#pragma once

#include <cstddef>
#include <string>

namespace kiln {

// Decompresses one or more concatenated zstd frames. `where` names the source in errors
// ("<file>: key 'x': corrupt zstd data: ...").
std::string zstd_decompress(const void* data, size_t size, const std::string& where);
// Compresses `size` bytes at `level` (1..19) into one frame that records its content size.
std::string zstd_compress(const void* data, size_t size, int level);

}  // namespace kiln
