#include "kiln/io/orbax/zarr.h"

#include <cmath>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/io/crc32c.h"
#include "kiln/io/json.h"
#include "kiln/io/zstd_codec.h"

namespace kiln {
namespace {

struct DTypeNames {
  DType dtype;
  const char* v2;
  const char* v3;
};
constexpr DTypeNames kDTypes[] = {
    {DType::F32, "<f4", "float32"},        {DType::F16, "<f2", "float16"},
    {DType::BF16, "bfloat16", "bfloat16"}, {DType::F64, "<f8", "float64"},
    {DType::I64, "<i8", "int64"},          {DType::I32, "<i4", "int32"},
    {DType::I16, "<i2", "int16"},          {DType::I8, "|i1", "int8"},
    {DType::U8, "|u1", "uint8"},           {DType::BOOL, "|b1", "bool"},
};

// Everything needed to decode an array's chunks.
struct ZarrMeta {
  int format = 2;
  std::string where;  // "<store>: <metadata key>"
  DType dtype = DType::F32;
  Shape shape;
  Shape chunks;
  Json fill_value;
  // v2
  std::string separator = ".";
  bool zstd = false;
  // v3
  bool v2_key_encoding = false;
  Json codecs;
};

ZarrMeta parse_v2(const Json& j, const std::string& where) {
  ZarrMeta m;
  m.where = where;
  check(j.value("zarr_format", 0) == 2, where + ": zarr_format is not 2");
  const std::string dtype = j.value("dtype", "");
  bool known = false;
  for (const auto& d : kDTypes) {
    std::string alt = d.v2;  // '=' and '<' mean the same on little-endian machines
    if (dtype == d.v2 || (alt[0] == '<' && dtype == "=" + alt.substr(1)) ||
        (alt[0] == '|' && dtype == "<" + alt.substr(1))) {
      m.dtype = d.dtype;
      known = true;
    }
  }
  check(known, where + ": unsupported zarr dtype '" + dtype + "'");
  m.shape = j.at("shape").get<Shape>();
  m.chunks = j.at("chunks").get<Shape>();
  check(j.value("order", "C") == "C", where + ": Fortran-order zarr arrays are not supported");
  check(!j.contains("filters") || j["filters"].is_null(),
        where + ": zarr filters are not supported");
  if (j.contains("dimension_separator")) m.separator = j["dimension_separator"].get<std::string>();
  if (j.contains("compressor") && !j["compressor"].is_null()) {
    const std::string id = j["compressor"].value("id", "");
    check(id == "zstd", where + ": unsupported zarr compressor '" + id + "'");
    m.zstd = true;
  }
  m.fill_value = j.value("fill_value", Json());
  return m;
}

ZarrMeta parse_v3(const Json& j, const std::string& where) {
  ZarrMeta m;
  m.format = 3;
  m.where = where;
  check(j.value("node_type", "") == "array", where + ": not a zarr array");
  const std::string dtype = j.value("data_type", "");
  bool known = false;
  for (const auto& d : kDTypes)
    if (dtype == d.v3) m.dtype = d.dtype, known = true;
  check(known, where + ": unsupported zarr data_type '" + dtype + "'");
  m.shape = j.at("shape").get<Shape>();
  const Json& grid = j.at("chunk_grid");
  check(grid.value("name", "") == "regular", where + ": unsupported chunk grid");
  m.chunks = grid.at("configuration").at("chunk_shape").get<Shape>();
  const Json& keys = j.value("chunk_key_encoding", Json::object());
  const std::string encoding = keys.value("name", "default");
  check(encoding == "default" || encoding == "v2", where + ": unsupported chunk key encoding");
  m.v2_key_encoding = encoding == "v2";
  m.separator =
      keys.value("configuration", Json::object()).value("separator", m.v2_key_encoding ? "." : "/");
  m.codecs = j.at("codecs");
  m.fill_value = j.value("fill_value", Json());
  return m;
}

ZarrMeta read_meta(const KvStore& store, const std::string& prefix) {
  const bool v3 = store.read(prefix + "zarr.json").has_value();
  const std::string key = prefix + (v3 ? "zarr.json" : ".zarray");
  const std::string where = store.where() + ": " + key;
  auto bytes = store.read(key);
  check(bytes.has_value(), store.where() + ": no zarr array at '" + prefix + "'");
  try {
    const Json json = parse_json(*bytes, where);
    return v3 ? parse_v3(json, where) : parse_v2(json, where);
  } catch (const Json::exception& e) {
    throw Error(where + ": malformed zarr metadata: " + e.what());
  }
}

std::string chunk_key(const ZarrMeta& m, const Shape& index) {
  std::string key;
  if (m.format == 3 && !m.v2_key_encoding) {
    key = "c";
    for (int64_t i : index) key += m.separator + std::to_string(i);
    return key;
  }
  if (index.empty()) return "0";
  for (size_t d = 0; d < index.size(); ++d)
    key += (d ? m.separator : "") + std::to_string(index[d]);
  return key;
}

// Fills `out` with the zarr fill value (null and 0 leave the zeros).
void fill(Tensor& out, const Json& value, const std::string& where) {
  if (value.is_null() || (value.is_number() && value.get<double>() == 0) ||
      (value.is_boolean() && !value.get<bool>()))
    return;
  Tensor one;
  if (value.is_number_integer() || value.is_boolean()) {
    one = Tensor::zeros(DType::I64, {1});
    one.mutable_data<int64_t>()[0] = value.is_boolean() ? value.get<bool>() : value.get<int64_t>();
    one = one.to(out.dtype());
  } else {
    double d = 0;
    if (value.is_number())
      d = value.get<double>();
    else if (value == "NaN")
      d = NAN;
    else if (value == "Infinity")
      d = INFINITY;
    else if (value == "-Infinity")
      d = -INFINITY;
    else
      throw Error(where + ": unsupported fill_value " + value.dump());
    check(is_float(out.dtype()), where + ": non-integer fill_value for an integer array");
    one = Tensor::from_f32({1}, {static_cast<float>(d)}).to(out.dtype());
  }
  const size_t size = dtype_size(out.dtype());
  auto* dst = static_cast<std::byte*>(out.mutable_raw());
  for (int64_t i = 0; i < out.numel(); ++i) std::memcpy(dst + i * size, one.raw(), size);
}

// Copies a decoded C-order chunk of `chunk_shape` whose first element sits at `origin` of
// `out`, clipped to `out`'s bounds.
void place_chunk(const std::string& raw, const Shape& chunk_shape, const Shape& origin, Tensor& out,
                 const std::string& where) {
  const size_t size = dtype_size(out.dtype());
  check(raw.size() == static_cast<size_t>(shape_numel(chunk_shape)) * size,
        where + ": decoded chunk has " + std::to_string(raw.size()) + " bytes, expected " +
            std::to_string(shape_numel(chunk_shape) * size));
  const Shape& shape = out.shape();
  const int n = static_cast<int>(shape.size());
  auto* dst = static_cast<std::byte*>(out.mutable_raw());
  if (n == 0) {
    std::memcpy(dst, raw.data(), size);
    return;
  }
  Shape extent(n);
  for (int d = 0; d < n; ++d) {
    extent[d] = std::min(chunk_shape[d], shape[d] - origin[d]);
    if (extent[d] <= 0) return;
  }
  // Walk every row (all dimensions but the last) of the clipped chunk.
  Shape index(n, 0);
  for (;;) {
    int64_t src = 0, dst_index = 0;
    for (int d = 0; d < n; ++d) {
      src = src * chunk_shape[d] + index[d];
      dst_index = dst_index * shape[d] + origin[d] + index[d];
    }
    std::memcpy(dst + dst_index * size, raw.data() + src * size, extent[n - 1] * size);
    int d = n - 2;
    for (; d >= 0; --d) {
      if (++index[d] < extent[d]) break;
      index[d] = 0;
    }
    if (d < 0) return;
  }
}

// Decodes one v3 chunk through `codecs` and places it (or, for a shard, each of its inner
// chunks) into `out`.
void place_v3_chunk(std::string data, const Json& codecs, const Shape& chunk_shape,
                    const Shape& origin, Tensor& out, const std::string& where) {
  size_t array_to_bytes = codecs.size();
  for (size_t i = 0; i < codecs.size(); ++i) {
    const std::string name = codecs[i].value("name", "");
    if (name == "bytes" || name == "sharding_indexed") {
      array_to_bytes = i;
      break;
    }
    throw Error(where + ": unsupported zarr codec '" + name + "'");
  }
  check(array_to_bytes < codecs.size(), where + ": no bytes or sharding codec");
  for (size_t i = codecs.size(); i-- > array_to_bytes + 1;) {
    const std::string name = codecs[i].value("name", "");
    if (name == "zstd") {
      data = zstd_decompress(data.data(), data.size(), where);
    } else if (name == "crc32c") {
      check(data.size() >= 4, where + ": chunk shorter than its crc32c");
      uint32_t stored;
      std::memcpy(&stored, data.data() + data.size() - 4, 4);
      data.resize(data.size() - 4);
      check(crc32c(data.data(), data.size()) == stored, where + ": crc32c mismatch");
    } else {
      throw Error(where + ": unsupported zarr codec '" + name + "'");
    }
  }
  const Json& codec = codecs[array_to_bytes];
  const Json config = codec.value("configuration", Json::object());
  if (codec["name"] == "bytes") {
    check(config.value("endian", "little") == "little" || dtype_size(out.dtype()) == 1,
          where + ": big-endian zarr data is not supported");
    place_chunk(data, chunk_shape, origin, out, where);
    return;
  }
  // sharding_indexed: inner chunks, then (or first) an index of (offset, nbytes) pairs.
  const Shape inner = config.at("chunk_shape").get<Shape>();
  check(inner.size() == chunk_shape.size(), where + ": shard and chunk ranks differ");
  Shape grid(inner.size());
  int64_t count = 1;
  for (size_t d = 0; d < inner.size(); ++d) {
    check(inner[d] > 0 && chunk_shape[d] % inner[d] == 0, where + ": bad inner chunk shape");
    grid[d] = chunk_shape[d] / inner[d];
    count *= grid[d];
  }
  bool index_crc = false;
  for (const Json& c : config.value("index_codecs", Json::array())) {
    const std::string name = c.value("name", "");
    if (name == "crc32c")
      index_crc = true;
    else
      check(name == "bytes", where + ": unsupported shard index codec '" + name + "'");
  }
  const size_t index_size = static_cast<size_t>(count) * 16 + (index_crc ? 4 : 0);
  check(data.size() >= index_size, where + ": shard shorter than its index");
  const bool at_start = config.value("index_location", "end") == "start";
  const std::string index = data.substr(at_start ? 0 : data.size() - index_size, index_size);
  if (index_crc) {
    uint32_t stored;
    std::memcpy(&stored, index.data() + index.size() - 4, 4);
    check(crc32c(index.data(), index.size() - 4) == stored,
          where + ": shard index crc32c mismatch");
  }
  Shape position(inner.size(), 0);
  for (int64_t i = 0; i < count; ++i) {
    uint64_t offset, nbytes;
    std::memcpy(&offset, index.data() + i * 16, 8);
    std::memcpy(&nbytes, index.data() + i * 16 + 8, 8);
    if (offset != ~uint64_t{0} || nbytes != ~uint64_t{0}) {
      check(offset <= data.size() && nbytes <= data.size() - offset,
            where + ": inner chunk " + std::to_string(i) + " lies outside the shard");
      Shape inner_origin(inner.size());
      for (size_t d = 0; d < inner.size(); ++d)
        inner_origin[d] = origin[d] + position[d] * inner[d];
      place_v3_chunk(data.substr(offset, nbytes), config.at("codecs"), inner, inner_origin, out,
                     where + " inner chunk " + std::to_string(i));
    }
    for (size_t d = inner.size(); d-- > 0;) {
      if (++position[d] < grid[d]) break;
      position[d] = 0;
    }
  }
}

Tensor read_chunks(const KvStore& store, const std::string& prefix, const ZarrMeta& m) {
  const size_t n = m.shape.size();
  check(m.chunks.size() == n, m.where + ": chunk rank differs from array rank");
  Tensor out = Tensor::zeros(m.dtype, m.shape);
  fill(out, m.fill_value, m.where);
  if (out.numel() == 0) return out;
  Shape grid(n), index(n, 0);
  for (size_t d = 0; d < n; ++d) {
    check(m.chunks[d] > 0, m.where + ": chunk sizes must be positive");
    grid[d] = (m.shape[d] + m.chunks[d] - 1) / m.chunks[d];
  }
  for (;;) {
    const std::string key = prefix + chunk_key(m, index);
    const std::string where = store.where() + ": " + key;
    Shape origin(n);
    for (size_t d = 0; d < n; ++d) origin[d] = index[d] * m.chunks[d];
    if (auto bytes = store.read(key)) {
      if (m.format == 2) {
        const std::string raw =
            m.zstd ? zstd_decompress(bytes->data(), bytes->size(), where) : std::move(*bytes);
        place_chunk(raw, m.chunks, origin, out, where);
      } else {
        place_v3_chunk(std::move(*bytes), m.codecs, m.chunks, origin, out, where);
      }
    }
    size_t d = n;
    while (d-- > 0) {
      if (++index[d] < grid[d]) break;
      index[d] = 0;
    }
    if (d == static_cast<size_t>(-1)) return out;
  }
}

}  // namespace

std::string zarr_v2_dtype(DType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d.v2;
  throw Error("zarr: no dtype for " + std::string(dtype_name(dtype)));
}

std::pair<DType, Shape> read_zarr_metadata(const KvStore& store, const std::string& prefix) {
  ZarrMeta m = read_meta(store, prefix);
  return {m.dtype, m.shape};
}

Tensor read_zarr_array(const KvStore& store, const std::string& prefix) {
  const ZarrMeta m = read_meta(store, prefix);
  try {
    return read_chunks(store, prefix, m);
  } catch (const Json::exception& e) {
    throw Error(m.where + ": malformed zarr codec configuration: " + e.what());
  }
}

std::string zarr_v2_metadata(DType dtype, const Shape& shape, const Shape& chunks,
                             const ZarrWriteOptions& options) {
  const Json meta = {
      {"chunks", chunks},
      {"compressor", options.zstd ? Json{{"id", "zstd"}, {"level", options.zstd_level}} : Json()},
      {"dimension_separator", "."},
      {"dtype", zarr_v2_dtype(dtype)},
      {"fill_value", nullptr},
      {"filters", nullptr},
      {"order", "C"},
      {"shape", shape},
      {"zarr_format", 2}};
  return meta.dump();
}

std::string zarr_v2_chunk_key(const std::string& prefix, const Shape& index) {
  if (index.empty()) return prefix + "0";
  std::string key = prefix;
  for (size_t d = 0; d < index.size(); ++d) {
    if (d) key += '.';
    key += std::to_string(index[d]);
  }
  return key;
}

std::string zarr_v2_chunk(std::string raw, size_t chunk_bytes, const ZarrWriteOptions& options) {
  raw.resize(chunk_bytes, '\0');  // zarr v2 stores full chunks: edge chunks are zero-padded
  return options.zstd ? zstd_compress(raw.data(), raw.size(), options.zstd_level) : raw;
}

Shape zarr_v2_chunk_shape(DType dtype, const Shape& shape, const ZarrWriteOptions& options) {
  Shape chunks(shape.size());
  for (size_t d = 0; d < shape.size(); ++d) chunks[d] = std::max<int64_t>(shape[d], 1);
  int64_t row_elements = 1;
  for (size_t d = 1; d < shape.size(); ++d) row_elements *= chunks[d];
  if (!shape.empty()) {
    const int64_t rows =
        static_cast<int64_t>(options.max_chunk_bytes / (row_elements * dtype_size(dtype)));
    chunks[0] = std::clamp<int64_t>(rows, 1, chunks[0]);
  }
  return chunks;
}

Shape write_zarr_v2(const Tensor& tensor, const std::string& prefix,
                    const ZarrWriteOptions& options,
                    const std::function<void(const std::string&, const std::string&)>& emit) {
  const Shape& shape = tensor.shape();
  const size_t element = dtype_size(tensor.dtype());
  const Shape chunks = zarr_v2_chunk_shape(tensor.dtype(), shape, options);
  emit(prefix + ".zarray", zarr_v2_metadata(tensor.dtype(), shape, chunks, options));
  if (tensor.numel() == 0) return chunks;
  const Tensor contiguous = tensor.contiguous();
  const auto* src = static_cast<const char*>(contiguous.raw());
  const int64_t chunk_count = shape.empty() ? 1 : (shape[0] + chunks[0] - 1) / chunks[0];
  const size_t chunk_bytes = static_cast<size_t>(shape_numel(chunks)) * element;
  for (int64_t c = 0; c < chunk_count; ++c) {
    Shape index(shape.size(), 0);
    if (!shape.empty()) index[0] = c;
    const size_t begin = static_cast<size_t>(c) * chunk_bytes;
    const size_t available = std::min(chunk_bytes, contiguous.nbytes() - begin);
    emit(zarr_v2_chunk_key(prefix, index),
         zarr_v2_chunk(std::string(src + begin, available), chunk_bytes, options));
  }
  return chunks;
}

}  // namespace kiln
