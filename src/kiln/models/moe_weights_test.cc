#include "kiln/models/moe_weights.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>

#include "kiln/core/error.h"
#include "kiln/io/safetensors.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

TEST(StackTensors, StacksAlongANewFirstDimension) {
  const Tensor a = Tensor::from_f32({2}, {1, 2}), b = Tensor::from_f32({2}, {3, 4});
  const Tensor stacked = stack_tensors({a, b});
  EXPECT_EQ(stacked.shape(), (Shape{2, 2}));
  EXPECT_EQ(stacked.item_as_double(2), 3.0);
  EXPECT_THROW(stack_tensors({a, Tensor::from_f32({3}, {1, 2, 3})}), Error);
}

// gpt-oss's gate_up_proj [E, hidden, 2 I] alternates gate and up columns: even columns are the
// gate, odd ones the up projection, each returned as Kiln's [E, I, hidden]; biases [E, 2 I]
// split the same way into [E, I].
TEST(InterleavedGateUp, EvenColumnsAreTheGateOddOnesTheUp) {
  const int64_t E = 2, hidden = 3, I = 2;
  std::vector<float> values(E * hidden * 2 * I);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i);
  const Tensor gate_up = Tensor::from_f32({E, hidden, 2 * I}, values);
  for (int64_t part = 0; part < 2; ++part) {
    const Tensor kiln = interleaved_gate_up_part(gate_up, part);
    ASSERT_EQ(kiln.shape(), (Shape{E, I, hidden}));
    for (int64_t e = 0; e < E; ++e)
      for (int64_t i = 0; i < I; ++i)
        for (int64_t h = 0; h < hidden; ++h)
          EXPECT_EQ(kiln.item_as_double((e * I + i) * hidden + h),
                    values[(e * hidden + h) * 2 * I + 2 * i + part])
              << "part " << part << " expert " << e << " row " << i << " column " << h;
  }
  const Tensor bias = Tensor::from_f32({E, 2 * I}, {0, 1, 2, 3, 4, 5, 6, 7});
  const Tensor up_bias = interleaved_gate_up_part(bias, 1);
  EXPECT_EQ(up_bias.shape(), (Shape{E, I}));
  EXPECT_EQ(up_bias.item_as_double(0), 1.0);
  EXPECT_EQ(up_bias.item_as_double(3), 7.0);
  EXPECT_THROW(interleaved_gate_up_part(Tensor::from_f32({3}, {1, 2, 3}), 0), Error);
}

// The parts of a per-expert tensor name "<layer>.(block_sparse_moe|mlp).experts.<e>.<role>.weight".
struct ExpertName {
  std::string layer;  // "model.layers.3"
  int expert;
  std::string role;  // "w1", "gate_proj", ...
};
std::optional<ExpertName> split_expert_name(const std::string& name) {
  const std::string suffix = ".weight";
  if (!name.ends_with(suffix)) return std::nullopt;
  for (const std::string marker : {".block_sparse_moe.experts.", ".mlp.experts."}) {
    const size_t at = name.find(marker);
    if (at == std::string::npos) continue;
    const std::string rest =
        name.substr(at + marker.size(), name.size() - at - marker.size() - suffix.size());
    const size_t dot = rest.find('.');  // rest: "<e>.<role>"
    if (dot == 0 || dot == std::string::npos || dot + 1 == rest.size()) return std::nullopt;
    const std::string index = rest.substr(0, dot);
    if (!std::all_of(index.begin(), index.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return std::nullopt;
    return ExpertName{name.substr(0, at), std::stoi(index), rest.substr(dot + 1)};
  }
  return std::nullopt;
}

// A copy of fixture `name` whose per-expert tensors are restacked the way transformers 5
// holds them: `<layer>.mlp.experts.gate_up_proj` [E, 2 I, hidden] (each expert's gate rows,
// then its up rows), `<layer>.mlp.experts.down_proj` [E, hidden, I], router `<layer>.mlp.gate`.
std::string restacked_fixture(const std::string& name) {
  const std::string source = test::data_path("hf/" + name);
  const std::string dir = test::make_temp_dir("kiln-restacked");
  fs::copy_file(source + "/config.json", dir + "/config.json");
  const SafetensorsFile file = SafetensorsFile::open(source + "/model.safetensors");
  const std::map<std::string, std::string> role = {{"w1", "gate"}, {"gate_proj", "gate"},
                                                   {"w3", "up"},   {"up_proj", "up"},
                                                   {"w2", "down"}, {"down_proj", "down"}};
  // layer -> role -> expert -> tensor
  std::map<std::string, std::map<std::string, std::map<int, Tensor>>> experts;
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& tensor_name : file.names()) {
    if (const auto parts = split_expert_name(tensor_name)) {
      experts[parts->layer][role.at(parts->role)][parts->expert] = file.get(tensor_name);
      continue;
    }
    std::string renamed = tensor_name;
    const std::string moe = ".block_sparse_moe.";
    if (const size_t at = renamed.find(moe); at != std::string::npos)
      renamed.replace(at, moe.size(), ".mlp.");
    tensors.emplace_back(renamed, file.get(tensor_name));
  }
  for (auto& [layer, parts] : experts) {
    std::vector<Tensor> gate_up, down;
    for (auto& [e, gate] : parts["gate"]) {
      const Tensor& up = parts["up"].at(e);
      Tensor both = Tensor::zeros(DType::F32, {gate.dim(0) + up.dim(0), gate.dim(1)});
      std::memcpy(both.mutable_raw(), gate.raw(), gate.nbytes());
      std::memcpy(static_cast<std::byte*>(both.mutable_raw()) + gate.nbytes(), up.raw(),
                  up.nbytes());
      gate_up.push_back(both);
      down.push_back(parts["down"].at(e));
    }
    tensors.emplace_back(layer + ".mlp.experts.gate_up_proj", stack_tensors(gate_up));
    tensors.emplace_back(layer + ".mlp.experts.down_proj", stack_tensors(down));
  }
  write_safetensors(dir + "/model.safetensors", tensors);
  return dir;
}

class StackedExperts : public ::testing::TestWithParam<std::string> {};

TEST_P(StackedExperts, LoadAndGiveIdenticalLogits) {
  const std::string original_dir = test::data_path("hf/" + GetParam());
  const std::string restacked_dir = restacked_fixture(GetParam());
  const Tensor input_ids =
      SafetensorsFile::open(original_dir + "/reference.safetensors").get("input_ids");
  std::vector<int32_t> ids;  // [B, T]
  for (int64_t i = 0; i < input_ids.numel(); ++i)
    ids.push_back(static_cast<int32_t>(input_ids.item_as_double(i)));
  const int64_t batch = input_ids.dim(0), tokens = input_ids.dim(1);
  auto logits_of = [&](const std::string& dir) {
    const LoadedModel loaded = load_model(dir);
    const Model model(loaded.spec, loaded.weights);
    KvCache cache = model.make_cache(batch, tokens);
    return model.forward(ids.data(), batch, tokens, cache);
  };
  const SafetensorsFile restacked = SafetensorsFile::open(restacked_dir + "/model.safetensors");
  EXPECT_TRUE(restacked.contains("model.layers.1.mlp.experts.gate_up_proj"));
  const double err = test::max_abs_diff(logits_of(restacked_dir), logits_of(original_dir));
  std::cout << GetParam() << ": stacked vs per-expert logits max abs diff = " << err << std::endl;
  EXPECT_EQ(err, 0.0);
  fs::remove_all(restacked_dir);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, StackedExperts,
                         ::testing::Values("mixtral", "qwen3_moe", "deepseek_v3"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace kiln
