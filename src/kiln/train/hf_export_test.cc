// Exporting to HuggingFace folders (train/hf_export.h, invert_weight_mappings in
// models/loader.h) for every HF fixture: the untrained weights give back the checkpoint's
// tensors bitwise (names, shapes, dtypes, bytes), and a trained model's folder reloads with its
// weights and logits bitwise. Also the inverse's refusals.
#include "kiln/train/hf_export.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>
#include <utility>

#include "hf_fixtures.h"
#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/io/safetensors.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"
#include "kiln/models/weight_mappings.h"
#include "kiln/train/adamw.h"
#include "kiln/train/backward.h"
#include "map_source.h"
#include "test_util.h"

namespace kiln::train {
namespace {
namespace fs = std::filesystem;

bool same_bytes(const Tensor& a, const Tensor& b) {
  const Tensor x = a.contiguous(), y = b.contiguous();
  return x.dtype() == y.dtype() && x.shape() == y.shape() &&
         std::memcmp(x.raw(), y.raw(), x.nbytes()) == 0;
}

std::vector<int32_t> fixture_tokens(const std::string& dir, int64_t& batch, int64_t& T) {
  const Tensor ids = SafetensorsFile::open(dir + "/reference.safetensors").get("input_ids");
  batch = ids.dim(0);
  T = ids.dim(1);
  std::vector<int32_t> tokens;
  for (int64_t i = 0; i < ids.numel(); ++i)
    tokens.push_back(static_cast<int32_t>(ids.item_as_double(i)));
  return tokens;
}

Tensor inference_logits(const ModelSpec& spec, const WeightMap& weights,
                        const std::vector<int32_t>& tokens, int64_t batch, int64_t T) {
  const Model model(spec, weights);
  KvCache cache = model.make_cache(batch, T);
  return model.forward(tokens.data(), batch, T, cache).contiguous(true);
}

class HfExport : public ::testing::TestWithParam<std::string> {
 protected:
  std::string dir() const { return test::hf_fixture_path(GetParam()); }
};

// No training: the exported folder holds the checkpoint's tensors, bit for bit.
TEST_P(HfExport, UntrainedWeightsGiveTheCheckpointBackBitwise) {
  KILN_SKIP_UNSUPPORTED_FIXTURE(GetParam());
  const LoadedModel loaded = load_model(dir());
  const std::string out = test::make_temp_dir("hf_export_" + GetParam());
  write_hf_folder(
      loaded,
      [&](const std::string& name) -> const Tensor* {
        auto it = loaded.weights.find(name);
        return it == loaded.weights.end() ? nullptr : &it->second;
      },
      out, std::nullopt);
  const SafetensorsFile original = SafetensorsFile::open(dir() + "/model.safetensors");
  const SafetensorsFile exported = SafetensorsFile::open(out + "/model.safetensors");
  const std::vector<std::string> names = original.names();
  EXPECT_EQ(std::set<std::string>(names.begin(), names.end()),
            std::set<std::string>(exported.names().begin(), exported.names().end()));
  int64_t differing = 0;
  for (const std::string& name : names) {
    if (!exported.contains(name)) continue;
    const bool same = same_bytes(original.get(name), exported.get(name));
    differing += !same;
    EXPECT_TRUE(same) << GetParam() << ": '" << name << "' differs from the checkpoint's";
  }
  std::cout << GetParam() << ": " << names.size() << " tensors, " << differing
            << " differ from the checkpoint" << std::endl;
  EXPECT_TRUE(fs::exists(out + "/config.json"));
  EXPECT_TRUE(fs::exists(out + "/generation_config.json"));
  fs::remove_all(out);
}

// One AdamW step moves every parameter; the exported folder reloads (as a HF folder, the way
// verify and generate load it) with the trained weights and logits, bitwise.
TEST_P(HfExport, TrainedModelReloadsWithItsWeightsAndLogitsBitwise) {
  KILN_SKIP_UNSUPPORTED_FIXTURE(GetParam());
  const LoadedModel loaded = load_model(dir());
  check_hf_exportable(loaded);
  TrainModel train(loaded.spec, loaded.weights);
  int64_t batch = 0, T = 0;
  const std::vector<int32_t> tokens = fixture_tokens(dir(), batch, T);
  const std::vector<int32_t> targets = next_token_targets(tokens.data(), nullptr, batch, T);
  train.zero_gradients();
  train.forward_backward(tokens.data(), targets.data(), batch, T);
  AdamW adamw({1e-2, 0.9, 0.95, 1e-8, 0.1, 0.0});
  adamw.step(train.parameters(), train.gradients());
  int64_t moved = 0;
  for (const auto& [name, value] : train.parameters())
    moved += !same_bytes(value, loaded.weights.at(name).to(DType::F32));
  EXPECT_GT(moved, 0);

  const std::string out = test::make_temp_dir("hf_export_trained_" + GetParam());
  write_hf_folder(loaded, train, out, DType::F32);
  const LoadedModel reloaded = load_model(out);
  WeightMap trained;  // the trained model as Kiln weights
  for (const ParameterMap* map : {&std::as_const(train).parameters(), &train.frozen_parameters()})
    for (const auto& [name, value] : *map) trained[name] = value;
  EXPECT_EQ(reloaded.weights.size(), loaded.weights.size());
  int64_t differing = 0;
  for (const auto& [name, value] : trained) {
    ASSERT_TRUE(reloaded.weights.count(name)) << name << " is not in the reloaded folder";
    const bool same = same_bytes(reloaded.weights.at(name), value);
    differing += !same;
    EXPECT_TRUE(same) << GetParam() << ": '" << name << "' reloads with other values";
  }
  const Tensor expected = inference_logits(loaded.spec, trained, tokens, batch, T);
  const Tensor actual = inference_logits(reloaded.spec, reloaded.weights, tokens, batch, T);
  const double err = test::max_abs_diff(actual, expected);
  const TrainModel again(reloaded.spec, reloaded.weights);
  const double train_err = test::max_abs_diff(again.logits(tokens.data(), batch, T),
                                              train.logits(tokens.data(), batch, T));
  std::cout << GetParam() << ": " << moved << " of " << train.parameters().size()
            << " parameters moved; " << differing << " tensors reload differently; logits of the "
            << "reloaded folder vs the trained weights: max abs diff " << err << " (inference), "
            << train_err << " (TrainModel)" << std::endl;
  EXPECT_EQ(differing, 0);
  EXPECT_TRUE(same_bytes(actual, expected));
  EXPECT_EQ(train_err, 0.0);
  EXPECT_EQ(read_json_file(out + "/config.json").at("torch_dtype"), "float32");
  fs::remove_all(out);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfExport, ::testing::ValuesIn(test::hf_fixture_names()),
                         test::FixtureName());

// bf16: the folder holds the trained weights rounded to bf16, and reloads as exactly those.
TEST(HfExportDtype, Bf16ExportHoldsTheRoundedWeights) {
  const std::string fixture = test::hf_fixture_path("phi3");
  const LoadedModel loaded = load_model(fixture);
  const TrainModel train(loaded.spec, loaded.weights);
  const std::string out = test::make_temp_dir("hf_export_bf16");
  write_hf_folder(loaded, train, out, DType::BF16);
  EXPECT_EQ(read_json_file(out + "/config.json").at("torch_dtype"), "bfloat16");
  const SafetensorsFile file = SafetensorsFile::open(out + "/model.safetensors");
  for (const std::string& name : file.names()) EXPECT_EQ(file.get(name).dtype(), DType::BF16);
  const LoadedModel reloaded = load_model(out);
  for (const auto& [name, value] : train.parameters())
    EXPECT_TRUE(same_bytes(reloaded.weights.at(name), value.to(DType::BF16))) << name;
  fs::remove_all(out);
}

TEST(InvertWeightMappings, RefusesTransformsThatComputeAndTiedCopiesThatDiffer) {
  test::MapSource source;
  source.tensors["w"] = Tensor::from_f32({2, 3}, {1, 2, 3, 4, 5, 6});
  WeightMap kiln;
  kiln["a"] = Tensor::from_f32({2, 3}, {1, 2, 3, 4, 5, 6});
  kiln["b"] = Tensor::from_f32({2, 3}, {1, 2, 3, 4, 5, 7});
  kiln["t"] = Tensor::from_f32({3, 2}, {1, 4, 2, 5, 3, 6});
  const auto lookup = [&](const std::string& name) -> const Tensor* {
    auto it = kiln.find(name);
    return it == kiln.end() ? nullptr : &it->second;
  };
  // A transposed copy and a plain one agree: the inverse rebuilds w.
  std::vector<WeightMapping> ok = {
      {"a", {"w"}, {2, 3}, {}},
      {"t", {"w"}, {3, 2}, [](const std::vector<Tensor>& in) { return transposed(in[0]); }}};
  const auto rebuilt = invert_weight_mappings(ok, source, lookup);
  ASSERT_EQ(rebuilt.size(), 1u);
  EXPECT_TRUE(same_bytes(rebuilt[0].second, source.tensors["w"]));

  // A transform that negates: not a selection.
  const std::vector<WeightMapping> negating = {
      {"a", {"w"}, {2, 3}, [](const std::vector<Tensor>& in) {
         Tensor out = in[0].contiguous(true);
         if (out.dtype() == DType::I32)
           for (int64_t i = 0; i < out.numel(); ++i)
             out.mutable_data<int32_t>()[i] = -out.data<int32_t>()[i] - 1;
         return out;
       }}};
  try {
    invert_weight_mappings(negating, source, lookup);
    FAIL() << "a negating transform was inverted";
  } catch (const Error& e) {
    std::cout << e.what() << std::endl;
    EXPECT_NE(std::string(e.what()).find("'a' (from 'w')"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("does not only select"), std::string::npos);
  }
  EXPECT_THROW(check_weight_mappings_invertible(negating, source), Error);

  // Tied copies trained apart: both named.
  const std::vector<WeightMapping> tied = {{"a", {"w"}, {2, 3}, {}}, {"b", {"w"}, {2, 3}, {}}};
  try {
    invert_weight_mappings(tied, source, lookup);
    FAIL() << "tied copies that differ were exported";
  } catch (const Error& e) {
    std::cout << e.what() << std::endl;
    EXPECT_NE(std::string(e.what()).find("'b'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("'a'"), std::string::npos);
  }
  // A Kiln tensor that is missing.
  const std::vector<WeightMapping> missing = {{"c", {"w"}, {2, 3}, {}}};
  EXPECT_THROW(invert_weight_mappings(missing, source, lookup), Error);
}

}  // namespace
}  // namespace kiln::train
