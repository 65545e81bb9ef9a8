// `kiln bringup` through the executable: a full checklist on a fixture, and a failing one
// when a weight is wrong or the reference is missing.
#include <gtest/gtest.h>

#include <filesystem>
#include <iostream>

#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

class CliBringupFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(CliBringupFixture, PassesEveryCheck) {
  const test::CommandResult r =
      test::run_kiln("bringup " + test::shell_quote(test::data_path("hf/" + GetParam())));
  std::cout << r.out;
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  for (const char* row : {"✓ **architecture analysis**", "✓ **features**", "✓ **conversion**",
                          "✓ **layer checks**", "✓ **logit check**", "✓ **decode check**"})
    EXPECT_NE(r.out.find(row), std::string::npos) << row << "\n" << r.out;
  EXPECT_EQ(r.out.find("✗"), std::string::npos) << r.out;
}

// A dense model and a mixture of experts.
INSTANTIATE_TEST_SUITE_P(Fixtures, CliBringupFixture, ::testing::Values("llama", "mixtral"));

TEST(CliBringup, MissingReferenceFailsTheModelChecks) {
  const std::string dir = test::make_temp_dir("kiln-bringup");
  for (const char* file : {"config.json", "generation_config.json", "model.safetensors"})
    fs::copy_file(test::data_path(std::string("hf/llama/") + file), dir + "/" + file);
  const test::CommandResult r = test::run_kiln("bringup " + test::shell_quote(dir));
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE(r.out.find("✓ **architecture analysis**"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("✗ **layer checks**: no reference dump"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace kiln
