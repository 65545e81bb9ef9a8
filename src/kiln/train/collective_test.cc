// The collective interface: the single-process implementation, the shares of units, and the
// MPI implementation with two ranks (the test reruns itself under `mpirun -np 2`; skipped when
// mpirun is absent).
#include "kiln/train/collective.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <numeric>

namespace kiln::train {
namespace {

TEST(Collective, SingleProcessCopiesAndKeeps) {
  SingleProcess one;
  EXPECT_EQ(one.rank(), 0);
  EXPECT_EQ(one.size(), 1);
  EXPECT_EQ(one.local_size(), 1);
  std::vector<float> data = {1.5f, -2.0f};
  one.all_reduce(data.data(), 2);
  EXPECT_EQ(data, (std::vector<float>{1.5f, -2.0f}));
  std::vector<float> out(2);
  one.reduce_scatter(data.data(), out.data(), {2});
  EXPECT_EQ(out, data);
  std::vector<float> gathered(2);
  one.all_gather(data.data(), gathered.data(), {2});
  EXPECT_EQ(gathered, data);
  one.barrier();
}

TEST(Collective, SharesCoverTheUnitsInRankOrder) {
  for (int size : {1, 2, 3, 4, 7})
    for (int64_t n : {0, 1, 2, 5, 8, 13}) {
      int64_t next = 0;
      for (int r = 0; r < size; ++r) {
        const auto [first, last] = share(n, r, size);
        EXPECT_EQ(first, next);
        EXPECT_LE(first, last);
        EXPECT_LE(last - first, n / size + 1);
        next = last;
      }
      EXPECT_EQ(next, n);
    }
}

// The body of the MPI test: runs on each of two ranks.
void check_two_ranks() {
  std::unique_ptr<Collective> comm = make_mpi_collective();
  ASSERT_EQ(comm->size(), 2);
  EXPECT_EQ(comm->local_size(), 2);  // both on this machine
  const int r = comm->rank();
  EXPECT_NE(comm->name().find("MPI"), std::string::npos) << comm->name();
  std::vector<float> f(1000);
  for (size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>(i) * (r + 1) + 0.25f;
  comm->all_reduce(f.data(), static_cast<int64_t>(f.size()));
  for (size_t i = 0; i < f.size(); ++i) ASSERT_EQ(f[i], static_cast<float>(i) * 3 + 0.5f) << i;
  std::vector<double> d = {r == 0 ? 1e-3 : 2.0, -0.0};
  comm->all_reduce(d.data(), 2);
  EXPECT_EQ(d[0], 2.001);
  EXPECT_TRUE(std::signbit(d[1]));  // -0 + -0: the identity that empty shares send
  // Segments of 3 and 5 elements: rank 0 gets the sum of [0, 3), rank 1 of [3, 8).
  std::vector<float> send(8);
  for (size_t i = 0; i < send.size(); ++i) send[i] = static_cast<float>(100 * r + i);
  const std::vector<int64_t> counts = {3, 5};
  std::vector<float> recv(static_cast<size_t>(counts[static_cast<size_t>(r)]));
  comm->reduce_scatter(send.data(), recv.data(), counts);
  for (size_t i = 0; i < recv.size(); ++i)
    EXPECT_EQ(recv[i], static_cast<float>(100 + 2 * (i + (r == 0 ? 0 : 3))));
  // Rank 0 gives 2 elements, rank 1 gives 4.
  const std::vector<int64_t> sizes = {2, 4};
  std::vector<float> mine(static_cast<size_t>(sizes[static_cast<size_t>(r)]),
                          static_cast<float>(r + 1)),
      all(6);
  comm->all_gather(mine.data(), all.data(), sizes);
  EXPECT_EQ(all, (std::vector<float>{1, 1, 2, 2, 2, 2}));
  std::vector<int32_t> message = {r, r, r};
  comm->broadcast(message.data(), static_cast<int64_t>(message.size() * sizeof(int32_t)), 1);
  EXPECT_EQ(message, (std::vector<int32_t>{1, 1, 1}));
  comm->barrier();
}

// Runs this test binary's `filter` under `mpirun -np 2`; false (skip) without mpirun.
bool run_under_mpirun(const std::string& filter, std::string& output, int& code) {
  if (std::system("command -v mpirun >/dev/null 2>&1") != 0) return false;
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const std::string log = testing::TempDir() + "/kiln_mpi_" + filter + ".log";
  const std::string command =
      "KILN_TEST_UNDER_MPI=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
      "OMP_NUM_THREADS=1 timeout 300 mpirun --oversubscribe -np 2 " +
      self + " --gtest_color=no --gtest_filter=" + filter + " >" + log + " 2>&1";
  code = std::system(command.c_str());
  std::ifstream in(log);
  output.assign(std::istreambuf_iterator<char>(in), {});
  return true;
}

TEST(Collective, MpiTwoRanks) {
  if (std::getenv("KILN_TEST_UNDER_MPI") != nullptr) {
    check_two_ranks();
    return;
  }
  std::string output;
  int code = 0;
  if (!run_under_mpirun("Collective.MpiTwoRanks", output, code)) GTEST_SKIP() << "no mpirun";
  EXPECT_EQ(code, 0) << output;
  EXPECT_NE(output.find("[  PASSED  ] 1 test"), std::string::npos) << output;
}

}  // namespace
}  // namespace kiln::train
