#include "kiln/io/zstd_codec.h"

#include <zstd.h>

#include <memory>

#include "kiln/core/error.h"

namespace kiln {

std::string zstd_decompress(const void* data, size_t size, const std::string& where) {
  std::unique_ptr<ZSTD_DCtx, decltype(&ZSTD_freeDCtx)> ctx(ZSTD_createDCtx(), ZSTD_freeDCtx);
  check(ctx != nullptr, where + ": cannot create a zstd decoder");
  std::string out;
  // Frames that record their size are decoded in one call; others are streamed.
  const unsigned long long known = ZSTD_getFrameContentSize(data, size);
  if (known != ZSTD_CONTENTSIZE_UNKNOWN && known != ZSTD_CONTENTSIZE_ERROR &&
      ZSTD_findFrameCompressedSize(data, size) == size) {
    out.resize(known);
    size_t n = ZSTD_decompressDCtx(ctx.get(), out.data(), out.size(), data, size);
    check(!ZSTD_isError(n) && n == known,
          where + ": corrupt zstd data: " + (ZSTD_isError(n) ? ZSTD_getErrorName(n) : "size"));
    return out;
  }
  ZSTD_inBuffer in{data, size, 0};
  std::string chunk(ZSTD_DStreamOutSize(), '\0');
  size_t last = 0;
  // Done when all input is consumed and the decoder no longer fills the output buffer.
  for (;;) {
    ZSTD_outBuffer o{chunk.data(), chunk.size(), 0};
    last = ZSTD_decompressStream(ctx.get(), &o, &in);
    check(!ZSTD_isError(last), where + ": corrupt zstd data: " + ZSTD_getErrorName(last));
    out.append(chunk.data(), o.pos);
    if (in.pos == in.size && o.pos < o.size) break;
  }
  check(last == 0, where + ": truncated zstd data");
  return out;
}

std::string zstd_compress(const void* data, size_t size, int level) {
  std::string out(ZSTD_compressBound(size), '\0');
  size_t n = ZSTD_compress(out.data(), out.size(), data, size, level);
  if (ZSTD_isError(n)) throw Error(std::string("zstd compression failed: ") + ZSTD_getErrorName(n));
  out.resize(n);
  return out;
}

ZstdCompressor::ZstdCompressor(int level, int threads) : ctx_(ZSTD_createCCtx()) {
  check(ctx_ != nullptr, "cannot create a zstd encoder");
  auto* ctx = static_cast<ZSTD_CCtx*>(ctx_);
  check(!ZSTD_isError(ZSTD_CCtx_setParameter(ctx, ZSTD_c_compressionLevel, level)) &&
            !ZSTD_isError(ZSTD_CCtx_setParameter(ctx, ZSTD_c_contentSizeFlag, 1)),
        "cannot configure a zstd encoder");
  // Worker threads compress the jobs of one input side by side; a libzstd built without
  // threads refuses, and the frames are then made by the calling thread alone.
  if (threads > 1) ZSTD_CCtx_setParameter(ctx, ZSTD_c_nbWorkers, threads);
}

ZstdCompressor::~ZstdCompressor() {
  ZSTD_freeCCtx(static_cast<ZSTD_CCtx*>(ctx_));
}

std::pair<const char*, size_t> ZstdCompressor::compress(const void* data, size_t size) {
  const size_t bound = ZSTD_compressBound(size);
  if (out_.size() < bound) out_.resize(bound);
  const size_t n =
      ZSTD_compress2(static_cast<ZSTD_CCtx*>(ctx_), out_.data(), out_.size(), data, size);
  if (ZSTD_isError(n)) throw Error(std::string("zstd compression failed: ") + ZSTD_getErrorName(n));
  return {out_.data(), n};
}

}  // namespace kiln
