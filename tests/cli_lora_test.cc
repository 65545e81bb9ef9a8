// LoRA from the command line on tinycoder: `kiln train --lora-rank` lowers the validation loss
// and writes a small adapter folder; `kiln merge` (HF and Kiln output) and `generate --lora`
// give the same logits and the same greedy text; a resumed LoRA run (with dropout) is bitwise
// the uninterrupted one.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"
#include "kiln/tokenizer/tokenizer.h"
#include "kiln/train/lora.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

std::string source_file() {
  return test::data_path("../../tools/torch_reference.py");
}
std::string tinycoder() {
  return test::data_path("../../models/tinycoder");
}

uintmax_t folder_weight_bytes(const std::string& dir) {
  uintmax_t total = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors" && e.path().filename() != "golden.safetensors")
      total += e.file_size();
  return total;
}

Tensor logits_of(const LoadedModel& loaded, const std::vector<int32_t>& tokens) {
  const Model model(loaded.spec, loaded.weights);
  const auto T = static_cast<int64_t>(tokens.size());
  KvCache cache = model.make_cache(1, T);
  return model.forward(tokens.data(), 1, T, cache);
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

TEST(CliLora, TrainsSmallAdaptersThatMergeAndGenerateAlike) {
  const std::string dir = test::make_temp_dir("kiln_lora_cli_");
  const std::string adapters = dir + "/adapters";
  const test::CommandResult r = test::run_kiln(
      "train --data " + test::shell_quote(source_file()) + " -o " + adapters +
      " --steps 6 --batch 2 --seq 48 --lr 5e-3 --lora-rank 8 --lora-alpha 16 --lora-dropout 0.05"
      " --lora-targets q,k,v,o --eval-every 3 --seed 1 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json summary = Json::parse(r.out);
  std::cout << summary.dump() << std::endl;
  EXPECT_LT(summary.at("val_loss_after").get<double>(),
            summary.at("val_loss_before").get<double>());
  EXPECT_FALSE(fs::exists(adapters + "/model.safetensors"));
  const uintmax_t model_bytes = folder_weight_bytes(tinycoder());
  const uintmax_t adapter_bytes = fs::file_size(adapters + "/adapter_model.safetensors");
  const double share = static_cast<double>(adapter_bytes) / static_cast<double>(model_bytes);
  std::cout << "adapters " << adapter_bytes << " bytes = " << 100 * share << "% of the model's "
            << model_bytes << std::endl;
  EXPECT_LT(share, 0.05);
  EXPECT_LT(fs::file_size(adapters + "/kiln_adapter.safetensors"), model_bytes / 20);
  const Json config = read_json_file(adapters + "/adapter_config.json");
  EXPECT_EQ(config.at("peft_type"), "LORA");
  EXPECT_EQ(config.at("r"), 8);

  // Merged folders (HF and Kiln) and the base with the adapters merged at load (what
  // generate --lora does) give the same logits.
  ASSERT_EQ(test::run_kiln("merge --lora " + adapters + " -o " + dir + "/merged").exit_code, 0);
  const test::CommandResult kiln_merge =
      test::run_kiln("merge --lora " + adapters + " -o " + dir + "/merged_kiln --format kiln");
  ASSERT_EQ(kiln_merge.exit_code, 0) << kiln_merge.err;
  LoadedModel at_load = load_model(tinycoder());
  const std::vector<int32_t> tokens =
      Tokenizer::load(tinycoder())->encode("def fibonacci(n):\n    return", true);
  const Tensor base = logits_of(at_load, tokens);
  train::merge_lora(at_load.weights, train::load_lora(adapters, at_load));
  const Tensor lora = logits_of(at_load, tokens);
  const double vs_hf = test::max_abs_diff(lora, logits_of(load_model(dir + "/merged"), tokens));
  const double vs_kiln =
      test::max_abs_diff(lora, logits_of(load_model(dir + "/merged_kiln"), tokens));
  const double moved = test::max_abs_diff(lora, base);
  std::cout << "generate --lora vs merged logits: HF " << vs_hf << ", Kiln " << vs_kiln
            << " (adapters move them by " << moved << ")" << std::endl;
  EXPECT_LE(vs_hf, 1e-5);
  EXPECT_LE(vs_kiln, 1e-5);
  EXPECT_GT(moved, 1e-3);

  const std::string gen = " --prompt 'def add(a, b):' --max-tokens 24 --temperature 0";
  const test::CommandResult with_lora = test::run_kiln("generate --lora " + adapters + gen);
  const test::CommandResult merged = test::run_kiln("generate " + dir + "/merged" + gen);
  ASSERT_EQ(with_lora.exit_code, 0) << with_lora.err;
  ASSERT_EQ(merged.exit_code, 0) << merged.err;
  EXPECT_EQ(with_lora.out, merged.out);

  const test::CommandResult exists =
      test::run_kiln("merge --lora " + adapters + " -o " + dir + "/merged");
  EXPECT_EQ(exists.exit_code, 1);
  EXPECT_NE(exists.err.find("already exists"), std::string::npos) << exists.err;
  fs::remove_all(dir);
}

TEST(CliLora, ResumeIsBitwiseAndBadTargetsAreRefused) {
  const std::string dir = test::make_temp_dir("kiln_lora_resume_");
  const std::string common =
      "train --data " + test::shell_quote(source_file()) +
      " --steps 4 --batch 1 --seq 16 --save-every 2 --seed 3 --lr 1e-3"
      " --lora-rank 4 --lora-dropout 0.2 --lora-targets q,v,down --val-fraction 0.02";
  ASSERT_EQ(test::run_kiln(common + " -o " + dir + "/a").exit_code, 0);
  const std::string checkpoint = dir + "/a.checkpoints/step-2";
  const test::CommandResult resumed =
      test::run_kiln(common + " -o " + dir + "/b --resume " + checkpoint);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  const std::string a = read_bytes(dir + "/a/adapter_model.safetensors");
  EXPECT_FALSE(a.empty());
  EXPECT_TRUE(a == read_bytes(dir + "/b/adapter_model.safetensors"))
      << "the resumed LoRA run's adapters differ";
  const test::CommandResult other =
      test::run_kiln(common + " --lora-alpha 4 -o " + dir + "/c --resume " + checkpoint);
  EXPECT_EQ(other.exit_code, 1);
  EXPECT_NE(other.err.find("a run with other settings"), std::string::npos) << other.err;
  const test::CommandResult bad =
      test::run_kiln("train --data " + test::shell_quote(source_file()) + " -o " + dir +
                     "/d --lora-rank 2" + " --lora-targets q,attn --steps 1");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("unknown module 'attn'"), std::string::npos) << bad.err;
  EXPECT_FALSE(fs::exists(dir + "/d"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
