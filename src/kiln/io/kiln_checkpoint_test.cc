// Kiln checkpoint format: streaming writes in any order, aligned zero-copy reads, scanned
// and unscanned layouts giving the same layers, shards, checksums and errors.
#include "kiln/io/kiln_checkpoint.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "kiln/core/error.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

template <typename Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    std::cout << "  error: " << e.what() << "\n";
    return e.what();
  }
  return "";
}

Tensor random_tensor(DType dtype, Shape shape, std::mt19937& rng) {
  Tensor t = Tensor::zeros(dtype, std::move(shape));
  auto* bytes = static_cast<uint8_t*>(t.mutable_raw());
  for (size_t i = 0; i < t.nbytes(); ++i)
    bytes[i] = static_cast<uint8_t>(dtype == DType::BOOL ? rng() & 1 : rng());
  return t;
}

KilnTensorPlan planned(std::string name, DType dtype, Shape shape, int layer_axis = -1,
                       std::string group = "") {
  return {std::move(name), dtype, std::move(shape), layer_axis, std::move(group)};
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.raw(), cb.raw(), ca.nbytes()) == 0;
}

class KilnCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("kiln-ckpt"); }
  void TearDown() override { fs::remove_all(dir_); }

  static constexpr int64_t kLayers = 3;
  // A small model's per-layer tensors (MaxText names and shapes) and global tensors.
  struct Model {
    std::vector<std::pair<std::string, Tensor>> globals;
    std::vector<std::vector<std::pair<std::string, Tensor>>> layers;  // [layer][param]
  };
  static Model make_model() {
    std::mt19937 rng(11);
    Model m;
    m.globals = {{"token_embedder/embedding", random_tensor(DType::BF16, {17, 6}, rng)},
                 {"decoder/decoder_norm/scale", random_tensor(DType::F32, {6}, rng)}};
    for (int64_t i = 0; i < kLayers; ++i)
      m.layers.push_back(
          {{"self_attention/query/kernel", random_tensor(DType::BF16, {6, 2, 3}, rng)},
           {"mlp/wi_0/kernel", random_tensor(DType::F16, {6, 5}, rng)},
           {"pre_self_attention_layer_norm/scale", random_tensor(DType::F32, {6}, rng)}});
    return m;
  }
  static Shape with_layer_axis(const Shape& shape) {
    Shape out = shape;
    out.insert(out.begin() + 1, kLayers);
    return out;
  }

  // Writes `m` unscanned, tensors in reverse plan order.
  std::string write_unscanned(const Model& m, uint64_t max_shard_bytes = uint64_t{4} << 30) {
    const std::string out = dir_ + "/unscanned";
    std::vector<std::pair<std::string, Tensor>> all = m.globals;
    for (int64_t i = 0; i < kLayers; ++i)
      for (const auto& [param, t] : m.layers[i])
        all.emplace_back("decoder/layers_" + std::to_string(i) + "/" + param, t);
    std::vector<KilnTensorPlan> plan;
    for (const auto& [name, t] : all) plan.push_back(planned(name, t.dtype(), t.shape()));
    KilnCheckpointInfo info;
    info.model_spec = {{"family", "test"}};
    KilnCheckpointWriter writer(out, info, plan, {max_shard_bytes});
    for (auto it = all.rbegin(); it != all.rend(); ++it) writer.write(it->first, it->second);
    writer.finish();
    return out;
  }

  // Writes `m` scanned on axis 1, one layer at a time in shuffled order.
  std::string write_scanned(const Model& m) {
    const std::string out = dir_ + "/scanned";
    KilnCheckpointInfo info;
    info.layout = "scanned";
    info.layer_groups["layers"] = {0, 1, 2};
    std::vector<KilnTensorPlan> plan;
    for (const auto& [name, t] : m.globals) plan.push_back(planned(name, t.dtype(), t.shape()));
    for (const auto& [param, t] : m.layers[0])
      plan.push_back(
          {"decoder/layers/" + param, t.dtype(), with_layer_axis(t.shape()), 1, "layers"});
    KilnCheckpointWriter writer(out, info, plan, {});
    for (const auto& [name, t] : m.globals) writer.write(name, t);
    for (int64_t i : {2, 0, 1})
      for (const auto& [param, t] : m.layers[i])
        writer.write_layer("decoder/layers/" + param, i, t);
    writer.finish();
    return out;
  }

  std::string dir_;
};

TEST_F(KilnCheckpointTest, UnscannedRoundTripIsAlignedZeroCopyAndBitwise) {
  const Model m = make_model();
  KilnCheckpoint ckpt(write_unscanned(m));
  EXPECT_EQ(ckpt.layout(), "unscanned");
  EXPECT_EQ(ckpt.names().size(), m.globals.size() + kLayers * m.layers[0].size());
  for (const auto& [name, want] : m.globals) {
    Tensor got = ckpt.get(name);
    EXPECT_TRUE(same_bytes(got, want)) << name;
    EXPECT_FALSE(got.writable()) << name << " should be a mapped view";
    EXPECT_EQ(reinterpret_cast<uintptr_t>(got.raw()) % 64, 0u) << name;
  }
  for (int64_t i = 0; i < kLayers; ++i)
    for (const auto& [param, want] : m.layers[i])
      EXPECT_TRUE(same_bytes(ckpt.layer_tensor(i, param), want)) << i << " " << param;
  ckpt.verify();
  EXPECT_EQ(ckpt.manifest()["model_spec"]["family"], "test");
  EXPECT_EQ(ckpt.manifest()["format_version"], 1);
  // The data file is a valid safetensors file (padding entries included).
  const std::string file = ckpt.where() + "/tensors-00001-of-00001.safetensors";
  SafetensorsFile data = SafetensorsFile::open(file);
  EXPECT_EQ(data.metadata().at("format"), "kiln");
  EXPECT_TRUE(same_bytes(data.get("decoder/layers_1/mlp/wi_0/kernel"), m.layers[1][1].second));
}

TEST_F(KilnCheckpointTest, ScannedAndUnscannedGiveIdenticalLayers) {
  const Model m = make_model();
  KilnCheckpoint unscanned(write_unscanned(m));
  KilnCheckpoint scanned(write_scanned(m));
  EXPECT_EQ(scanned.layout(), "scanned");
  EXPECT_EQ(scanned.shape_of("decoder/layers/self_attention/query/kernel"), (Shape{6, 3, 2, 3}));
  scanned.verify();
  int compared = 0;
  for (int64_t i = 0; i < kLayers; ++i)
    for (const auto& [param, want] : m.layers[i]) {
      Tensor a = scanned.layer_tensor(i, param), b = unscanned.layer_tensor(i, param);
      EXPECT_TRUE(same_bytes(a, want)) << i << " " << param;
      EXPECT_TRUE(same_bytes(a, b)) << i << " " << param;
      EXPECT_FALSE(a.writable()) << "scanned layers should be views";
      ++compared;
    }
  std::cout << "  " << compared << " layer tensors identical in both layouts\n";
}

TEST_F(KilnCheckpointTest, LargeCheckpointsAreSharded) {
  const Model m = make_model();
  KilnCheckpoint ckpt(write_unscanned(m, 200));
  const size_t files = ckpt.manifest()["files"].size();
  std::cout << "  " << files << " data files\n";
  EXPECT_GT(files, 2u);
  EXPECT_TRUE(fs::exists(ckpt.where() + "/tensors-00001-of-" +
                         std::string(5 - std::to_string(files).size(), '0') +
                         std::to_string(files) + ".safetensors"));
  for (int64_t i = 0; i < kLayers; ++i)
    for (const auto& [param, want] : m.layers[i])
      EXPECT_TRUE(same_bytes(ckpt.layer_tensor(i, param), want));
  ckpt.verify();
}

TEST_F(KilnCheckpointTest, TokenizerFilesAreCopiedAndChecked) {
  const std::string out = dir_ + "/tok";
  std::ofstream(dir_ + "/tokenizer.json") << R"({"model": {}})";
  {
    KilnCheckpointWriter writer(out, {}, {planned("w", DType::F32, {2})}, {});
    writer.write("w", Tensor::from_f32({2}, {1, 2}));
    writer.add_tokenizer_file(dir_ + "/tokenizer.json");
    writer.finish();
  }
  KilnCheckpoint ckpt(out);
  EXPECT_TRUE(ckpt.manifest()["tokenizer_files"].contains("tokenizer.json"));
  ckpt.verify();
  std::ofstream(out + "/tokenizer.json", std::ios::app) << " ";
  EXPECT_NE(error_of([&] { ckpt.verify(); }).find("tokenizer.json: checksum"), std::string::npos);
}

TEST_F(KilnCheckpointTest, WriterErrorsNameTheTensor) {
  KilnCheckpointInfo info;
  info.layout = "scanned";
  info.layer_groups["layers"] = {0, 1};
  std::vector<KilnTensorPlan> plan = {planned("a", DType::F32, {2, 3}),
                                      planned("decoder/layers/s", DType::F32, {4, 2}, 1, "layers")};
  KilnCheckpointWriter writer(dir_ + "/w", info, plan, {});
  EXPECT_NE(error_of([&] {
              writer.write("a", Tensor::zeros(DType::F32, {3, 2}));
            }).find("tensor 'a': got F32 [3, 2], planned F32 [2, 3]"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              writer.write("b", Tensor::zeros(DType::F32, {1}));
            }).find("tensor 'b' is not in the plan"),
            std::string::npos);
  writer.write("a", Tensor::zeros(DType::F32, {2, 3}));
  EXPECT_NE(error_of([&] {
              writer.write("a", Tensor::zeros(DType::F32, {2, 3}));
            }).find("written twice"),
            std::string::npos);
  writer.write_layer("decoder/layers/s", 1, Tensor::zeros(DType::F32, {4}));
  EXPECT_NE(error_of([&] {
              writer.finish();
            }).find("'decoder/layers/s' was never written (layer positions 0 missing)"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              KilnCheckpointWriter bad(
                  dir_ + "/bad", info,
                  {planned("decoder/layers/x", DType::F32, {4, 3}, 1, "layers")}, {});
            }).find("group 'layers' has 2 layers"),
            std::string::npos);
}

TEST_F(KilnCheckpointTest, ReaderDetectsCorruption) {
  const Model m = make_model();
  const std::string out = write_unscanned(m);
  const std::string file = out + "/tensors-00001-of-00001.safetensors";
  // Flip one byte of a tensor: open() still works, verify() names the tensor.
  KilnCheckpoint before(out);
  const uint64_t offset = before.manifest()["tensors"]["decoder/decoder_norm/scale"]["offset"];
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(offset));
    const char c = static_cast<char>(f.get());
    f.seekp(static_cast<std::streamoff>(offset));
    f.put(static_cast<char>(c ^ 1));
  }
  EXPECT_NE(error_of([&] {
              KilnCheckpoint(out).verify();
            }).find("tensor 'decoder/decoder_norm/scale': checksum"),
            std::string::npos);
  // A truncated data file is refused at open.
  fs::resize_file(file, fs::file_size(file) - 10);
  EXPECT_NE(error_of([&] { KilnCheckpoint ckpt(out); }).find("the manifest says"),
            std::string::npos);
  // A newer format version is refused.
  Json manifest = read_json_file(out + "/kiln_checkpoint.json");
  manifest["format_version"] = 2;
  write_json_file(out + "/kiln_checkpoint.json", manifest);
  EXPECT_NE(error_of([&] { KilnCheckpoint ckpt(out); }).find("format_version 2 is not supported"),
            std::string::npos);
  EXPECT_TRUE(KilnCheckpoint::present_in(out));
  EXPECT_FALSE(KilnCheckpoint::present_in(dir_));
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

// Tensors copied from a file (whole, or one layer of a stacked tensor) read back bitwise with
// the checksums of their bytes; a file too short for the tensor is an error naming it.
TEST_F(KilnCheckpointTest, WritesFromFilesAndNamesAShortInput) {
  const Tensor a = Tensor::from_f32({2, 3}, {1, 2, 3, 4, 5, 6});
  const Tensor layer = Tensor::from_f32({2}, {7, 8});
  const std::string input = dir_ + "/input.bin";
  {
    std::ofstream out(input, std::ios::binary);
    out.write("pad!", 4);
    out.write(static_cast<const char*>(a.raw()), static_cast<std::streamsize>(a.nbytes()));
    out.write(static_cast<const char*>(layer.raw()), static_cast<std::streamsize>(layer.nbytes()));
  }
  KilnCheckpointInfo info;
  info.layout = "scanned";
  info.layer_groups["layers"] = {0, 1};
  const std::string out = dir_ + "/out";
  KilnCheckpointWriter writer(out, info,
                              {planned("a", DType::F32, {2, 3}),
                               planned("decoder/layers/s", DType::F32, {2, 2}, 1, "layers")},
                              {});
  writer.write_from_file("a", DType::F32, {2, 3}, input, 4);
  writer.write_layer_from_file("decoder/layers/s", 0, DType::F32, {2}, input, 4 + a.nbytes());
  EXPECT_NE(error_of([&] {
              writer.write_layer_from_file("decoder/layers/s", 1, DType::F32, {2}, input,
                                           4 + a.nbytes() + 4);
            }).find(input + ": read failed"),
            std::string::npos);
  writer.write_layer("decoder/layers/s", 1, Tensor::from_f32({2}, {9, 10}));
  writer.finish();
  const KilnCheckpoint ckpt(out);
  ckpt.verify();
  EXPECT_EQ(test::max_abs_diff(ckpt.get("a"), a), 0.0);
  EXPECT_EQ(
      test::max_abs_diff(ckpt.get("decoder/layers/s"), Tensor::from_f32({2, 2}, {7, 9, 8, 10})),
      0.0);
}

}  // namespace
}  // namespace kiln
