// `kiln convert` end to end: Kiln (both layouts) and Orbax outputs that `kiln inspect`
// and the readers accept, progress lines, and --force.
#include <gtest/gtest.h>

#include <filesystem>

#include "kiln/io/json.h"
#include "kiln/io/kiln_checkpoint.h"
#include "kiln/io/orbax/orbax_checkpoint.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

TEST(ConvertCli, KilnAndOrbaxOutputs) {
  const std::string dir = test::make_temp_dir("kiln-convert-cli");
  const std::string model = test::shell_quote(test::data_path("hf/llama"));
  test::CommandResult r = test::run_kiln("convert " + model + " -o " +
                                         test::shell_quote(dir + "/k") + " --layout scanned");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("21/21 tensors"), std::string::npos) << r.err;
  KilnCheckpoint ckpt(dir + "/k");
  EXPECT_EQ(ckpt.layout(), "scanned");
  ckpt.verify();

  r = test::run_kiln("convert " + model + " -o " + test::shell_quote(dir + "/k"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("already exists (use --force"), std::string::npos) << r.err;
  r = test::run_kiln("convert " + model + " -o " + test::shell_quote(dir + "/k") + " --force");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(KilnCheckpoint(dir + "/k").layout(), "unscanned");

  r = test::run_kiln("convert " + model + " -o " + test::shell_quote(dir + "/o") +
                     " --format orbax --layout scanned --dtype bf16 --orbax-step 0");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  OrbaxSource orbax(dir + "/o");
  EXPECT_EQ(orbax.where(), dir + "/o/0/items");
  EXPECT_TRUE(orbax.contains("params/params/token_embedder/embedding"));
  EXPECT_EQ(orbax.dtype_of("params/params/token_embedder/embedding"), DType::BF16);
  const auto entries = std::distance(fs::directory_iterator(dir), fs::directory_iterator());
  EXPECT_EQ(entries, 2) << "only k and o; no intermediate folder may remain";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
