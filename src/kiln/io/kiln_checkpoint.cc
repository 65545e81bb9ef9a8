#include "kiln/io/kiln_checkpoint.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "kiln/core/error.h"
#include "kiln/core/page_release.h"
#include "kiln/io/crc32c.h"

namespace kiln {
namespace fs = std::filesystem;
namespace {

constexpr const char* kManifestName = "kiln_checkpoint.json";
constexpr const char* kPaddingPrefix = "__padding__.";
constexpr int kFormatVersion = 1;
constexpr uint64_t kAlignment = 64;
// Bytes written or checksummed per step: bounds the writer's memory (and, with
// release_borrowed_inputs, the pages of its inputs it keeps) whatever the tensor size.
constexpr uint64_t kChunkBytes = uint64_t{8} << 20;
constexpr size_t kHugePage = size_t{2} << 20;

uint64_t align_up(uint64_t v) {
  return (v + kAlignment - 1) / kAlignment * kAlignment;
}

std::string hex32(uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof(buf), "%08x", v);
  return buf;
}

void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  check(fd >= 0, path + ": cannot open for fsync: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  ::close(fd);
  check(rc == 0, path + ": fsync failed");
}

// An input file open for reading (RAII).
struct InputFile {
  explicit InputFile(const std::string& path) : fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    check(fd >= 0, path + ": cannot open: " + std::strerror(errno));
  }
  ~InputFile() { ::close(fd); }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  int fd;
};

// CRC-32C of `size` bytes at `offset` of the open file `fd` (named `path` in errors), read
// through a bounded buffer so that checksumming a large file does not grow the process.
uint32_t crc_of_range(int fd, uint64_t offset, uint64_t size, const std::string& path) {
  std::vector<char> buffer(std::min<uint64_t>(size, kChunkBytes));  // [chunk] bytes
  uint32_t crc = 0;
  while (size > 0) {
    const ssize_t n = ::pread(fd, buffer.data(), std::min<uint64_t>(size, buffer.size()),
                              static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    check(n > 0,
          path + ": read failed: " + (n == 0 ? "unexpected end of file" : std::strerror(errno)));
    crc = crc32c(buffer.data(), static_cast<size_t>(n), crc);
    offset += static_cast<uint64_t>(n);
    size -= static_cast<uint64_t>(n);
  }
  return crc;
}

uint32_t file_crc(const std::string& path) {
  const InputFile input(path);
  return crc_of_range(input.fd, 0, fs::file_size(path), path);
}

}  // namespace

KilnCheckpointWriter::KilnCheckpointWriter(std::string dir, KilnCheckpointInfo info,
                                           std::vector<KilnTensorPlan> plan, Options options)
    : dir_(std::move(dir)), info_(std::move(info)), options_(options) {
  check(!fs::exists(dir_) || fs::is_empty(dir_), dir_ + ": exists and is not empty");
  check(info_.layout == "scanned" || info_.layout == "unscanned",
        dir_ + ": layout must be 'scanned' or 'unscanned', not '" + info_.layout + "'");
  check(!plan.empty(), dir_ + ": a checkpoint needs at least one tensor");
  fs::create_directories(dir_);
  // Validate the plan and assign tensors to files.
  std::vector<std::vector<size_t>> files;
  uint64_t current = 0;
  for (KilnTensorPlan& p : plan) {
    const std::string where = dir_ + ": tensor '" + p.name + "'";
    check(!p.name.empty() && p.name.rfind(kPaddingPrefix, 0) != 0 && p.name != "__metadata__",
          where + ": reserved name");
    check(index_.emplace(p.name, slots_.size()).second, where + ": planned twice");
    for (int64_t d : p.shape) check(d >= 0, where + ": negative dimension");
    if (p.layer_axis >= 0) {
      check(p.layer_axis < static_cast<int>(p.shape.size()), where + ": layer axis out of range");
      auto group = info_.layer_groups.find(p.layer_group);
      check(group != info_.layer_groups.end(),
            where + ": unknown layer group '" + p.layer_group + "'");
      check(static_cast<int64_t>(group->second.size()) == p.shape[p.layer_axis],
            where + ": layer axis of size " + std::to_string(p.shape[p.layer_axis]) +
                " but group '" + p.layer_group + "' has " + std::to_string(group->second.size()) +
                " layers");
    }
    if (is_quantized(p.dtype)) {
      check(!p.shape.empty() && p.shape.back() % dtype_block(p.dtype) == 0,
            where + ": " + std::string(dtype_name(p.dtype)) + " needs a last dimension of whole " +
                "blocks of " + std::to_string(dtype_block(p.dtype)) + ", not " +
                shape_to_string(p.shape));
      check(p.layer_axis < static_cast<int>(p.shape.size()) - 1,
            where + ": a quantized tensor cannot be stacked along its last dimension");
    }
    Slot s;
    s.nbytes = dtype_nbytes(p.dtype, shape_numel(p.shape));
    if (files.empty() || (current > 0 && current + s.nbytes > options.max_shard_bytes)) {
      files.emplace_back();
      current = 0;
    }
    current = align_up(current + s.nbytes);
    s.file = files.size() - 1;
    s.plan = std::move(p);
    files.back().push_back(slots_.size());
    slots_.push_back(std::move(s));
  }
  // Lay out and create each file: header, then tensors at 64-byte offsets with padding
  // entries covering the gaps (safetensors forbids holes).
  for (size_t f = 0; f < files.size(); ++f) {
    char name[64];
    std::snprintf(name, sizeof(name), "tensors-%05zu-of-%05zu.safetensors", f + 1, files.size());
    file_names_.push_back(name);
    std::vector<std::pair<std::string, std::pair<DType, Shape>>> specs;
    std::vector<uint64_t> relative;
    uint64_t offset = 0;
    for (size_t i : files[f]) {
      const Slot& s = slots_[i];
      if (offset % kAlignment != 0) {
        const uint64_t gap = kAlignment - offset % kAlignment;
        specs.push_back({kPaddingPrefix + std::to_string(specs.size()),
                         {DType::U8, {static_cast<int64_t>(gap)}}});
        offset += gap;
      }
      relative.push_back(offset);
      // Quantized tensors are U8 arrays of their blocks' bytes to safetensors readers.
      if (is_quantized(s.plan.dtype))
        specs.push_back({s.plan.name, {DType::U8, byte_shape(s.plan.dtype, s.plan.shape)}});
      else
        specs.push_back({s.plan.name, {s.plan.dtype, s.plan.shape}});
      offset += s.nbytes;
    }
    const std::string header = safetensors_header(specs, {{"format", "kiln"}});
    for (size_t k = 0; k < files[f].size(); ++k)
      slots_[files[f][k]].offset = header.size() + relative[k];
    const std::string path = (fs::path(dir_) / name).string();
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    check(fd >= 0, path + ": cannot create: " + std::strerror(errno));
    fds_.push_back(fd);
    file_sizes_.push_back(header.size() + offset);
    check(::ftruncate(fd, static_cast<off_t>(header.size() + offset)) == 0,
          path + ": cannot size the file: " + std::strerror(errno));
    Slot header_slot;
    header_slot.file = f;
    write_bytes(header_slot, header.data(), header.size(), 0);
  }
}

KilnCheckpointWriter::~KilnCheckpointWriter() {
  for (int fd : fds_)
    if (fd >= 0) ::close(fd);
}

KilnCheckpointWriter::Slot& KilnCheckpointWriter::slot(const std::string& name) {
  auto it = index_.find(name);
  check(it != index_.end(), dir_ + ": tensor '" + name + "' is not in the plan");
  check(!finished_, dir_ + ": tensor '" + name + "' written after finish()");
  return slots_[it->second];
}

void KilnCheckpointWriter::write_bytes(const Slot& s, const void* data, uint64_t size,
                                       uint64_t offset) const {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::pwrite(fds_[s.file], p, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    check(n > 0, dir_ + "/" + file_names_[s.file] + ": write failed: " + std::strerror(errno));
    p += n;
    size -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

KilnCheckpointWriter::Slot& KilnCheckpointWriter::whole_slot(const std::string& name, DType dtype,
                                                             const Shape& shape) {
  Slot& s = slot(name);
  const std::string where = dir_ + ": tensor '" + name + "'";
  check(dtype == s.plan.dtype && shape == s.plan.shape,
        where + ": got " + std::string(dtype_name(dtype)) + " " + shape_to_string(shape) +
            ", planned " + std::string(dtype_name(s.plan.dtype)) + " " +
            shape_to_string(s.plan.shape));
  check(!s.written_whole && s.layers_written.empty(), where + ": written twice");
  return s;
}

KilnCheckpointWriter::Slot& KilnCheckpointWriter::layer_slot(const std::string& name,
                                                             int64_t position, DType dtype,
                                                             const Shape& shape) {
  Slot& s = slot(name);
  const std::string where = dir_ + ": tensor '" + name + "'";
  const int axis = s.plan.layer_axis;
  check(axis >= 0, where + ": layer-wise write of a tensor without a layer axis");
  check(position >= 0 && position < s.plan.shape[axis],
        where + ": layer position " + std::to_string(position) + " out of range");
  Shape expected = s.plan.shape;
  expected.erase(expected.begin() + axis);
  check(dtype == s.plan.dtype && shape == expected,
        where + ": layer slice is " + std::string(dtype_name(dtype)) + " " +
            shape_to_string(shape) + ", planned " + shape_to_string(expected));
  check(!s.written_whole, where + ": written twice");
  if (s.layers_written.empty()) s.layers_written.assign(s.plan.shape[axis], false);
  check(!s.layers_written[position],
        where + ": layer position " + std::to_string(position) + " written twice");
  return s;
}

void KilnCheckpointWriter::write_whole(Slot& s, const ChunkReader& read) {
  uint32_t crc = 0;
  for (uint64_t done = 0; done < s.nbytes; done += kChunkBytes) {
    const uint64_t size = std::min(kChunkBytes, s.nbytes - done);
    const Chunk chunk = read(done, size);
    crc = crc32c(chunk.data, size, crc);
    put(s, chunk, 0, size, s.offset + done);
  }
  s.crc = crc;
  s.written_whole = true;
}

void KilnCheckpointWriter::write_slice(Slot& s, int64_t position, const ChunkReader& read) {
  // The slice is `outer` runs of `inner` bytes; run o lands at (o * layers + position) * inner.
  const Shape& shape = s.plan.shape;
  const int axis = s.plan.layer_axis;
  uint64_t outer = 1;
  int64_t trailing = 1;
  for (int d = 0; d < axis; ++d) outer *= shape[d];
  for (size_t d = axis + 1; d < shape.size(); ++d) trailing *= shape[d];
  const uint64_t inner = dtype_nbytes(s.plan.dtype, trailing);
  const uint64_t layers = shape[axis], total = outer * inner;
  for (uint64_t begin = 0; begin < total; begin += kChunkBytes) {
    const uint64_t end = std::min(total, begin + kChunkBytes);
    const Chunk chunk = read(begin, end - begin);
    for (uint64_t at = begin; at < end;) {  // the parts of runs inside [begin, end)
      const uint64_t run = at / inner, run_end = std::min(end, (run + 1) * inner);
      put(s, chunk, at - begin, run_end - at,
          s.offset + (run * layers + position) * inner + (at - run * inner));
      at = run_end;
    }
  }
  s.layers_written[position] = true;
}

bool KilnCheckpointWriter::releases(const Tensor& input) const {
  return options_.release_borrowed_inputs && !input.writable();
}

KilnCheckpointWriter::ChunkReader KilnCheckpointWriter::memory_reader(
    const Tensor& contiguous) const {
  const auto* data = static_cast<const char*>(contiguous.raw());
  const bool release = releases(contiguous);
  auto previous = std::make_shared<std::pair<uint64_t, uint64_t>>(0, 0);  // the last chunk
  return [data, release, previous](uint64_t at, uint64_t size) {
    if (release) release_mapped_pages(data + previous->first, previous->second);
    *previous = {at, size};
    return Chunk{data + at};
  };
}

void KilnCheckpointWriter::put(const Slot& s, const Chunk& chunk, uint64_t from, uint64_t size,
                               uint64_t offset) {
  auto in = static_cast<off_t>(chunk.file_offset + from), out = static_cast<off_t>(offset);
  uint64_t done = 0;
  while (chunk.fd >= 0 && copy_file_range_works_ && done < size) {
    const ssize_t n = ::copy_file_range(chunk.fd, &in, fds_[s.file], &out, size - done, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
      copy_file_range_works_ = false;  // e.g. across filesystems on older kernels
      break;
    }
    check(n > 0, dir_ + "/" + file_names_[s.file] + ": copy failed: " +
                     (n == 0 ? "unexpected end of the input file" : std::strerror(errno)));
    done += static_cast<uint64_t>(n);
  }
  if (done < size) write_bytes(s, chunk.data + from + done, size - done, offset + done);
}

void KilnCheckpointWriter::write(const std::string& name, const Tensor& tensor) {
  Slot& s = whole_slot(name, tensor.dtype(), tensor.shape());
  const Tensor c = tensor.contiguous();
  write_whole(s, memory_reader(c));
  if (releases(c)) release_mapped_pages(c.raw(), c.nbytes());
}

void KilnCheckpointWriter::write_layer(const std::string& name, int64_t position,
                                       const Tensor& slice) {
  Slot& s = layer_slot(name, position, slice.dtype(), slice.shape());
  const Tensor c = slice.contiguous();
  write_slice(s, position, memory_reader(c));
  if (releases(c)) release_mapped_pages(c.raw(), c.nbytes());
}

KilnCheckpointWriter::ChunkReader KilnCheckpointWriter::file_reader(const std::string& path,
                                                                    uint64_t offset, int fd) {
  if (buffer_ == nullptr) {
    buffer_.reset(static_cast<char*>(std::aligned_alloc(kHugePage, kChunkBytes)));
    check(buffer_ != nullptr, dir_ + ": cannot allocate a copy buffer");
    ::madvise(buffer_.get(), kChunkBytes, MADV_HUGEPAGE);  // advisory
  }
  char* buffer = buffer_.get();
  return [buffer, path, offset, fd](uint64_t at, uint64_t size) {
    for (uint64_t done = 0; done < size;) {
      const ssize_t n =
          ::pread(fd, buffer + done, size - done, static_cast<off_t>(offset + at + done));
      if (n < 0 && errno == EINTR) continue;
      check(n > 0, path + ": read failed at byte " + std::to_string(offset + at + done) + ": " +
                       (n == 0 ? "unexpected end of file" : std::strerror(errno)));
      done += static_cast<uint64_t>(n);
    }
    return Chunk{buffer, fd, offset + at};
  };
}

void KilnCheckpointWriter::write_from_file(const std::string& name, DType dtype, const Shape& shape,
                                           const std::string& path, uint64_t offset) {
  Slot& s = whole_slot(name, dtype, shape);
  const InputFile input(path);
  write_whole(s, file_reader(path, offset, input.fd));
}

void KilnCheckpointWriter::write_layer_from_file(const std::string& name, int64_t position,
                                                 DType dtype, const Shape& shape,
                                                 const std::string& path, uint64_t offset) {
  Slot& s = layer_slot(name, position, dtype, shape);
  const InputFile input(path);
  write_slice(s, position, file_reader(path, offset, input.fd));
}

void KilnCheckpointWriter::write_stacked_from_files(
    const std::string& name, DType dtype, const Shape& layer_shape,
    const std::vector<std::pair<std::string, uint64_t>>& sources) {
  Slot& s = slot(name);
  const std::string where = dir_ + ": tensor '" + name + "'";
  const int axis = s.plan.layer_axis;
  check(axis >= 0, where + ": stacked write of a tensor without a layer axis");
  check(static_cast<int64_t>(sources.size()) == s.plan.shape[axis],
        where + ": " + std::to_string(sources.size()) + " layers given, planned " +
            std::to_string(s.plan.shape[axis]));
  for (size_t j = 0; j < sources.size(); ++j)
    layer_slot(name, static_cast<int64_t>(j), dtype, layer_shape);
  // The tensor is `outer` runs of L * `inner` bytes; run o holds row o of every layer.
  uint64_t outer = 1;
  int64_t trailing = 1;
  for (int d = 0; d < axis; ++d) outer *= s.plan.shape[d];
  for (size_t d = axis + 1; d < s.plan.shape.size(); ++d) trailing *= s.plan.shape[d];
  const uint64_t inner = dtype_nbytes(s.plan.dtype, trailing);
  const uint64_t layers = sources.size();
  // Each distinct source file mapped once (read-only); its pages are dropped block by block.
  struct Mapping {
    const char* data = nullptr;
    size_t size = 0;
    ~Mapping() {
      if (data != nullptr) ::munmap(const_cast<char*>(data), size);
    }
  };
  std::map<std::string, Mapping> maps;
  std::vector<const char*> layer_data(layers);
  for (size_t j = 0; j < layers; ++j) {
    Mapping& m = maps[sources[j].first];
    if (m.data == nullptr) {
      const InputFile input(sources[j].first);
      m.size = fs::file_size(sources[j].first);
      void* p = ::mmap(nullptr, std::max<size_t>(m.size, 1), PROT_READ, MAP_SHARED, input.fd, 0);
      check(p != MAP_FAILED, sources[j].first + ": cannot map: " + std::strerror(errno));
      m.data = static_cast<const char*>(p);
    }
    check(sources[j].second + outer * inner <= m.size, sources[j].first + ": layer " +
                                                           std::to_string(j) + " of '" + name +
                                                           "' extends past the end of the file");
    layer_data[j] = m.data + sources[j].second;
  }
  // The stacked tensor is gathered block by block (whole runs, about kChunkBytes each) from
  // the mappings into DirectAppender's buffers, which a second descriptor of the file writes
  // with O_DIRECT in the background: buffered writes of new file pages (pwritev from the
  // mappings) ran at about 200 MB/s of system time on this project's VM. The unaligned head
  // of the range goes through the buffered descriptor.
  const uint64_t run_bytes = layers * inner;
  const std::string path = dir_ + "/" + file_names_[s.file];
  const uint64_t begin = s.offset, end = s.offset + outer * run_bytes;
  const uint64_t aligned =
      std::min(end, (begin + DirectAppender::kAlignment - 1) / DirectAppender::kAlignment *
                        DirectAppender::kAlignment);
  int direct_fd = ::open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  struct Closer {
    int fd;
    ~Closer() {
      if (fd >= 0) ::close(fd);
    }
  } closer{direct_fd};
  if (!direct_) direct_ = std::make_unique<DirectAppender>(path);
  direct_->begin(direct_fd >= 0 ? direct_fd : fds_[s.file], aligned);
  uint64_t at = begin;  // file offset of the next byte
  auto emit = [&](const char* data, uint64_t size) {
    if (at < aligned) {
      const uint64_t head = std::min(size, aligned - at);
      write_bytes(s, data, head, at);
      data += head;
      size -= head;
      at += head;
    }
    direct_->append(data, size);
    at += size;
  };
  const uint64_t runs_per_block =
      std::max<uint64_t>(1, kChunkBytes / std::max<uint64_t>(run_bytes, 1));
  uint32_t crc = 0;
  for (uint64_t o0 = 0; o0 < outer && inner > 0; o0 += runs_per_block) {
    const uint64_t runs = std::min(runs_per_block, outer - o0);
    for (uint64_t o = o0; o < o0 + runs; ++o)
      for (uint64_t j = 0; j < layers; ++j) {
        crc = crc32c(layer_data[j] + o * inner, inner, crc);
        emit(layer_data[j] + o * inner, inner);
      }
    for (uint64_t j = 0; j < layers; ++j)
      release_mapped_pages(layer_data[j] + o0 * inner, runs * inner);
  }
  direct_->finish();
  s.crc = crc;
  s.written_whole = true;  // checksummed here: finish() need not read it back
  s.layers_written.assign(layers, true);
}

void KilnCheckpointWriter::add_tokenizer_file(const std::string& path) {
  const std::string name = fs::path(path).filename().string();
  check(name != kManifestName && name.rfind("tensors-", 0) != 0,
        path + ": tokenizer file name collides with a checkpoint file");
  std::error_code ec;
  fs::copy_file(path, fs::path(dir_) / name, ec);
  check(!ec, path + ": cannot copy into " + dir_ + ": " + ec.message());
  tokenizer_files_.push_back(name);
}

void KilnCheckpointWriter::finish() {
  check(!finished_, dir_ + ": finish() called twice");
  for (const Slot& s : slots_) {
    std::string missing;
    for (size_t j = 0; j < s.layers_written.size(); ++j)
      if (!s.layers_written[j]) missing += (missing.empty() ? "" : ", ") + std::to_string(j);
    check(s.written_whole || (!s.layers_written.empty() && missing.empty()),
          dir_ + ": tensor '" + s.plan.name + "' was never written" +
              (missing.empty() ? "" : " (layer positions " + missing + " missing)"));
  }
  // Whole tensors were checksummed as they were written; stacked ones are read back.
  for (Slot& s : slots_)
    if (!s.written_whole)
      s.crc = crc_of_range(fds_[s.file], s.offset, s.nbytes, dir_ + "/" + file_names_[s.file]);
  for (size_t f = 0; f < fds_.size(); ++f) {
    check(::fsync(fds_[f]) == 0, dir_ + "/" + file_names_[f] + ": fsync failed");
    ::close(fds_[f]);
    fds_[f] = -1;
  }
  finished_ = true;
  Json tensors = Json::object(), files = Json::object(), tokenizer = Json::object();
  for (size_t f = 0; f < file_names_.size(); ++f)
    files[file_names_[f]] = {{"bytes", file_sizes_[f]}};
  for (const Slot& s : slots_) {
    Json entry = {{"file", file_names_[s.file]}, {"offset", s.offset},
                  {"nbytes", s.nbytes},          {"dtype", std::string(dtype_name(s.plan.dtype))},
                  {"shape", s.plan.shape},       {"crc32c", hex32(s.crc)}};
    if (s.plan.layer_axis >= 0) {
      entry["layer_axis"] = s.plan.layer_axis;
      entry["layer_group"] = s.plan.layer_group;
    }
    tensors[s.plan.name] = std::move(entry);
  }
  for (const std::string& name : tokenizer_files_) {
    const std::string path = (fs::path(dir_) / name).string();
    tokenizer[name] = {{"bytes", fs::file_size(path)}, {"crc32c", hex32(file_crc(path))}};
    fsync_path(path, false);
  }
  Json manifest = {{"format", "kiln-checkpoint"},
                   {"format_version", kFormatVersion},
                   {"kiln_version", KILN_VERSION},
                   {"model_spec", info_.model_spec},
                   {"source_config", info_.source_config},
                   {"layout", info_.layout},
                   {"dtype", info_.dtype},
                   {"tensors", tensors},
                   {"files", files},
                   {"tokenizer_files", tokenizer}};
  if (info_.layout == "scanned") manifest["layer_groups"] = info_.layer_groups;
  if (info_.provenance.is_object() && !info_.provenance.empty())
    manifest["provenance"] = info_.provenance;
  const fs::path manifest_path = fs::path(dir_) / kManifestName;
  const std::string temporary = manifest_path.string() + ".tmp";
  write_json_file(temporary, manifest);
  fsync_path(temporary, false);
  fs::rename(temporary, manifest_path);
  fsync_path(dir_, true);
}

bool KilnCheckpoint::present_in(const std::string& dir) {
  return fs::is_regular_file(fs::path(dir) / kManifestName);
}

KilnCheckpoint::KilnCheckpoint(const std::string& dir, Residency residency)
    : dir_(dir), residency_(residency) {
  const std::string path = (fs::path(dir) / kManifestName).string();
  manifest_ = read_json_file(path);
  try {
    check(manifest_.value("format", "") == "kiln-checkpoint",
          path + ": 'format' is not \"kiln-checkpoint\"");
    const int version = manifest_.at("format_version").get<int>();
    check(version >= 1 && version <= kFormatVersion, path + ": format_version " +
                                                         std::to_string(version) +
                                                         " is not supported (this Kiln "
                                                         "reads version " +
                                                         std::to_string(kFormatVersion) + ")");
    layout_ = manifest_.at("layout").get<std::string>();
    check(layout_ == "scanned" || layout_ == "unscanned",
          path + ": unknown layout '" + layout_ + "'");
    if (layout_ == "scanned")
      layer_groups_ =
          manifest_.at("layer_groups").get<std::map<std::string, std::vector<int64_t>>>();
    std::map<std::string, size_t> file_index;
    for (const auto& [name, info] : manifest_.at("files").items()) {
      check(name.find('/') == std::string::npos && name != "..",
            path + ": data file name '" + name + "' is not a plain file name");
      const std::string file = (fs::path(dir) / name).string();
      check(fs::exists(file), file + ": data file listed in " + path + " does not exist");
      const uint64_t bytes = info.at("bytes").get<uint64_t>();
      check(fs::file_size(file) == bytes, file + ": " + std::to_string(fs::file_size(file)) +
                                              " bytes, the manifest says " + std::to_string(bytes));
      file_index[name] = files_.size();
      files_.push_back(SafetensorsFile::open(file, residency));
    }
    for (const auto& [name, info] : manifest_.at("tensors").items()) {
      const std::string where = path + ": tensor '" + name + "'";
      Entry e;
      try {
        const std::string file = info.at("file").get<std::string>();
        check(file_index.count(file), where + ": file '" + file + "' is not in 'files'");
        e.file = file_index[file];
        e.offset = info.at("offset").get<uint64_t>();
        e.nbytes = info.at("nbytes").get<uint64_t>();
        const auto dtype = dtype_from_name(info.at("dtype").get<std::string>());
        check(dtype.has_value(), where + ": unknown dtype");
        e.dtype = *dtype;
        e.shape = info.at("shape").get<Shape>();
        const std::string crc = info.at("crc32c").get<std::string>();
        check(crc.size() == 8 && crc.find_first_not_of("0123456789abcdef") == std::string::npos,
              where + ": crc32c '" + crc + "' is not 8 lowercase hex digits");
        e.crc = static_cast<uint32_t>(std::stoul(crc, nullptr, 16));
        if (info.contains("layer_axis")) {
          e.layer_axis = info["layer_axis"].get<int>();
          e.layer_group = info.at("layer_group").get<std::string>();
          check(layer_groups_.count(e.layer_group), where + ": unknown layer group");
          check(e.layer_axis >= 0 && e.layer_axis < static_cast<int>(e.shape.size()) &&
                    e.shape[e.layer_axis] ==
                        static_cast<int64_t>(layer_groups_[e.layer_group].size()),
                where + ": layer axis does not match its layer group");
        }
        check(e.offset % kAlignment == 0, where + ": offset is not a multiple of 64");
        const SafetensorsFile& data = files_[e.file];
        check(data.contains(name), where + ": not in " + data.path());
        if (is_quantized(e.dtype)) {
          const int64_t block = dtype_block(e.dtype);
          check(!e.shape.empty() && e.shape.back() % block == 0,
                where + ": " + std::string(dtype_name(e.dtype)) + " shape " +
                    shape_to_string(e.shape) + " does not end in whole blocks of " +
                    std::to_string(block));
          check(e.layer_axis < static_cast<int>(e.shape.size()) - 1,
                where + ": a quantized tensor cannot be stacked along its last dimension");
          check(e.nbytes == dtype_nbytes(e.dtype, shape_numel(e.shape)),
                where + ": " + std::to_string(e.nbytes) + " bytes, but " +
                    std::string(dtype_name(e.dtype)) + " " + shape_to_string(e.shape) + " needs " +
                    std::to_string(dtype_nbytes(e.dtype, shape_numel(e.shape))));
        }
        const Tensor view = data.get(name);
        // Quantized tensors are stored as U8 arrays of their blocks' bytes.
        const DType stored = is_quantized(e.dtype) ? DType::U8 : e.dtype;
        check(view.offset() == e.offset && view.nbytes() == e.nbytes && view.dtype() == stored &&
                  view.shape() == byte_shape(e.dtype, e.shape),
              where + ": the manifest and the header of " + data.path() + " disagree");
      } catch (const Json::exception& ex) {
        throw Error(where + ": malformed entry: " + ex.what());
      }
      tensors_.emplace(name, std::move(e));
    }
  } catch (const Json::exception& e) {
    throw Error(path + ": malformed manifest: " + e.what());
  }
}

std::vector<std::string> KilnCheckpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [name, e] : tensors_) out.push_back(name);
  return out;
}

const KilnCheckpoint::Entry& KilnCheckpoint::entry(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw Error(dir_ + ": no tensor named '" + name + "'");
  return it->second;
}

Tensor KilnCheckpoint::get(const std::string& name) const {
  const Entry& e = entry(name);
  const Tensor stored = files_[e.file].get(name);
  if (!is_quantized(e.dtype)) return stored;
  return Tensor::view_of(stored.storage(), stored.offset(), e.dtype, e.shape);
}

Tensor KilnCheckpoint::layer_tensor(int64_t layer, const std::string& param) const {
  if (layout_ == "unscanned") return get("decoder/layers_" + std::to_string(layer) + "/" + param);
  for (const auto& [group, layers] : layer_groups_) {
    for (size_t j = 0; j < layers.size(); ++j) {
      if (layers[j] != layer) continue;
      const std::string name = "decoder/" + group + "/" + param;
      if (!contains(name)) continue;
      const Entry& e = entry(name);
      return get(name).select(e.layer_axis, static_cast<int64_t>(j));
    }
  }
  throw Error(dir_ + ": no tensor '" + param + "' for decoder layer " + std::to_string(layer));
}

std::map<std::string, Tensor> KilnCheckpoint::unscanned_tensors() const {
  std::map<std::string, Tensor> out;
  auto add = [&](const std::string& unscanned, Tensor tensor, const std::string& stored) {
    check(out.emplace(unscanned, std::move(tensor)).second,
          dir_ + ": tensor '" + stored + "' gives '" + unscanned + "' a second time");
  };
  for (const auto& [name, e] : tensors_) {
    if (e.layer_axis < 0) {
      add(name, get(name), name);
      continue;
    }
    const std::string prefix = "decoder/" + e.layer_group + "/";
    check(name.rfind(prefix, 0) == 0 && name.size() > prefix.size(),
          dir_ + ": scanned tensor '" + name + "' is not named " + prefix + "<param>");
    const std::string param = name.substr(prefix.size());
    const Tensor stacked = get(name);
    const std::vector<int64_t>& layers = layer_groups_.at(e.layer_group);
    for (size_t j = 0; j < layers.size(); ++j)
      add("decoder/layers_" + std::to_string(layers[j]) + "/" + param,
          stacked.select(e.layer_axis, static_cast<int64_t>(j)), name);
  }
  return out;
}

void KilnCheckpoint::verify() const {
  for (const auto& [name, e] : tensors_) {
    const Tensor t = get(name);
    const auto* data = static_cast<const char*>(t.raw());
    uint32_t crc = 0;
    for (uint64_t done = 0; done < e.nbytes; done += kChunkBytes) {
      const uint64_t size = std::min(kChunkBytes, e.nbytes - done);
      crc = crc32c(data + done, size, crc);
      if (residency_ == Residency::kMapped) release_mapped_pages(data + done, size);
    }
    check(crc == e.crc, dir_ + ": tensor '" + name + "': checksum " + hex32(crc) +
                            " differs from the manifest's " + hex32(e.crc));
  }
  for (const auto& [name, info] : manifest_.at("tokenizer_files").items()) {
    const std::string path = (fs::path(dir_) / name).string();
    check(fs::exists(path), path + ": tokenizer file listed in the manifest is missing");
    check(hex32(file_crc(path)) == info.at("crc32c").get<std::string>(),
          path + ": checksum differs from the manifest's");
  }
}

}  // namespace kiln
