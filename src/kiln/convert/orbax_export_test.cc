// Kiln -> Orbax -> Kiln is bitwise identical (OCDBT and zarr files, scanned and
// unscanned), and Orbax arrays carry MaxText's params/params/ tree.
#include "kiln/convert/orbax_export.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <random>

#include "kiln/core/error.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

class OrbaxExportTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("kiln-export"); }
  void TearDown() override { fs::remove_all(dir_); }

  // A scanned checkpoint with two layer groups and tensors of several dtypes.
  std::string write_kiln() {
    std::mt19937 rng(5);
    auto random = [&](DType dtype, Shape shape) {
      Tensor t = Tensor::zeros(dtype, std::move(shape));
      auto* bytes = static_cast<uint8_t*>(t.mutable_raw());
      for (size_t i = 0; i < t.nbytes(); ++i) bytes[i] = static_cast<uint8_t>(rng());
      return t;
    };
    KilnCheckpointInfo info;
    info.layout = "scanned";
    info.model_spec = {{"family", "test"}, {"hidden_size", 8}};
    info.layer_groups = {{"layers_full", {1, 3}}, {"layers_sliding", {0, 2}}};
    tensors_ = {
        {"token_embedder/embedding", random(DType::BF16, {40, 8})},
        {"decoder/decoder_norm/scale", random(DType::F32, {8})},
        {"decoder/layers_full/self_attention/query/kernel", random(DType::BF16, {8, 2, 2, 4})},
        {"decoder/layers_sliding/self_attention/query/kernel", random(DType::BF16, {8, 2, 2, 4})},
        {"decoder/layers_full/mlp/wo/kernel", random(DType::F16, {12, 2, 8})}};
    std::vector<KilnTensorPlan> plan;
    for (const auto& [name, t] : tensors_) {
      KilnTensorPlan p{name, t.dtype(), t.shape(), -1, ""};
      if (name.rfind("decoder/layers_", 0) == 0) {
        p.layer_axis = 1;
        p.layer_group = name.substr(8, name.find('/', 8) - 8);
      }
      plan.push_back(p);
    }
    const std::string out = dir_ + "/kiln";
    KilnCheckpointWriter writer(out, info, plan, {});
    for (const auto& [name, t] : tensors_) writer.write(name, t);
    writer.finish();
    return out;
  }

  std::vector<std::pair<std::string, Tensor>> tensors_;
  std::string dir_;
};

TEST_F(OrbaxExportTest, KilnToOrbaxToKilnIsBitwise) {
  const std::string kiln = write_kiln();
  for (bool ocdbt : {true, false}) {
    SCOPED_TRACE(ocdbt ? "ocdbt" : "zarr");
    const std::string orbax = dir_ + (ocdbt ? "/orbax_ocdbt" : "/orbax_zarr");
    OrbaxWriteOptions options;
    options.ocdbt = ocdbt;
    options.zarr.zstd = !ocdbt;
    options.manager_step = 0;
    OrbaxExportOptions plain;
    plain.tree = "plain";  // a synthetic model without a family: Kiln's own tree
    export_kiln_to_orbax(kiln, orbax, options, false, plain);
    OrbaxSource exported(orbax);
    EXPECT_TRUE(exported.contains("params/params/decoder/layers_full/mlp/wo/kernel"));
    EXPECT_EQ(exported.names().size(), tensors_.size() + 1);  // and MaxText's step

    const std::string back = orbax + "_back";
    import_orbax_to_kiln(orbax, back, {}, false);
    KilnCheckpoint original(kiln), restored(back);
    restored.verify();
    for (const auto& [name, t] : tensors_) {
      Tensor a = original.get(name), b = restored.get(name);
      ASSERT_EQ(a.shape(), b.shape()) << name;
      ASSERT_EQ(a.dtype(), b.dtype()) << name;
      EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << name;
      EXPECT_EQ(original.manifest()["tensors"][name]["crc32c"],
                restored.manifest()["tensors"][name]["crc32c"])
          << name;
    }
    for (const char* key : {"layout", "layer_groups", "model_spec", "dtype"})
      EXPECT_EQ(original.manifest()[key], restored.manifest()[key]) << key;
    for (int64_t layer = 0; layer < 4; ++layer) {
      Tensor a = original.layer_tensor(layer, "self_attention/query/kernel");
      Tensor b = restored.layer_tensor(layer, "self_attention/query/kernel");
      EXPECT_EQ(std::memcmp(a.contiguous().raw(), b.contiguous().raw(), a.nbytes()), 0) << layer;
    }
    std::cout << "  " << (ocdbt ? "ocdbt" : "zarr+zstd") << ": " << tensors_.size()
              << " tensors bitwise identical after Kiln -> Orbax -> Kiln\n";
  }
}

TEST_F(OrbaxExportTest, MaxTextTreeNeedsAFamily) {
  const std::string kiln = write_kiln();
  try {
    export_kiln_to_orbax(kiln, dir_ + "/orbax", {}, false);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    std::cout << "  error: " << e.what() << "\n";
    EXPECT_NE(std::string(e.what()).find("no source_config"), std::string::npos);
  }
  EXPECT_FALSE(fs::exists(dir_ + "/orbax"));
}

TEST_F(OrbaxExportTest, ImportNeedsLayerAxesForStackedArrays) {
  {
    OrbaxWriter writer(dir_ + "/maxtext", {});
    writer.add("params/params/decoder/layers/mlp/wo/kernel", Tensor::zeros(DType::F32, {4, 2, 3}));
    writer.finish();
  }
  try {
    import_orbax_to_kiln(dir_ + "/maxtext", dir_ + "/out", {}, false);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    std::cout << "  error: " << e.what() << "\n";
    EXPECT_NE(std::string(e.what()).find("pass the model's config.json (--config)"),
              std::string::npos);
  }
  EXPECT_FALSE(fs::exists(dir_ + "/out"));
  try {
    import_orbax_to_kiln(test::data_path("orbax/pytree_zarr"), dir_ + "/out", {}, false);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    std::cout << "  error: " << e.what() << "\n";
    EXPECT_NE(std::string(e.what()).find("no arrays under params/params/"), std::string::npos);
  }
}

}  // namespace
}  // namespace kiln
