// DataParallelOptimizer: in one process it is AdamW on the pairwise sum of the units'
// weighted gradients; under `mpirun -np 2` (the test reruns itself; skipped without mpirun)
// two ranks give bitwise the parameters, optimizer state, losses and norms of one process,
// with and without ZeRO-1, for unit counts below, equal to and above the rank count.
#include "kiln/train/data_parallel.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>

#include "kiln/core/error.h"

namespace kiln::train {
namespace {

// A synthetic model: three tensors (one spans several norm blocks, so ZeRO shards split it)
// whose "gradient" for unit u at step s is a fixed pseudo-random function of (u, s).
struct Synthetic {
  ParameterMap parameters, gradients;
  Synthetic() {
    const std::vector<std::pair<std::string, Shape>> shapes = {
        {"layers.0/attention/query", {200, 211}}, {"layers.0/norm", {7}}, {"lm_head", {3, 5}}};
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 0.1f);
    for (const auto& [name, shape] : shapes) {
      Tensor p = Tensor::zeros(DType::F32, shape);
      for (int64_t i = 0; i < p.numel(); ++i) p.mutable_data<float>()[i] = normal(rng);
      parameters.emplace(name, std::move(p));
      gradients.emplace(name, Tensor::zeros(DType::F32, shape));
    }
  }
  // Fills the gradients with unit u's of step s; returns its loss.
  double compute(int64_t u, int64_t s) {
    std::mt19937 rng(static_cast<uint32_t>(1000 * s + u));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (auto& [name, g] : gradients)
      for (int64_t i = 0; i < g.numel(); ++i)
        g.mutable_data<float>()[i] = normal(rng) * (i % 3 == 0 ? 1e-6f : 1.0f);
    return 2.0 + static_cast<double>(u) * 0.125 + static_cast<double>(s);
  }
};

struct Trajectory {
  std::vector<double> losses, norms;
  ParameterMap parameters;
  AdamW::State state;
};

// Three steps of `units` units each on `comm`.
Trajectory train(Collective& comm, int64_t units, int zero) {
  Synthetic model;
  DataParallelOptimizer optimizer(comm, model.parameters, model.gradients,
                                  {1e-2, 0.9, 0.95, 1e-8, 0.1, 50.0}, zero, 10000);
  Trajectory run;
  const std::vector<double> weights(static_cast<size_t>(units), 1.0 / static_cast<double>(units));
  for (int64_t s = 0; s < 3; ++s) {
    run.losses.push_back(
        optimizer.accumulate(units, weights, [&](int64_t u) { return model.compute(u, s); }));
    run.norms.push_back(optimizer.step(1e-2));
  }
  run.parameters = std::move(model.parameters);
  run.state = optimizer.state();
  return run;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

void expect_same(const Trajectory& a, const Trajectory& b, const std::string& what) {
  EXPECT_EQ(a.losses, b.losses) << what;
  EXPECT_EQ(a.norms, b.norms) << what;
  for (const auto& [name, p] : a.parameters)
    EXPECT_TRUE(same_bits(p, b.parameters.at(name))) << what << ": " << name;
  EXPECT_EQ(a.state.steps, b.state.steps) << what;
  EXPECT_TRUE(a.state.m == b.state.m && a.state.v == b.state.v) << what;
}

// One process: with clipping off, the update is AdamW::step's on the pairwise sum.
TEST(DataParallel, OneProcessIsAdamWOnThePairwiseSum) {
  SingleProcess one;
  Synthetic a, b;
  DataParallelOptimizer optimizer(one, a.parameters, a.gradients, {1e-2, 0.9, 0.95, 1e-8, 0.1, 0.0},
                                  0);
  AdamW reference({1e-2, 0.9, 0.95, 1e-8, 0.1, 0.0});
  ParameterMap sum;
  for (const auto& [name, g] : b.gradients) sum.emplace(name, Tensor::zeros(DType::F32, g.shape()));
  for (int64_t s = 0; s < 3; ++s) {
    // Units 0..2 weighted 1/3: the tree is g0 + (g1 + g2).
    const float w = static_cast<float>(1.0 / 3.0);
    std::vector<std::map<std::string, std::vector<float>>> g(3);
    for (int64_t u = 0; u < 3; ++u) {
      b.compute(u, s);
      for (const auto& [name, t] : b.gradients)
        g[u][name].assign(t.data<float>(), t.data<float>() + t.numel());
    }
    for (auto& [name, t] : sum)
      for (int64_t i = 0; i < t.numel(); ++i)
        t.mutable_data<float>()[i] = g[0][name][i] * w + (g[1][name][i] * w + g[2][name][i] * w);
    const double loss = optimizer.accumulate(3, {1.0 / 3, 1.0 / 3, 1.0 / 3},
                                             [&](int64_t u) { return a.compute(u, s); });
    EXPECT_NEAR(loss, 2.125 + static_cast<double>(s), 1e-12);
    const double norm = optimizer.step(1e-2);
    const double expected_norm = reference.step(b.parameters, sum);
    EXPECT_NEAR(norm, expected_norm, 1e-12 * expected_norm);
  }
  for (const auto& [name, p] : a.parameters)
    EXPECT_TRUE(same_bits(p, b.parameters.at(name))) << name;
  EXPECT_TRUE(optimizer.state().m == reference.state().m);
}

TEST(DataParallel, StateRoundTripsAndBadStateIsRefused) {
  SingleProcess one;
  const Trajectory run = train(one, 2, 0);
  Synthetic model;
  DataParallelOptimizer optimizer(one, model.parameters, model.gradients,
                                  {1e-2, 0.9, 0.95, 1e-8, 0.1, 50.0}, 1);
  optimizer.set_state(run.state);
  const AdamW::State back = optimizer.state();
  EXPECT_EQ(back.steps, 3);
  EXPECT_TRUE(back.m == run.state.m && back.v == run.state.v);
  AdamW::State bad = run.state;
  bad.v["lm_head"].pop_back();
  try {
    optimizer.set_state(bad);
    FAIL() << "a misshapen state was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'lm_head'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(DataParallelOptimizer(one, model.parameters, model.gradients, {}, 2), Error);
}

bool run_under_mpirun(const std::string& filter, int ranks, std::string& output, int& code) {
  if (std::system("command -v mpirun >/dev/null 2>&1") != 0) return false;
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const std::string log = testing::TempDir() + "/kiln_mpi_" + filter + ".log";
  const std::string command =
      "KILN_TEST_UNDER_MPI=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
      "OMP_NUM_THREADS=1 timeout 300 mpirun --oversubscribe -np " +
      std::to_string(ranks) + " " + self + " --gtest_color=no --gtest_filter=" + filter + " >" +
      log + " 2>&1";
  code = std::system(command.c_str());
  std::ifstream in(log);
  output.assign(std::istreambuf_iterator<char>(in), {});
  return true;
}

// Under mpirun: `ranks` ranks give one process's run bitwise; else reruns `test` under mpirun.
void check_ranks_against_one_process(const std::string& test, int ranks) {
  if (std::getenv("KILN_TEST_UNDER_MPI") != nullptr) {
    std::unique_ptr<Collective> mpi = make_mpi_collective();
    ASSERT_EQ(mpi->size(), ranks);
    SingleProcess one;
    for (int64_t units : {1, 2, 3, 5, 6, 8})
      for (int zero : {0, 1}) {
        const std::string what = "units " + std::to_string(units) + " zero " + std::to_string(zero);
        const Trajectory single = train(one, units, 0), many = train(*mpi, units, zero);
        expect_same(single, many, what);
        std::printf("rank %d of %d: %s: losses %.17g %.17g %.17g, norm %.17g: bitwise equal\n",
                    mpi->rank(), ranks, what.c_str(), many.losses[0], many.losses[1],
                    many.losses[2], many.norms[2]);
      }
    return;
  }
  std::string output;
  int code = 0;
  if (!run_under_mpirun("DataParallel." + test, ranks, output, code)) GTEST_SKIP() << "no mpirun";
  std::cout << output;
  EXPECT_EQ(code, 0) << output;
  EXPECT_NE(output.find("[  PASSED  ] 1 test"), std::string::npos) << output;
}

TEST(DataParallel, TwoRanksAreBitwiseOneProcess) {
  check_ranks_against_one_process("TwoRanksAreBitwiseOneProcess", 2);
}

// Four ranks too: the rank tree (0 + 1) + (2 + 3) is the unit tree's upper levels.
TEST(DataParallel, FourRanksAreBitwiseOneProcess) {
  check_ranks_against_one_process("FourRanksAreBitwiseOneProcess", 4);
}

}  // namespace
}  // namespace kiln::train
