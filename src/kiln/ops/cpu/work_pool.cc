// The decode kernels' thread pool: chunks claimed from one atomic counter by the caller and
// the workers, idle workers polling briefly and then sleeping on a futex (std::atomic::wait).
#include "kiln/ops/cpu/work_pool.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>

namespace kiln::ops::cpu {

namespace {
// Set on every thread while it runs a chunk (workers: always): nested calls run inline.
thread_local bool in_chunk = false;
thread_local uint64_t input_epoch = 0;
std::atomic<uint64_t> epochs{0};

struct InChunk {
  bool previous = in_chunk;
  InChunk() { in_chunk = true; }
  ~InChunk() { in_chunk = previous; }
};

void run_inline(int64_t count, int64_t chunk, ChunkFunction fn, void* context) {
  for (int64_t begin = 0; begin < count; begin += chunk)
    fn(context, begin, std::min(count, begin + chunk));
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

int64_t WorkPool::spin_microseconds() {
  static const int64_t value = [] {
    const char* text = std::getenv("KILN_POOL_SPIN_US");
    return text && *text ? std::max<int64_t>(0, std::atoll(text)) : int64_t{50};
  }();
  return value;
}

WorkPool::~WorkPool() {
  stop_.store(true, std::memory_order_release);
  wake_.fetch_add(1, std::memory_order_acq_rel);
  wake_.notify_all();
  for (std::thread& thread : threads_) thread.join();
}

void WorkPool::claim_chunks(uint32_t generation) {
  uint64_t state = state_.load(std::memory_order_acquire);
  for (;;) {
    const uint32_t next = static_cast<uint32_t>(state);
    if (static_cast<uint32_t>(state >> 32) != generation || next == kClosed) return;
    // (the fields belong to `generation` if the claim below succeeds: a new job first closes
    // the state under a new generation, and only then rewrites them)
    const int64_t chunks = chunks_.load(std::memory_order_acquire);
    if (next >= chunks) return;
    const ChunkFunction fn = fn_.load(std::memory_order_acquire);
    void* const context = context_.load(std::memory_order_acquire);
    const int64_t count = count_.load(std::memory_order_acquire);
    const int64_t chunk = chunk_.load(std::memory_order_acquire);
    if (!state_.compare_exchange_weak(state, state + 1, std::memory_order_acq_rel,
                                      std::memory_order_acquire))
      continue;
    const int64_t begin = next * chunk;
    if (!failed_.load(std::memory_order_relaxed)) {
      try {
        fn(context, begin, std::min(count, begin + chunk));
      } catch (...) {
        const std::lock_guard<std::mutex> lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
        failed_.store(true, std::memory_order_relaxed);
      }
    }
    // (the last chunk wakes a caller that went to sleep waiting for it)
    if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == chunks) done_.notify_all();
    state = state_.load(std::memory_order_acquire);
  }
}

void WorkPool::worker_loop(int index) {
  in_chunk = true;
  uint32_t seen = 0;
  for (;;) {
    // Poll for the next job, then sleep until one is published.
    uint32_t wake = wake_.load(std::memory_order_acquire);
    if (wake == seen) {
      const int64_t deadline = now_ns() + 1000 * spin_microseconds();
      // (yielding now and then: on a machine with more runnable threads than cores, a thread
      // waiting for work on this core, the caller's included, gets it)
      for (int i = 1; wake == seen; ++i) {
        _mm_pause();
        wake = wake_.load(std::memory_order_acquire);
        if (i % 64 == 0) {
          if (now_ns() > deadline) break;
          std::this_thread::yield();
        }
      }
      while (wake == seen) {
        wake_.wait(seen, std::memory_order_acquire);
        wake = wake_.load(std::memory_order_acquire);
      }
    }
    seen = wake;
    if (stop_.load(std::memory_order_acquire)) return;
    if (index + 2 > participants_.load(std::memory_order_acquire)) continue;
    if (paused_.load(std::memory_order_relaxed)) continue;
    claim_chunks(static_cast<uint32_t>(state_.load(std::memory_order_acquire) >> 32));
  }
}

void WorkPool::run(int64_t count, int64_t chunk, ChunkFunction fn, void* context, int threads) {
  if (count <= 0) return;
  const int64_t chunks = (count + chunk - 1) / chunk;
  if (threads <= 1 || chunks <= 1 || chunks >= kClosed || in_chunk || omp_in_parallel() ||
      busy_.exchange(true, std::memory_order_acquire))
    return run_inline(count, chunk, fn, context);
  // (this thread holds the pool until it returns)
  struct Release {
    std::atomic<bool>& busy;
    ~Release() { busy.store(false, std::memory_order_release); }
  } release{busy_};
  while (static_cast<int>(threads_.size()) < threads - 1) {
    const int index = static_cast<int>(threads_.size());
    threads_.emplace_back([this, index] { worker_loop(index); });
  }
  const uint32_t generation =
      static_cast<uint32_t>(state_.load(std::memory_order_relaxed) >> 32) + 1;
  state_.store(uint64_t{generation} << 32 | kClosed, std::memory_order_seq_cst);
  done_.store(0, std::memory_order_relaxed);
  failed_.store(false, std::memory_order_relaxed);
  fn_.store(fn, std::memory_order_release);
  context_.store(context, std::memory_order_release);
  count_.store(count, std::memory_order_release);
  chunk_.store(chunk, std::memory_order_release);
  chunks_.store(chunks, std::memory_order_release);
  participants_.store(threads, std::memory_order_release);
  state_.store(uint64_t{generation} << 32, std::memory_order_release);
  wake_.fetch_add(1, std::memory_order_acq_rel);
  wake_.notify_all();
  {
    const InChunk scope;
    claim_chunks(generation);
  }
  // Every chunk is claimed now: wait for those still running on workers, polling for a few
  // microseconds, then asleep (a worker descheduled inside its chunk may take milliseconds;
  // a sleeping thread also gets its core back sooner when woken on a busy machine).
  uint32_t done = done_.load(std::memory_order_acquire);
  for (int i = 1; done < chunks && i <= 256; ++i) {
    _mm_pause();
    done = done_.load(std::memory_order_acquire);
  }
  while (done < chunks) {
    done_.wait(done, std::memory_order_acquire);
    done = done_.load(std::memory_order_acquire);
  }
  if (failed_.load(std::memory_order_relaxed)) {
    std::exception_ptr error;
    {
      const std::lock_guard<std::mutex> lock(error_mutex_);
      std::swap(error, error_);
    }
    std::rethrow_exception(error);
  }
}

namespace {
std::atomic<DecodeThreads> decode_mode{[] {
  const char* text = std::getenv("KILN_DECODE_THREADS");
  return text && std::string(text) == "openmp" ? DecodeThreads::kOpenMP : DecodeThreads::kPool;
}()};
}  // namespace

DecodeThreads decode_threads() {
  return decode_mode.load(std::memory_order_relaxed);
}

void use_decode_threads(DecodeThreads mode) {
  decode_mode.store(mode, std::memory_order_relaxed);
}

WorkPool& work_pool() {
  static WorkPool pool;
  return pool;
}

int pool_threads() {
  return omp_get_max_threads();
}

int64_t gemv_chunk_rows(int64_t out, int64_t row_bytes, int threads) {
  const int64_t by_bytes = ((int64_t{1} << 16) + row_bytes - 1) / std::max<int64_t>(row_bytes, 1);
  const int64_t by_count = out / (32 * std::max(threads, 1));
  const int64_t rows = std::max<int64_t>({by_bytes, by_count, 1});
  return (rows + 3) / 4 * 4;
}

uint64_t new_input_epoch() {
  return epochs.fetch_add(1, std::memory_order_relaxed) + 1;
}

InputEpoch::InputEpoch(uint64_t epoch) : previous_(input_epoch) {
  input_epoch = epoch;
}

InputEpoch::~InputEpoch() {
  input_epoch = previous_;
}

uint64_t InputEpoch::current() {
  return input_epoch;
}

}  // namespace kiln::ops::cpu
