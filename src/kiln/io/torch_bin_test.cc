// PyTorch .bin reading: the fixtures equal their safetensors twins, crafted pickles cover
// strided views and refusals, and the malicious pickle is refused without running anything.
#include "kiln/io/torch_bin.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "kiln/core/error.h"
#include "kiln/io/safetensors_source.h"
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

// Every tensor of `expected` is in `actual` with the same shape and the same bytes after
// converting the expected tensor to `dtype`. Returns how many tensors were compared.
size_t expect_same_tensors(const TensorSource& expected, const TensorSource& actual, DType dtype) {
  size_t compared = 0;
  for (const std::string& name : expected.names()) {
    EXPECT_TRUE(actual.contains(name)) << name;
    if (!actual.contains(name)) continue;
    Tensor want = expected.get(name).to(dtype);
    Tensor got = actual.get(name);
    EXPECT_EQ(got.dtype(), dtype) << name;
    EXPECT_EQ(got.shape(), want.shape()) << name;
    EXPECT_EQ(actual.shape_of(name), want.shape()) << name;
    if (got.shape() != want.shape() || got.dtype() != dtype) continue;
    Tensor contiguous = got.contiguous();
    EXPECT_EQ(std::memcmp(contiguous.raw(), want.raw(), want.nbytes()), 0) << name;
    ++compared;
  }
  return compared;
}

TEST(TorchBin, LlamaFloat32EqualsSafetensors) {
  SafetensorsSource reference(test::data_path("hf/llama"));
  TorchBinSource bin(test::data_path("torch_bin/llama/pytorch_model.bin"));
  EXPECT_EQ(bin.names().size(), reference.names().size());
  size_t n = expect_same_tensors(reference, bin, DType::F32);
  std::cout << "  " << n << " tensors bitwise equal\n";
  EXPECT_FALSE(bin.get("model.embed_tokens.weight").writable()) << "expected an mmap view";
}

TEST(TorchBin, LlamaBfloat16EqualsRoundedSafetensors) {
  SafetensorsSource reference(test::data_path("hf/llama"));
  TorchBinSource bin(test::data_path("torch_bin/llama/pytorch_model.bf16.bin"));
  size_t n = expect_same_tensors(reference, bin, DType::BF16);
  std::cout << "  " << n << " bf16 tensors bitwise equal to f32 rounded to nearest even\n";
}

TEST(TorchBin, Gpt2EqualsSafetensors) {
  SafetensorsSource reference(test::data_path("hf/gpt2"));
  for (const char* file : {"pytorch_model.bin", "pytorch_model.bf16.bin"}) {
    TorchBinSource bin(test::data_path(std::string("torch_bin/gpt2/") + file));
    DType dtype = std::string(file).find("bf16") != std::string::npos ? DType::BF16 : DType::F32;
    size_t n = expect_same_tensors(reference, bin, dtype);
    std::cout << "  " << file << ": " << n << " of " << bin.names().size()
              << " tensors compared, all bitwise equal\n";
    EXPECT_EQ(n, reference.names().size());
  }
}

TEST(TorchBin, ShardedIndexReadsBothShards) {
  SafetensorsSource reference(test::data_path("hf/llama"));
  TorchBinSource bin(test::data_path("torch_bin/llama_sharded"));
  EXPECT_EQ(bin.where(), test::data_path("torch_bin/llama_sharded"));
  EXPECT_EQ(expect_same_tensors(reference, bin, DType::F32), reference.names().size());
  EXPECT_TRUE(TorchBinSource::present_in(test::data_path("torch_bin/llama_sharded")));
  EXPECT_FALSE(TorchBinSource::present_in(test::data_path("hf/llama")));
}

TEST(TorchBin, MaliciousPickleIsRefusedAndNothingRuns) {
  const fs::path marker = "/tmp/kiln_pickle_was_executed";
  fs::remove(marker);
  std::string message = error_of(
      [] { TorchBinSource source(test::data_path("torch_bin/malicious/pytorch_model.bin")); });
  EXPECT_NE(message.find("malicious/pytorch_model.bin"), std::string::npos);
  EXPECT_NE(message.find("refusing to load global 'posix.system'"), std::string::npos);
  EXPECT_FALSE(fs::exists(marker));
}

// Builds torch.save-style zip archives with hand-written pickles.
class CraftedTorchBin : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("kiln-torchbin"); }
  void TearDown() override { fs::remove_all(dir_); }

  static std::string u16(uint16_t v) { return std::string(reinterpret_cast<char*>(&v), 2); }
  static std::string u32(uint32_t v) { return std::string(reinterpret_cast<char*>(&v), 4); }
  // Pickle pieces (protocol 2).
  static std::string str(const std::string& s) { return std::string("X") + u32(s.size()) + s; }
  static std::string integer(int v) {
    return v < 256 ? std::string("K") + char(v) : std::string("M") + u16(v);
  }
  static std::string ints(const std::vector<int>& v) {
    std::string out = "(";
    for (int x : v) out += integer(x);
    return out + "t";
  }
  // _rebuild_tensor_v2(storage(key, numel), offset, size, stride, False, OrderedDict()).
  static std::string tensor(const std::string& storage_type, const std::string& key, int numel,
                            int offset, const std::vector<int>& size,
                            const std::vector<int>& stride) {
    return std::string("ctorch._utils\n_rebuild_tensor_v2\n((") + str("storage") + "ctorch\n" +
           storage_type + "\n" + str(key) + str("cpu") + integer(numel) + "tQ" + integer(offset) +
           ints(size) + ints(stride) + "\x89" + "ccollections\nOrderedDict\n)Rt" + "R";
  }
  static std::string dict(const std::vector<std::pair<std::string, std::string>>& items) {
    std::string out = "\x80\x02}(";
    for (const auto& [k, v] : items) out += str(k) + v;
    return out + "u.";
  }
  // A zip of stored entries (CRC left 0: Kiln does not check it).
  std::string write_zip(const std::string& name,
                        const std::vector<std::pair<std::string, std::string>>& entries) {
    std::string out, directory;
    for (const auto& [entry, bytes] : entries) {
      uint32_t offset = out.size();
      std::string sizes = u32(0) + u32(bytes.size()) + u32(bytes.size());
      out += u32(0x04034b50) + u16(20) + u16(0) + u16(0) + u32(0) + sizes + u16(entry.size()) +
             u16(0) + entry + bytes;
      directory += u32(0x02014b50) + u16(20) + u16(20) + u16(0) + u16(0) + u32(0) + sizes +
                   u16(entry.size()) + u16(0) + u16(0) + u16(0) + u16(0) + u32(0) + u32(offset) +
                   entry;
    }
    uint32_t directory_offset = out.size();
    out += directory + u32(0x06054b50) + u16(0) + u16(0) + u16(entries.size()) +
           u16(entries.size()) + u32(directory.size()) + u32(directory_offset) + u16(0);
    std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << out;
    return path;
  }
  static std::string floats(int n) {
    std::string out;
    for (int i = 0; i < n; ++i) {
      float f = static_cast<float>(i);
      out.append(reinterpret_cast<char*>(&f), 4);
    }
    return out;
  }
  std::string dir_;
};

TEST_F(CraftedTorchBin, StridedViewWithOffsetIsGathered) {
  // Storage 0..9; the tensor starts at element 1 with strides (1, 2): [[1, 3, 5], [2, 4, 6]].
  std::string pickle = dict({{"t", tensor("FloatStorage", "0", 10, 1, {2, 3}, {1, 2})},
                             {"row", tensor("FloatStorage", "0", 10, 4, {3}, {1})}});
  std::string p =
      write_zip("strided.bin", {{"archive/data.pkl", pickle}, {"archive/data/0", floats(10)}});
  TorchBinFile file = TorchBinFile::open(p);
  EXPECT_EQ(file.names(), (std::vector<std::string>{"t", "row"}));
  Tensor t = file.get("t");
  ASSERT_EQ(t.shape(), (Shape{2, 3}));
  const float expected[] = {1, 3, 5, 2, 4, 6};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(t.data<float>()[i], expected[i]) << i;
  Tensor row = file.get("row");
  EXPECT_FALSE(row.writable()) << "a contiguous view with an offset should stay mapped";
  EXPECT_EQ(row.data<float>()[0], 4.0f);
  EXPECT_EQ(row.data<float>()[2], 6.0f);
}

TEST_F(CraftedTorchBin, ParametersAndNestedDictsAreUnwrapped) {
  std::string param = std::string("ctorch._utils\n_rebuild_parameter\n(") +
                      tensor("FloatStorage", "0", 4, 0, {4}, {1}) + "\x89" +
                      "ccollections\nOrderedDict\n)Rt" + "R";
  std::string pickle =
      std::string("\x80\x02}(") + str("model") + "}(" + str("w") + param + "u" + "u.";
  std::string p = write_zip("param.bin", {{"a/data.pkl", pickle}, {"a/data/0", floats(4)}});
  TorchBinFile file = TorchBinFile::open(p);
  EXPECT_EQ(file.names(), (std::vector<std::string>{"model.w"}));
  EXPECT_EQ(file.get("model.w").data<float>()[3], 3.0f);
}

TEST_F(CraftedTorchBin, Refusals) {
  // Any global outside the allowed set, by either opcode.
  std::string eval =
      std::string("\x80\x02}(") + str("x") + "cbuiltins\neval\n(" + str("1") + "tRu.";
  std::string p = write_zip("eval.bin", {{"a/data.pkl", eval}});
  EXPECT_NE(
      error_of([&] { TorchBinFile::open(p); }).find("refusing to load global 'builtins.eval'"),
      std::string::npos);
  std::string stack_global = std::string("\x80\x04") + str("os") + str("system") + "\x93.";
  p = write_zip("stack_global.bin", {{"a/data.pkl", stack_global}});
  EXPECT_NE(error_of([&] { TorchBinFile::open(p); }).find("'os.system'"), std::string::npos);
  // A view past the end of its storage.
  p = write_zip("past.bin",
                {{"a/data.pkl", dict({{"w", tensor("FloatStorage", "0", 4, 2, {3}, {1})}})},
                 {"a/data/0", floats(4)}});
  std::string message = error_of([&] { TorchBinFile::open(p); });
  EXPECT_NE(message.find("tensor 'w'"), std::string::npos);
  EXPECT_NE(message.find("runs past its storage"), std::string::npos);
  // A storage larger than its entry, and a missing entry.
  p = write_zip("big.bin",
                {{"a/data.pkl", dict({{"w", tensor("FloatStorage", "0", 8, 0, {8}, {1})}})},
                 {"a/data/0", floats(4)}});
  EXPECT_NE(error_of([&] { TorchBinFile::open(p); }).find("does not fit"), std::string::npos);
  p = write_zip("missing.bin",
                {{"a/data.pkl", dict({{"w", tensor("FloatStorage", "7", 4, 0, {4}, {1})}})}});
  EXPECT_NE(error_of([&] { TorchBinFile::open(p); }).find("'a/data/7' is missing"),
            std::string::npos);
  // A truncated pickle, an unknown opcode, a non-tensor value.
  p = write_zip(
      "truncated.bin",
      {{"a/data.pkl", dict({{"w", tensor("FloatStorage", "0", 4, 0, {4}, {1})}}).substr(0, 40)}});
  EXPECT_NE(error_of([&] { TorchBinFile::open(p); }).find("ends in the middle"), std::string::npos);
  p = write_zip("opcode.bin", {{"a/data.pkl", std::string("\x80\x02I1\n.")}});
  EXPECT_NE(error_of([&] { TorchBinFile::open(p); }).find("unsupported pickle opcode 0x49"),
            std::string::npos);
  p = write_zip("int.bin", {{"a/data.pkl", dict({{"epoch", integer(3)}})}});
  EXPECT_NE(error_of([&] { TorchBinFile::open(p); }).find("entry 'epoch' is not a tensor"),
            std::string::npos);
}

TEST_F(CraftedTorchBin, NotAZipArchive) {
  std::string p = dir_ + "/legacy.bin";
  std::ofstream(p, std::ios::binary) << "\x80\x02\x8a\x0a" << std::string(100, 'x');
  std::string message = error_of([&] { TorchBinFile::open(p); });
  EXPECT_NE(message.find(p + ": not a torch.save zip archive"), std::string::npos);
  message = error_of([&] { TorchBinSource source(dir_); });
  EXPECT_NE(message.find("no pytorch_model.bin"), std::string::npos);
}

}  // namespace
}  // namespace kiln
