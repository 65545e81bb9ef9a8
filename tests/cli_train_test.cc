// `kiln train` on tinycoder: a few AdamW steps on Python source it was not trained on lower the
// validation loss; the HF folder it writes loads and evaluates lower than the base model;
// families it cannot train, an existing output and a diverging run are one-line errors that
// leave nothing behind.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <tuple>

#include "hf_fixtures.h"
#include "kiln/io/json.h"
#include "kiln/io/safetensors.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

std::string source_file() {
  return test::data_path("../../tools/torch_reference.py");
}

double eval_loss(const std::string& model) {
  const test::CommandResult r = test::run_kiln(
      "eval " + model + " --data " + test::shell_quote(source_file()) + " --seq 64 --json");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return Json::parse(r.out).at("loss").get<double>();
}

TEST(CliTrain, FineTuningLowersTheLossAndExportsAHuggingFaceFolder) {
  const std::string out = test::make_temp_dir("kiln_train_") + "/out";
  const test::CommandResult r = test::run_kiln(
      "train --data " + test::shell_quote(source_file()) + " -o " + test::shell_quote(out) +
      " --steps 8 --batch 2 --seq 64 --lr 1e-3 --eval-every 4 --seed 1 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json summary = Json::parse(r.out);
  std::cout << summary.dump() << std::endl;
  EXPECT_LT(summary.at("val_loss_after").get<double>(),
            summary.at("val_loss_before").get<double>());
  for (const char* file : {"config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl"})
    EXPECT_TRUE(fs::exists(out + "/" + file)) << file;
  EXPECT_FALSE(fs::exists(out + ".partial"));
  const double base = eval_loss(""), tuned = eval_loss(test::shell_quote(out));
  std::cout << "eval loss on the training file: base " << base << ", fine-tuned " << tuned
            << std::endl;
  EXPECT_LT(tuned, base - 0.1);
  // The same seed gives the same run.
  const std::string again = out + "2";
  const test::CommandResult r2 = test::run_kiln(
      "train --data " + test::shell_quote(source_file()) + " -o " + test::shell_quote(again) +
      " --steps 8 --batch 2 --seq 64 --lr 1e-3 --eval-every 4 --seed 1 --json");
  ASSERT_EQ(r2.exit_code, 0) << r2.err;
  EXPECT_EQ(Json::parse(r2.out).at("last_loss"), summary.at("last_loss"));
  fs::remove_all(fs::path(out).parent_path());
}

// --save-dtype source: tinycoder's sharded bf16 checkpoint comes back as one model.safetensors
// with every tensor of the source's index, in bf16, and config.json says so; the default is f32.
TEST(CliTrain, SaveDtypeWritesTheSourceTensorsInTheirDtype) {
  const std::string dir = test::make_temp_dir("kiln_save_dtype_");
  const std::string common = "train --data " + test::shell_quote(source_file()) +
                             " --steps 1 --batch 1 --seq 16 --val-fraction 0 --json -o ";
  ASSERT_EQ(test::run_kiln(common + dir + "/bf16 --save-dtype source").exit_code, 0);
  ASSERT_EQ(test::run_kiln(common + dir + "/f32").exit_code, 0);
  const Json index =
      read_json_file(test::data_path("../../models/tinycoder/model.safetensors.index.json"));
  for (const auto& [name, dtype, torch] :
       {std::tuple{"bf16", DType::BF16, "bfloat16"}, std::tuple{"f32", DType::F32, "float32"}}) {
    const std::string out = dir + "/" + name;
    EXPECT_EQ(read_json_file(out + "/config.json").at("torch_dtype"), torch);
    const SafetensorsFile file = SafetensorsFile::open(out + "/model.safetensors");
    EXPECT_EQ(file.names().size(), index.at("weight_map").size()) << name;
    for (const auto& [tensor, shard] : index.at("weight_map").items()) {
      ASSERT_TRUE(file.contains(tensor)) << name << ": " << tensor;
      EXPECT_EQ(file.get(tensor).dtype(), dtype) << name << ": " << tensor;
    }
    EXPECT_FALSE(fs::exists(out + "/model.safetensors.index.json"));
    EXPECT_GT(eval_loss(test::shell_quote(out)), 0.0);
  }
  fs::remove_all(dir);
}

// The training losses of a run, one per step, from its metrics.jsonl.
std::vector<double> metrics_losses(const std::string& out) {
  std::vector<double> v;
  std::ifstream in(out + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    v.push_back(Json::parse(line).at("loss").get<double>());
  return v;
}

// --weights-dtype bf16 (bf16 weights rounded from f32 masters that AdamW updates) tracks the f32
// run: tinycoder's weights are bf16 already, so step 1 is the same; after that the losses differ
// by the rounding of the updated weights only. The folder is written in bf16.
TEST(CliTrain, Bf16WeightsWithF32MastersTrackTheF32Run) {
  const std::string dir = test::make_temp_dir("kiln_bf16_weights_");
  const std::string common =
      "train --data " + test::shell_quote(source_file()) +
      " --steps 6 --batch 2 --seq 32 --lr 2e-3 --seed 2 --val-fraction 0 -o ";
  ASSERT_EQ(test::run_kiln(common + dir + "/f32").exit_code, 0);
  const test::CommandResult r = test::run_kiln(common + dir + "/bf16 --weights-dtype bf16");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<double> f32 = metrics_losses(dir + "/f32"),
                            bf16 = metrics_losses(dir + "/bf16");
  ASSERT_EQ(f32.size(), 6u);
  ASSERT_EQ(bf16.size(), 6u);
  EXPECT_EQ(f32[0], bf16[0]);
  double worst = 0.0;
  for (size_t i = 0; i < f32.size(); ++i) {
    const double rel = std::abs(f32[i] - bf16[i]) / f32[i];
    std::cout << "step " << i + 1 << ": loss f32 " << f32[i] << ", bf16 weights " << bf16[i]
              << " (relative difference " << rel << ")" << std::endl;
    worst = std::max(worst, rel);
  }
  EXPECT_LE(worst, 1e-2);
  EXPECT_LT(bf16.back(), bf16.front());
  const SafetensorsFile file = SafetensorsFile::open(dir + "/bf16/model.safetensors");
  for (const std::string& name : file.names()) EXPECT_EQ(file.get(name).dtype(), DType::BF16);
  EXPECT_EQ(read_json_file(dir + "/bf16/config.json").at("torch_dtype"), "bfloat16");
  fs::remove_all(dir);
}

// --compute-dtype bf16 (the linear layers' products with bf16 operands, f32 sums; everything
// else f32) follows the f32 run's loss curve: every step's loss within 1e-2 relative of the
// f32 run's, and the loss falls. The folder is written in f32 (the masters are f32).
TEST(CliTrain, Bf16ComputeTracksTheF32LossCurve) {
  const std::string dir = test::make_temp_dir("kiln_bf16_compute_");
  const std::string common =
      "train --data " + test::shell_quote(source_file()) +
      " --steps 6 --batch 2 --seq 32 --lr 2e-3 --seed 2 --val-fraction 0 -o ";
  ASSERT_EQ(test::run_kiln(common + dir + "/f32").exit_code, 0);
  const test::CommandResult r = test::run_kiln(common + dir + "/bf16 --compute-dtype bf16");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<double> f32 = metrics_losses(dir + "/f32"),
                            bf16 = metrics_losses(dir + "/bf16");
  ASSERT_EQ(f32.size(), 6u);
  ASSERT_EQ(bf16.size(), 6u);
  double worst = 0.0;
  for (size_t i = 0; i < f32.size(); ++i) {
    const double rel = std::abs(f32[i] - bf16[i]) / f32[i];
    std::cout << "step " << i + 1 << ": loss f32 " << f32[i] << ", bf16 compute " << bf16[i]
              << " (relative difference " << rel << ")" << std::endl;
    worst = std::max(worst, rel);
  }
  std::cout << "worst relative loss difference over 6 steps: " << worst << std::endl;
  EXPECT_LE(worst, 1e-2);
  EXPECT_GT(worst, 0.0);  // the products were rounded
  EXPECT_LT(bf16.back(), bf16.front());
  const SafetensorsFile file = SafetensorsFile::open(dir + "/bf16/model.safetensors");
  for (const std::string& name : file.names()) EXPECT_EQ(file.get(name).dtype(), DType::F32);
  // The setting is part of the run's identity for --resume.
  const test::CommandResult bad = test::run_kiln(common + dir + "/x --compute-dtype f16");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("compute-dtype"), std::string::npos) << bad.err;
  fs::remove_all(dir);
}

// A run resumed from its step-3 checkpoint ends with bitwise the weights of the uninterrupted
// run; a checkpoint of other settings or a corrupt one is refused.
TEST(CliTrain, ResumeIsBitwiseTheUninterruptedRun) {
  const std::string dir = test::make_temp_dir("kiln_resume_");
  const std::string common = "train --data " + test::shell_quote(source_file()) +
                             " --steps 6 --batch 2 --seq 32 --save-every 3 --seed 5";
  ASSERT_EQ(test::run_kiln(common + " --lr 1e-3 -o " + dir + "/a").exit_code, 0);
  const std::string checkpoint = dir + "/a.checkpoints/step-3";
  ASSERT_TRUE(fs::exists(checkpoint + "/state.json"));
  const test::CommandResult resumed =
      test::run_kiln(common + " --lr 1e-3 -o " + dir + "/b --resume " + checkpoint);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  std::ifstream a(dir + "/a/model.safetensors", std::ios::binary),
      b(dir + "/b/model.safetensors", std::ios::binary);
  const std::string bytes_a((std::istreambuf_iterator<char>(a)), {}),
      bytes_b((std::istreambuf_iterator<char>(b)), {});
  EXPECT_FALSE(bytes_a.empty());
  EXPECT_TRUE(bytes_a == bytes_b) << "the resumed run's weights differ";
  const test::CommandResult other =
      test::run_kiln(common + " --lr 2e-3 -o " + dir + "/c --resume " + checkpoint);
  EXPECT_EQ(other.exit_code, 1);
  EXPECT_NE(other.err.find("a run with other settings"), std::string::npos) << other.err;
  fs::resize_file(checkpoint + "/parameters.safetensors", 100);
  const test::CommandResult corrupt =
      test::run_kiln(common + " --lr 1e-3 -o " + dir + "/d --resume " + checkpoint);
  EXPECT_EQ(corrupt.exit_code, 1);
  EXPECT_NE(corrupt.err.find("parameters.safetensors"), std::string::npos) << corrupt.err;
  EXPECT_FALSE(fs::exists(dir + "/d"));
  fs::remove_all(dir);
}

// Two accumulated micro-batches of one window train like one batch of two (the same windows,
// full-length, so the mean of the means is the mean; float sums differ only in order).
TEST(CliTrain, GradientAccumulationMatchesTheLargerBatch) {
  const std::string dir = test::make_temp_dir("kiln_accum_");
  const std::string common = "train --data " + test::shell_quote(source_file()) +
                             " --steps 4 --seq 32 --lr 1e-3 --seed 2 --val-fraction 0 --json";
  const test::CommandResult big = test::run_kiln(common + " --batch 2 -o " + dir + "/big");
  const test::CommandResult accum =
      test::run_kiln(common + " --batch 1 --grad-accum 2 -o " + dir + "/accum");
  ASSERT_EQ(big.exit_code, 0) << big.err;
  ASSERT_EQ(accum.exit_code, 0) << accum.err;
  const double a = Json::parse(big.out).at("last_loss").get<double>();
  const double b = Json::parse(accum.out).at("last_loss").get<double>();
  std::cout << "last loss: batch 2 " << a << ", 2 x 1 accumulated " << b << std::endl;
  EXPECT_NEAR(a, b, 1e-4 * a);
  EXPECT_EQ(Json::parse(accum.out).at("tokens"), Json::parse(big.out).at("tokens"));
  fs::remove_all(dir);
}

// The leaves of a step's gradient sum: a batch of 4 windows computed as one leaf (the
// default), as 4 leaves of one window and as 2 leaves of 2 (the last one with the odd window
// of a 3-window batch too) train alike: the same mean, summed in another order.
TEST(CliTrain, LeafSizeChangesOnlyTheSummationOrder) {
  const std::string dir = test::make_temp_dir("kiln_leaf_");
  const std::string common = "train --data " + test::shell_quote(source_file()) +
                             " --steps 3 --seq 32 --lr 1e-3 --seed 3 --val-fraction 0 --json";
  for (const std::string batch : {"4", "3"}) {
    double reference = 0.0;
    for (const std::string leaf : {"", "1", "2"}) {
      const std::string out = dir + "/b" + batch + "_leaf" + leaf;
      const test::CommandResult r =
          test::run_kiln(common + " --batch " + batch +
                         (leaf.empty() ? "" : " --leaf-windows " + leaf) + " -o " + out);
      ASSERT_EQ(r.exit_code, 0) << r.err;
      const double loss = Json::parse(r.out).at("last_loss").get<double>();
      if (leaf.empty()) reference = loss;
      std::cout << "batch " << batch << ", leaf " << (leaf.empty() ? batch : leaf) << ": last loss "
                << loss << " (relative difference " << std::abs(loss - reference) / reference << ")"
                << std::endl;
      EXPECT_NEAR(loss, reference, 1e-5 * reference) << "batch " << batch << " leaf " << leaf;
    }
  }
  const test::CommandResult bad = test::run_kiln(common + " --leaf-windows 0 -o " + dir + "/bad");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("--leaf-windows"), std::string::npos) << bad.err;
  fs::remove_all(dir);
}

TEST(CliTrain, ErrorsLeaveNothingBehind) {
  const std::string dir = test::make_temp_dir("kiln_train_bad_");
  const std::string data = " --data " + test::shell_quote(source_file());
  // Every HF fixture trains; a refused model: Llama with a ReLU-gated MLP (no backward for it).
  const std::string refused = test::make_temp_dir("kiln_train_relu_");
  fs::copy(test::hf_fixture_path("llama"), refused, fs::copy_options::recursive);
  {
    std::ifstream in(refused + "/config.json");
    std::string config((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    in.close();
    const std::string silu = "\"hidden_act\": \"silu\"";
    const size_t at = config.find(silu);
    ASSERT_NE(at, std::string::npos) << config;
    config.replace(at, silu.size(), "\"hidden_act\": \"relu\"");
    std::ofstream(refused + "/config.json") << config;
  }
  const std::pair<std::string, std::string> cases[] = {
      {test::shell_quote(refused) + data + " -o " + dir + "/q",
       "gated MLP activation 'relu' is not supported yet"},
      {data + " -o " + dir + " --steps 1", "already exists"},
      {data + " -o " + dir + "/nan --steps 3 --lr 1e12 --clip 0", "the loss is"},
  };
  for (const auto& [args, message] : cases) {
    const test::CommandResult r = test::run_kiln("train " + args);
    EXPECT_EQ(r.exit_code, 1) << args;
    EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
  }
  EXPECT_FALSE(fs::exists(dir + "/q"));
  EXPECT_FALSE(fs::exists(dir + "/nan"));
  EXPECT_FALSE(fs::exists(dir + "/nan.partial"));
  fs::remove_all(dir);
  fs::remove_all(refused);
}

}  // namespace
}  // namespace kiln
