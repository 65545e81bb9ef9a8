// Quantized Kiln checkpoints (kiln convert --dtype int8|int4|int4-128): tinycoder's quality
// against its bf16 source on Python source, every HF fixture in int8 within a stated logit
// bound, the per-tensor format choices, malformed quantized tensors, and verify --against.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <vector>

#include "hf_fixtures.h"
#include "kiln/convert/hf_to_kiln.h"
#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/io/kiln_checkpoint.h"
#include "kiln/io/safetensors.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"
#include "kiln/ops/linear.h"
#include "kiln/ops/top_k.h"
#include "kiln/tokenizer/tokenizer.h"
#include "kiln/train/data.h"
#include "kiln/verify/quality.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

std::string tinycoder() {
  return test::data_path("../../models/tinycoder");
}
// Expects `f` to throw a kiln::Error whose message contains `part`.
void expect_error(const std::function<void()>& f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing: " << part;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}
std::string python_sample() {
  return test::data_path("quant/sample.py");
}

struct QualityCase {
  const char* dtype;
  double min_top1;             // fraction
  double max_perplexity_rise;  // relative
  bool head_copy;              // the tied embedding's quantized copy as the output matrix
  const char* name;
};

class TinycoderQuantized : public ::testing::TestWithParam<QualityCase> {};

TEST_P(TinycoderQuantized, MatchesBf16OnPythonSource) {
  const QualityCase c = GetParam();
  const std::string dir = test::make_temp_dir("kiln-quant-tinycoder");
  ConvertOptions options;
  options.dtype = c.dtype;
  // Every format stores the head copy unless --keep keeps the head unquantized.
  if (!c.head_copy) options.keep = {"decoder/logits_dense/kernel"};
  convert_hf_to_kiln(tinycoder(), dir + "/q", options);
  const LoadedModel quantized = load_model(dir + "/q");
  const LoadedModel base = load_model(tinycoder());
  // Linear kernels quantized; the (tied) embedding and the norms not; the tied embedding's
  // copy as the output matrix in the checkpoint's own format (head_dtype_default()).
  const DType format = std::string(c.dtype) == "int8"   ? DType::Q8_0
                       : std::string(c.dtype) == "int4" ? DType::Q4_1
                                                        : DType::Q4_1_128;
  ASSERT_TRUE(base.spec.tie_word_embeddings);
  ASSERT_EQ(base.weights.count("decoder/logits_dense/kernel"), 0u);
  ASSERT_EQ(quantized.weights.count("decoder/logits_dense/kernel"), c.head_copy ? 1u : 0u);
  if (c.head_copy) {
    EXPECT_EQ(quantized.weights.at("decoder/logits_dense/kernel").dtype(), format);
    EXPECT_EQ(quantized.weights.at("decoder/logits_dense/kernel").shape(),
              base.weights.at("token_embedder/embedding").shape());
  }
  int quantized_tensors = 0;
  for (const auto& [name, tensor] : quantized.weights) {
    if (name == "decoder/logits_dense/kernel") continue;
    if (name.ends_with("/kernel")) {
      EXPECT_EQ(tensor.dtype(), format) << name;
      ++quantized_tensors;
    } else {
      EXPECT_EQ(tensor.dtype(), base.weights.at(name).dtype()) << name;
    }
  }
  EXPECT_EQ(quantized_tensors, 6 * 7);
  const Model model(quantized.spec, quantized.weights);
  const Model reference(base.spec, base.weights);
  const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::load(tinycoder());
  const QualityReport r =
      compare_models(model, reference, train::read_windows(python_sample(), *tokenizer, 256, 0));
  const double rise = r.perplexity / r.base_perplexity - 1.0;
  std::cout << "tinycoder " << c.name << " vs bf16 on " << r.positions
            << " positions: top-1 agreement " << 100.0 * r.top1_agreement << "%, perplexity "
            << r.perplexity << " vs " << r.base_perplexity << " (" << 100.0 * rise << "%), KL mean "
            << r.kl_mean << " p99 " << r.kl_p99 << " max " << r.kl_max << std::endl;
  EXPECT_GT(r.positions, 500);
  EXPECT_GE(r.top1_agreement, c.min_top1);
  EXPECT_LE(std::fabs(rise), c.max_perplexity_rise);
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Formats, TinycoderQuantized,
                         // int8's Q8_0 head copy: 98.79% top-1 alone, 99.11% with the
                         // table's refinement of each row's top logits (Model), as the bf16 head;
                         // int4's Q4_1 and int4-128's Q4_1_128 head copies: 92.15% and 90.04%,
                         // as with a Q8_0 head (perplexity +1.05%, +0.81%; KL mean +7%)
                         ::testing::Values(QualityCase{"int8", 0.99, 0.01, true, "int8"},
                                           QualityCase{"int8", 0.99, 0.01, false, "int8_bf16_head"},
                                           QualityCase{"int4", 0.90, 0.05, true, "int4"},
                                           QualityCase{"int4-128", 0.90, 0.05, true, "int4_128"}),
                         [](const auto& info) { return std::string(info.param.name); });

// The int8 head copy's refinement (Model::kHeadRefined): each row's top logit is the bf16
// table's (the same bits as the table's GEMV on the final hidden state), and decode rows that
// share a step get bitwise the logits of each sequence decoded alone.
TEST(QuantizedHead, TopLogitsAreTheTablesAndBatchInvariant) {
  const std::string dir = test::make_temp_dir("kiln-quant-head");
  ConvertOptions options;
  options.dtype = "int8";
  convert_hf_to_kiln(tinycoder(), dir + "/q", options);
  const LoadedModel loaded = load_model(dir + "/q");
  ASSERT_EQ(loaded.weights.at("decoder/logits_dense/kernel").dtype(), DType::Q8_0);
  const Tensor& table = loaded.weights.at("token_embedder/embedding");
  ASSERT_EQ(table.dtype(), DType::BF16);
  const Model model(loaded.spec, loaded.weights);
  const int64_t vocab = loaded.spec.vocab_size, hidden = loaded.spec.hidden_size;
  const std::vector<std::vector<int32_t>> sequences = {
      {12, 345, 67, 890, 11, 2}, {400, 401, 402, 3, 4, 5}, {7, 7, 7, 1000, 2000, 3000}};
  const auto steps = static_cast<int64_t>(sequences[0].size());
  std::vector<std::vector<float>> alone(sequences.size());  // [steps * vocab] per sequence
  int64_t top_checked = 0;
  double copy_error = 0.0;  // the copy's error at the top logit, before the refinement
  for (size_t s = 0; s < sequences.size(); ++s) {
    KvCache cache = model.make_cache(1, steps);
    for (int64_t t = 0; t < steps; ++t) {
      std::vector<float> x;  // [hidden] the final hidden state
      const ActivationObserver grab = [&](const std::string& name, const Tensor& a) {
        if (name == "decoder/decoder_norm") x.assign(a.data<float>(), a.data<float>() + hidden);
      };
      ForwardOptions forward_options;
      forward_options.observer = &grab;
      const Tensor logits = model.forward(&sequences[s][t], 1, 1, cache, forward_options);
      const float* row = logits.data<float>();
      alone[s].insert(alone[s].end(), row, row + vocab);
      std::vector<float> exact(vocab), copy(vocab);
      ops::linear(x.data(), table.raw(), DType::BF16, nullptr, exact.data(), 1, hidden, vocab);
      ops::linear(x.data(), loaded.weights.at("decoder/logits_dense/kernel").raw(), DType::Q8_0,
                  nullptr, copy.data(), 1, hidden, vocab);
      const int64_t top = ops::argmax(row, vocab);
      EXPECT_EQ(top, ops::argmax(exact.data(), vocab)) << "sequence " << s << " step " << t;
      EXPECT_EQ(row[top], exact[top]) << "sequence " << s << " step " << t;
      copy_error = std::max(copy_error, static_cast<double>(std::fabs(copy[top] - exact[top])));
      ++top_checked;
    }
  }
  std::cout << top_checked << " top logits equal the bf16 table's (the Q8_0 copy alone is off "
            << "by up to " << copy_error << ")" << std::endl;
  EXPECT_GT(copy_error, 0.0);
  std::vector<KvCache> caches;
  std::vector<KvCache*> pointers;
  for (size_t s = 0; s < sequences.size(); ++s) caches.push_back(model.make_cache(1, steps));
  for (KvCache& c : caches) pointers.push_back(&c);
  Workspace workspace;
  const auto rows = static_cast<int64_t>(sequences.size());
  for (int64_t t = 0; t < steps; ++t) {
    std::vector<int32_t> tokens;
    for (const auto& sequence : sequences) tokens.push_back(sequence[t]);
    const float* logits = model.decode_rows(tokens.data(), rows, pointers.data(), workspace);
    for (int64_t s = 0; s < rows; ++s)
      ASSERT_EQ(0,
                std::memcmp(logits + s * vocab, alone[s].data() + t * vocab, sizeof(float) * vocab))
          << "sequence " << s << " step " << t;
  }
  fs::remove_all(dir);
}

double max_abs(const Tensor& t) {
  double m = 0.0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(t.item_as_double(i)));
  return m;
}

// The bound: int8 weights, with the fast kernels' int8 activations (quantized per block of
// 32 in the GEMV and the GEMM alike, as llama.cpp does), move every logit by at most 10% of the
// largest logit magnitude (measured 1.7-7.2% on the dense fixtures, whose random weights make
// every layer's error count; 3-4.3% with the reference kernels' f32 activations). Fixtures with
// routed experts get 60%: there the quantization error of attention alone (experts kept in f32
// give the same error) flips some top-k routing choices of the random routers, which moves
// logits by a large amount (measured 18-53% on deepseek_v3, gpt_oss, qwen3_moe and mixtral).
// The quality of a trained model is checked by TinycoderQuantized above.
constexpr double kInt8LogitBound = 0.10;
constexpr double kInt8RoutedLogitBound = 0.6;

class Int8Fixture : public ::testing::TestWithParam<std::string> {};

TEST_P(Int8Fixture, LogitsStayWithinTheBound) {
  KILN_SKIP_UNSUPPORTED_FIXTURE(GetParam());
  const std::string source = test::hf_fixture_path(GetParam());
  const std::string dir = test::make_temp_dir("kiln-quant-fixture");
  const Tensor input_ids =
      SafetensorsFile::open(source + "/reference.safetensors").get("input_ids");
  ConvertOptions options;
  options.dtype = "int8";
  convert_hf_to_kiln(source, dir + "/q", options);
  const LoadedModel quantized = load_model(dir + "/q");
  int quantized_tensors = 0;
  bool routed = false;
  for (const auto& [name, tensor] : quantized.weights) {
    quantized_tensors += is_quantized(tensor.dtype());
    routed = routed || name.ends_with("/mlp/gate/kernel");
  }
  const Tensor expected = test::all_logits(load_model(source), input_ids);
  const Tensor got = test::all_logits(quantized, input_ids);
  const double diff = test::max_abs_diff(got, expected), scale = max_abs(expected);
  std::cout << GetParam() << " int8 (" << quantized_tensors
            << " quantized tensors): logits max abs diff " << diff << " of max |logit| " << scale
            << " (" << 100.0 * diff / scale << "%)" << std::endl;
  EXPECT_GT(quantized_tensors, 0);
  EXPECT_LE(diff, (routed ? kInt8RoutedLogitBound : kInt8LogitBound) * scale);
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Int8Fixture, ::testing::ValuesIn(test::hf_fixture_names()),
                         test::FixtureName());

TEST(QuantizedConvert, ChoosesFormatsPerTensor) {
  const std::vector<std::string> none;
  EXPECT_EQ(quantized_dtype_for("int8", "decoder/layers_0/mlp/wi_0/kernel", {128, 64}, DType::BF16,
                                none, none),
            DType::Q8_0);
  EXPECT_EQ(quantized_dtype_for("int4", "decoder/layers_0/mlp/wi_0/kernel", {128, 64}, DType::BF16,
                                none, none),
            DType::Q4_1);
  // 64 inputs are not whole groups of 128: the 32-group format.
  EXPECT_EQ(quantized_dtype_for("int4-128", "decoder/layers_0/mlp/wo/kernel", {64, 64}, DType::BF16,
                                none, none),
            DType::Q4_1);
  EXPECT_EQ(quantized_dtype_for("int4-128", "decoder/layers_0/mlp/wi_0/kernel", {64, 256},
                                DType::F32, none, none),
            DType::Q4_1_128);
  // Rows that are not whole blocks, embeddings, norms, routers and wkv_b stay as they are.
  EXPECT_EQ(quantized_dtype_for("int8", "decoder/layers_0/mlp/wo/kernel", {64, 48}, DType::BF16,
                                none, none),
            DType::BF16);
  for (const char* name :
       {"token_embedder/embedding", "decoder/decoder_norm/scale",
        "decoder/layers_0/mlp/gate/kernel", "decoder/layers_0/self_attention/wkv_b/kernel"})
    EXPECT_EQ(quantized_dtype_for("int8", name, {64, 64}, DType::BF16, none, none), DType::BF16)
        << name;
  // The output matrix in the conversion's own format unless head_dtype (--head-dtype) names
  // another; --keep wins over it, and it over --quantize.
  const std::string head = "decoder/logits_dense/kernel";
  EXPECT_EQ(quantized_dtype_for("int4", head, {256, 64}, DType::BF16, none, none), DType::Q4_1);
  EXPECT_EQ(quantized_dtype_for("int8", head, {256, 128}, DType::BF16, none, none), DType::Q8_0);
  EXPECT_EQ(quantized_dtype_for("int4-128", head, {256, 128}, DType::BF16, none, none),
            DType::Q4_1_128);
  EXPECT_EQ(quantized_dtype_for("int4", head, {256, 64}, DType::BF16, none, none, "int8"),
            DType::Q8_0);
  EXPECT_EQ(quantized_dtype_for("int8", head, {256, 128}, DType::BF16, none, none, "int4-128"),
            DType::Q4_1_128);
  // 64 inputs are not whole groups of 128: the 32-group format.
  EXPECT_EQ(quantized_dtype_for("int4-128", head, {256, 64}, DType::BF16, none, none), DType::Q4_1);
  EXPECT_EQ(quantized_dtype_for("int4", head, {256, 64}, DType::BF16, {"decoder/*"}, none, "int8"),
            DType::BF16);
  EXPECT_EQ(quantized_dtype_for("int8", head, {256, 64}, DType::BF16, none, {"*"}, "int4"),
            DType::Q4_1);
  EXPECT_EQ(head_dtype_default("int8"), "int8");
  EXPECT_EQ(head_dtype_default("int4"), "int4");
  EXPECT_EQ(head_dtype_default("int4-128"), "int4-128");
  expect_error(
      [&] {
        quantized_dtype_for("int4", head, {256, 64}, DType::BF16, none, none, "q6_k");
      },
      "--head-dtype 'q6_k' is not int8, int4 or int4-128");
  expect_error([&] { head_dtype_default("bf16"); }, "--dtype 'bf16' is not int8");
  EXPECT_EQ(quantized_dtype_for("int4", "decoder/layers_3/mlp/wo/kernel", {64, 64}, DType::BF16,
                                {"*/mlp/*"}, none),
            DType::BF16);
  EXPECT_EQ(quantized_dtype_for("int8", "token_embedder/embedding", {256, 64}, DType::BF16, none,
                                {"token_embedder/*"}),
            DType::Q8_0);
}

// Malformed quantized tensors in a checkpoint's manifest: clear errors naming the tensor.
class QuantizedCheckpointErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::make_temp_dir("kiln-quant-errors");
    ConvertOptions options;
    options.dtype = "int8";
    convert_hf_to_kiln(test::hf_fixture_path("llama"), dir_ + "/good", options);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A copy whose manifest entry for `tensor` is changed by `edit`; returns the error.
  std::string error_after(const std::string& name, const std::function<void(Json&)>& edit) {
    const std::string copy = dir_ + "/" + name;
    fs::copy(dir_ + "/good", copy);
    const std::string manifest = copy + "/kiln_checkpoint.json";
    Json json = Json::parse(std::ifstream(manifest));
    edit(json["tensors"][kTensor]);
    std::ofstream(manifest) << json.dump();
    try {
      KilnCheckpoint checkpoint(copy);
      checkpoint.get(kTensor);
    } catch (const Error& e) {
      std::cout << name << ": " << e.what() << std::endl;
      return e.what();
    }
    return "";
  }

  static constexpr const char* kTensor = "decoder/layers_0/mlp/wi_0/kernel";
  std::string dir_;
};

TEST_F(QuantizedCheckpointErrors, WrongShapesSizesAndFormatsAreClearErrors) {
  const KilnCheckpoint good(dir_ + "/good");
  ASSERT_EQ(good.dtype_of(kTensor), DType::Q8_0);
  const Shape shape = good.shape_of(kTensor);
  // Rows that are not whole blocks.
  std::string e = error_after("partial", [&](Json& t) { t["shape"] = Shape{shape[0] * 2, 48}; });
  EXPECT_NE(e.find(kTensor), std::string::npos) << e;
  EXPECT_NE(e.find("whole blocks"), std::string::npos) << e;
  // A byte count that does not hold the blocks (a truncated tensor).
  e = error_after("truncated", [&](Json& t) { t["nbytes"] = t["nbytes"].get<int64_t>() - 34; });
  EXPECT_NE(e.find(kTensor), std::string::npos) << e;
  EXPECT_NE(e.find("needs"), std::string::npos) << e;
  // Another format's scale layout over the same bytes.
  e = error_after("format", [&](Json& t) { t["dtype"] = "Q4_1"; });
  EXPECT_NE(e.find(kTensor), std::string::npos) << e;
  // A shape whose blocks do not match the stored bytes (the scales of other rows).
  e = error_after("rows", [&](Json& t) {
    t["shape"] = Shape{shape[0] / 2, shape[1] * 2};
    t["nbytes"] = t["nbytes"].get<int64_t>();
  });
  EXPECT_NE(e.find(kTensor), std::string::npos) << e;
  EXPECT_NE(e.find("disagree"), std::string::npos) << e;
  // A truncated data file.
  const std::string cut = dir_ + "/cut";
  fs::copy(dir_ + "/good", cut);
  const std::string data = cut + "/tensors-00001-of-00001.safetensors";
  fs::resize_file(data, fs::file_size(data) - 100);
  EXPECT_THROW(KilnCheckpoint{cut}, Error);
}

TEST(QuantizedCli, ConvertKeepAndVerifyAgainst) {
  const std::string dir = test::make_temp_dir("kiln-quant-cli");
  test::CommandResult r =
      test::run_kiln("convert " + test::shell_quote(tinycoder()) + " -o " +
                     test::shell_quote(dir + "/q") + " --dtype int4 --keep '*/mlp/wo/*'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const KilnCheckpoint checkpoint(dir + "/q");
  EXPECT_EQ(checkpoint.dtype_of("decoder/layers_0/mlp/wo/kernel"), DType::BF16);
  EXPECT_EQ(checkpoint.dtype_of("decoder/layers_0/mlp/wi_0/kernel"), DType::Q4_1);
  EXPECT_EQ(checkpoint.manifest().at("dtype").get<std::string>(), "int4");
  r = test::run_kiln("verify " + test::shell_quote(dir + "/q") + " --against " +
                     test::shell_quote(tinycoder()) + " --data " +
                     test::shell_quote(python_sample()) + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::cout << r.out;
  const Json report = Json::parse(r.out);
  EXPECT_GT(report.at("top1_agreement").get<double>(), 0.9);
  EXPECT_GT(report.at("kl_p99").get<double>(), report.at("kl_mean").get<double>() * 0.5);
  EXPECT_GE(report.at("kl_max").get<double>(), report.at("kl_p99").get<double>());
  EXPECT_GT(report.at("base_perplexity").get<double>(), 1.0);
  // The tied embedding's quantized copy as the head (by default in the checkpoint's own
  // format, or --head-dtype's): absent when
  // --keep keeps the head unquantized or --quantize quantizes the table itself (which then
  // serves as the head). Checkpoints without the copy (as written before it existed, or int8
  // before it was the default) run with the table as head.
  EXPECT_EQ(checkpoint.dtype_of("decoder/logits_dense/kernel"), DType::Q4_1);
  // --head-dtype int8: the Q8_0 head of int4 checkpoints written before the default changed,
  // which still load and run with the table's refinement.
  r = test::run_kiln("convert " + test::shell_quote(tinycoder()) + " -o " +
                     test::shell_quote(dir + "/h8") + " --dtype int4 --head-dtype int8");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(KilnCheckpoint(dir + "/h8").dtype_of("decoder/logits_dense/kernel"), DType::Q8_0);
  EXPECT_EQ(KilnCheckpoint(dir + "/h8").dtype_of("decoder/layers_0/mlp/wo/kernel"), DType::Q4_1);
  r = test::run_kiln("verify " + test::shell_quote(dir + "/h8") + " --against " +
                     test::shell_quote(tinycoder()) + " --data " +
                     test::shell_quote(python_sample()) + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_GE(Json::parse(r.out).at("top1_agreement").get<double>(), 0.9) << r.out;
  for (const std::string& bad : {std::string("--dtype int4 --head-dtype q6_k"),
                                 std::string("--dtype bf16 --head-dtype int4")}) {
    r = test::run_kiln("convert " + test::shell_quote(tinycoder()) + " -o " +
                       test::shell_quote(dir + "/bad") + " " + bad);
    EXPECT_NE(r.exit_code, 0) << bad;
    EXPECT_NE(r.err.find("--head-dtype"), std::string::npos) << bad << ": " << r.err;
    EXPECT_FALSE(fs::exists(dir + "/bad")) << bad;
  }
  ConvertOptions float_head;
  float_head.dtype = "bf16";
  float_head.head_dtype = "int4";
  expect_error([&] { convert_hf_to_kiln(tinycoder(), dir + "/bad", float_head); },
               "--head-dtype int4 needs a quantized --dtype");
  r = test::run_kiln("convert " + test::shell_quote(tinycoder()) + " -o " +
                     test::shell_quote(dir + "/i8") + " --dtype int8");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(KilnCheckpoint(dir + "/i8").dtype_of("decoder/logits_dense/kernel"), DType::Q8_0);
  for (const std::string& option :
       {std::string("--dtype int4 --keep 'decoder/logits_dense/*'"),
        std::string("--dtype int4 --quantize 'token_*'"),
        std::string("--dtype int8 --keep 'decoder/logits_dense/kernel'")}) {
    r = test::run_kiln("convert " + test::shell_quote(tinycoder()) + " -o " +
                       test::shell_quote(dir + "/t") + " --force " + option);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const LoadedModel loaded = load_model(dir + "/t");
    EXPECT_EQ(loaded.weights.count("decoder/logits_dense/kernel"), 0u) << option;
    EXPECT_EQ(loaded.weights.at("token_embedder/embedding").dtype(),
              option.find("--quantize") == std::string::npos ? DType::BF16 : DType::Q4_1)
        << option;
    const Model model(loaded.spec, loaded.weights);
    const int32_t tokens[4] = {1, 2, 3, 4};
    KvCache cache = model.make_cache(1, 4);
    const Tensor logits = model.forward(tokens, 1, 4, cache);
    EXPECT_TRUE(std::isfinite(max_abs(logits))) << option;
    EXPECT_GT(max_abs(logits), 0.0) << option;
  }
  r = test::run_kiln("convert " + test::shell_quote(tinycoder()) + " -o " +
                     test::shell_quote(dir + "/k") + " --keep '*'");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--keep"), std::string::npos) << r.err;
  r = test::run_kiln("convert " + test::shell_quote(tinycoder()) + " -o " +
                     test::shell_quote(dir + "/o") + " --dtype int8 --format orbax");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("Orbax export takes float dtypes only"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir + "/o"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
