// Orbax checkpoints (PyTreeCheckpointer / StandardCheckpointer / CheckpointManager
// layouts): a TensorSource over their arrays, and a writer that orbax-checkpoint restores.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "kiln/io/json.h"
#include "kiln/io/orbax/kvstore.h"
#include "kiln/io/orbax/ocdbt.h"
#include "kiln/io/orbax/zarr.h"
#include "kiln/io/zstd_codec.h"
#include "kiln/models/family.h"

namespace kiln {

// The directory that holds an orbax item's `_METADATA`, given the item directory itself,
// a step directory holding `items/` (or `default/`), or a CheckpointManager root (its
// highest numeric step). Throws Error naming `path` when none is found.
std::string resolve_orbax_item_dir(const std::string& path);

// The arrays of an orbax checkpoint item, named by their tree path joined with '/'
// ("params/decoder/decoder_norm/scale"). Reads `_METADATA`, then zarr v2 or v3 arrays from
// plain files or an OCDBT database. get() decodes the whole array (a new tensor).
class OrbaxSource : public TensorSource {
 public:
  explicit OrbaxSource(const std::string& path);
  // True when resolve_orbax_item_dir(dir) would succeed.
  static bool present_in(const std::string& dir);

  std::vector<std::string> names() const override { return names_; }
  bool contains(const std::string& name) const override { return params_.count(name) != 0; }
  Tensor get(const std::string& name) const override;
  Shape shape_of(const std::string& name) const override { return param(name).shape; }
  DType dtype_of(const std::string& name) const override { return param(name).dtype; }
  std::string where() const override { return dir_; }
  // True when the arrays live in an OCDBT database.
  bool uses_ocdbt() const { return ocdbt_; }
  // The side array at tree path `name` (written by OrbaxWriter::add_side_array; not in
  // `_METADATA`), or an undefined tensor when there is none.
  Tensor get_side_array(const std::string& name) const;

 private:
  struct Param {
    std::string storage_name;  // tree path joined with '.'
    DType dtype;
    Shape shape;
  };
  const Param& param(const std::string& name) const;
  void read_metadata(const Json& metadata, const std::string& metadata_path);
  std::string dir_;
  bool ocdbt_ = false;
  std::unique_ptr<KvStore> store_;
  std::map<std::string, Param> params_;
  std::vector<std::string> names_;
};

struct OrbaxWriteOptions {
  bool ocdbt = true;  // arrays in an OCDBT database (orbax's default), else plain zarr files
  ZarrWriteOptions zarr{.zstd = true, .zstd_level = 1};
  // Threads compressing each zstd chunk (libzstd's workers); 0: one per core, at most 4.
  int compress_threads = 0;
  // When set, write CheckpointManager's layout: <dir>/<step>/items/... (as MaxText loads).
  std::optional<int64_t> manager_step;
  // The caller promises that every read-only (borrowed) tensor it adds is a view of a
  // read-only file mapping: its pages are then dropped chunk by chunk once written
  // (release_mapped_pages), so a large array never stays resident.
  bool release_borrowed_inputs = false;
};

// Writes an orbax checkpoint that orbax-checkpoint's PyTreeCheckpointer restores: zarr v2
// arrays (raw or zstd) in files or OCDBT, `_METADATA`, `_sharding`, array metadata and
// `_CHECKPOINT_METADATA` and `commit_success.txt`, as orbax 0.12 writes them. Tensors are streamed
// to disk as they are added. `dir` must not exist or be empty. Not thread-safe.
class OrbaxWriter {
 public:
  OrbaxWriter(std::string dir, OrbaxWriteOptions options);
  ~OrbaxWriter();
  OrbaxWriter(const OrbaxWriter&) = delete;
  OrbaxWriter& operator=(const OrbaxWriter&) = delete;
  // Adds the array at tree path `name` ("params/decoder/layers/mlp/wi_0/kernel"). Path parts
  // must be non-empty and free of '.', quotes and backslashes. Throws Error naming the tensor.
  void add(const std::string& name, const Tensor& tensor);
  // Stores `tensor` like add() but leaves it out of `_METADATA` and the other orbax
  // metadata, so orbax never sees it: data only Kiln reads (OrbaxSource::get_side_array).
  void add_side_array(const std::string& name, const Tensor& tensor);
  // Starts the array `name` of `dtype` and `shape`, stacked over layers on `layer_axis` (0,
  // or 1 for ranks >= 2), whose layers then arrive in any order through add_layer(), so
  // memory holds one layer: each zarr chunk holds rows of one layer. When `listed` is false
  // it is a side array (see add_side_array) and chunks that are all zero are not stored
  // (zarr reads a missing chunk as the fill value, zero).
  void begin_layers(const std::string& name, DType dtype, const Shape& shape, int layer_axis,
                    bool listed = true);
  // Writes layer `position` of an array begun with begin_layers(): `layer` has its shape
  // without the layer axis. Every layer exactly once (finish() checks).
  void add_layer(const std::string& name, int64_t position, const Tensor& layer);
  // Starts the array `name` of `dtype` and `shape`, whose blocks of `block` indices along
  // `axis` (0, or 1 for rank 2) then arrive in any order through add_block(): each zarr chunk
  // holds one block (axis 1: all rows; axis 0: whole rows), so a caller that produces a large
  // array block by block (a transposed source read front to back in row blocks) holds one
  // block. `listed`: as for begin_layers.
  void begin_blocks(const std::string& name, DType dtype, const Shape& shape, int axis,
                    int64_t block, bool listed = true);
  // Writes block `position` (indices [position * block, ...) along the axis) of an array
  // begun with begin_blocks(): `tensor` has the array's shape with `block` (the last block:
  // what remains) along the axis. Every block exactly once (finish() checks).
  void add_block(const std::string& name, int64_t position, const Tensor& tensor);
  // Writes the metadata files; call once after the last add().
  void finish();
  // The item directory the arrays go to (`dir`, or `dir/<step>/items`).
  const std::string& item_dir() const { return item_dir_; }

 private:
  struct Written {
    std::vector<std::string> keys;  // tree path parts
    Shape shape;
    Shape chunks;
    bool listed;  // in _METADATA (false for side arrays)
  };
  struct Layered {
    std::string prefix;  // "<storage name>/"
    DType dtype;
    Shape shape;
    Shape chunks;
    int axis;
    bool listed;
    std::vector<bool> done;
    int64_t block = 0;  // begin_blocks: indices per block along `axis`; 0: begin_layers
  };
  void add_array(const std::string& name, const Tensor& tensor, bool listed);
  // Records array `name` (checked tree path, not yet added) and returns its storage name.
  std::string start_array(const std::string& name, bool listed, Shape shape, Shape chunks);
  // Stores one zarr key: an OCDBT entry or a file (after the compressing thread's chunk).
  void put(const std::string& key, const char* bytes, size_t size);
  void store(const std::string& key, const char* bytes, size_t size);
  // The compressing thread: zstd chunks are compressed and stored there while the caller
  // prepares the next chunk (copied into the other of two buffers), so compression overlaps
  // reading, transposing and scaling. wait_for_chunk() waits until it is idle (rethrowing its
  // error); every store from the calling thread waits for it first.
  void compress_loop();
  void wait_for_chunk();
  void put(const std::string& key, const std::string& bytes) {
    put(key, bytes.data(), bytes.size());
  }
  // Stores the chunk `key` from its first `size` raw bytes (zero-padded to `chunk_bytes`,
  // compressed per the options) through buffers reused from chunk to chunk.
  void put_chunk(const std::string& key, const char* raw, size_t size, size_t chunk_bytes);
  std::unique_ptr<ZstdCompressor> zstd_;
  std::vector<char> pad_;
  std::thread compressor_;
  std::mutex mutex_;
  std::condition_variable changed_;
  bool chunk_pending_ = false, stopping_ = false;
  std::string chunk_key_;
  std::vector<char> chunk_buffers_[2];
  int chunk_slot_ = 0;  // the buffer the thread compresses (the caller fills the other)
  std::exception_ptr chunk_error_;
  std::string dir_;
  std::string item_dir_;
  OrbaxWriteOptions options_;
  std::unique_ptr<OcdbtWriter> ocdbt_;
  std::vector<Written> written_;
  std::map<std::string, Layered> layered_;  // by tree path
};

}  // namespace kiln
