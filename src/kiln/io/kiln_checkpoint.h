// Kiln checkpoints (docs/checkpoint_format.md): a manifest plus 64-byte-aligned
// safetensors data files. A streaming writer that lays files out from a plan, and a
// zero-copy reader that serves both the scanned and the unscanned layout.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kiln/io/direct_appender.h"
#include "kiln/io/json.h"
#include "kiln/io/safetensors.h"
#include "kiln/models/family.h"

namespace kiln {

// One tensor the writer will receive: its name, dtype and shape; scanned tensors also name
// their stacking axis and layer group.
struct KilnTensorPlan {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  int layer_axis = -1;      // >= 0 for scanned tensors
  std::string layer_group;  // key of KilnCheckpointInfo::layer_groups for scanned tensors
};

// The manifest fields that are not per tensor.
struct KilnCheckpointInfo {
  Json model_spec = Json::object();
  Json source_config = Json::object();
  std::string layout = "unscanned";                          // or "scanned"
  std::string dtype = "keep";                                // the conversion's --dtype
  std::map<std::string, std::vector<int64_t>> layer_groups;  // scanned: group -> layers
  // Where the weights came from when not from the source config's own checkpoint (e.g. a
  // MaxText tree and the value changes its conversion made); the manifest's "provenance",
  // omitted when empty.
  Json provenance = Json::object();
};

// Writes a Kiln checkpoint into `dir` (created; must not exist or be empty). The
// constructor validates the plan, assigns tensors to data files and writes their headers;
// tensors then arrive in any order, whole or one layer at a time, and go straight to disk.
// finish() checks completeness, computes checksums (of whole tensors as they were written;
// stacked ones are read back in bounded chunks), copies tokenizer files and writes the
// manifest last. Errors throw kiln::Error naming the tensor or file. Not thread-safe.
class KilnCheckpointWriter {
 public:
  struct Options {
    uint64_t max_shard_bytes = uint64_t{4} << 30;
    // The caller promises that every read-only (borrowed) tensor it passes is a view of a
    // read-only file mapping (MappedFile, Residency::kMapped): the writer then drops such a
    // tensor's pages from the process once written (release_mapped_pages), so converting a
    // model keeps the resident set bounded however large its tensors are.
    bool release_borrowed_inputs = false;
  };
  KilnCheckpointWriter(std::string dir, KilnCheckpointInfo info, std::vector<KilnTensorPlan> plan,
                       Options options);
  ~KilnCheckpointWriter();
  KilnCheckpointWriter(const KilnCheckpointWriter&) = delete;
  KilnCheckpointWriter& operator=(const KilnCheckpointWriter&) = delete;

  // Writes the whole tensor `name` (dtype and shape must match the plan; any strides).
  void write(const std::string& name, const Tensor& tensor);
  // Writes position `position` of the layer axis of scanned tensor `name`; `slice` has the
  // plan's shape without the layer axis.
  void write_layer(const std::string& name, int64_t position, const Tensor& slice);
  // write() and write_layer() with the bytes read from the file `path` at `offset` (`dtype`
  // and `shape` describe them: raw, little-endian, C order) through a bounded buffer instead
  // of a mapping: on some virtual machines, user-space reads of mapped page-cache pages run
  // at a fraction of pread's speed. Read errors name `path`.
  void write_from_file(const std::string& name, DType dtype, const Shape& shape,
                       const std::string& path, uint64_t offset);
  void write_layer_from_file(const std::string& name, int64_t position, DType dtype,
                             const Shape& shape, const std::string& path, uint64_t offset);
  // Every layer of scanned tensor `name` at once, layer j's bytes read from
  // `sources[j]` = (path, offset) as in write_layer_from_file, and written in file order: each
  // block of the stacked tensor (a few MiB, all layers' rows of it) is gathered with vectored
  // reads (each source tensor is read once, front to back) and written with one large write,
  // checksummed on the way. Stacking on axis 1 interleaves the layers' rows, so layer-wise
  // writes of it are one small write per row; this is the fast path for scanned conversion.
  void write_stacked_from_files(const std::string& name, DType dtype, const Shape& layer_shape,
                                const std::vector<std::pair<std::string, uint64_t>>& sources);
  // Copies the tokenizer file at `path` into the checkpoint under its file name.
  void add_tokenizer_file(const std::string& path);
  // Completes the checkpoint (see the class comment).
  void finish();

 private:
  struct Slot {
    KilnTensorPlan plan;
    size_t file;
    uint64_t offset;  // absolute, in its file
    uint64_t nbytes;
    uint32_t crc = 0;  // CRC-32C of the written bytes (whole writes: at write time)
    bool written_whole = false;
    std::vector<bool> layers_written;  // layer-wise writes of a scanned tensor
  };
  // Bytes of an incoming tensor, valid until the next read; when `fd` >= 0 the same bytes
  // also lie in that file from `file_offset`, so they can be copied file to file.
  struct Chunk {
    const char* data;
    int fd = -1;
    uint64_t file_offset = 0;
  };
  // Yields bytes [at, at + size) of the incoming tensor's C-order data (size at most one
  // chunk).
  using ChunkReader = std::function<Chunk(uint64_t at, uint64_t size)>;
  Slot& slot(const std::string& name);
  // slot(name) after the checks of write() / write_layer() (dtype, shape, written twice).
  Slot& whole_slot(const std::string& name, DType dtype, const Shape& shape);
  Slot& layer_slot(const std::string& name, int64_t position, DType dtype, const Shape& shape);
  // Writes a whole tensor (checksumming it) or layer `position` of a stacked one.
  void write_whole(Slot& slot, const ChunkReader& read);
  void write_slice(Slot& slot, int64_t position, const ChunkReader& read);
  // Whether the pages of `input` are dropped once written (release_borrowed_inputs).
  bool releases(const Tensor& input) const;
  // Reads a contiguous tensor in place (dropping each chunk's pages once the next is asked
  // for, when releases()), or a file through buffer_.
  ChunkReader memory_reader(const Tensor& contiguous) const;
  ChunkReader file_reader(const std::string& path, uint64_t offset, int fd);
  void write_bytes(const Slot& slot, const void* data, uint64_t size, uint64_t offset) const;
  // Writes bytes [from, from + size) of `chunk` at `offset` of the slot's file: copy_file_range
  // from the chunk's file when it has one (in-kernel, as cp does), else write_bytes.
  void put(const Slot& slot, const Chunk& chunk, uint64_t from, uint64_t size, uint64_t offset);
  std::string dir_;
  KilnCheckpointInfo info_;
  Options options_;
  std::vector<Slot> slots_;
  std::map<std::string, size_t> index_;
  std::vector<std::string> file_names_;
  std::vector<uint64_t> file_sizes_;
  std::vector<int> fds_;
  std::vector<std::string> tokenizer_files_;
  std::unique_ptr<char, decltype(&std::free)> buffer_{nullptr, &std::free};  // [chunk] bytes
  bool copy_file_range_works_ = true;  // false once the filesystems refused it
  bool finished_ = false;
  // write_stacked_from_files' gathered blocks go out through it (direct I/O, overlapped).
  std::unique_ptr<DirectAppender> direct_;
};

// A Kiln checkpoint opened for reading. The constructor parses the manifest, maps every
// data file (held as `residency` says) and checks that each tensor entry agrees with its file's
// safetensors header; get() returns read-only views into the mapping. Checksums are checked by
// verify() only.
class KilnCheckpoint : public TensorSource {
 public:
  explicit KilnCheckpoint(const std::string& dir, Residency residency = Residency::kMapped);
  // True when `dir` holds kiln_checkpoint.json.
  static bool present_in(const std::string& dir);

  std::vector<std::string> names() const override;
  bool contains(const std::string& name) const override { return tensors_.count(name) != 0; }
  Tensor get(const std::string& name) const override;
  Shape shape_of(const std::string& name) const override { return entry(name).shape; }
  DType dtype_of(const std::string& name) const override { return entry(name).dtype; }
  std::string where() const override { return dir_; }

  const Json& manifest() const { return manifest_; }
  const std::string& layout() const { return layout_; }
  // Decoder layer `layer`'s parameter `param` ("self_attention/query/kernel"): the tensor
  // decoder/layers_<layer>/<param> when unscanned, or the select() view of the stacked
  // tensor of the layer's group when scanned. Throws Error naming the tensor when absent.
  Tensor layer_tensor(int64_t layer, const std::string& param) const;
  // Every parameter under its unscanned name, as the model loader wants them: a scanned
  // tensor decoder/<group>/<param> becomes one select() view per layer of its group, named
  // decoder/layers_<i>/<param> (zero-copy, strided along the layer axis); every other
  // tensor is its stored view. Throws Error naming the tensor when a scanned name does not
  // start with decoder/<its group>/.
  std::map<std::string, Tensor> unscanned_tensors() const;
  // Recomputes the CRC-32C of every tensor and tokenizer file; throws Error naming the
  // first one that differs from the manifest. A mapped checkpoint drops each tensor's pages
  // once checked, so verifying does not grow the process by the model's size.
  void verify() const;

 private:
  struct Entry {
    size_t file;
    uint64_t offset;
    uint64_t nbytes;
    DType dtype;
    Shape shape;
    uint32_t crc;
    int layer_axis = -1;
    std::string layer_group;
  };
  const Entry& entry(const std::string& name) const;
  std::string dir_;
  Residency residency_;
  Json manifest_;
  std::string layout_;
  std::map<std::string, std::vector<int64_t>> layer_groups_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, Entry> tensors_;
};

}  // namespace kiln
