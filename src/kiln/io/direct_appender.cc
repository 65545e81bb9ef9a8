#include "kiln/io/direct_appender.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "kiln/core/error.h"

namespace kiln {

DirectAppender::DirectAppender(std::string where) : where_(std::move(where)) {
  for (Buffer* b : {&staging_, &spare_}) {
    b->reset(static_cast<char*>(std::aligned_alloc(kAlignment, kBufferBytes)));
    check(*b != nullptr, where_ + ": cannot allocate a write buffer");
  }
  thread_ = std::thread([this] { loop(); });
}

DirectAppender::~DirectAppender() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void DirectAppender::begin(int fd, uint64_t offset) {
  wait_idle();
  fd_ = fd;
  next_ = offset;
  staged_ = 0;
}

void DirectAppender::write_at(const char* data, size_t size, uint64_t offset) {
  for (size_t done = 0; done < size;) {
    const ssize_t n = ::pwrite(fd_, data + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EINVAL && done == 0) {
      // The filesystem took O_DIRECT at open but refuses the write: buffered from here on.
      const int flags = ::fcntl(fd_, F_GETFL);
      if (flags >= 0 && (flags & O_DIRECT)) {
        check(::fcntl(fd_, F_SETFL, flags & ~O_DIRECT) == 0,
              where_ + ": cannot leave direct I/O: " + std::strerror(errno));
        continue;
      }
    }
    check(n > 0, where_ + ": write failed: " + std::strerror(errno));
    done += static_cast<size_t>(n);
  }
}

void DirectAppender::loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    changed_.wait(lock, [this] { return stop_ || pending_ != nullptr; });
    if (stop_) return;  // finished, or abandoned after an error
    Buffer buffer = std::move(pending_);
    const uint64_t at = pending_at_;
    lock.unlock();
    std::string error;
    try {
      write_at(buffer.get(), kBufferBytes, at);
    } catch (const Error& e) {
      error = e.what();
    }
    lock.lock();
    if (!error.empty() && error_.empty()) error_ = error;
    spare_ = std::move(buffer);
    changed_.notify_all();
  }
}

void DirectAppender::wait_idle() {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [this] { return spare_ != nullptr; });
  if (!error_.empty()) throw Error(error_);
}

void DirectAppender::submit() {
  wait_idle();  // the thread has given the other buffer back
  std::lock_guard<std::mutex> lock(mutex_);
  pending_ = std::move(staging_);
  pending_at_ = next_;
  staging_ = std::move(spare_);
  next_ += staged_;
  staged_ = 0;
  changed_.notify_all();
}

void DirectAppender::append(const char* data, size_t size) {
  while (size > 0) {
    const size_t n = std::min(size, kBufferBytes - staged_);
    std::memcpy(staging_.get() + staged_, data, n);
    staged_ += n;
    data += n;
    size -= n;
    if (staged_ == kBufferBytes) submit();
  }
}

void DirectAppender::finish() {
  wait_idle();
  if (staged_ > 0) {
    const int flags = ::fcntl(fd_, F_GETFL);
    check(flags >= 0, where_ + ": cannot read the file's flags: " + std::strerror(errno));
    if (flags & O_DIRECT)
      check(::fcntl(fd_, F_SETFL, flags & ~O_DIRECT) == 0,
            where_ + ": cannot leave direct I/O: " + std::strerror(errno));
    write_at(staging_.get(), staged_, next_);
    next_ += staged_;
    staged_ = 0;
  }
  fd_ = -1;
}

}  // namespace kiln
