// Reading a whole file into memory, transparently decompressing zstd (`.zst`) files.
#pragma once

#include <string>

namespace kiln {

// The bytes of `path`; when the name ends in ".zst" the decompressed bytes. Throws
// Error("<path>: cannot open") or Error("<path>: corrupt zstd data: ...").
std::string read_whole_file(const std::string& path);

}  // namespace kiln
