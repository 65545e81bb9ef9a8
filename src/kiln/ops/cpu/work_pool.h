// The decode path's threads: one persistent pool whose calling thread and workers claim
// fixed-size chunks of an index range from one atomic counter, so that a call never waits for
// a thread that has not started (a vCPU descheduled by a busy machine), only for chunks
// actually claimed. Each chunk runs on exactly one thread; which thread never changes what a
// chunk computes, so kernels that sum each output within one chunk give bitwise the same
// results for any thread count and any hand-out.
#pragma once

#include <omp.h>

#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace kiln::ops::cpu {

// fn(context, begin, end) computes the indices [begin, end) of a chunk.
using ChunkFunction = void (*)(void* context, int64_t begin, int64_t end);

class WorkPool {
 public:
  // Workers are started on first use (as many as a call asks for, minus the caller).
  WorkPool() = default;
  ~WorkPool();
  WorkPool(const WorkPool&) = delete;
  WorkPool& operator=(const WorkPool&) = delete;

  // Calls fn(context, begin, end) for the chunks [0, chunk), [chunk, 2 chunk), ... of
  // [0, count) (the last one shorter), each exactly once, on the calling thread and up to
  // threads - 1 workers. Returns when every chunk has run. The caller claims chunks as the
  // workers do and waits only for chunks that a worker has claimed and not finished; a worker
  // asleep or descheduled when the call comes claims nothing and is not waited for. Runs every
  // chunk in order on the calling thread when threads <= 1, when there is one chunk, when
  // called from inside a chunk (any pool's) or an OpenMP parallel region, and when another
  // thread is using this pool. The first exception a chunk throws is rethrown here after every
  // claimed chunk has finished (chunks not yet started are then skipped). Requires chunk >= 1.
  void run(int64_t count, int64_t chunk, ChunkFunction fn, void* context, int threads);

  // Workers started so far.
  int workers() const { return static_cast<int>(threads_.size()); }
  // Testing: while paused, workers claim nothing (as if descheduled for the whole call).
  void pause_workers(bool paused) { paused_.store(paused, std::memory_order_relaxed); }

  // How long an idle worker polls for the next job before it sleeps on a futex (microseconds;
  // KILN_POOL_SPIN_US, default 50).
  static int64_t spin_microseconds();

 private:
  // Claims and runs chunks of the job of generation `generation` until none is left.
  void claim_chunks(uint32_t generation);
  void worker_loop(int index);

  static constexpr uint32_t kClosed = 0xffffffffu;
  // (generation << 32) | next unclaimed chunk; kClosed while a job's fields are written.
  std::atomic<uint64_t> state_{0};
  std::atomic<uint32_t> wake_{0};  // bumped for every job: idle workers wait on it
  std::atomic<uint32_t> done_{0};  // chunks of the current job finished
  std::atomic<ChunkFunction> fn_{nullptr};
  std::atomic<void*> context_{nullptr};
  std::atomic<int64_t> count_{0}, chunk_{1};
  std::atomic<uint32_t> chunks_{0};
  std::atomic<int> participants_{0};  // caller and workers 0 .. participants - 2
  std::atomic<bool> busy_{false}, stop_{false}, failed_{false}, paused_{false};
  std::mutex error_mutex_;
  std::exception_ptr error_;
  std::vector<std::thread> threads_;
};

// The pool of the decode kernels (one per process).
WorkPool& work_pool();

// Inputs promised constant: while an InputEpoch scope is alive on a thread, kernels on that
// thread may reuse work derived from their activations (e.g. x quantized to int8 blocks) from
// an earlier call with the same epoch, x pointer and shape; whoever opens the scope promises
// that no x read meanwhile changes. linear_group opens one epoch for all chunks of one call,
// so each thread quantizes x once, not once per chunk and product.
uint64_t new_input_epoch();  // distinct for every call, never 0
class InputEpoch {
 public:
  explicit InputEpoch(uint64_t epoch);
  ~InputEpoch();
  InputEpoch(const InputEpoch&) = delete;
  InputEpoch& operator=(const InputEpoch&) = delete;
  // The innermost open epoch of the calling thread; 0 when none is open.
  static uint64_t current();

 private:
  uint64_t previous_;
};

// work_pool().run over a callable body(begin, end), on omp_get_max_threads() threads.
template <class Body>
void parallel_chunks(int64_t count, int64_t chunk, Body& body, int threads = 0);

// Rows per chunk for a GEMV over `out` weight rows of `row_bytes` bytes: a multiple of 4 (the
// GEMV tiles' rows), at least 64 KiB of weights per chunk, and at most about 32 chunks per
// thread.
int64_t gemv_chunk_rows(int64_t out, int64_t row_bytes, int threads);

// The thread count of the calling thread's next parallel region (omp_get_max_threads()).
int pool_threads();

// Who runs parallel_chunks: the work pool (default), or, for comparisons, one OpenMP region
// per call whose threads take contiguous shares of whole chunks (the fork/join the decode
// kernels used before the pool; the same results bit for bit). KILN_DECODE_THREADS=pool|openmp
// sets it at start.
enum class DecodeThreads { kPool, kOpenMP };
DecodeThreads decode_threads();
void use_decode_threads(DecodeThreads mode);

template <class Body>
void parallel_chunks(int64_t count, int64_t chunk, Body& body, int threads) {
  if (decode_threads() == DecodeThreads::kOpenMP) {
    const int64_t chunks = (count + chunk - 1) / chunk;
    const int team = threads > 0 ? threads : pool_threads();
#pragma omp parallel num_threads(team) if (chunks > 1 && team > 1)
    {
      const int64_t n = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t first = chunks * t / n, last = chunks * (t + 1) / n;
      for (int64_t c = first; c < last; ++c)
        body(c * chunk, c * chunk + chunk < count ? c * chunk + chunk : count);
    }
    return;
  }
  work_pool().run(
      count, chunk,
      [](void* context, int64_t begin, int64_t end) { (*static_cast<Body*>(context))(begin, end); },
      &body, threads > 0 ? threads : pool_threads());
}

}  // namespace kiln::ops::cpu
