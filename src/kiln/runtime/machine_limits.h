// Measurements of what this machine can do, reported beside Kiln's speeds: streaming read
// bandwidth (the decode limit) and OpenBLAS sgemm FLOP/s (the prefill peer).
#pragma once

#include <cstddef>
#include <cstdint>

namespace kiln {

// Reads a `bytes`-sized buffer (allocated and touched first) with `threads` threads
// (0 = all cores), `repeats` times, and returns the best GB/s (1e9 bytes per second).
double measure_read_bandwidth_gbs(size_t bytes = size_t{1} << 30, int threads = 0, int repeats = 5);

// Times OpenBLAS cblas_sgemm on C[m,n] = A[m,k] * B[k,n] (row-major) with `threads` threads
// (0 = all cores), best of `repeats`, and returns GFLOP/s (2*m*n*k per call).
double measure_openblas_sgemm_gflops(int64_t m, int64_t n, int64_t k, int threads = 0,
                                     int repeats = 3);

}  // namespace kiln
