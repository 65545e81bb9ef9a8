// HF -> Kiln conversion: every weight the loader maps from the HF folder is in the Kiln
// checkpoint, bit for bit, in both layouts (and rounded alike with --dtype bf16).
#include "kiln/convert/hf_to_kiln.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "kiln/chat/chat_template.h"
#include "kiln/core/error.h"
#include "kiln/io/kiln_checkpoint.h"
#include "kiln/models/loader.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

// layer_tensor(i, param) for "decoder/layers_<i>/<param>", get(name) otherwise.
Tensor kiln_weight(const KilnCheckpoint& ckpt, const std::string& name) {
  const std::string prefix = "decoder/layers_";
  if (name.rfind(prefix, 0) != 0) return ckpt.get(name);
  const size_t slash = name.find('/', prefix.size());
  return ckpt.layer_tensor(std::stoll(name.substr(prefix.size(), slash - prefix.size())),
                           name.substr(slash + 1));
}

class ConvertTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("kiln-convert"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

TEST_P(ConvertTest, EveryMappedWeightIsInTheCheckpointBitwise) {
  const std::string model = test::data_path(std::string("hf/") + GetParam());
  const LoadedModel loaded = load_model(model);
  for (const char* layout : {"unscanned", "scanned"}) {
    for (const char* dtype : {"keep", "bf16"}) {
      const std::string out = dir_ + "/" + layout + "_" + dtype;
      ConvertOptions options;
      options.layout = layout;
      options.dtype = dtype;
      size_t calls = 0;
      options.progress = [&](size_t, size_t, uint64_t) { ++calls; };
      convert_hf_to_kiln(model, out, options);
      KilnCheckpoint ckpt(out);
      ckpt.verify();
      EXPECT_EQ(ckpt.layout(), layout);
      EXPECT_EQ(calls, loaded.weights.size());
      size_t compared = 0;
      for (const auto& [name, hf] : loaded.weights) {
        const Tensor want = std::string(dtype) == "bf16" ? hf.to(DType::BF16) : hf.contiguous();
        const Tensor got = kiln_weight(ckpt, name).contiguous();
        ASSERT_EQ(got.shape(), want.shape()) << name;
        ASSERT_EQ(got.dtype(), want.dtype()) << name;
        EXPECT_EQ(std::memcmp(got.raw(), want.raw(), want.nbytes()), 0) << name;
        ++compared;
      }
      EXPECT_TRUE(fs::exists(out + "/generation_config.json"));
      std::cout << "  " << GetParam() << " " << layout << " " << dtype << ": " << compared
                << " weights bitwise equal, " << ckpt.names().size() << " stored tensors\n";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ConvertTest, ::testing::Values("llama", "qwen3"));

TEST(Convert, ChatTemplateTravelsWithTheCheckpoint) {
  const std::string dir = test::make_temp_dir("kiln-convert-chat");
  fs::copy(test::data_path("hf/llama"), dir + "/model");
  std::ofstream(dir + "/model/chat_template.jinja") << "{{ messages[0].content }}!";
  convert_hf_to_kiln(dir + "/model", dir + "/out", {});
  const auto rendered =
      chat::ChatTemplate::load(dir + "/out")
          .apply(nlohmann::ordered_json::parse(R"([{"role": "user", "content": "hi"}])"));
  fs::remove_all(dir);
  EXPECT_EQ(rendered, "hi!");
}

TEST(Convert, ExistingOutputNeedsForceAndBadOptionsAreNamed) {
  const std::string dir = test::make_temp_dir("kiln-convert");
  fs::create_directory(dir + "/out");
  try {
    convert_hf_to_kiln(test::data_path("hf/llama"), dir + "/out", {});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already exists (use --force"), std::string::npos);
  }
  ConvertOptions options;
  options.dtype = "int3";
  try {
    convert_hf_to_kiln(test::data_path("hf/llama"), dir + "/other", options);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    std::cout << "  error: " << e.what() << "\n";
    EXPECT_NE(std::string(e.what()).find("'int3'"), std::string::npos);
  }
  EXPECT_FALSE(fs::exists(dir + "/other"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
