// AtomicOutputDir: nothing appears at the destination before commit, failures and kill -9
// leave nothing that the next run cannot clean, and --force is required to replace.
#include "kiln/convert/atomic_output.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>

#include "kiln/core/error.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

class AtomicOutputTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("kiln-atomic"); }
  void TearDown() override { fs::remove_all(dir_); }
  // Entries of the parent folder, for checking that nothing stray is left.
  size_t entries() const {
    return static_cast<size_t>(
        std::distance(fs::directory_iterator(dir_), fs::directory_iterator()));
  }
  std::string dir_;
};

TEST_F(AtomicOutputTest, CommitMovesTheFolderIntoPlace) {
  const std::string dst = dir_ + "/out";
  {
    AtomicOutputDir out(dst, false);
    std::ofstream(out.path() + "/a.txt") << "hello";
    EXPECT_FALSE(fs::exists(dst));
    out.commit();
  }
  EXPECT_TRUE(fs::exists(dst + "/a.txt"));
  EXPECT_EQ(entries(), 1u);
}

TEST_F(AtomicOutputTest, FailureLeavesNothing) {
  const std::string dst = dir_ + "/out";
  try {
    AtomicOutputDir out(dst, false);
    std::ofstream(out.path() + "/a.txt") << "partial";
    throw Error("conversion failed");
  } catch (const Error&) {
  }
  EXPECT_FALSE(fs::exists(dst));
  EXPECT_EQ(entries(), 0u);
}

TEST_F(AtomicOutputTest, ExistingOutputNeedsForce) {
  const std::string dst = dir_ + "/out";
  fs::create_directory(dst);
  std::ofstream(dst + "/old.txt") << "old";
  try {
    AtomicOutputDir out(dst, false);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    std::cout << "  error: " << e.what() << "\n";
    EXPECT_NE(std::string(e.what()).find("already exists (use --force"), std::string::npos);
  }
  EXPECT_TRUE(fs::exists(dst + "/old.txt"));
  {
    AtomicOutputDir out(dst, true);
    std::ofstream(out.path() + "/new.txt") << "new";
    EXPECT_TRUE(fs::exists(dst + "/old.txt")) << "the old output must survive until commit";
    out.commit();
  }
  EXPECT_FALSE(fs::exists(dst + "/old.txt"));
  EXPECT_TRUE(fs::exists(dst + "/new.txt"));
  EXPECT_EQ(entries(), 1u);
}

TEST_F(AtomicOutputTest, KillNineLeavesNoOutputAndTheRerunCleansUp) {
  const std::string dst = dir_ + "/out";
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    AtomicOutputDir out(dst, false);
    std::ofstream(out.path() + "/half.bin") << std::string(1000, 'x');
    ::raise(SIGKILL);
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  EXPECT_FALSE(fs::exists(dst));
  EXPECT_EQ(entries(), 1u) << "the killed run's temporary folder is expected";
  {
    AtomicOutputDir out(dst, false);
    EXPECT_EQ(entries(), 1u) << "the stale temporary folder should be gone";
    std::ofstream(out.path() + "/done.txt") << "ok";
    out.commit();
  }
  EXPECT_TRUE(fs::exists(dst + "/done.txt"));
  EXPECT_EQ(entries(), 1u);
}

}  // namespace
}  // namespace kiln
