#include "kiln/io/orbax/orbax_checkpoint.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "kiln/core/error.h"
#include "kiln/core/page_release.h"
#include "kiln/io/json.h"

namespace kiln {
namespace fs = std::filesystem;
namespace {

constexpr const char* kPyTreeHandler =
    "orbax.checkpoint._src.handlers.pytree_checkpoint_handler.PyTreeCheckpointHandler";
constexpr const char* kSingleDeviceSharding =
    R"({"sharding_type": "SingleDeviceSharding", "device_str": "cpu:0"})";

std::string join(const std::vector<std::string>& parts, char separator) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? std::string(1, separator) : "") + parts[i];
  return out;
}

std::string base64(const std::string& in) {
  static const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = static_cast<uint8_t>(in[i]) << 16 | static_cast<uint8_t>(in[i + 1]) << 8 |
                       static_cast<uint8_t>(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += kAlphabet[(v >> s) & 63];
  }
  if (i < in.size()) {
    const uint32_t v = static_cast<uint8_t>(in[i]) << 16 |
                       (i + 1 < in.size() ? static_cast<uint8_t>(in[i + 1]) << 8 : 0);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < in.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

// Python's repr of a tuple of strings, as orbax keys `tree_metadata`: "('a', 'b')", "('a',)".
std::string python_tuple(const std::vector<std::string>& parts) {
  std::string out = "(";
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? ", '" : "'") + parts[i] + "'";
  return out + (parts.size() == 1 ? ",)" : ")");
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.flush();
  check(out.good(), path.string() + ": write failed");
}

int64_t now_nanoseconds() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool is_item_dir(const fs::path& dir) {
  return fs::is_regular_file(dir / "_METADATA");
}

}  // namespace

std::string resolve_orbax_item_dir(const std::string& path) {
  const fs::path p(path);
  if (is_item_dir(p)) return p.string();
  for (const char* item : {"items", "default"})
    if (is_item_dir(p / item)) return (p / item).string();
  // A CheckpointManager root: numeric step folders.
  int64_t best = -1;
  std::error_code ec;
  if (fs::is_directory(p, ec)) {
    for (const auto& entry : fs::directory_iterator(p, ec)) {
      const std::string name = entry.path().filename().string();
      if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
      if (name.size() < 19 && std::stoll(name) > best &&
          (is_item_dir(entry.path() / "items") || is_item_dir(entry.path() / "default")))
        best = std::stoll(name);
    }
  }
  check(best >= 0,
        path + ": not an orbax checkpoint (no _METADATA, items/_METADATA or step folders)");
  return resolve_orbax_item_dir((p / std::to_string(best)).string());
}

bool OrbaxSource::present_in(const std::string& dir) {
  try {
    resolve_orbax_item_dir(dir);
    return true;
  } catch (const Error&) {
    return false;
  }
}

OrbaxSource::OrbaxSource(const std::string& path) : dir_(resolve_orbax_item_dir(path)) {
  const std::string metadata_path = (fs::path(dir_) / "_METADATA").string();
  try {
    read_metadata(read_json_file(metadata_path), metadata_path);
  } catch (const Json::exception& e) {
    throw Error(metadata_path + ": malformed orbax metadata: " + e.what());
  }
}

void OrbaxSource::read_metadata(const Json& metadata, const std::string& metadata_path) {
  check(metadata.contains("tree_metadata") && metadata["tree_metadata"].is_object(),
        metadata_path + ": missing key 'tree_metadata'");
  ocdbt_ = metadata.value("use_ocdbt", false) || OcdbtKvStore::present_in(dir_);
  if (ocdbt_)
    store_ = OcdbtKvStore::open(dir_);
  else
    store_ = std::make_unique<DirectoryKvStore>(dir_);
  for (const auto& [tuple, entry] : metadata["tree_metadata"].items()) {
    const std::string where = metadata_path + ": entry " + tuple;
    check(entry.contains("key_metadata") && entry["key_metadata"].is_array(),
          where + ": missing key 'key_metadata'");
    std::vector<std::string> parts;
    for (const Json& k : entry["key_metadata"]) {
      check(k.contains("key"), where + ": key_metadata without 'key'");
      parts.push_back(k["key"].is_string() ? k["key"].get<std::string>() : k["key"].dump());
    }
    const Json value = entry.value("value_metadata", Json::object());
    const std::string type = value.value("value_type", "");
    if (value.value("skip_deserialize", false) || (type != "jax.Array" && type != "np.ndarray"))
      continue;  // scalars and strings live in _METADATA itself; Kiln reads arrays only
    Param p;
    p.storage_name = join(parts, '.');
    std::tie(p.dtype, p.shape) = read_zarr_metadata(*store_, p.storage_name + "/");
    const std::string name = join(parts, '/');
    names_.push_back(name);
    params_.emplace(name, std::move(p));
  }
}

const OrbaxSource::Param& OrbaxSource::param(const std::string& name) const {
  auto it = params_.find(name);
  if (it == params_.end()) throw Error(dir_ + ": no array named '" + name + "'");
  return it->second;
}

Tensor OrbaxSource::get(const std::string& name) const {
  return read_zarr_array(*store_, param(name).storage_name + "/");
}

Tensor OrbaxSource::get_side_array(const std::string& name) const {
  std::string storage = name;
  std::replace(storage.begin(), storage.end(), '/', '.');
  if (!store_->read(storage + "/.zarray") && !store_->read(storage + "/zarr.json")) return Tensor();
  return read_zarr_array(*store_, storage + "/");
}

OrbaxWriter::OrbaxWriter(std::string dir, OrbaxWriteOptions options)
    : dir_(std::move(dir)), options_(options) {
  check(!fs::exists(dir_) || fs::is_empty(dir_), dir_ + ": exists and is not empty");
  item_dir_ = options_.manager_step
                  ? (fs::path(dir_) / std::to_string(*options_.manager_step) / "items").string()
                  : dir_;
  fs::create_directories(item_dir_);
  if (options_.ocdbt) ocdbt_ = std::make_unique<OcdbtWriter>(item_dir_, OcdbtWriter::Options{});
}

OrbaxWriter::~OrbaxWriter() {
  if (!compressor_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  compressor_.join();
}

void OrbaxWriter::compress_loop() {
  for (;;) {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return chunk_pending_ || stopping_; });
    if (!chunk_pending_) return;
    const std::string key = chunk_key_;
    const std::vector<char>& raw = chunk_buffers_[chunk_slot_];
    lock.unlock();
    try {
      const auto [frame, frame_size] = zstd_->compress(raw.data(), raw.size());
      store(key, frame, frame_size);
    } catch (...) {
      lock.lock();
      chunk_error_ = std::current_exception();
      lock.unlock();
    }
    lock.lock();
    chunk_pending_ = false;
    lock.unlock();
    changed_.notify_all();
  }
}

void OrbaxWriter::wait_for_chunk() {
  if (!compressor_.joinable()) return;
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return !chunk_pending_; });
  if (chunk_error_) {
    std::exception_ptr e = chunk_error_;
    chunk_error_ = nullptr;
    std::rethrow_exception(e);
  }
}

void OrbaxWriter::add(const std::string& name, const Tensor& tensor) {
  add_array(name, tensor, true);
}

void OrbaxWriter::add_side_array(const std::string& name, const Tensor& tensor) {
  add_array(name, tensor, false);
}

std::string OrbaxWriter::start_array(const std::string& name, bool listed, Shape shape,
                                     Shape chunks) {
  Written w;
  w.listed = listed;
  w.shape = std::move(shape);
  w.chunks = std::move(chunks);
  size_t start = 0;
  for (;;) {
    const size_t slash = name.find('/', start);
    w.keys.push_back(name.substr(start, slash - start));
    const std::string& part = w.keys.back();
    check(!part.empty() && part.find_first_of(".'\"\\") == std::string::npos,
          item_dir_ + ": tensor '" + name +
              "': tree path parts must be non-empty, without '.', quotes or backslashes");
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  const std::string storage = join(w.keys, '.');
  for (const Written& other : written_)
    check(join(other.keys, '.') != storage, item_dir_ + ": tensor '" + name + "' added twice");
  written_.push_back(std::move(w));
  return storage;
}

void OrbaxWriter::put(const std::string& key, const char* bytes, size_t size) {
  wait_for_chunk();
  store(key, bytes, size);
}

void OrbaxWriter::store(const std::string& key, const char* bytes, size_t size) {
  if (ocdbt_) {
    ocdbt_->add(key, bytes, size);
    return;
  }
  const fs::path path = fs::path(item_dir_) / key;
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes, static_cast<std::streamsize>(size));
  out.flush();
  check(out.good(), path.string() + ": write failed");
}

void OrbaxWriter::put_chunk(const std::string& key, const char* raw, size_t size,
                            size_t chunk_bytes) {
  if (!options_.zarr.zstd) {
    if (size < chunk_bytes) {  // zarr v2 stores full chunks: edge chunks are zero-padded
      if (pad_.size() < chunk_bytes) pad_.resize(chunk_bytes);
      std::memcpy(pad_.data(), raw, size);
      std::memset(pad_.data() + size, 0, chunk_bytes - size);
      raw = pad_.data();
    }
    return put(key, raw, chunk_bytes);
  }
  if (!zstd_) {
    const int threads =
        options_.compress_threads > 0
            ? options_.compress_threads
            : static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 4u));
    zstd_ = std::make_unique<ZstdCompressor>(options_.zarr.zstd_level, threads);
    compressor_ = std::thread([this] { compress_loop(); });
  }
  // The chunk goes into the buffer the thread is not compressing (so the caller may reuse or
  // release `raw` at once), then to the thread once it is done with the previous one.
  std::vector<char>& buffer = chunk_buffers_[chunk_slot_ ^ 1];
  buffer.resize(chunk_bytes);
  std::memcpy(buffer.data(), raw, size);
  std::memset(buffer.data() + size, 0, chunk_bytes - size);
  wait_for_chunk();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    chunk_slot_ ^= 1;
    chunk_key_ = key;
    chunk_pending_ = true;
  }
  changed_.notify_all();
}

void OrbaxWriter::add_array(const std::string& name, const Tensor& tensor, bool listed) {
  const Shape chunks = zarr_v2_chunk_shape(tensor.dtype(), tensor.shape(), options_.zarr);
  const std::string storage = start_array(name, listed, tensor.shape(), chunks);
  const std::string prefix = storage + "/";
  put(prefix + ".zarray", zarr_v2_metadata(tensor.dtype(), tensor.shape(), chunks, options_.zarr));
  if (tensor.numel() == 0) return;
  const Tensor contiguous = tensor.contiguous();
  const auto* src = static_cast<const char*>(contiguous.raw());
  const Shape& shape = tensor.shape();
  const int64_t chunk_count = shape.empty() ? 1 : (shape[0] + chunks[0] - 1) / chunks[0];
  const size_t chunk_bytes = static_cast<size_t>(shape_numel(chunks)) * dtype_size(tensor.dtype());
  for (int64_t c = 0; c < chunk_count; ++c) {
    Shape index(shape.size(), 0);
    if (!shape.empty()) index[0] = c;
    const size_t begin = static_cast<size_t>(c) * chunk_bytes;
    const size_t size = std::min(chunk_bytes, contiguous.nbytes() - begin);
    put_chunk(zarr_v2_chunk_key(prefix, index), src + begin, size, chunk_bytes);
    if (options_.release_borrowed_inputs && !contiguous.writable())
      release_mapped_pages(src + begin, size);
  }
}

void OrbaxWriter::begin_layers(const std::string& name, DType dtype, const Shape& shape,
                               int layer_axis, bool listed) {
  check((layer_axis == 0 && !shape.empty()) || (layer_axis == 1 && shape.size() >= 2),
        item_dir_ + ": tensor '" + name + "': layers must be stacked on axis 0 or 1, not " +
            std::to_string(layer_axis) + " of " + shape_to_string(shape));
  Shape chunks = shape;
  for (int64_t& c : chunks) c = std::max<int64_t>(c, 1);
  chunks[layer_axis] = 1;
  if (layer_axis == 1) {
    // Rows of dimension 0 per chunk, as write_zarr_v2 splits whole arrays.
    int64_t row_bytes = static_cast<int64_t>(dtype_size(dtype));
    for (size_t d = 2; d < chunks.size(); ++d) row_bytes *= chunks[d];
    chunks[0] = std::clamp<int64_t>(static_cast<int64_t>(options_.zarr.max_chunk_bytes) / row_bytes,
                                    1, chunks[0]);
  }
  const std::string storage = start_array(name, listed, shape, chunks);
  Layered l{storage + "/",
            dtype,
            shape,
            chunks,
            layer_axis,
            listed,
            std::vector<bool>(static_cast<size_t>(shape[layer_axis]), false),
            0};
  put(l.prefix + ".zarray", zarr_v2_metadata(dtype, shape, chunks, options_.zarr));
  layered_.emplace(name, std::move(l));
}

void OrbaxWriter::add_layer(const std::string& name, int64_t position, const Tensor& layer) {
  auto it = layered_.find(name);
  check(it != layered_.end() && it->second.block == 0,
        item_dir_ + ": tensor '" + name + "' was not begun as layers");
  Layered& l = it->second;
  Shape expected = l.shape;
  expected.erase(expected.begin() + l.axis);
  check(position >= 0 && position < static_cast<int64_t>(l.done.size()) && !l.done[position],
        item_dir_ + ": tensor '" + name + "': layer " + std::to_string(position) +
            " out of range or written twice");
  check(layer.dtype() == l.dtype && layer.shape() == expected,
        item_dir_ + ": tensor '" + name + "': layer of " + layer.shape_string() + " " +
            std::string(dtype_name(layer.dtype())) + ", expected " + shape_to_string(expected) +
            " " + std::string(dtype_name(l.dtype)));
  l.done[position] = true;
  const Tensor src = layer.contiguous();
  const auto* bytes = static_cast<const char*>(src.raw());
  const size_t chunk_bytes = static_cast<size_t>(shape_numel(l.chunks)) * dtype_size(l.dtype);
  // Axis 1: the layer's rows split into blocks of chunks[0]; axis 0: the layer is one chunk.
  const int64_t blocks = l.axis == 1 ? (l.shape[0] + l.chunks[0] - 1) / l.chunks[0] : 1;
  for (int64_t b = 0; b < blocks; ++b) {
    Shape index(l.shape.size(), 0);
    index[l.axis] = position;
    index[0] += l.axis == 1 ? b : 0;
    const size_t begin = static_cast<size_t>(b) * chunk_bytes;
    const size_t size = std::min(chunk_bytes, src.nbytes() - begin);
    if (!l.listed &&
        std::all_of(bytes + begin, bytes + begin + size, [](char c) { return c == 0; }))
      continue;
    put_chunk(zarr_v2_chunk_key(l.prefix, index), bytes + begin, size, chunk_bytes);
    if (options_.release_borrowed_inputs && !src.writable())
      release_mapped_pages(bytes + begin, size);
  }
}

void OrbaxWriter::begin_blocks(const std::string& name, DType dtype, const Shape& shape, int axis,
                               int64_t block, bool listed) {
  check((axis == 0 && !shape.empty()) || (axis == 1 && shape.size() == 2),
        item_dir_ + ": tensor '" + name + "': blocks along axis 0, or 1 of a matrix, not " +
            std::to_string(axis) + " of " + shape_to_string(shape));
  check(block >= 1 && shape[axis] >= 1,
        item_dir_ + ": tensor '" + name + "': empty blocks of " + shape_to_string(shape));
  Shape chunks = shape;
  for (int64_t& c : chunks) c = std::max<int64_t>(c, 1);
  chunks[axis] = std::min(block, shape[axis]);
  const std::string storage = start_array(name, listed, shape, chunks);
  const int64_t count = (shape[axis] + chunks[axis] - 1) / chunks[axis];
  Layered l{storage + "/",
            dtype,
            shape,
            chunks,
            axis,
            listed,
            std::vector<bool>(static_cast<size_t>(count), false),
            chunks[axis]};
  put(l.prefix + ".zarray", zarr_v2_metadata(dtype, shape, chunks, options_.zarr));
  layered_.emplace(name, std::move(l));
}

void OrbaxWriter::add_block(const std::string& name, int64_t position, const Tensor& tensor) {
  auto it = layered_.find(name);
  check(it != layered_.end() && it->second.block > 0,
        item_dir_ + ": tensor '" + name + "' was not begun as blocks");
  Layered& l = it->second;
  check(position >= 0 && position < static_cast<int64_t>(l.done.size()) && !l.done[position],
        item_dir_ + ": tensor '" + name + "': block " + std::to_string(position) +
            " out of range or written twice");
  Shape expected = l.shape;
  expected[l.axis] = std::min(l.block, l.shape[l.axis] - position * l.block);
  check(tensor.dtype() == l.dtype && tensor.shape() == expected,
        item_dir_ + ": tensor '" + name + "': block of " + tensor.shape_string() + " " +
            std::string(dtype_name(tensor.dtype())) + ", expected " + shape_to_string(expected) +
            " " + std::string(dtype_name(l.dtype)));
  l.done[position] = true;
  const Tensor src = tensor.contiguous();
  const auto* bytes = static_cast<const char*>(src.raw());
  const size_t esize = dtype_size(l.dtype);
  const size_t chunk_bytes = static_cast<size_t>(shape_numel(l.chunks)) * esize;
  Shape index(l.shape.size(), 0);
  index[l.axis] = position;
  if (!l.listed && std::all_of(bytes, bytes + src.nbytes(), [](char c) { return c == 0; })) return;
  if (l.axis == 0 || expected[1] == l.block) {
    // The chunk's leading bytes (a partial last block along axis 0 is zero-padded at its end).
    put_chunk(zarr_v2_chunk_key(l.prefix, index), bytes, src.nbytes(), chunk_bytes);
  } else {
    // The last block along axis 1 of a matrix: each row padded to the chunk's width.
    if (pad_.size() < chunk_bytes) pad_.resize(chunk_bytes);
    std::memset(pad_.data(), 0, chunk_bytes);
    const size_t have = static_cast<size_t>(expected[1]) * esize;
    const size_t width = static_cast<size_t>(l.block) * esize;
    for (int64_t r = 0; r < l.shape[0]; ++r)
      std::memcpy(pad_.data() + static_cast<size_t>(r) * width,
                  bytes + static_cast<size_t>(r) * have, have);
    put_chunk(zarr_v2_chunk_key(l.prefix, index), pad_.data(), chunk_bytes, chunk_bytes);
  }
  if (options_.release_borrowed_inputs && !src.writable())
    release_mapped_pages(bytes, src.nbytes());
}

void OrbaxWriter::finish() {
  check(!written_.empty(), item_dir_ + ": an orbax checkpoint needs at least one array");
  for (const auto& [name, l] : layered_)
    for (size_t j = 0; j < l.done.size(); ++j)
      check(l.done[j], item_dir_ + ": tensor '" + name +
                           "': " + (l.block > 0 ? "block " : "layer ") + std::to_string(j) +
                           " was never written");
  wait_for_chunk();
  if (ocdbt_) ocdbt_->finish();
  const int64_t start = now_nanoseconds();
  Json tree = Json::object(), sharding = Json::object(), arrays = Json::array();
  for (const Written& w : written_) {
    if (!w.listed) continue;
    Json keys = Json::array();
    for (const std::string& k : w.keys) keys.push_back({{"key", k}, {"key_type", 2}});
    tree[python_tuple(w.keys)] = {
        {"key_metadata", keys},
        {"value_metadata",
         {{"value_type", "jax.Array"}, {"skip_deserialize", false}, {"write_shape", w.shape}}}};
    const std::string storage = join(w.keys, '.');
    sharding[base64(storage)] = kSingleDeviceSharding;
    arrays.push_back({{"array_metadata",
                       {{"param_name", storage},
                        {"write_shape", w.shape},
                        {"chunk_shape", w.chunks},
                        {"ext_metadata", nullptr}}}});
  }
  const Json metadata = {{"tree_metadata", tree},
                         {"use_ocdbt", options_.ocdbt},
                         {"use_zarr3", false},
                         {"store_array_data_equal_to_fill_value", true},
                         {"custom_metadata", nullptr}};
  const fs::path item(item_dir_);
  write_text(item / "_METADATA", metadata.dump());
  write_text(item / "_sharding", sharding.dump());
  fs::create_directories(item / "array_metadatas");
  write_text(item / "array_metadatas" / "process_0", Json{{"array_metadatas", arrays}}.dump());
  const fs::path step_dir = options_.manager_step ? item.parent_path() : item;
  const Json handlers =
      options_.manager_step ? Json{{"items", kPyTreeHandler}} : Json(kPyTreeHandler);
  const Json checkpoint = {{"item_handlers", handlers},
                           {"metrics", Json::object()},
                           {"performance_metrics", Json::object()},
                           {"init_timestamp_nsecs", start},
                           {"commit_timestamp_nsecs", now_nanoseconds()},
                           {"custom_metadata", Json::object()}};
  write_text(step_dir / "_CHECKPOINT_METADATA", checkpoint.dump());
  // Orbax's commit marker (consulted on object stores, where renames are not atomic).
  for (const fs::path& dir : {item, step_dir})
    write_text(dir / "commit_success.txt", "Checkpoint commit was successful to " + dir.string());
}

}  // namespace kiln
