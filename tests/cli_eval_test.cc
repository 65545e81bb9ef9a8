// `kiln eval`: its loss equals TrainModel's (checked against PyTorch autograd) on the same
// windows of tinycoder; JSONL prompt/completion records count only the completion; bad data is
// a one-line error naming the file and line.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "kiln/cli/command.h"
#include "kiln/io/json.h"
#include "kiln/models/loader.h"
#include "kiln/train/backward.h"
#include "kiln/train/data.h"
#include "kiln/train/train_model.h"
#include "test_util.h"

namespace kiln {
namespace {

// Windows of 15 tokens keep the inference pass on the f32 GEMV (16 rows and more take the GEMM,
// which rounds activations to bf16 for bf16 weights on AVX-512: 2e-4 relative here).
TEST(CliEval, LossEqualsTheTrainingModelsAndMasksPrompts) {
  const std::string dir = test::make_temp_dir("kiln_eval_");
  std::ofstream(dir + "/code.py") << "def add(a, b):\n    return a + b\n\nfor i in range(10):\n"
                                     "    print(add(i, i))\n";
  std::ofstream(dir + "/pairs.jsonl")
      << R"({"prompt": "def square(x):\n", "completion": "    return x * x\n"})"
      << "\n";
  const test::CommandResult r =
      test::run_kiln("eval --data " + test::shell_quote(dir) + " --seq 15 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json result = Json::parse(r.out);

  const std::string model_path = cli::default_model_path();
  const LoadedModel loaded = load_model(model_path);
  const train::TrainModel trainer(loaded.spec, loaded.weights);
  const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::load(model_path);
  const auto windows = train::read_windows(dir, *tokenizer, 15,
                                           static_cast<int32_t>(loaded.spec.eos_token_ids.at(0)));
  double total = 0.0;
  int64_t targets = 0;
  for (const train::Window& w : windows) {
    const auto T = static_cast<int64_t>(w.tokens.size());
    const std::vector<int32_t> next =
        train::next_token_targets(w.tokens.data(), w.loss.data(), 1, T);
    const int64_t n = train::count_targets(next.data(), T);
    total += trainer.loss(w.tokens.data(), next.data(), 1, T) * static_cast<double>(n);
    targets += n;
  }
  const double want = total / static_cast<double>(targets);
  std::cout << "kiln eval loss " << result["loss"] << ", TrainModel " << want << std::endl;
  EXPECT_EQ(result["targets"], targets);
  EXPECT_NEAR(result["loss"].get<double>(), want, 1e-5 * want);
  // The prompt/completion record predicts only its completion (and EOS).
  const train::Window& pair = windows.front();
  const size_t prompt = tokenizer->encode("def square(x):\n", true).size();
  const size_t completion = tokenizer->encode("    return x * x\n", false).size() + 1;
  EXPECT_EQ(pair.tokens.size(), prompt + completion);
  EXPECT_EQ(std::count(pair.loss.begin(), pair.loss.end(), 1), static_cast<long>(completion));
  std::filesystem::remove_all(dir);
}

TEST(CliEval, BadDataIsAOneLineError) {
  const std::string dir = test::make_temp_dir("kiln_eval_bad_");
  std::ofstream(dir + "/bad.jsonl") << "{\"text\": \"ok\"}\n{\"prompt\": 1}\n";
  std::ofstream(dir + "/empty.txt");
  const std::pair<std::string, std::string> cases[] = {
      {"--data " + dir + "/missing.txt", "missing.txt: no such file or folder"},
      {"--data " + dir + "/bad.jsonl", "bad.jsonl:2: a record needs a string \"text\""},
      {"--data " + dir + "/empty.txt", "empty.txt: the data gives no tokens to predict"},
      {"--data " + dir + "/empty.txt --seq 100000", "--seq 100000 exceeds the model's context"},
  };
  for (const auto& [args, message] : cases) {
    const test::CommandResult r = test::run_kiln("eval " + args);
    EXPECT_EQ(r.exit_code, 1) << args;
    EXPECT_TRUE(r.out.empty()) << r.out;
    EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kiln
