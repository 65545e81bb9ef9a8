#include "kiln/convert/atomic_output.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "kiln/core/error.h"

namespace kiln {
namespace fs = std::filesystem;
namespace {

constexpr const char* kTemporaryPrefix = ".kiln-tmp-";

void fsync_directory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  check(fd >= 0, dir.string() + ": cannot open for fsync");
  const int rc = ::fsync(fd);
  ::close(fd);
  check(rc == 0, dir.string() + ": fsync failed");
}

// fsyncs every regular file below `dir`, then the folders themselves.
void fsync_tree(const fs::path& dir) {
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_directory()) {
      fsync_directory(entry.path());
    } else if (entry.is_regular_file()) {
      const int fd = ::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC);
      check(fd >= 0 && ::fsync(fd) == 0, entry.path().string() + ": fsync failed");
      ::close(fd);
    }
  }
  fsync_directory(dir);
}

bool process_alive(pid_t pid) {
  return ::kill(pid, 0) == 0 || errno == EPERM;
}

}  // namespace

AtomicOutputDir::AtomicOutputDir(const std::string& destination, bool force)
    : destination_(fs::path(destination).lexically_normal().string()), force_(force) {
  fs::path dst(destination_);
  if (dst.filename().empty()) dst = dst.parent_path();
  destination_ = dst.string();
  check(!dst.filename().empty() && dst.filename() != "..",
        destination + ": not a valid output folder name");
  check(!fs::exists(dst) || force, destination_ + ": already exists (use --force to replace it)");
  const fs::path parent = dst.has_parent_path() ? dst.parent_path() : fs::path(".");
  fs::create_directories(parent);
  // Temporary folders of this destination whose writer is gone are leftovers: remove them.
  const std::string prefix = kTemporaryPrefix + dst.filename().string() + "-";
  for (const auto& entry : fs::directory_iterator(parent)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    const std::string pid = name.substr(prefix.size());
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    if (!process_alive(static_cast<pid_t>(std::stol(pid)))) fs::remove_all(entry.path());
  }
  temporary_ = (parent / (prefix + std::to_string(::getpid()))).string();
  fs::remove_all(temporary_);
  std::error_code ec;
  fs::create_directory(temporary_, ec);
  check(!ec, temporary_ + ": cannot create: " + ec.message());
}

AtomicOutputDir::~AtomicOutputDir() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(temporary_, ec);
}

void AtomicOutputDir::commit() {
  check(!committed_, destination_ + ": committed twice");
  fsync_tree(temporary_);
  const fs::path dst(destination_);
  fs::path old;
  if (fs::exists(dst)) {
    check(force_, destination_ + ": appeared while writing (use --force to replace it)");
    old = dst.parent_path() / (std::string(kTemporaryPrefix) + "old-" + dst.filename().string() +
                               "-" + std::to_string(::getpid()));
    fs::rename(dst, old);
  }
  fs::rename(temporary_, dst);
  committed_ = true;
  fsync_directory(dst.has_parent_path() ? dst.parent_path() : fs::path("."));
  if (!old.empty()) fs::remove_all(old);
}

}  // namespace kiln
