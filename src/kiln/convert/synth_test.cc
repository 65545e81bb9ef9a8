#include "kiln/convert/synth.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "kiln/core/error.h"
#include "kiln/io/hf_config.h"
#include "kiln/io/safetensors.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

TEST(Synth, WritesAConsistentShardedFolder) {
  std::string dir = test::make_temp_dir("kiln-synth");
  std::string out = dir + "/tiny";
  SynthOptions options;
  options.shard_bytes = 64 << 10;  // force several shards
  uint64_t bytes = synth_model("tiny-llama", out, options);
  HfConfig config = HfConfig::load(out);
  EXPECT_EQ(config.get_int("hidden_size"), 64);
  SafetensorsSet set = SafetensorsSet::open(out);
  uint64_t sum = 0;
  for (const auto& name : set.names()) {
    Tensor t = set.get(name);
    EXPECT_EQ(t.dtype(), DType::BF16) << name;
    sum += t.nbytes();
  }
  EXPECT_EQ(sum, bytes);
  EXPECT_GT(fs::directory_iterator(out) != fs::directory_iterator(), 0);
  Tensor q = set.get("model.layers.0.self_attn.q_proj.weight").to(DType::F32);
  double sq = 0;
  for (int64_t i = 0; i < q.numel(); ++i) sq += q.data<float>()[i] * q.data<float>()[i];
  double variance = sq / static_cast<double>(q.numel());
  std::cout << "q_proj variance " << variance << " (expected 1/64 = " << 1.0 / 64 << ")\n";
  EXPECT_NEAR(variance, 1.0 / 64, 0.2 / 64);
  EXPECT_EQ(set.get("model.norm.weight").to(DType::F32).data<float>()[0], 1.0f);
  // Same seed, same bytes: reproducible.
  synth_model("tiny-llama", dir + "/again", options);
  Tensor q2 = SafetensorsSet::open(dir + "/again").get("model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(test::max_abs_diff(q, q2), 0.0);
  fs::remove_all(dir);
}

TEST(Synth, RefusesToOverwriteAndUnknownShapes) {
  std::string dir = test::make_temp_dir("kiln-synth");
  EXPECT_THROW(synth_model("tiny-llama", dir, {}), Error);  // exists
  EXPECT_THROW(synth_model("gpt-5", dir + "/x", {}), Error);
  EXPECT_FALSE(fs::exists(dir + "/x"));
  // No temporary folder left behind.
  int entries = 0;
  for (auto& e : fs::directory_iterator(dir)) (void)e, ++entries;
  EXPECT_EQ(entries, 0);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
