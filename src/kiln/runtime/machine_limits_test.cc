#include "kiln/runtime/machine_limits.h"

#include <gtest/gtest.h>

#include <iostream>

namespace kiln {
namespace {

// Sanity only (no timing assertions): both measurements run and return plausible numbers.
TEST(MachineLimits, MeasuresSomething) {
  double gbs = measure_read_bandwidth_gbs(size_t{64} << 20, 0, 2);
  double gflops = measure_openblas_sgemm_gflops(256, 256, 256, 0, 2);
  std::cout << "read bandwidth " << gbs << " GB/s, OpenBLAS sgemm 256^3 " << gflops << " GFLOP/s\n";
  EXPECT_GT(gbs, 0.1);
  EXPECT_GT(gflops, 0.1);
}

}  // namespace
}  // namespace kiln
