// `kiln train` on chat data: {"messages"} JSONL rendered with --chat-template (tinycoder has no
// template of its own), LoRA adapters on top, unpacked and packed (--pack); the loss on the
// assistant tokens falls, and chat data without a template is a one-line error.
#include <gtest/gtest.h>

#include <filesystem>

#include "kiln/io/json.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

TEST(CliSft, ChatDataTrainsWithTheTemplateAndLora) {
  const std::string dir = test::make_temp_dir("kiln_sft_cli_");
  const std::string data = test::shell_quote(test::data_path("train/chat.jsonl"));
  const test::CommandResult r = test::run_kiln(
      "train --data " + data + " --chat-template " +
      test::shell_quote(test::data_path("tokenizers/qwen3")) + " -o " + dir +
      "/out --steps 3 --batch 4 --seq 96 --val-fraction 0 --lr 1e-2 --lora-rank 4 --seed 2 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json summary = Json::parse(r.out);
  std::cout << summary.dump() << std::endl;
  EXPECT_LT(summary.at("last_loss").get<double>(), summary.at("first_loss").get<double>() - 0.1);
  EXPECT_TRUE(fs::exists(dir + "/out/adapter_model.safetensors"));
  // Packed: the four conversations share rows of 192 tokens, attention within each.
  const test::CommandResult packed = test::run_kiln(
      "train --data " + data + " --chat-template " +
      test::shell_quote(test::data_path("tokenizers/qwen3")) + " -o " + dir +
      "/packed --steps 3 --batch 1 --seq 192 --val-fraction 0 --lr 1e-2 --lora-rank 4 --pack"
      " --seed 2 --json");
  ASSERT_EQ(packed.exit_code, 0) << packed.err;
  const Json packed_summary = Json::parse(packed.out);
  std::cout << "packed: " << packed_summary.dump() << std::endl;
  EXPECT_LT(packed_summary.at("last_loss").get<double>(),
            packed_summary.at("first_loss").get<double>() - 0.1);
  const test::CommandResult none =
      test::run_kiln("train --data " + data + " -o " + dir + "/none --steps 1");
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_NE(none.err.find("chat data needs a chat template"), std::string::npos) << none.err;
  EXPECT_FALSE(fs::exists(dir + "/none"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
