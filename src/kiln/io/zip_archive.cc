#include "kiln/io/zip_archive.h"

#include <cstring>

#include "kiln/core/error.h"

namespace kiln {
namespace {

constexpr uint32_t kEndOfCentralDirectory = 0x06054b50;
constexpr uint32_t kZip64EndOfCentralDirectory = 0x06064b50;
constexpr uint32_t kZip64Locator = 0x07064b50;
constexpr uint32_t kCentralDirectoryHeader = 0x02014b50;
constexpr uint32_t kLocalFileHeader = 0x04034b50;
constexpr uint16_t kZip64ExtraField = 0x0001;

// Little-endian field reader over [begin, end) that throws on reads past `end`.
class Reader {
 public:
  Reader(const std::byte* begin, size_t size, const std::string& where)
      : begin_(begin), size_(size), where_(where) {}
  template <typename T>
  T at(size_t offset) const {
    if (offset > size_ || size_ - offset < sizeof(T))
      throw Error(where_ + ": zip structure runs past the end of the file");
    T value;
    std::memcpy(&value, begin_ + offset, sizeof(T));
    return value;
  }

 private:
  const std::byte* begin_;
  size_t size_;
  const std::string& where_;
};

}  // namespace

ZipArchive ZipArchive::open(const std::string& path) {
  ZipArchive zip;
  zip.file_ = MappedFile::open(path);
  const size_t size = zip.file_->size();
  Reader r(zip.file_->data(), size, path);
  // The end-of-central-directory record is 22 bytes plus a comment of up to 64 KiB.
  size_t eocd = SIZE_MAX;
  for (size_t back = 22; back <= size && back <= 22 + 65535; ++back) {
    if (r.at<uint32_t>(size - back) == kEndOfCentralDirectory) {
      eocd = size - back;
      break;
    }
  }
  check(eocd != SIZE_MAX, path + ": not a zip archive (no end of central directory)");
  uint64_t count = r.at<uint16_t>(eocd + 10);
  uint64_t directory_size = r.at<uint32_t>(eocd + 12);
  uint64_t directory_offset = r.at<uint32_t>(eocd + 16);
  if (eocd >= 20 && r.at<uint32_t>(eocd - 20) == kZip64Locator) {
    uint64_t zip64 = r.at<uint64_t>(eocd - 20 + 8);
    check(zip64 < size && r.at<uint32_t>(zip64) == kZip64EndOfCentralDirectory,
          path + ": bad zip64 end of central directory");
    count = r.at<uint64_t>(zip64 + 32);
    directory_size = r.at<uint64_t>(zip64 + 40);
    directory_offset = r.at<uint64_t>(zip64 + 48);
  }
  check(directory_offset <= size && directory_size <= size - directory_offset,
        path + ": zip central directory lies outside the file");
  size_t pos = directory_offset;
  for (uint64_t i = 0; i < count; ++i) {
    check(r.at<uint32_t>(pos) == kCentralDirectoryHeader,
          path + ": corrupt zip central directory entry " + std::to_string(i));
    Entry e;
    e.method = r.at<uint16_t>(pos + 10);
    uint64_t stored_size = r.at<uint32_t>(pos + 20);
    uint64_t plain_size = r.at<uint32_t>(pos + 24);
    const uint16_t name_len = r.at<uint16_t>(pos + 28);
    const uint16_t extra_len = r.at<uint16_t>(pos + 30);
    const uint16_t comment_len = r.at<uint16_t>(pos + 32);
    uint64_t local_offset = r.at<uint32_t>(pos + 42);
    check(pos + 46 + name_len + extra_len + comment_len <= size,
          path + ": zip central directory entry " + std::to_string(i) + " runs past the file");
    e.name.assign(reinterpret_cast<const char*>(zip.file_->data()) + pos + 46, name_len);
    // Zip64 extra field: the 64-bit values of the fields that hold 0xFFFFFFFF, in order.
    for (size_t x = pos + 46 + name_len; x + 4 <= pos + 46 + name_len + extra_len;) {
      const uint16_t id = r.at<uint16_t>(x);
      const uint16_t len = r.at<uint16_t>(x + 2);
      if (id == kZip64ExtraField) {
        size_t f = x + 4;
        if (plain_size == 0xFFFFFFFFu) plain_size = r.at<uint64_t>(f), f += 8;
        if (stored_size == 0xFFFFFFFFu) stored_size = r.at<uint64_t>(f), f += 8;
        if (local_offset == 0xFFFFFFFFu) local_offset = r.at<uint64_t>(f);
      }
      x += 4 + len;
    }
    const std::string where = path + ": zip entry '" + e.name + "'";
    check(local_offset < size && r.at<uint32_t>(local_offset) == kLocalFileHeader,
          where + ": bad local header offset");
    const uint64_t data_offset =
        local_offset + 30 + r.at<uint16_t>(local_offset + 26) + r.at<uint16_t>(local_offset + 28);
    check(data_offset <= size && stored_size <= size - data_offset,
          where + ": data runs past the end of the file");
    e.data_offset = data_offset;
    e.size = plain_size;
    e.stored_size = stored_size;
    check(e.method != 0 || e.size == e.stored_size, where + ": stored entry with two sizes");
    zip.order_.push_back(e.name);
    check(zip.entries_.emplace(e.name, std::move(e)).second, where + ": appears twice");
    pos += 46 + name_len + extra_len + comment_len;
  }
  return zip;
}

std::vector<std::string> ZipArchive::names() const {
  return order_;
}

const ZipArchive::Entry& ZipArchive::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw Error(path() + ": no zip entry '" + name + "'");
  return it->second;
}

const std::byte* ZipArchive::data(const std::string& name) const {
  const Entry& e = entry(name);
  check(e.method == 0, path() + ": zip entry '" + name + "' is compressed (method " +
                           std::to_string(e.method) + "); only stored entries can be mapped");
  return file_->data() + e.data_offset;
}

}  // namespace kiln
