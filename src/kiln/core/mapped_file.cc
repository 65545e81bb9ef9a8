#include "kiln/core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "kiln/core/error.h"

namespace kiln {
namespace {

// Closes a file descriptor when it goes out of scope.
struct FdCloser {
  int fd;
  ~FdCloser() { ::close(fd); }
};

// Unmaps a mapping unless released (the owner takes it over).
struct MappingGuard {
  void* data;
  size_t size;
  ~MappingGuard() {
    if (data != nullptr) ::munmap(data, size);
  }
  void* release() { return std::exchange(data, nullptr); }
};

// Reads the whole of `fd` (`size` bytes) into fresh anonymous memory, then makes it read-only.
void* read_into_anonymous_memory(int fd, size_t size, const std::string& path) {
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    throw Error(path + ": cannot allocate " + std::to_string(size) +
                " bytes to read it into: " + std::strerror(errno));
  }
  MappingGuard guard{p, size};
  ::madvise(p, size, MADV_HUGEPAGE);  // advisory: fewer TLB misses when streaming weights
  auto* bytes = static_cast<char*>(p);
  size_t done = 0;
  while (done < size) {
    constexpr size_t kChunk = size_t{1} << 26;  // pread caps a single transfer near 2 GiB
    const ssize_t n =
        ::pread(fd, bytes + done, std::min(kChunk, size - done), static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Error(path + ": read failed: " + std::strerror(errno));
    if (n == 0) {
      throw Error(path + ": file shrank while being read (" + std::to_string(done) + " of " +
                  std::to_string(size) + " bytes)");
    }
    done += static_cast<size_t>(n);
  }
  if (::mprotect(p, size, PROT_READ) != 0) {
    throw Error(path + ": cannot make its memory read-only: " + std::strerror(errno));
  }
  return guard.release();
}

}  // namespace

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path, Residency residency) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
  const FdCloser closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) throw Error(path + ": cannot stat: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw Error(path + ": not a regular file");
  const size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) return std::shared_ptr<MappedFile>(new MappedFile(path, nullptr, 0));
  void* p = nullptr;
  if (residency == Residency::kResident) {
    p = read_into_anonymous_memory(fd, size, path);
  } else {
    p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) throw Error(path + ": cannot mmap: " + std::strerror(errno));
  }
  return std::shared_ptr<MappedFile>(new MappedFile(path, static_cast<const std::byte*>(p), size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
}

}  // namespace kiln
