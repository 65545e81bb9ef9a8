// `mpirun -np 2 kiln train` on tinycoder (skipped when mpirun is absent): the same loss curve
// as one process with the same global batch, with and without --zero 1 (and here bitwise the
// same weights), and a run resumed with another number of ranks writes bitwise the checkpoint
// and the weights of the uninterrupted run.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include "kiln/io/json.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

bool have_mpirun() {
  return std::system("command -v mpirun >/dev/null 2>&1") == 0;
}

// `kiln ARGS` with `ranks` ranks (1: no launcher); returns the exit code, output in `log`.
int run_train(int ranks, const std::string& args, std::string& log) {
  const std::string kiln =
      (fs::read_symlink("/proc/self/exe").parent_path().parent_path() / "kiln").string();
  const std::string file = test::make_temp_dir("kiln_mpi_log_") + "/log";
  // One OpenMP thread per process: the comparison is of the data-parallel reduction alone.
  std::string command = "OMP_NUM_THREADS=1 ";
  if (ranks > 1)
    command +=
        "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 300 mpirun "
        "--oversubscribe -np " +
        std::to_string(ranks) + " ";
  command += kiln + " train " + args + " >" + file + " 2>&1";
  const int status = std::system(command.c_str());
  std::ifstream in(file);
  log.assign(std::istreambuf_iterator<char>(in), {});
  fs::remove_all(fs::path(file).parent_path());
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

std::vector<double> losses(const std::string& out) {
  std::ifstream in(out + "/metrics.jsonl");
  std::vector<double> result;
  for (std::string line; std::getline(in, line);)
    result.push_back(Json::parse(line).at("loss").get<double>());
  return result;
}

std::string common_args() {
  return "--data " + test::shell_quote(test::data_path("../../tools/torch_reference.py")) +
         " --steps 4 --batch 2 --grad-accum 2 --seq 24 --lr 1e-3 --seed 7 --val-fraction 0.02 "
         "--json";
}

TEST(CliTrainMpi, TwoRanksGiveTheLossCurveOfOneProcess) {
  if (!have_mpirun()) GTEST_SKIP() << "mpirun is not installed";
  const std::string dir = test::make_temp_dir("kiln_train_mpi_");
  std::string log;
  ASSERT_EQ(run_train(1, common_args() + " -o " + dir + "/one", log), 0) << log;
  const std::vector<double> one = losses(dir + "/one");
  ASSERT_EQ(one.size(), 4u);
  for (const std::string zero : {"0", "1"}) {
    const std::string out = dir + "/two_zero" + zero;
    ASSERT_EQ(run_train(2, common_args() + " --zero " + zero + " -o " + out, log), 0) << log;
    const Json summary = Json::parse(log.substr(log.find("{\"")));
    EXPECT_EQ(summary.at("ranks"), 2);
    EXPECT_EQ(summary.at("rank_tokens_per_s").size(), 2u);
    const std::vector<double> two = losses(out);
    ASSERT_EQ(two.size(), one.size());
    double worst = 0.0;
    for (size_t i = 0; i < one.size(); ++i)
      worst = std::max(worst, std::abs(two[i] - one[i]) / std::abs(one[i]));
    std::cout << "--zero " << zero << ": losses";
    for (double l : two) std::cout << " " << l;
    std::cout << "; worst relative difference to one process " << worst << std::endl;
    EXPECT_LE(worst, 1e-5);
    EXPECT_TRUE(read_bytes(dir + "/one/model.safetensors") ==
                read_bytes(out + "/model.safetensors"))
        << "--zero " << zero << ": the weights differ from one process's";
    // Rank 0 alone writes.
    EXPECT_FALSE(fs::exists(out + ".partial"));
  }
  fs::remove_all(dir);
}

// Checkpoints every 2 steps of 6: resuming step 2 with 2 ranks (ZeRO) and step 4 of that run
// with 1 rank gives the checkpoint and weights of the 1-rank uninterrupted run, byte for byte.
TEST(CliTrainMpi, ResumeAcrossRankCountsIsBitwise) {
  if (!have_mpirun()) GTEST_SKIP() << "mpirun is not installed";
  const std::string dir = test::make_temp_dir("kiln_resume_mpi_");
  std::string args = common_args();
  args.replace(args.find("--steps 4"), 9, "--steps 6");
  args += " --save-every 2";
  std::string log;
  ASSERT_EQ(run_train(1, args + " -o " + dir + "/a", log), 0) << log;
  ASSERT_EQ(
      run_train(2, args + " --zero 1 -o " + dir + "/b --resume " + dir + "/a.checkpoints/step-2",
                log),
      0)
      << log;
  for (const char* file : {"parameters.safetensors", "optimizer.safetensors", "state.json"}) {
    const std::string a = read_bytes(dir + "/a.checkpoints/step-4/" + file),
                      b = read_bytes(dir + "/b.checkpoints/step-4/" + file);
    EXPECT_FALSE(a.empty()) << file;
    EXPECT_TRUE(a == b) << file << " of step 4 differs after resuming with 2 ranks";
  }
  ASSERT_EQ(run_train(1, args + " -o " + dir + "/c --resume " + dir + "/b.checkpoints/step-4", log),
            0)
      << log;
  const std::string a = read_bytes(dir + "/a/model.safetensors");
  EXPECT_FALSE(a.empty());
  EXPECT_TRUE(a == read_bytes(dir + "/b/model.safetensors")) << "2-rank resumed weights differ";
  EXPECT_TRUE(a == read_bytes(dir + "/c/model.safetensors")) << "1-rank resumed weights differ";
  fs::remove_all(dir);
}

// A rank that fails ends the run: every rank exits promptly with an error, nothing is written.
TEST(CliTrainMpi, AFailingRankEndsTheRun) {
  if (!have_mpirun()) GTEST_SKIP() << "mpirun is not installed";
  const std::string dir = test::make_temp_dir("kiln_fail_mpi_");
  std::string log;
  std::string args = common_args();
  args.replace(args.find("--lr 1e-3"), 9, "--lr 1e12 --clip 0");
  const auto start = std::chrono::steady_clock::now();
  EXPECT_NE(run_train(2, args + " -o " + dir + "/nan", log), 0);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "failed run ended after " << seconds << " s" << std::endl;
  EXPECT_NE(log.find("the loss is"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(dir + "/nan"));
  EXPECT_FALSE(fs::exists(dir + "/nan.partial"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
