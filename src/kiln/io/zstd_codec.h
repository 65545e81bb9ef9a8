// Zstandard compression of byte strings (libzstd), for zarr chunks and OCDBT nodes.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace kiln {

// Decompresses one or more concatenated zstd frames. `where` names the source in errors
// ("<file>: key 'x': corrupt zstd data: ...").
std::string zstd_decompress(const void* data, size_t size, const std::string& where);
// Compresses `size` bytes at `level` (1..19) into one frame that records its content size.
std::string zstd_compress(const void* data, size_t size, int level);

// zstd_compress with one compression context and output buffer reused across calls, so
// compressing many chunks allocates nothing after the largest. With `threads` > 1, libzstd's
// workers compress the jobs (pieces of a few MiB) of one large input in parallel: a valid
// single frame (not byte-identical to the single-threaded one), with its content size.
class ZstdCompressor {
 public:
  explicit ZstdCompressor(int level, int threads = 1);
  ~ZstdCompressor();
  ZstdCompressor(const ZstdCompressor&) = delete;
  ZstdCompressor& operator=(const ZstdCompressor&) = delete;
  // The frame of `size` bytes at `data`, valid until the next call.
  std::pair<const char*, size_t> compress(const void* data, size_t size);

 private:
  void* ctx_ = nullptr;  // ZSTD_CCtx
  std::vector<char> out_;
};

}  // namespace kiln
