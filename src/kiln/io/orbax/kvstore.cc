#include "kiln/io/orbax/kvstore.h"

#include <cstdint>
#include <filesystem>
#include <fstream>

#include "kiln/core/error.h"

namespace kiln {
namespace fs = std::filesystem;

std::optional<std::string> read_file_bytes(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return std::nullopt;
  const uint64_t size = fs::file_size(path, ec);
  check(!ec, path + ": cannot stat: " + ec.message());
  return read_file_range(path, 0, size);
}

std::string read_file_range(const std::string& path, uint64_t offset, uint64_t length) {
  std::ifstream in(path, std::ios::binary);
  check(in.good(), path + ": cannot open");
  in.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  check(offset <= size && length <= size - offset,
        path + ": byte range [" + std::to_string(offset) + ", " + std::to_string(offset + length) +
            ") lies outside the file (" + std::to_string(size) + " bytes)");
  std::string out(length, '\0');
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(out.data(), static_cast<std::streamsize>(length));
  check(in.good() || length == 0, path + ": read failed");
  return out;
}

std::optional<std::string> DirectoryKvStore::read(const std::string& key) const {
  check(key.find("..") == std::string::npos, root_ + ": key '" + key + "' leaves the store");
  return read_file_bytes((fs::path(root_) / key).string());
}

}  // namespace kiln
