// `kiln inspect` on every weights format Kiln reads: the same tensors, JSON output, errors.
#include <gtest/gtest.h>

#include <filesystem>

#include "kiln/io/json.h"
#include "kiln/io/kiln_checkpoint.h"
#include "test_util.h"

namespace kiln {
namespace {

Json inspect_json(const std::string& path) {
  test::CommandResult r = test::run_kiln("inspect --json " + test::shell_quote(path));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return parse_json(r.out, "kiln inspect output");
}

TEST(Inspect, EveryFormatListsTheSameLlamaWeights) {
  const Json safetensors = inspect_json(test::data_path("hf/llama"));
  EXPECT_EQ(safetensors["format"], "safetensors");
  EXPECT_EQ(safetensors["num_tensors"], 21);
  EXPECT_EQ(safetensors["total_bytes"], 558336);
  for (const char* bin : {"torch_bin/llama/pytorch_model.bin", "torch_bin/llama_sharded"}) {
    const Json torch = inspect_json(test::data_path(bin));
    EXPECT_EQ(torch["format"], "torch_bin") << bin;
    EXPECT_EQ(torch["tensors"], safetensors["tensors"]) << bin;
  }
  std::cout << "  " << safetensors["num_tensors"] << " tensors, " << safetensors["total_bytes"]
            << " bytes in safetensors and torch .bin alike\n";
}

TEST(Inspect, OrbaxAndKilnCheckpoints) {
  const Json orbax = inspect_json(test::data_path("orbax/manager"));
  EXPECT_EQ(orbax["format"], "orbax");
  EXPECT_EQ(orbax["layout"], "ocdbt");
  EXPECT_EQ(orbax["num_tensors"], 5);

  const std::string dir = test::make_temp_dir("kiln-inspect") + "/ckpt";
  KilnCheckpointInfo info;
  info.layout = "scanned";
  info.layer_groups["layers"] = {0, 1};
  {
    KilnCheckpointWriter writer(
        dir, info, {{"decoder/layers/mlp/wo/kernel", DType::BF16, {3, 2, 4}, 1, "layers"}}, {});
    writer.write("decoder/layers/mlp/wo/kernel", Tensor::zeros(DType::BF16, {3, 2, 4}));
    writer.finish();
  }
  test::CommandResult r = test::run_kiln("inspect --json --verify " + test::shell_quote(dir));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json kiln = parse_json(r.out, "kiln inspect output");
  EXPECT_EQ(kiln["format"], "kiln");
  EXPECT_EQ(kiln["layout"], "scanned");
  EXPECT_EQ(kiln["verified"], true);
  EXPECT_EQ(kiln["total_bytes"], 48);
  test::CommandResult table = test::run_kiln("inspect " + test::shell_quote(dir));
  EXPECT_NE(table.out.find("decoder/layers/mlp/wo/kernel  BF16  [3, 2, 4]"), std::string::npos)
      << table.out;
  std::filesystem::remove_all(std::filesystem::path(dir).parent_path());
}

TEST(Inspect, MissingWeightsAreAOneLineError) {
  test::CommandResult r = test::run_kiln("inspect " + test::shell_quote(test::data_path("hf")));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("kiln: error: " + test::data_path("hf") + ": no model weights found"),
            std::string::npos)
      << r.err;
  std::cout << "  " << r.err;
}

}  // namespace
}  // namespace kiln
