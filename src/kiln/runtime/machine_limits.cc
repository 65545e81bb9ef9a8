#include "kiln/runtime/machine_limits.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <vector>

#include "kiln/core/error.h"

extern "C" void openblas_set_num_threads(int num_threads);

namespace kiln {

namespace {
double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
}  // namespace

double measure_read_bandwidth_gbs(size_t bytes, int threads, int repeats) {
  if (threads <= 0) threads = omp_get_num_procs();
  const int64_t words = static_cast<int64_t>(bytes / 64 * 8);  // uint64 words, 64-byte multiple
  auto* data = static_cast<uint64_t*>(std::aligned_alloc(64, static_cast<size_t>(words) * 8));
  check(data != nullptr, "read bandwidth test: out of memory");
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < words; ++i) data[i] = static_cast<uint64_t>(i);
  double best = 0;
  volatile uint64_t sink = 0;
  for (int r = 0; r < repeats; ++r) {
    auto start = std::chrono::steady_clock::now();
    uint64_t total = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
    for (int64_t i = 0; i < words; i += 8) {
      // Eight independent lanes per 64-byte line; the compiler vectorizes this.
      uint64_t line = 0;
      for (int j = 0; j < 8; ++j) line += data[i + j];
      total += line;
    }
    double seconds = seconds_since(start);
    sink = sink + total;
    best = std::max(best, static_cast<double>(words) * 8 / seconds / 1e9);
  }
  std::free(data);
  return best;
}

double measure_openblas_sgemm_gflops(int64_t m, int64_t n, int64_t k, int threads, int repeats) {
  if (threads <= 0) threads = omp_get_num_procs();
  openblas_set_num_threads(threads);
  std::vector<float> a(static_cast<size_t>(m * k)), b(static_cast<size_t>(k * n)),
      c(static_cast<size_t>(m * n));
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>((i * 7) % 13) * 0.01f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>((i * 5) % 11) * 0.01f;
  auto sgemm = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), 1.0f, a.data(), static_cast<int>(k), b.data(),
                static_cast<int>(n), 0.0f, c.data(), static_cast<int>(n));
  };
  sgemm();  // warm-up
  double best_seconds = 1e30;
  for (int r = 0; r < repeats; ++r) {
    auto start = std::chrono::steady_clock::now();
    sgemm();
    best_seconds = std::min(best_seconds, seconds_since(start));
  }
  return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) /
         best_seconds / 1e9;
}

}  // namespace kiln
