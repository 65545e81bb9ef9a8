// Zarr arrays in a KvStore: a reader of v2 (`.zarray`) and v3 (`zarr.json`, including the
// sharding_indexed codec) arrays with raw, zstd and crc32c codecs, and a v2 writer.
#pragma once

#include <functional>
#include <string>

#include "kiln/core/tensor.h"
#include "kiln/io/orbax/kvstore.h"

namespace kiln {

// The element type and shape recorded in the metadata of the array under `prefix`
// ("<name>/"). Throws Error naming the store and key when there is no zarr metadata, or it
// uses a data type, codec or layout Kiln does not read.
std::pair<DType, Shape> read_zarr_metadata(const KvStore& store, const std::string& prefix);

// The whole array under `prefix` as a contiguous tensor; missing chunks hold the fill
// value. Errors name the store and chunk key.
Tensor read_zarr_array(const KvStore& store, const std::string& prefix);

struct ZarrWriteOptions {
  bool zstd = false;  // compressor: zstd, or none (raw chunks)
  int zstd_level = 1;
  // Chunks split dimension 0 so that no chunk exceeds this many bytes (one row at least).
  // 16 MiB: large enough for efficient reads and compression, small enough that a writer
  // holds little (orbax itself writes an unsharded array as one chunk; any chunking reads).
  size_t max_chunk_bytes = size_t{16} << 20;
};

// The chunk shape write_zarr_v2 uses for an array: whole rows of dimension 0, at most
// `options.max_chunk_bytes` (one row at least).
Shape zarr_v2_chunk_shape(DType dtype, const Shape& shape, const ZarrWriteOptions& options);

// Writes `tensor` as a zarr v2 array under `prefix`: `emit(key, bytes)` is called for
// `<prefix>.zarray` and for every chunk, one chunk in memory at a time. Chunks are C-order,
// little-endian, fill value null (zero), as orbax-checkpoint writes them. Returns the chunk
// shape.
Shape write_zarr_v2(const Tensor& tensor, const std::string& prefix,
                    const ZarrWriteOptions& options,
                    const std::function<void(const std::string&, const std::string&)>& emit);

// The zarr v2 dtype string of `dtype` ("<f4", "bfloat16", ...).
std::string zarr_v2_dtype(DType dtype);

// The building blocks of write_zarr_v2, for writers that produce chunks themselves:
// the `.zarray` JSON of an array (compressor per `options`, fill value null, C order) ...
std::string zarr_v2_metadata(DType dtype, const Shape& shape, const Shape& chunks,
                             const ZarrWriteOptions& options);
// ... the key of the chunk at grid position `index` ("<prefix>2.0.0"; "<prefix>0" for 0-d) ...
std::string zarr_v2_chunk_key(const std::string& prefix, const Shape& index);
// ... and a stored chunk: `raw` (the chunk's leading bytes in C order) zero-padded to
// `chunk_bytes`, then zstd-compressed when `options.zstd`.
std::string zarr_v2_chunk(std::string raw, size_t chunk_bytes, const ZarrWriteOptions& options);

}  // namespace kiln
