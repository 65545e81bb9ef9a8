// Models loaded from Kiln checkpoints: every HF fixture converted in both layouts (dtype
// kept) gives logits bitwise identical to the HF folder, from weights that are views of the
// data files (mapped or resident); the CLI runs on a converted checkpoint alone.
#include <gtest/gtest.h>

#include <filesystem>
#include <iostream>
#include <vector>

#include "hf_fixtures.h"
#include "kiln/cli/command.h"
#include "kiln/convert/hf_to_kiln.h"
#include "kiln/io/json.h"
#include "kiln/io/safetensors.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

class KilnCheckpointModel : public ::testing::TestWithParam<std::string> {};

TEST_P(KilnCheckpointModel, BothLayoutsGiveBitwiseIdenticalLogitsFromViews) {
  KILN_SKIP_UNSUPPORTED_FIXTURE(GetParam());
  const std::string source = test::hf_fixture_path(GetParam());
  const std::string dir = test::make_temp_dir("kiln-ckpt-model");
  const Tensor input_ids =
      SafetensorsFile::open(source + "/reference.safetensors").get("input_ids");
  const LoadedModel hf = load_model(source);
  const Tensor expected = test::all_logits(hf, input_ids);
  for (const char* layout : {"unscanned", "scanned"}) {
    ConvertOptions options;
    options.layout = layout;
    convert_hf_to_kiln(source, dir + "/" + layout, options);
    for (const Residency residency : {Residency::kMapped, Residency::kResident}) {
      const std::string how =
          std::string(layout) + (residency == Residency::kMapped ? ", mapped" : ", resident");
      const LoadedModel kiln = load_model(dir + "/" + layout, residency);
      EXPECT_EQ(kiln.spec.to_json(), hf.spec.to_json()) << how;
      ASSERT_EQ(kiln.weights.size(), hf.weights.size()) << how;
      for (const auto& [name, tensor] : kiln.weights) {
        ASSERT_TRUE(hf.weights.count(name)) << how << ": unexpected weight " << name;
        EXPECT_EQ(tensor.dtype(), hf.weights.at(name).dtype()) << name;
        EXPECT_FALSE(tensor.writable()) << how << ": " << name << " is a copy, not a view";
      }
      const double diff = test::max_abs_diff(test::all_logits(kiln, input_ids), expected);
      std::cout << GetParam() << " (" << how << "): logits max abs diff vs HF folder = " << diff
                << std::endl;
      EXPECT_EQ(diff, 0.0) << how;
    }
  }
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, KilnCheckpointModel,
                         ::testing::ValuesIn(test::hf_fixture_names()), test::FixtureName());

// Scanned: the per-layer weights of one stacked tensor share its storage.
TEST(KilnCheckpointModelViews, ScannedLayersShareTheStackedTensorsStorage) {
  const std::string dir = test::make_temp_dir("kiln-ckpt-model");
  ConvertOptions options;
  options.layout = "scanned";
  convert_hf_to_kiln(test::data_path("hf/llama"), dir + "/s", options);
  const LoadedModel loaded = load_model(dir + "/s");
  const Tensor& layer0 = loaded.weights.at("decoder/layers_0/self_attention/query/kernel");
  const Tensor& layer1 = loaded.weights.at("decoder/layers_1/self_attention/query/kernel");
  EXPECT_EQ(layer0.storage(), layer1.storage());
  EXPECT_EQ(layer1.offset() - layer0.offset(),
            static_cast<size_t>(layer0.shape()[1] * dtype_size(layer0.dtype())));
  fs::remove_all(dir);
}

// `kiln generate` on a converted tinycoder alone (tokenizer and generation config travel in
// the checkpoint) gives the golden text; `kiln verify` accepts a checkpoint too.
TEST(KilnCheckpointCli, GenerateAndVerifyRunOnAConvertedCheckpoint) {
  const std::string dir = test::make_temp_dir("kiln-ckpt-cli");
  const std::string ckpt = dir + "/tinycoder";
  test::CommandResult r = test::run_kiln("convert " + test::shell_quote(cli::default_model_path()) +
                                         " -o " + test::shell_quote(ckpt) + " --layout scanned");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json golden = read_json_file(cli::default_model_path() + "/golden.json").at("greedy")[0];
  r = test::run_kiln("generate " + test::shell_quote(ckpt) + " --prompt " +
                     test::shell_quote(golden.at("prompt").get<std::string>()) +
                     " --temperature 0 --max-tokens 48");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, golden.at("text").get<std::string>());

  const std::string llama = dir + "/llama";
  r = test::run_kiln("convert " + test::shell_quote(test::data_path("hf/llama")) + " -o " +
                     test::shell_quote(llama));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = test::run_kiln("verify " + test::shell_quote(llama) + " --reference " +
                     test::shell_quote(test::data_path("hf/llama/reference.safetensors")));
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  std::cout << r.out;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
