// Orbax reading (the four samples written by orbax-checkpoint itself) and writing (zarr v2
// raw/zstd, OCDBT, CheckpointManager layout): round trips are bitwise, and the metadata
// files match what orbax writes.
#include "kiln/io/orbax/orbax_checkpoint.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>

#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/io/npy.h"
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

class OrbaxSamples : public ::testing::TestWithParam<const char*> {};

TEST_P(OrbaxSamples, EveryArrayEqualsTreeNpz) {
  OrbaxSource source(test::data_path(std::string("orbax/") + GetParam()));
  const auto expected = read_npz(test::data_path("orbax/tree.npz"));
  ASSERT_EQ(expected.size(), 5u);
  EXPECT_EQ(source.names().size(), expected.size());
  for (const auto& [name, want] : expected) {
    ASSERT_TRUE(source.contains(name)) << name;
    Tensor got = source.get(name);
    EXPECT_EQ(got.shape(), want.shape()) << name;
    EXPECT_EQ(source.shape_of(name), want.shape()) << name;
    EXPECT_EQ(got.dtype(), source.dtype_of(name)) << name;
    const double err = test::max_abs_diff(got.to(DType::F32), want);
    std::cout << "  " << GetParam() << " " << name << " " << dtype_name(got.dtype()) << " "
              << got.shape_string() << " max abs err " << err << "\n";
    EXPECT_EQ(err, 0.0) << name;
  }
  EXPECT_EQ(source.dtype_of("params/decoder/layers/mlp/wi_0/kernel"), DType::BF16);
  EXPECT_EQ(source.dtype_of("step"), DType::I32);
  EXPECT_EQ(source.get("step").data<int32_t>()[0], 7);
}

INSTANTIATE_TEST_SUITE_P(AllFour, OrbaxSamples,
                         ::testing::Values("standard_ocdbt", "pytree_zarr", "pytree_zarr3",
                                           "manager"));

TEST(Orbax, SampleStorageKinds) {
  EXPECT_TRUE(OrbaxSource(test::data_path("orbax/standard_ocdbt")).uses_ocdbt());
  EXPECT_TRUE(OrbaxSource(test::data_path("orbax/manager/0/items")).uses_ocdbt());
  EXPECT_FALSE(OrbaxSource(test::data_path("orbax/pytree_zarr")).uses_ocdbt());
  EXPECT_EQ(resolve_orbax_item_dir(test::data_path("orbax/manager")),
            test::data_path("orbax/manager/0/items"));
  auto ocdbt = OcdbtKvStore::open(test::data_path("orbax/standard_ocdbt"));
  EXPECT_EQ(ocdbt->keys().size(), 10u);
  EXPECT_TRUE(ocdbt->read("step/.zarray").has_value());
  EXPECT_FALSE(ocdbt->read("step/.zattrs").has_value());
}

TEST(Orbax, NotACheckpoint) {
  std::string message = error_of([] { OrbaxSource source(test::data_path("hf/llama")); });
  EXPECT_NE(message.find("not an orbax checkpoint"), std::string::npos);
  EXPECT_FALSE(OrbaxSource::present_in(test::data_path("hf/llama")));
  EXPECT_TRUE(OrbaxSource::present_in(test::data_path("orbax/manager")));
}

class OrbaxWrite : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("kiln-orbax"); }
  void TearDown() override { fs::remove_all(dir_); }

  // The sample tree, with the dtypes orbax_samples.py used.
  static std::vector<std::pair<std::string, Tensor>> sample_tree() {
    std::vector<std::pair<std::string, Tensor>> out;
    for (auto& [name, t] : read_npz(test::data_path("orbax/tree.npz"))) {
      if (name == "step")
        out.emplace_back(name, Tensor::from_f32({}, {7}).to(DType::F32));
      else if (name.find("wi_0") != std::string::npos)
        out.emplace_back(name, t.to(DType::BF16));
      else
        out.emplace_back(name, t);
    }
    Tensor step = Tensor::zeros(DType::I32, {});
    step.mutable_data<int32_t>()[0] = 7;
    for (auto& [name, t] : out)
      if (name == "step") t = step;
    return out;
  }

  // Random tensors of several dtypes and shapes, some larger than OCDBT's inline limit.
  static std::vector<std::pair<std::string, Tensor>> random_tree() {
    std::mt19937 rng(3);
    auto make = [&](DType dtype, Shape shape) {
      Tensor t = Tensor::zeros(dtype, std::move(shape));
      auto* bytes = static_cast<uint8_t*>(t.mutable_raw());
      for (size_t i = 0; i < t.nbytes(); ++i) bytes[i] = static_cast<uint8_t>(rng());
      return t;
    };
    return {{"params/decoder/layers/self_attention/query/kernel", make(DType::F32, {8, 3, 2, 4})},
            {"params/decoder/layers/mlp/wi_0/kernel", make(DType::BF16, {64, 3, 40})},
            {"params/decoder/decoder_norm/scale", make(DType::F16, {8})},
            {"params/token_embedder/embedding", make(DType::F32, {37, 16})},
            {"params/counts", make(DType::I64, {5})},
            {"step", make(DType::I32, {})}};
  }

  static void expect_round_trip(const std::vector<std::pair<std::string, Tensor>>& tree,
                                const std::string& path) {
    OrbaxSource source(path);
    EXPECT_EQ(source.names().size(), tree.size());
    for (const auto& [name, want] : tree) {
      ASSERT_TRUE(source.contains(name)) << name;
      Tensor got = source.get(name);
      ASSERT_EQ(got.dtype(), want.dtype()) << name;
      ASSERT_EQ(got.shape(), want.shape()) << name;
      EXPECT_EQ(std::memcmp(got.raw(), want.raw(), want.nbytes()), 0) << name << " differs";
    }
  }

  std::string dir_;
};

TEST_F(OrbaxWrite, RoundTripsAreBitwise) {
  const auto tree = random_tree();
  struct Variant {
    const char* name;
    bool ocdbt, zstd;
    size_t max_chunk_bytes;
  };
  for (const Variant& v : {Variant{"zarr_raw", false, false, 256u << 20},
                           Variant{"zarr_zstd", false, true, 256u << 20},
                           Variant{"zarr_small_chunks", false, true, 100},
                           Variant{"ocdbt_zstd", true, true, 256u << 20},
                           Variant{"ocdbt_raw_small_chunks", true, false, 100},
                           Variant{"ocdbt_zstd_small_chunks", true, true, 100}}) {
    SCOPED_TRACE(v.name);
    const std::string out = dir_ + "/" + v.name;
    OrbaxWriteOptions options;
    options.ocdbt = v.ocdbt;
    options.zarr.zstd = v.zstd;
    options.zarr.max_chunk_bytes = v.max_chunk_bytes;
    OrbaxWriter writer(out, options);
    for (const auto& [name, t] : tree) writer.add(name, t);
    writer.finish();
    expect_round_trip(tree, out);
    EXPECT_EQ(OrbaxSource(out).uses_ocdbt(), v.ocdbt);
    std::cout << "  " << v.name << ": " << tree.size() << " arrays bitwise identical\n";
  }
}

// zstd chunks are compressed and stored on the writer's thread while the caller goes on: the
// caller's buffer may change as soon as add() returns, and a writer abandoned midway (an error
// elsewhere) stops its thread without finishing.
TEST_F(OrbaxWrite, CompressingThreadCopiesEachChunk) {
  const auto tree = random_tree();
  OrbaxWriteOptions options;
  options.zarr.max_chunk_bytes = 64;
  const std::string out = dir_ + "/reused";
  {
    OrbaxWriter writer(out, options);
    for (const auto& [name, t] : tree) {
      Tensor scratch = t.contiguous(true);
      writer.add(name, scratch);
      std::memset(scratch.mutable_raw(), 0x5a, scratch.nbytes());  // reused at once
    }
    writer.finish();
  }
  expect_round_trip(tree, out);
  {
    OrbaxWriter abandoned(dir_ + "/abandoned", options);
    abandoned.add(tree[0].first, tree[0].second);
  }  // no finish(): the destructor joins the thread
  SUCCEED();
}

TEST_F(OrbaxWrite, LayerByLayerArraysAndSideArrays) {
  const auto tree = random_tree();
  for (bool ocdbt : {false, true}) {
    SCOPED_TRACE(ocdbt ? "ocdbt" : "zarr");
    const std::string out = dir_ + (ocdbt ? "/ocdbt" : "/zarr");
    OrbaxWriteOptions options;
    options.ocdbt = ocdbt;
    options.zarr.max_chunk_bytes = 500;  // several row blocks per layer
    OrbaxWriter writer(out, options);
    // [64, 3, 40] bf16 stacked on axis 1, and [3] per-layer scalars stacked on axis 0,
    // written in reverse layer order.
    const Tensor& wi = tree[1].second;
    writer.begin_layers(tree[1].first, DType::BF16, wi.shape(), 1);
    Tensor scalars = Tensor::from_f32({3}, {1, 2, 3});
    writer.begin_layers("params/scalars", DType::F32, {3}, 0);
    // A side array whose layer 1 is all zero: its chunks are not stored.
    Tensor side = Tensor::zeros(DType::I8, {4, 3, 2});
    for (int64_t i = 0; i < 4; ++i) side.mutable_data<int8_t>()[i * 6] = static_cast<int8_t>(i + 1);
    writer.begin_layers("side/a", DType::I8, side.shape(), 1, false);
    for (int64_t j = 2; j >= 0; --j) {
      writer.add_layer(tree[1].first, j, wi.select(1, j));
      writer.add_layer("params/scalars", j, scalars.select(0, j));
      writer.add_layer("side/a", j, side.select(1, j));
    }
    EXPECT_THROW(writer.add_layer("params/scalars", 0, scalars.select(0, 0)), Error);
    writer.finish();
    OrbaxSource source(out);
    EXPECT_EQ(source.names().size(), 2u) << "the side array is not listed";
    for (const auto& [name, want] :
         {std::pair{tree[1].first, wi}, std::pair{std::string("params/scalars"), scalars}}) {
      const Tensor got = source.get(name);
      ASSERT_EQ(got.shape(), want.shape());
      EXPECT_EQ(std::memcmp(got.raw(), want.raw(), want.nbytes()), 0) << name;
    }
    const Tensor got_side = source.get_side_array("side/a");
    ASSERT_EQ(got_side.shape(), side.shape());
    EXPECT_EQ(std::memcmp(got_side.raw(), side.raw(), side.nbytes()), 0);
    EXPECT_FALSE(source.get_side_array("side/none").defined());
    if (!ocdbt) {
      EXPECT_TRUE(fs::exists(out + "/side.a/0.0.0"));
      EXPECT_FALSE(fs::exists(out + "/side.a/0.1.0")) << "an all-zero chunk was stored";
      EXPECT_TRUE(fs::exists(out + "/params.decoder.layers.mlp.wi_0.kernel/1.2.0"))
          << "row blocks of 6 rows";
    }
  }
  OrbaxWriter incomplete(dir_ + "/incomplete", {});
  incomplete.begin_layers("params/x", DType::F32, {2, 3, 4}, 1);
  incomplete.add_layer("params/x", 0, Tensor::zeros(DType::F32, {2, 4}));
  try {
    incomplete.finish();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    std::cout << "  error: " << e.what() << "\n";
    EXPECT_NE(std::string(e.what()).find("layer 1 was never written"), std::string::npos);
  }
}

// Arrays written block by block (a transposed matrix produced a block of source rows at a
// time): blocks of columns of a matrix (the last one narrower: each chunk row zero-padded),
// blocks of rows of any rank, in any order, as side arrays whose all-zero blocks are not
// stored; the reader sees the same arrays.
TEST_F(OrbaxWrite, BlockByBlockArrays) {
  std::mt19937 rng(11);
  auto random = [&](DType dtype, Shape shape) {
    Tensor t = Tensor::zeros(dtype, std::move(shape));
    auto* bytes = static_cast<uint8_t*>(t.mutable_raw());
    for (size_t i = 0; i < t.nbytes(); ++i) bytes[i] = static_cast<uint8_t>(rng());
    return t;
  };
  const Tensor columns = random(DType::BF16, {6, 11});  // blocks of 4 columns: 4, 4, 3
  const Tensor rows = random(DType::F32, {7, 2, 3});    // blocks of 3 rows: 3, 3, 1
  Tensor side = Tensor::zeros(DType::I8, {5, 10});      // blocks of 4 columns, the 2nd zero
  side.mutable_data<int8_t>()[0] = 3;
  side.mutable_data<int8_t>()[49] = -2;
  for (bool ocdbt : {false, true}) {
    for (bool zstd : {false, true}) {
      SCOPED_TRACE(std::string(ocdbt ? "ocdbt" : "zarr") + (zstd ? " zstd" : " raw"));
      const std::string out = dir_ + "/blocks_" + std::to_string(ocdbt) + std::to_string(zstd);
      OrbaxWriteOptions options;
      options.ocdbt = ocdbt;
      options.zarr.zstd = zstd;
      OrbaxWriter writer(out, options);
      writer.begin_blocks("params/lm/kernel", DType::BF16, columns.shape(), 1, 4);
      writer.begin_blocks("params/rows", DType::F32, rows.shape(), 0, 3);
      writer.begin_blocks("side/r", DType::I8, side.shape(), 1, 4, false);
      for (int64_t b = 2; b >= 0; --b) {
        writer.add_block("params/lm/kernel", b,
                         columns.slice(1, b * 4, std::min<int64_t>(11, b * 4 + 4)));
        writer.add_block("params/rows", b, rows.slice(0, b * 3, std::min<int64_t>(7, b * 3 + 3)));
        writer.add_block("side/r", b, side.slice(1, b * 4, std::min<int64_t>(10, b * 4 + 4)));
      }
      EXPECT_THROW(writer.add_block("params/rows", 1, rows.slice(0, 3, 6)), Error);  // twice
      EXPECT_THROW(writer.add_layer("params/rows", 0, rows.select(0, 0)), Error);    // not layers
      writer.finish();
      OrbaxSource source(out);
      EXPECT_EQ(source.names().size(), 2u) << "the side array is not listed";
      for (const auto& [name, want] : {std::pair{std::string("params/lm/kernel"), columns},
                                       std::pair{std::string("params/rows"), rows}}) {
        const Tensor got = source.get(name);
        ASSERT_EQ(got.shape(), want.shape()) << name;
        EXPECT_EQ(std::memcmp(got.raw(), want.raw(), want.nbytes()), 0) << name;
      }
      const Tensor got_side = source.get_side_array("side/r");
      ASSERT_EQ(got_side.shape(), side.shape());
      EXPECT_EQ(std::memcmp(got_side.raw(), side.raw(), side.nbytes()), 0);
      const Json metadata = read_json_file(out + "/array_metadatas/process_0");
      for (const Json& a : metadata["array_metadatas"])
        if (a["array_metadata"]["param_name"] == "params.lm.kernel") {
          EXPECT_EQ(a["array_metadata"]["chunk_shape"], Json({6, 4}));
        }
      if (!ocdbt) {
        EXPECT_TRUE(fs::exists(out + "/params.lm.kernel/0.2"));
        EXPECT_TRUE(fs::exists(out + "/side.r/0.2"));
        EXPECT_FALSE(fs::exists(out + "/side.r/0.1")) << "an all-zero chunk was stored";
        EXPECT_TRUE(fs::exists(out + "/params.rows/2.0.0"));
      }
    }
  }
  OrbaxWriter incomplete(dir_ + "/incomplete_blocks", {});
  incomplete.begin_blocks("params/x", DType::F32, {2, 5}, 1, 2);
  incomplete.add_block("params/x", 0, Tensor::zeros(DType::F32, {2, 2}));
  EXPECT_THROW(incomplete.add_block("params/x", 2, Tensor::zeros(DType::F32, {2, 2})), Error)
      << "the last block has one column";
  EXPECT_THROW(incomplete.begin_blocks("params/y", DType::F32, {2, 3, 4}, 1, 2), Error);
  try {
    incomplete.finish();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    std::cout << "  error: " << e.what() << "\n";
    EXPECT_NE(std::string(e.what()).find("block 1 was never written"), std::string::npos);
  }
}

TEST_F(OrbaxWrite, ManagerLayoutAsMaxTextLoadsIt) {
  const auto tree = random_tree();
  OrbaxWriteOptions options;
  options.manager_step = 0;
  OrbaxWriter writer(dir_ + "/ckpt", options);
  for (const auto& [name, t] : tree) writer.add(name, t);
  writer.finish();
  EXPECT_EQ(writer.item_dir(), dir_ + "/ckpt/0/items");
  expect_round_trip(tree, dir_ + "/ckpt");
  const Json checkpoint = read_json_file(dir_ + "/ckpt/0/_CHECKPOINT_METADATA");
  const Json sample = read_json_file(test::data_path("orbax/manager/0/_CHECKPOINT_METADATA"));
  EXPECT_EQ(checkpoint["item_handlers"], sample["item_handlers"]);
}

// Writing the sample tree the way orbax did gives the same metadata files, so orbax reads
// Kiln's checkpoints the way it reads its own.
TEST_F(OrbaxWrite, MetadataMatchesWhatOrbaxWrites) {
  const auto tree = sample_tree();
  for (bool ocdbt : {false, true}) {
    const std::string out = dir_ + (ocdbt ? "/ocdbt" : "/zarr");
    const std::string sample =
        test::data_path(ocdbt ? "orbax/standard_ocdbt" : "orbax/pytree_zarr");
    OrbaxWriteOptions options;
    options.ocdbt = ocdbt;
    OrbaxWriter writer(out, options);
    for (const auto& [name, t] : tree) writer.add(name, t);
    writer.finish();
    expect_round_trip(tree, out);
    for (const char* file : {"_METADATA", "_sharding", "array_metadatas/process_0"})
      EXPECT_EQ(read_json_file(out + "/" + file), read_json_file(sample + "/" + file)) << file;
    // The OCDBT sample came from StandardCheckpointer; Kiln writes PyTreeCheckpointer's.
    EXPECT_EQ(
        read_json_file(out + "/_CHECKPOINT_METADATA")["item_handlers"],
        read_json_file(test::data_path("orbax/pytree_zarr/_CHECKPOINT_METADATA"))["item_handlers"]);
    std::unique_ptr<KvStore> written, reference;
    if (ocdbt) {
      written = OcdbtKvStore::open(out);
      reference = OcdbtKvStore::open(sample);
    } else {
      written = std::make_unique<DirectoryKvStore>(out);
      reference = std::make_unique<DirectoryKvStore>(sample);
    }
    for (const auto& [name, t] : tree) {
      std::string key = name;
      std::replace(key.begin(), key.end(), '/', '.');
      EXPECT_EQ(parse_json(*written->read(key + "/.zarray"), key),
                parse_json(*reference->read(key + "/.zarray"), key))
          << key;
    }
  }
}

TEST_F(OrbaxWrite, CorruptOcdbtIsDetected) {
  fs::copy(test::data_path("orbax/standard_ocdbt"), dir_ + "/c", fs::copy_options::recursive);
  for (const auto& entry : fs::recursive_directory_iterator(dir_ + "/c"))
    fs::permissions(entry.path(), fs::perms::owner_write, fs::perm_options::add);
  {
    std::fstream f(dir_ + "/c/manifest.ocdbt", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(40);
    f.put('\x55');
  }
  std::string message = error_of([&] { OrbaxSource source(dir_ + "/c"); });
  EXPECT_NE(message.find("manifest.ocdbt"), std::string::npos);
  EXPECT_NE(message.find("CRC-32C"), std::string::npos);
}

TEST_F(OrbaxWrite, RejectsBadNamesAndExistingOutput) {
  OrbaxWriter writer(dir_ + "/x", {});
  Tensor t = Tensor::zeros(DType::F32, {2});
  std::string message = error_of([&] { writer.add("params/a.b", t); });
  EXPECT_NE(message.find("'params/a.b'"), std::string::npos);
  writer.add("params/a", t);
  message = error_of([&] { writer.add("params/a", t); });
  EXPECT_NE(message.find("added twice"), std::string::npos);
  message = error_of([&] { OrbaxWriter again(test::data_path("orbax/pytree_zarr"), {}); });
  EXPECT_NE(message.find("not empty"), std::string::npos);
}

// Values larger than the data file's write staging (8 MiB), odd sizes, inline values in
// between: every byte reads back (direct I/O where the filesystem allows it, the tail cut
// back to the data's end).
TEST(Ocdbt, LargeValuesStreamThroughTheDataFile) {
  const std::string dir = test::make_temp_dir("kiln-ocdbt-large");
  std::mt19937 rng(11);
  std::map<std::string, std::string> values;
  for (size_t size : {size_t{20} << 20, size_t{3}, size_t{9} << 20 | 4097, size_t{1000},
                      size_t{4096}, size_t{12345}}) {
    std::string v(size, '\0');
    for (char& c : v) c = static_cast<char>(rng());
    values["key" + std::to_string(values.size())] = v;
  }
  {
    OcdbtWriter writer(dir, {});
    for (const auto& [key, value] : values) writer.add(key, value);
    writer.finish();
  }
  const auto store = OcdbtKvStore::open(dir);
  uint64_t data_bytes = 0;
  for (const auto& entry : fs::directory_iterator(fs::path(dir) / "d"))
    data_bytes += fs::file_size(entry.path());
  uint64_t indirect = 0;
  for (const auto& [key, value] : values) {
    const auto got = store->read(key);
    ASSERT_TRUE(got.has_value()) << key;
    EXPECT_EQ(got->size(), value.size()) << key;
    EXPECT_TRUE(*got == value) << key;
    if (value.size() > 1024) indirect += value.size();
  }
  // The data file holds the indirect values and the B+tree node, nothing padded.
  EXPECT_GT(data_bytes, indirect);
  EXPECT_LT(data_bytes, indirect + 4096);
  std::cout << "  OCDBT data file: " << data_bytes << " bytes for " << indirect
            << " bytes of indirect values\n";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
