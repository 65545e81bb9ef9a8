// AtomicOutputDir: build an output folder in a temporary sibling and rename it into place,
// so an error, Ctrl-C or kill -9 never leaves a partial output behind.
#pragma once

#include <string>

namespace kiln {

// Owns `<parent>/.kiln-tmp-<name>-<pid>` for the output folder `destination`. The
// constructor refuses an existing destination unless `force` (it is then replaced only at
// commit()), removes temporary folders of the same destination left by processes that no
// longer run (e.g. killed with -9), and creates a fresh temporary folder. commit() fsyncs
// and renames it to `destination`; the destructor removes it when commit() never ran.
// Errors throw kiln::Error naming the folder.
class AtomicOutputDir {
 public:
  AtomicOutputDir(const std::string& destination, bool force);
  ~AtomicOutputDir();
  AtomicOutputDir(const AtomicOutputDir&) = delete;
  AtomicOutputDir& operator=(const AtomicOutputDir&) = delete;

  // The temporary folder to write into.
  const std::string& path() const { return temporary_; }
  // Moves the finished folder into place (replacing the old destination when forced).
  void commit();

 private:
  std::string destination_;
  std::string temporary_;
  bool force_;
  bool committed_ = false;
};

}  // namespace kiln
