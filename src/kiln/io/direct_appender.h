// Sequential writes of a long byte range to a file with O_DIRECT, overlapped with the caller:
// bytes are staged in one of two aligned 8 MiB buffers; a full buffer goes to a background
// thread that writes it while the caller fills the other. On some virtual machines (this
// project's among them) buffered writes of new file pages run at a small fraction of the
// disk's speed, and a blocking direct write would leave the CPU idle meanwhile.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace kiln {

class DirectAppender {
 public:
  // Direct I/O alignment of file offsets, sizes and buffers.
  static constexpr size_t kAlignment = 4096;
  static constexpr size_t kBufferBytes = size_t{8} << 20;

  // `where` names the file in errors. Allocates the buffers and starts the thread.
  explicit DirectAppender(std::string where);
  ~DirectAppender();
  DirectAppender(const DirectAppender&) = delete;
  DirectAppender& operator=(const DirectAppender&) = delete;

  // Starts a range at `offset` (a multiple of kAlignment when `fd` has O_DIRECT) of `fd`,
  // which must stay open until finish(). `fd` may lack O_DIRECT (then writes are buffered).
  void begin(int fd, uint64_t offset);
  // Appends `size` bytes to the range.
  void append(const char* data, size_t size);
  // Waits for the writes in flight and writes the tail (not a whole buffer) without
  // O_DIRECT (cleared on `fd`), so the range may end anywhere. Rethrows a write's Error.
  void finish();

 private:
  using Buffer = std::unique_ptr<char, void (*)(void*)>;
  void submit();
  void wait_idle();
  // Writes `size` bytes at `offset`; a filesystem that refuses O_DIRECT gets buffered writes.
  void write_at(const char* data, size_t size, uint64_t offset);
  void loop();
  std::string where_;
  int fd_ = -1;
  Buffer staging_{nullptr, &std::free};  // being filled by append()
  size_t staged_ = 0;
  uint64_t next_ = 0;  // file offset of staging_'s first byte
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable changed_;
  Buffer spare_{nullptr, &std::free};    // the other buffer, while the thread does not hold it
  Buffer pending_{nullptr, &std::free};  // handed to the thread, to be written at pending_at_
  uint64_t pending_at_ = 0;
  bool stop_ = false;
  std::string error_;
};

}  // namespace kiln
