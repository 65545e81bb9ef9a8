#include "kiln/models/loader.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/io/safetensors.h"
#include "kiln/layers/model.h"
#include "kiln/models/weight_names.h"
#include "kiln/verify/reference_check.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

std::string error_of(const std::string& path) {
  try {
    load_model(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A copy of the llama fixture whose tensors are rewritten by `edit`.
std::string edited_llama(
    const std::function<void(std::vector<std::pair<std::string, Tensor>>&)>& edit) {
  const std::string source = test::data_path("hf/llama");
  const std::string dir = test::make_temp_dir("kiln-loader");
  fs::copy_file(source + "/config.json", dir + "/config.json");
  const SafetensorsFile file = SafetensorsFile::open(source + "/model.safetensors");
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : file.names()) tensors.emplace_back(name, file.get(name));
  edit(tensors);
  write_safetensors(dir + "/model.safetensors", tensors);
  return dir;
}

TEST(Loader, LoadsFixtureWithKilnNamesAndMergedEosIds) {
  const LoadedModel loaded = load_model(test::data_path("hf/llama"));
  EXPECT_EQ(loaded.spec.family, "llama");
  EXPECT_EQ(loaded.weights.at(names::embedding(names::token_embedder())).shape(), (Shape{512, 64}));
  EXPECT_EQ(loaded.weights.at("decoder/layers_1/self_attention/key/kernel").shape(),
            (Shape{32, 64}));
  EXPECT_TRUE(loaded.weights.count("decoder/logits_dense/kernel"));
  EXPECT_EQ(loaded.spec.eos_token_ids, (std::vector<int64_t>{2}));
  // Tied embeddings: no lm_head tensor is needed.
  EXPECT_FALSE(
      load_model(test::data_path("hf/qwen2")).weights.count("decoder/logits_dense/kernel"));
}

TEST(Loader, ShardedPytorchBinGivesTheSameModel) {
  const std::string dir = test::make_temp_dir("kiln-loader");
  fs::copy_file(test::data_path("hf/llama/config.json"), dir + "/config.json");
  for (const auto& entry : fs::directory_iterator(test::data_path("torch_bin/llama_sharded")))
    fs::copy_file(entry.path(), dir + "/" + entry.path().filename().string());
  const LoadedModel loaded = load_model(dir);
  const Model model(loaded.spec, loaded.weights);
  const ReferenceReport report =
      check_against_reference(model, test::data_path("hf/llama/reference.safetensors"), 1e-4);
  std::cout << "llama from .bin shards: logits max abs err = " << report.logits_max_abs_err
            << std::endl;
  EXPECT_TRUE(report.passed);
  fs::remove_all(dir);
}

TEST(Loader, MissingTensorNamesTensorAndFolder) {
  const std::string dir = edited_llama([](auto& tensors) {
    std::erase_if(tensors,
                  [](const auto& t) { return t.first == "model.layers.1.mlp.up_proj.weight"; });
  });
  const std::string message = error_of(dir);
  EXPECT_NE(message.find("missing tensor 'model.layers.1.mlp.up_proj.weight'"), std::string::npos)
      << message;
  EXPECT_NE(message.find(dir), std::string::npos) << message;
  fs::remove_all(dir);
}

TEST(Loader, WrongShapeNamesFileAndTensor) {
  const std::string dir = edited_llama([](auto& tensors) {
    for (auto& [name, tensor] : tensors)
      if (name == "model.norm.weight") tensor = Tensor::zeros(DType::F32, {65});
  });
  const std::string message = error_of(dir);
  EXPECT_NE(message.find(dir + "/model.safetensors: tensor 'model.norm.weight' has shape [65], "
                               "expected [64]"),
            std::string::npos)
      << message;
  fs::remove_all(dir);
}

TEST(Loader, NotAFolderOrNoWeights) {
  EXPECT_NE(error_of("/nonexistent/model").find("not a model folder"), std::string::npos);
  const std::string dir = test::make_temp_dir("kiln-loader");
  fs::copy_file(test::data_path("hf/llama/config.json"), dir + "/config.json");
  EXPECT_NE(error_of(dir).find("no model weights found"), std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
