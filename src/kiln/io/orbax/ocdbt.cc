#include "kiln/io/orbax/ocdbt.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>

#include "kiln/core/error.h"
#include "kiln/io/crc32c.h"
#include "kiln/io/zstd_codec.h"

namespace kiln {
namespace fs = std::filesystem;
namespace {

constexpr uint32_t kManifestMagic = 0x0cdb3a2a;
constexpr uint32_t kBtreeNodeMagic = 0x0cdb20de;
constexpr int kMaxTreeDepth = 64;

// A cursor over decoded bytes; every read is bounds-checked.
class Cursor {
 public:
  Cursor(const std::string& bytes, const std::string& where) : bytes_(bytes), where_(where) {}
  uint8_t byte() { return static_cast<uint8_t>(*take(1)); }
  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      const uint8_t b = byte();
      value |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return value;
    }
    throw Error(where_ + ": invalid varint");
  }
  uint64_t u64le() {
    uint64_t v;
    std::memcpy(&v, take(8), 8);
    return v;
  }
  std::string bytes(uint64_t n) { return std::string(take(n), n); }
  size_t position() const { return pos_; }

 private:
  const char* take(uint64_t n) {
    if (n > bytes_.size() - pos_) throw Error(where_ + ": truncated OCDBT structure");
    const char* p = bytes_.data() + pos_;
    pos_ += n;
    return p;
  }
  const std::string& bytes_;
  size_t pos_ = 0;
  const std::string& where_;
};

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}
void put_u64le(std::string& out, uint64_t v) {
  out.append(reinterpret_cast<char*>(&v), 8);
}
void put_u32le(std::string& out, uint32_t v) {
  out.append(reinterpret_cast<char*>(&v), 4);
}

// Checks the outer framing of an encoded manifest or node (magic, length, version,
// CRC-32C) and returns its decompressed body.
std::string decode_framed(const std::string& encoded, uint32_t magic, const std::string& where) {
  check(encoded.size() >= 16, where + ": OCDBT structure shorter than its header");
  uint32_t got_magic = 0;
  for (int i = 0; i < 4; ++i) got_magic = got_magic << 8 | static_cast<uint8_t>(encoded[i]);
  check(got_magic == magic, where + ": bad OCDBT magic number");
  uint64_t length;
  std::memcpy(&length, encoded.data() + 4, 8);
  check(length == encoded.size(), where + ": OCDBT length field " + std::to_string(length) +
                                      " does not match the " + std::to_string(encoded.size()) +
                                      " bytes read");
  uint32_t stored_crc;
  std::memcpy(&stored_crc, encoded.data() + encoded.size() - 4, 4);
  check(crc32c(encoded.data(), encoded.size() - 4) == stored_crc,
        where + ": OCDBT CRC-32C checksum mismatch");
  const std::string framed = encoded.substr(12, encoded.size() - 16);
  Cursor c(framed, where);
  check(c.varint() == 0, where + ": unsupported OCDBT format version");
  const uint64_t compression = c.varint();
  const std::string rest = framed.substr(c.position());
  if (compression == 0) return rest;
  check(compression == 1, where + ": unknown OCDBT compression " + std::to_string(compression));
  return zstd_decompress(rest.data(), rest.size(), where);
}

// Frames `body` as tensorstore does: magic, length, version 0, compression, body, CRC-32C.
std::string encode_framed(const std::string& body, uint32_t magic, bool zstd, int level) {
  std::string out;
  for (int i = 3; i >= 0; --i) out += static_cast<char>((magic >> (8 * i)) & 0xff);
  put_u64le(out, 0);  // length, patched below
  put_varint(out, 0);
  put_varint(out, zstd ? 1 : 0);
  out += zstd ? zstd_compress(body.data(), body.size(), level) : body;
  const uint64_t length = out.size() + 4;
  std::memcpy(out.data() + 4, &length, 8);
  put_u32le(out, crc32c(out.data(), out.size()));
  return out;
}

// A data file table entry: the file's path from the database root, and the transitive
// path that applies to nodes read from it.
struct DataFile {
  std::string path;
  std::string child_transitive_path;
};

std::vector<DataFile> read_data_file_table(Cursor& c, const std::string& transitive_path) {
  const uint64_t count = c.varint();
  check(count < (1u << 20), "OCDBT data file table too large");
  std::vector<uint64_t> prefix(count, 0), suffix(count), base(count);
  for (uint64_t i = 1; i < count; ++i) prefix[i] = c.varint();
  for (auto& s : suffix) s = c.varint();
  for (auto& b : base) b = c.varint();
  std::vector<DataFile> files(count);
  std::string previous;
  for (uint64_t i = 0; i < count; ++i) {
    check(prefix[i] <= previous.size(), "OCDBT data file path prefix exceeds previous path");
    std::string path = previous.substr(0, prefix[i]) + c.bytes(suffix[i]);
    check(base[i] <= path.size(), "OCDBT base path longer than its path");
    files[i] = {transitive_path + path, transitive_path + path.substr(0, base[i])};
    previous = std::move(path);
  }
  return files;
}

// Reads the key columns shared by leaf and interior B+tree nodes.
std::vector<std::string> read_keys(Cursor& c, uint64_t n, std::vector<uint64_t>* subtree_prefix) {
  std::vector<uint64_t> prefix(n, 0), suffix(n);
  for (uint64_t i = 1; i < n; ++i) prefix[i] = c.varint();
  for (auto& s : suffix) s = c.varint();
  if (subtree_prefix) {
    subtree_prefix->resize(n);
    for (auto& s : *subtree_prefix) s = c.varint();
  }
  std::vector<std::string> keys(n);
  for (uint64_t i = 0; i < n; ++i) {
    check(i == 0 || prefix[i] <= keys[i - 1].size(), "OCDBT key prefix exceeds previous key");
    keys[i] = (i ? keys[i - 1].substr(0, prefix[i]) : std::string()) + c.bytes(suffix[i]);
  }
  return keys;
}

const DataFile& file_at(const std::vector<DataFile>& files, uint64_t id, const std::string& where) {
  check(id < files.size(), where + ": data file id " + std::to_string(id) + " out of range");
  return files[id];
}

}  // namespace

bool OcdbtKvStore::present_in(const std::string& dir) {
  return fs::is_regular_file(fs::path(dir) / "manifest.ocdbt");
}

std::unique_ptr<OcdbtKvStore> OcdbtKvStore::open(const std::string& dir) {
  auto store = std::unique_ptr<OcdbtKvStore>(new OcdbtKvStore());
  store->dir_ = dir;
  const std::string manifest_path = (fs::path(dir) / "manifest.ocdbt").string();
  auto encoded = read_file_bytes(manifest_path);
  check(encoded.has_value(), manifest_path + ": no such file");
  const std::string body = decode_framed(*encoded, kManifestMagic, manifest_path);
  Cursor c(body, manifest_path);
  c.bytes(16);  // uuid
  check(c.byte() == 0, manifest_path + ": numbered OCDBT manifests are not supported");
  c.varint();                       // max_inline_value_bytes
  c.varint();                       // max_decoded_node_bytes
  c.byte();                         // version_tree_arity_log2
  if (c.varint() == 1) c.bytes(4);  // zstd level
  const std::vector<DataFile> files = read_data_file_table(c, "");
  const uint64_t versions = c.varint();
  check(versions >= 1, manifest_path + ": no versions");
  std::vector<uint64_t> heights(versions), ids(versions), offsets(versions), lengths(versions),
      num_keys(versions);
  for (uint64_t i = 0; i < versions; ++i) c.varint();  // generation numbers
  for (auto& h : heights) h = c.byte();
  for (auto& v : ids) v = c.varint();
  for (auto& v : offsets) v = c.varint();
  for (auto& v : lengths) v = c.varint();
  for (auto& v : num_keys) v = c.varint();
  // The latest version is the last inline one; older versions are never needed.
  const uint64_t last = versions - 1;
  if (num_keys[last] == 0) return store;
  const DataFile& root = file_at(files, ids[last], manifest_path);
  store->read_btree_node(root.path, root.child_transitive_path, offsets[last], lengths[last],
                         static_cast<int>(heights[last]), "", 0);
  return store;
}

void OcdbtKvStore::read_btree_node(const std::string& file, const std::string& transitive_path,
                                   uint64_t offset, uint64_t length, int height,
                                   const std::string& prefix, int depth) {
  check(depth < kMaxTreeDepth,
        dir_ + ": OCDBT B+tree deeper than " + std::to_string(kMaxTreeDepth) + " levels");
  const std::string path = (fs::path(dir_) / file).string();
  const std::string where = path + " @" + std::to_string(offset);
  const std::string body =
      decode_framed(read_file_range(path, offset, length), kBtreeNodeMagic, where);
  Cursor c(body, where);
  check(c.byte() == height, where + ": B+tree node height differs from its reference");
  const std::vector<DataFile> files = read_data_file_table(c, transitive_path);
  const uint64_t n = c.varint();
  check(n >= 1 && n <= (1u << 20), where + ": bad B+tree node entry count");
  if (height == 0) {
    const std::vector<std::string> keys = read_keys(c, n, nullptr);
    std::vector<uint64_t> lengths(n);
    std::vector<uint8_t> kinds(n);
    for (auto& l : lengths) l = c.varint();
    for (auto& k : kinds) {
      k = c.byte();
      check(k <= 1, where + ": bad value kind");
    }
    std::vector<Value> values(n);
    for (uint64_t i = 0; i < n; ++i)
      if (kinds[i]) values[i].file = file_at(files, c.varint(), where).path;
    for (uint64_t i = 0; i < n; ++i) {
      values[i].indirect = kinds[i] == 1;
      values[i].length = lengths[i];
      if (kinds[i]) values[i].offset = c.varint();
    }
    for (uint64_t i = 0; i < n; ++i)
      if (!kinds[i]) values[i].bytes = c.bytes(lengths[i]);
    for (uint64_t i = 0; i < n; ++i) values_[prefix + keys[i]] = std::move(values[i]);
    return;
  }
  std::vector<uint64_t> subtree_prefix;
  const std::vector<std::string> keys = read_keys(c, n, &subtree_prefix);
  std::vector<uint64_t> ids(n), offsets(n), lengths(n);
  for (auto& v : ids) v = c.varint();
  for (auto& v : offsets) v = c.varint();
  for (auto& v : lengths) v = c.varint();
  for (uint64_t i = 0; i < n; ++i) {
    check(subtree_prefix[i] <= keys[i].size(), where + ": bad subtree prefix length");
    const DataFile& child = file_at(files, ids[i], where);
    read_btree_node(child.path, child.child_transitive_path, offsets[i], lengths[i], height - 1,
                    prefix + keys[i].substr(0, subtree_prefix[i]), depth + 1);
  }
}

std::optional<std::string> OcdbtKvStore::read(const std::string& key) const {
  auto it = values_.find(key);
  if (it == values_.end()) return std::nullopt;
  const Value& v = it->second;
  if (!v.indirect) return v.bytes;
  return read_file_range((fs::path(dir_) / v.file).string(), v.offset, v.length);
}

std::vector<std::string> OcdbtKvStore::keys() const {
  std::vector<std::string> out;
  for (const auto& [key, value] : values_) out.push_back(key);
  return out;
}

OcdbtWriter::OcdbtWriter(std::string dir, Options options)
    : dir_(std::move(dir)), options_(options) {
  check(!fs::exists(fs::path(dir_) / "manifest.ocdbt"), dir_ + ": already holds an OCDBT database");
  std::random_device rd;
  static const char* kHex = "0123456789abcdef";
  data_file_ = "d/";
  for (int i = 0; i < 32; ++i) data_file_ += kHex[rd() % 16];
  fs::create_directories(fs::path(dir_) / "d");
  const std::string path = (fs::path(dir_) / data_file_).string();
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_DIRECT, 0644);
  if (fd_ < 0) fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  check(fd_ >= 0, path + ": cannot open for writing: " + std::strerror(errno));
  data_ = std::make_unique<DirectAppender>(path);
  data_->begin(fd_, 0);
}

OcdbtWriter::~OcdbtWriter() {
  data_.reset();  // stops its thread before the file closes
  if (fd_ >= 0) ::close(fd_);
}

void OcdbtWriter::add(const std::string& key, const char* value, size_t size) {
  check(!entries_.count(key), dir_ + ": OCDBT key '" + key + "' added twice");
  Location loc{size > options_.max_inline_value_bytes, "", data_size_, size};
  if (loc.indirect) {
    data_->append(value, size);
    data_size_ += size;
  } else {
    loc.bytes.assign(value, size);
    loc.offset = 0;
  }
  entries_.emplace(key, std::move(loc));
}

void OcdbtWriter::finish() {
  check(!entries_.empty(), dir_ + ": an OCDBT database needs at least one key");
  // One data file, at the root of the database: path "d/<id>", empty base path.
  std::string file_table;
  put_varint(file_table, 1);
  put_varint(file_table, data_file_.size());
  put_varint(file_table, 0);
  file_table += data_file_;

  // The B+tree: a single leaf node holding every key.
  std::string node;
  node += '\0';  // height
  node += file_table;
  put_varint(node, entries_.size());
  std::string previous;
  std::vector<std::pair<uint64_t, uint64_t>> key_lengths;  // (prefix, suffix)
  for (const auto& [key, loc] : entries_) {
    size_t common = 0;
    while (common < previous.size() && common < key.size() && previous[common] == key[common])
      ++common;
    key_lengths.emplace_back(common, key.size() - common);
    previous = key;
  }
  for (size_t i = 1; i < key_lengths.size(); ++i) put_varint(node, key_lengths[i].first);
  for (const auto& kl : key_lengths) put_varint(node, kl.second);
  size_t i = 0;
  for (const auto& [key, loc] : entries_) node += key.substr(key_lengths[i++].first);
  uint64_t indirect_bytes = 0;
  for (const auto& [key, loc] : entries_) put_varint(node, loc.length);
  for (const auto& [key, loc] : entries_) node += static_cast<char>(loc.indirect ? 1 : 0);
  for (const auto& [key, loc] : entries_)
    if (loc.indirect) put_varint(node, 0);
  for (const auto& [key, loc] : entries_)
    if (loc.indirect) {
      put_varint(node, loc.offset);
      indirect_bytes += loc.length;
    }
  for (const auto& [key, loc] : entries_)
    if (!loc.indirect) node += loc.bytes;
  const std::string encoded_node =
      encode_framed(node, kBtreeNodeMagic, options_.zstd, options_.zstd_level);
  const uint64_t node_offset = data_size_;
  data_->append(encoded_node.data(), encoded_node.size());
  data_size_ += encoded_node.size();
  data_->finish();
  check(::close(fd_) == 0, dir_ + "/" + data_file_ + ": close failed: " + std::strerror(errno));
  fd_ = -1;

  // The manifest: config, the data file table, and one version whose root is the leaf.
  std::string manifest;
  std::random_device rd;
  for (int b = 0; b < 16; ++b) manifest += static_cast<char>(rd() & 0xff);  // uuid
  manifest += '\0';                                                         // single manifest
  put_varint(manifest, options_.max_inline_value_bytes);
  put_varint(manifest, options_.max_decoded_node_bytes);
  manifest += static_cast<char>(4);  // version_tree_arity_log2
  put_varint(manifest, options_.zstd ? 1 : 0);
  if (options_.zstd) put_u32le(manifest, static_cast<uint32_t>(options_.zstd_level));
  manifest += file_table;
  put_varint(manifest, 1);  // one version
  put_varint(manifest, 1);  // generation number
  manifest += '\0';         // root height
  put_varint(manifest, 0);  // root: data file id
  put_varint(manifest, node_offset);
  put_varint(manifest, encoded_node.size());
  put_varint(manifest, entries_.size());      // num_keys
  put_varint(manifest, encoded_node.size());  // num_tree_bytes
  put_varint(manifest, indirect_bytes);       // num_indirect_value_bytes
  // Commit time: tensorstore writes nanoseconds since the epoch.
  const auto now = std::chrono::duration_cast<std::chrono::nanoseconds>(
      std::chrono::system_clock::now().time_since_epoch());
  put_u64le(manifest, static_cast<uint64_t>(now.count()));
  put_varint(manifest, 0);  // no version tree nodes
  const std::string encoded_manifest =
      encode_framed(manifest, kManifestMagic, options_.zstd, options_.zstd_level);
  const std::string manifest_path = (fs::path(dir_) / "manifest.ocdbt").string();
  std::ofstream out(manifest_path, std::ios::binary | std::ios::trunc);
  out.write(encoded_manifest.data(), static_cast<std::streamsize>(encoded_manifest.size()));
  out.flush();
  check(out.good(), manifest_path + ": write failed");
}

}  // namespace kiln
