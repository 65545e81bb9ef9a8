// `kiln train` on chat data: {"messages"} JSONL rendered with --chat-template (tinycoder has no
// template of its own), LoRA adapters on top, unpacked and packed (--pack); the loss on the
// assistant tokens falls (and `kiln eval --lora` on the same data is lower than the base), and
// chat data without a template is a one-line error.
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
  // kiln eval on the chat data (same mask) is lower with the adapters merged in.
  const std::string eval = "eval --data " + data + " --chat-template " +
                           test::shell_quote(test::data_path("tokenizers/qwen3")) +
                           " --seq 96 --json";
  const test::CommandResult base = test::run_kiln(eval);
  const test::CommandResult tuned = test::run_kiln(eval + " --lora " + dir + "/out");
  ASSERT_EQ(base.exit_code, 0) << base.err;
  ASSERT_EQ(tuned.exit_code, 0) << tuned.err;
  const double base_loss = Json::parse(base.out).at("loss").get<double>(),
               tuned_loss = Json::parse(tuned.out).at("loss").get<double>();
  std::cout << "eval on the chat data: base " << base_loss << ", with the adapters " << tuned_loss
            << std::endl;
  EXPECT_LT(tuned_loss, base_loss - 0.1);
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
