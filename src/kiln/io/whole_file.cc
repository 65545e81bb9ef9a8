#include "kiln/io/whole_file.h"

#include <zstd.h>

#include <cstdio>
#include <memory>

#include "kiln/core/error.h"

namespace kiln {
namespace {

std::string read_raw(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) throw Error(path + ": cannot open");
  std::string bytes;
  char buffer[1 << 16];
  if (std::fseek(file.get(), 0, SEEK_END) == 0) {
    const long size = std::ftell(file.get());
    if (size > 0) bytes.reserve(static_cast<size_t>(size));
    std::rewind(file.get());
  }
  size_t got;
  while ((got = std::fread(buffer, 1, sizeof(buffer), file.get())) > 0) bytes.append(buffer, got);
  if (std::ferror(file.get())) throw Error(path + ": read failed");
  return bytes;
}

std::string decompress_zstd(const std::string& compressed, const std::string& path) {
  std::unique_ptr<ZSTD_DStream, size_t (*)(ZSTD_DStream*)> stream(ZSTD_createDStream(),
                                                                  &ZSTD_freeDStream);
  ZSTD_DCtx_setParameter(stream.get(), ZSTD_d_windowLogMax, 31);
  std::string out;
  const unsigned long long known = ZSTD_getFrameContentSize(compressed.data(), compressed.size());
  if (known != ZSTD_CONTENTSIZE_UNKNOWN && known != ZSTD_CONTENTSIZE_ERROR &&
      known < (1ull << 34)) {
    out.reserve(known);
  }
  ZSTD_inBuffer input{compressed.data(), compressed.size(), 0};
  std::string chunk(ZSTD_DStreamOutSize(), '\0');
  size_t status = 1;
  while (input.pos < input.size) {
    ZSTD_outBuffer output{chunk.data(), chunk.size(), 0};
    status = ZSTD_decompressStream(stream.get(), &output, &input);
    if (ZSTD_isError(status)) {
      throw Error(path + ": corrupt zstd data: " + ZSTD_getErrorName(status));
    }
    out.append(chunk.data(), output.pos);
  }
  if (status != 0) throw Error(path + ": corrupt zstd data: truncated");
  return out;
}

}  // namespace

std::string read_whole_file(const std::string& path) {
  std::string bytes = read_raw(path);
  if (path.ends_with(".zst")) return decompress_zstd(bytes, path);
  return bytes;
}

}  // namespace kiln
