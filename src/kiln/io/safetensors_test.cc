// Safetensors reader validation (crafted bad files), writer round trips and sharded sets.
#include "kiln/io/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "kiln/core/error.h"
#include "kiln/io/safetensors_source.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("kiln-safetensors"); }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  // Writes raw bytes to `name` in the temp dir; returns its path.
  std::string write_bytes(const std::string& name, const std::string& bytes) const {
    std::ofstream out(path(name), std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path(name);
  }
  // A file made of an 8-byte little-endian header length, `header`, then `data`.
  std::string craft(const std::string& name, const std::string& header, const std::string& data,
                    uint64_t header_len) const {
    std::string bytes(8, '\0');
    std::memcpy(bytes.data(), &header_len, 8);
    return write_bytes(name, bytes + header + data);
  }
  std::string craft(const std::string& name, const std::string& header,
                    const std::string& data) const {
    return craft(name, header, data, header.size());
  }

  std::string dir_;
};

// Runs `fn`, expects a kiln::Error whose one-line message contains every `part`, and
// prints the message.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const Error& e) {
    std::string message = e.what();
    std::cout << "  error: " << message << "\n";
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    for (const auto& part : parts)
      EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
    return;
  }
  ADD_FAILURE() << "no kiln::Error thrown";
}

const std::string kEightBytes(8, '\x01');

TEST_F(SafetensorsTest, FileShorterThanHeaderLength) {
  std::string p = write_bytes("short.safetensors", "\x10\x00\x00");
  expect_error([&] { SafetensorsFile::open(p); }, {p, "truncated"});
}

TEST_F(SafetensorsTest, HeaderCutShort) {
  std::string header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  std::string p = craft("cut.safetensors", header.substr(0, 20), "", header.size());
  expect_error([&] { SafetensorsFile::open(p); }, {p, "header length", "past the end"});
}

TEST_F(SafetensorsTest, HeaderLengthPastEndOfFile) {
  std::string p = craft("huge.safetensors", "{}", "", uint64_t{1} << 63);
  expect_error([&] { SafetensorsFile::open(p); }, {p, "past the end"});
}

TEST_F(SafetensorsTest, TensorRangeOutsideFile) {
  std::string p = craft("range.safetensors",
                        R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", kEightBytes);
  expect_error([&] { SafetensorsFile::open(p); }, {p, "tensor 'w'", "outside"});
}

TEST_F(SafetensorsTest, OverlappingRanges) {
  std::string p = craft("overlap.safetensors",
                        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                            "b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                        kEightBytes);
  expect_error([&] { SafetensorsFile::open(p); }, {p, "'a'", "'b'", "overlapping"});
}

TEST_F(SafetensorsTest, OverlapBehindAnEmptyTensorIsFound) {
  std::string p = craft("overlap_empty.safetensors",
                        R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},
                            "e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},
                            "b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                        std::string(16, '\0'));
  expect_error([&] { SafetensorsFile::open(p); }, {p, "'a'", "'b'", "overlapping"});
}

TEST_F(SafetensorsTest, UnknownDtype) {
  std::string p = craft("dtype.safetensors",
                        R"({"w":{"dtype":"Q4_K","shape":[8],"data_offsets":[0,8]}})", kEightBytes);
  expect_error([&] { SafetensorsFile::open(p); }, {p, "tensor 'w'", "unknown dtype 'Q4_K'"});
}

TEST_F(SafetensorsTest, ShapeDoesNotMatchByteRange) {
  std::string p =
      craft("shape.safetensors", R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
            kEightBytes + kEightBytes);
  expect_error([&] { SafetensorsFile::open(p); }, {p, "tensor 'w'", "needs 12 bytes", "span 8"});
}

TEST_F(SafetensorsTest, ShapeWhoseByteCountWouldOverflow) {
  std::string p =
      craft("overflow.safetensors",
            R"({"w":{"dtype":"F64","shape":[4611686018427387904,4],"data_offsets":[0,0]}})", "");
  expect_error([&] { SafetensorsFile::open(p); }, {p, "tensor 'w'", "needs more than"});
}

TEST_F(SafetensorsTest, HeaderNotAnObject) {
  std::string p = craft("array.safetensors", "[1, 2]", "");
  expect_error([&] { SafetensorsFile::open(p); }, {p, "not a JSON object"});
}

TEST_F(SafetensorsTest, MalformedHeaderJson) {
  std::string p = craft("json.safetensors", R"({"w": {"dtype": )", "");
  expect_error([&] { SafetensorsFile::open(p); }, {p, "malformed"});
}

TEST_F(SafetensorsTest, MalformedEntries) {
  std::string p =
      craft("nodtype.safetensors", R"({"w":{"shape":[2],"data_offsets":[0,8]}})", kEightBytes);
  expect_error([&] { SafetensorsFile::open(p); }, {p, "tensor 'w'", "dtype"});
  p = craft("negative.safetensors", R"({"w":{"dtype":"U8","shape":[8],"data_offsets":[-1,7]}})",
            kEightBytes);
  expect_error([&] { SafetensorsFile::open(p); }, {p, "tensor 'w'", "data_offsets"});
  p = craft("fractional.safetensors", R"({"w":{"dtype":"U8","shape":[2.5],"data_offsets":[0,8]}})",
            kEightBytes);
  expect_error([&] { SafetensorsFile::open(p); }, {p, "tensor 'w'", "shape"});
  p = craft("meta.safetensors", R"({"__metadata__":{"format":3}})", "");
  expect_error([&] { SafetensorsFile::open(p); }, {p, "__metadata__", "format"});
}

TEST_F(SafetensorsTest, MissingTensorNamesFileAndTensor) {
  std::string p = craft("one.safetensors",
                        R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", kEightBytes);
  SafetensorsFile file = SafetensorsFile::open(p);
  expect_error([&] { file.get("missing"); }, {p, "'missing'"});
}

TEST_F(SafetensorsTest, MisalignedDataIsCopiedToAlignedMemory) {
  // Pad the header so that the data section starts one byte past a multiple of 4.
  std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  while ((8 + header.size()) % 4 != 1) header += ' ';
  float values[2] = {1.5f, -2.25f};
  std::string data(reinterpret_cast<const char*>(values), 8);
  std::string p = craft("misaligned.safetensors", header, data);
  Tensor t = SafetensorsFile::open(p).get("x");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 4, 0u);
  EXPECT_EQ(t.data<float>()[0], 1.5f);
  EXPECT_EQ(t.data<float>()[1], -2.25f);
}

// A tensor of `dtype` and `shape` filled with random bytes (valid for every dtype but
// BOOL, which gets 0/1).
Tensor random_tensor(DType dtype, Shape shape, std::mt19937& rng) {
  Tensor t = Tensor::zeros(dtype, std::move(shape));
  auto* bytes = static_cast<uint8_t*>(t.mutable_raw());
  for (size_t i = 0; i < t.nbytes(); ++i)
    bytes[i] = static_cast<uint8_t>(dtype == DType::BOOL ? rng() & 1 : rng());
  return t;
}

TEST_F(SafetensorsTest, WriterRoundTripsEveryDtype) {
  std::mt19937 rng(7);
  std::vector<std::pair<std::string, Tensor>> tensors;
  const DType dtypes[] = {DType::F32, DType::BF16, DType::F16, DType::F64, DType::I64,
                          DType::I32, DType::I16,  DType::I8,  DType::U8,  DType::BOOL};
  for (DType dtype : dtypes)
    tensors.emplace_back(std::string("t.") + std::string(dtype_name(dtype)),
                         random_tensor(dtype, {3, 5}, rng));
  tensors.emplace_back("scalar", random_tensor(DType::F32, {}, rng));
  tensors.emplace_back("empty", random_tensor(DType::F16, {0, 4}, rng));
  // A transposed view: the writer must store it contiguously.
  Tensor base = random_tensor(DType::F32, {4, 6}, rng);
  tensors.emplace_back("transposed", base.transpose(0, 1));
  std::string p = path("all.safetensors");
  write_safetensors(p, tensors, {{"format", "pt"}});

  SafetensorsFile file = SafetensorsFile::open(p);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.names().size(), tensors.size());
  uint64_t header_len = 0;
  std::ifstream(p, std::ios::binary).read(reinterpret_cast<char*>(&header_len), 8);
  EXPECT_EQ((8 + header_len) % 64, 0u) << "data section is not 64-byte aligned";
  for (const auto& [name, expected] : tensors) {
    Tensor got = file.get(name);
    EXPECT_EQ(got.dtype(), expected.dtype()) << name;
    EXPECT_EQ(got.shape(), expected.shape()) << name;
    Tensor want = expected.contiguous();
    EXPECT_EQ(std::memcmp(got.raw(), want.raw(), want.nbytes()), 0) << name;
    EXPECT_FALSE(got.writable()) << name << " should be a read-only mmap view";
  }
}

TEST_F(SafetensorsTest, WriterRejectsDuplicateAndReservedNames) {
  Tensor t = Tensor::zeros(DType::F32, {2});
  std::string p = path("dup.safetensors");
  expect_error([&] { write_safetensors(p, {{"a", t}, {"a", t}}); }, {p, "'a'", "twice"});
  expect_error([&] { write_safetensors(p, {{"__metadata__", t}}); }, {p, "__metadata__"});
}

// Writes a two-shard folder with an index; `index_extra` adds weight_map entries.
void write_sharded(const std::string& dir, const std::string& index_extra = "") {
  write_safetensors(dir + "/model-00001-of-00002.safetensors",
                    {{"a", Tensor::from_f32({2}, {1, 2})}, {"b", Tensor::from_f32({1}, {3})}});
  write_safetensors(dir + "/model-00002-of-00002.safetensors",
                    {{"c", Tensor::from_f32({2, 2}, {4, 5, 6, 7})}});
  std::ofstream(dir + "/model.safetensors.index.json")
      << R"({"metadata": {"total_size": 28}, "weight_map": {)"
      << R"("a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",)"
      << R"("c": "model-00002-of-00002.safetensors")" << index_extra << "}}";
}

TEST_F(SafetensorsTest, ShardedSetReadsEveryShard) {
  write_sharded(dir_);
  SafetensorsSource source(dir_);
  EXPECT_EQ(source.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(source.where(), dir_);
  EXPECT_TRUE(source.contains("c"));
  EXPECT_FALSE(source.contains("d"));
  EXPECT_EQ(source.shape_of("c"), (Shape{2, 2}));
  EXPECT_EQ(source.dtype_of("b"), DType::F32);
  EXPECT_EQ(source.get("c").data<float>()[3], 7.0f);
  EXPECT_EQ(source.get("b").data<float>()[0], 3.0f);
  EXPECT_EQ(source.set().file_of("c"), dir_ + "/model-00002-of-00002.safetensors");
  expect_error([&] { source.get("d"); }, {dir_, "'d'"});
}

TEST_F(SafetensorsTest, IndexListsMissingShard) {
  write_sharded(dir_, R"(, "d": "model-00003-of-00002.safetensors")");
  expect_error(
      [&] { SafetensorsSet::open(dir_); },
      {"model-00003-of-00002.safetensors", "model.safetensors.index.json", "does not exist"});
}

TEST_F(SafetensorsTest, IndexListsTensorAbsentFromItsShard) {
  write_sharded(dir_, R"(, "d": "model-00002-of-00002.safetensors")");
  expect_error([&] { SafetensorsSet::open(dir_); },
               {"model-00002-of-00002.safetensors", "tensor 'd'", "not in this shard"});
}

TEST_F(SafetensorsTest, IndexPutsTensorInTheWrongShard) {
  write_sharded(dir_);
  std::ofstream(dir_ + "/model.safetensors.index.json")
      << R"({"weight_map": {"a": "model-00002-of-00002.safetensors",)"
      << R"("c": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors"}})";
  expect_error([&] { SafetensorsSet::open(dir_); },
               {"model-00002-of-00002.safetensors", "tensor 'a'", "not in this shard"});
}

TEST_F(SafetensorsTest, IndexShardNameMustBePlain) {
  write_sharded(dir_, R"(, "d": "../elsewhere.safetensors")");
  expect_error([&] { SafetensorsSet::open(dir_); },
               {"model.safetensors.index.json", "../elsewhere.safetensors"});
}

TEST_F(SafetensorsTest, TensorInTwoShards) {
  write_sharded(dir_);
  write_safetensors(
      dir_ + "/model-00002-of-00002.safetensors",
      {{"c", Tensor::from_f32({2, 2}, {4, 5, 6, 7})}, {"a", Tensor::from_f32({2}, {1, 2})}});
  expect_error([&] { SafetensorsSet::open(dir_); }, {"tensor 'a'", "another shard"});
}

TEST_F(SafetensorsTest, FolderWithoutWeights) {
  expect_error([&] { SafetensorsSet::open(dir_); }, {dir_, "model.safetensors"});
  expect_error([&] { SafetensorsSet::open(dir_ + "/nope"); }, {dir_ + "/nope"});
}

TEST(SafetensorsFixture, LlamaWeightsAreMappedViews) {
  SafetensorsSource source(test::data_path("hf/llama"));
  ASSERT_FALSE(source.names().empty());
  size_t bytes = 0;
  for (const std::string& name : source.names()) {
    Tensor t = source.get(name);
    EXPECT_EQ(t.dtype(), DType::F32) << name;
    EXPECT_FALSE(t.writable()) << name;
    bytes += t.nbytes();
  }
  std::cout << "  " << source.names().size() << " tensors, " << bytes << " bytes\n";
  EXPECT_EQ(source.shape_of("model.embed_tokens.weight"), (Shape{512, 64}));
}

}  // namespace
}  // namespace kiln
