// The GGUF reader: metadata of every value type, tensors of every type Kiln dequantizes equal
// to llama.cpp's own gguf-py dequantization bit for bit (reference values made by
// tools/gguf_reference_dump.py), and malformed files ending in a kiln::Error that names the
// file and the key or tensor.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <utility>

#include "gguf_builder.h"
#include "kiln/core/error.h"
#include "kiln/core/quant.h"
#include "kiln/io/gguf.h"
#include "kiln/io/gguf_direct.h"
#include "kiln/io/json.h"
#include "kiln/io/npy.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

// The hash of tools/gguf_reference_dump.py: sum of splitmix64(bits_i + i * golden) mod 2^64.
std::string hash_f32(const float* values, size_t n) {
  uint64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, values + i, 4);
    uint64_t x = bits + i * 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    total += x ^ (x >> 31);
  }
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(total));
  return text;
}

// Number of elements whose bits differ (both f32, same size).
size_t bit_differences(const float* a, const float* b, size_t n) {
  size_t differ = 0;
  for (size_t i = 0; i < n; ++i) differ += std::memcmp(a + i, b + i, 4) != 0;
  return differ;
}

// Elements whose values differ (-0 equals +0), and elements that are zeros of opposite signs.
std::pair<size_t, size_t> value_differences(const float* a, const float* b, size_t n) {
  size_t values = 0, zeros = 0;
  for (size_t i = 0; i < n; ++i) {
    values += !(a[i] == b[i]) && !(std::isnan(a[i]) && std::isnan(b[i]));
    zeros += a[i] == 0.0f && b[i] == 0.0f && std::signbit(a[i]) != std::signbit(b[i]);
  }
  return {values, zeros};
}

std::vector<float> dequantized(const GgufFile& file, const GgufTensorInfo& info) {
  int64_t numel = 1;
  for (int64_t d : info.shape) numel *= d;
  std::vector<float> out(static_cast<size_t>(numel));
  ggml_dequantize(info.type, file.tensor_data(info), numel, out.data());
  return out;
}

const std::string kReference = "gguf/reference/";

TEST(Gguf, MetadataOfEveryValueType) {
  const GgufFile f = GgufFile::open(test::data_path(kReference + "synthetic.gguf"));
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("test.u8"), 200);
  EXPECT_EQ(f.get_int("test.i8"), -100);
  EXPECT_EQ(f.get_int("test.u16"), 60000);
  EXPECT_EQ(f.get_int("test.i16"), -30000);
  EXPECT_EQ(f.get_int("test.u32"), 4000000000);
  EXPECT_EQ(f.get_int("test.i32"), -2000000000);
  EXPECT_EQ(f.get_float("test.f32"), 0.125);
  EXPECT_TRUE(f.get_bool("test.bool"));
  EXPECT_EQ(f.get_string("test.string"), "h\xc3\xa9llo \xe2\x9c\x93");
  EXPECT_EQ(f.find("test.u64")->value.get<uint64_t>(), 18000000000000000000ull);
  EXPECT_EQ(f.get_int("test.i64"), -9000000000000000000ll);
  EXPECT_EQ(f.get_float("test.f64"), -2.5e-300);
  EXPECT_EQ(f.get_array("test.array_i32"), Json::parse("[1, -2, 3]"));
  EXPECT_EQ(f.find("test.array_i32")->element_type, GgufType::kI32);
  EXPECT_EQ(f.get_array("test.array_str"), Json::parse(R"(["a", "", "ccc"])"));
  EXPECT_EQ(f.get_array("test.array_f32"), Json::parse("[0.5, -1.5]"));
  EXPECT_EQ(f.get_array("test.array_bool"), Json::parse("[true, false]"));
  EXPECT_EQ(f.get_array("test.array_u8"), Json::parse("[1, 2, 255]"));
  // Wrong kinds and absent keys name the file and key.
  const std::string path = f.path();
  for (const auto& [call, message] : std::vector<std::pair<std::function<void()>, std::string>>{
           {[&] { f.get_string("test.u8"); }, "metadata key 'test.u8' must be a string, not u8"},
           {[&] { f.get_int("test.string"); },
            "metadata key 'test.string' must be an integer, not string"},
           {[&] { f.get_int("test.u64"); }, "metadata key 'test.u64' is too large"},
           {[&] { f.get_bool("nope"); }, "missing metadata key 'nope'"},
           {[&] { f.get_array("test.f32"); }, "metadata key 'test.f32' must be an array"}}) {
    try {
      call();
      ADD_FAILURE() << "no error for: " << message;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path + ": " + message), std::string::npos) << e.what();
    }
  }
  ASSERT_EQ(f.tensors().size(), 11u);
  const GgufTensorInfo& t = f.tensor_info("f32_3d");
  EXPECT_EQ(t.shape, (Shape{2, 3, 4}));
  EXPECT_EQ(t.dims, (std::vector<uint64_t>{4, 3, 2}));
}

// Random blocks of every type (random finite scales, normal and subnormal) against gguf-py.
TEST(Gguf, EveryTypeDequantizesAsGgufPyBitForBit) {
  const GgufFile f = GgufFile::open(test::data_path(kReference + "synthetic.gguf"));
  const auto expected = read_npz(test::data_path(kReference + "synthetic_dequant.npz"));
  ASSERT_EQ(expected.size(), 10u);
  for (const auto& [name, want] : expected) {
    const Tensor got = f.read(name).to(DType::F32);
    ASSERT_EQ(got.shape(), want.shape()) << name;
    const size_t differ =
        bit_differences(got.data<float>(), want.data<float>(), static_cast<size_t>(want.numel()));
    std::cout << "  " << ggml_type_name(static_cast<uint32_t>(f.tensor_info(name).type)) << ": "
              << want.numel() << " values, " << differ << " differ from gguf-py\n";
    EXPECT_EQ(differ, 0u) << name;
    // Dequantized to bf16: f32's values rounded to nearest even.
    const Tensor bf16 = f.read(name, DType::BF16);
    EXPECT_EQ(bf16.dtype(), ggml_is_quantized(f.tensor_info(name).type)
                                ? DType::BF16
                                : GgufFile::read_dtype(f.tensor_info(name), DType::BF16));
    if (bf16.dtype() == DType::BF16) {
      for (int64_t i = 0; i < want.numel(); ++i) {
        ASSERT_EQ(bf16.data<uint16_t>()[i], f32_to_bf16(want.data<float>()[i])) << name << i;
      }
    }
  }
}

// Every tensor of the llama.cpp-written fixtures (bf16 and llama-quantize's Q8_0, Q4_K_M,
// Q4_0) against gguf-py's dequantization: whole tensors by hash, two rows per type by value.
TEST(Gguf, FixtureTensorsDequantizeAsGgufPyBitForBit) {
  const Json table = read_json_file(test::data_path(kReference + "fixtures.json"));
  const auto rows = read_npz(test::data_path(kReference + "fixture_rows.npz"));
  std::map<std::string, Tensor> rows_by_name(rows.begin(), rows.end());
  size_t tensors = 0, rows_checked = 0;
  std::map<std::string, int> per_type;
  for (const auto& [file, entries] : table.items()) {
    const GgufFile f = GgufFile::open(test::data_path("gguf/" + file));
    ASSERT_EQ(f.tensors().size(), entries.size()) << file;
    for (const auto& [name, entry] : entries.items()) {
      const GgufTensorInfo& info = f.tensor_info(name);
      EXPECT_EQ(ggml_type_name(static_cast<uint32_t>(info.type)), entry.at("type")) << name;
      EXPECT_EQ(info.shape, entry.at("shape").get<Shape>()) << name;
      const std::vector<float> values = dequantized(f, info);
      EXPECT_EQ(hash_f32(values.data(), values.size()), entry.at("hash").get<std::string>())
          << file << ": " << name;
      ++tensors;
      ++per_type[entry.at("type").get<std::string>()];
      if (entry.contains("rows")) {
        const Tensor& want = rows_by_name.at(entry.at("rows").get<std::string>());
        EXPECT_EQ(
            bit_differences(values.data(), want.data<float>(), static_cast<size_t>(want.numel())),
            0u)
            << file << ": " << name;
        ++rows_checked;
      }
    }
  }
  std::cout << "  " << tensors << " tensors equal gguf-py's values (";
  for (const auto& [type, n] : per_type) std::cout << type << " " << n << " ";
  std::cout << "), " << rows_checked << " row samples\n";
  EXPECT_GE(per_type["Q8_0"], 40);
  EXPECT_GE(per_type["Q4_K"], 30);
  EXPECT_GE(per_type["Q6_K"], 5);
  EXPECT_GE(per_type["Q4_0"], 40);
  EXPECT_GE(per_type["BF16"], 40);
}

// Direct reads: Q8_0, Q4_1 and Q4_0 tensors in Kiln's block formats hold ggml's dequantized
// values (Kiln's own dequantization of the direct tensor against ggml_dequantize, itself
// checked against gguf-py above): bit for bit (zeros' signs included: Q4_0's (q - 8) * d
// is -0 for q = 8 and d < 0 in both), as views of the file. The other quantized types have
// no direct form.
TEST(Gguf, DirectReadsHoldGgmlsValues) {
  std::map<std::string, int> per_type;
  std::map<std::string, size_t> signed_zeros;
  for (const std::string& file :
       {kReference + "synthetic.gguf", std::string("gguf/tinycoder-Q8_0.gguf"),
        std::string("gguf/tinycoder-Q4_0.gguf"), std::string("gguf/tinycoder-Q4_K_M.gguf")}) {
    const GgufFile f = GgufFile::open(test::data_path(file));
    for (const GgufTensorInfo& info : f.tensors()) {
      const std::optional<DType> kiln = ggml_direct_dtype(info.type);
      if (!kiln) {
        EXPECT_THROW((void)gguf_read_direct(f, info), Error) << info.name;
        continue;
      }
      const Tensor direct = gguf_read_direct(f, info);
      EXPECT_EQ(direct.shape(), info.shape) << info.name;
      EXPECT_EQ(direct.dtype(), *kiln) << info.name;
      const std::string type = ggml_type_name(static_cast<uint32_t>(info.type));
      ++per_type[type];
      // the same bytes: a view of the file
      EXPECT_EQ(direct.raw(), static_cast<const void*>(f.tensor_data(info))) << info.name;
      const std::vector<float> want = dequantized(f, info);
      const Tensor got = direct.to(DType::F32);
      const auto [values, zeros] = value_differences(got.data<float>(), want.data(), want.size());
      EXPECT_EQ(values, 0u) << file << ": " << info.name << " (" << type << ")";
      EXPECT_EQ(zeros, 0u) << info.name;
      signed_zeros[type] += zeros;
    }
  }
  std::cout << "  direct tensors equal to ggml's values (tensors, zeros of the other sign): ";
  for (const auto& [type, n] : per_type)
    std::cout << type << " " << n << ", " << signed_zeros[type] << "; ";
  std::cout << "\n";
  EXPECT_GE(per_type["Q8_0"], 40);
  EXPECT_GE(per_type["Q4_0"], 40);
  EXPECT_GE(per_type["Q4_1"], 1);
  EXPECT_GE(per_type["Q4_K"], 30);  // Q4_K_M's tensors and the synthetic file's
  EXPECT_GE(per_type["Q6_K"], 5);
  EXPECT_GE(per_type["Q5_K"], 1);
}

// Q4_0 read natively keeps every value bit for bit at every scale: subnormal, the largest,
// ones whose -8 d overflows f16 (which Kiln's former repacking into Q4_1 could not hold),
// Inf and NaN; also through the reader, as a view of the file.
TEST(Gguf, Q4_0ReadsNativelyAtEveryScale) {
  std::mt19937 rng(7);
  for (const uint16_t d :
       {uint16_t{0x0001}, uint16_t{0x03ff}, uint16_t{0x3c00}, uint16_t{0xbc00}, uint16_t{0x6ffc},
        uint16_t{0x0000}, uint16_t{0x8000}, uint16_t{0x7000} /* 8192 */,
        uint16_t{0x7bff} /* 65504 */, uint16_t{0x7c00} /* inf */, uint16_t{0x7e00} /* nan */}) {
    std::byte blocks[3 * 18];  // the middle block at an odd offset
    for (int b = 0; b < 3; ++b) {
      std::memcpy(blocks + 18 * b, &d, 2);
      for (int i = 2; i < 18; ++i) blocks[18 * b + i] = static_cast<std::byte>(rng() & 255);
    }
    float want[96], got[96];
    ggml_dequantize(GgmlType::kQ4_0, blocks, 96, want);
    dequantize_row(DType::Q4_0, blocks, got, 96);
    EXPECT_EQ(std::memcmp(got, want, sizeof(got)), 0) << "d bits " << d;
  }
  const std::string dir = test::make_temp_dir("kiln-gguf-q4_0");
  test::GgufBuilder b;
  b.kv_string("general.architecture", "llama");
  b.tensor("big", {32, 1}, 2, 0);
  std::string bytes(18, '\0');
  bytes[0] = '\x00';
  bytes[1] = '\x74';  // d = 16384: -8 d overflows f16
  b.data(bytes + std::string(14, '\0'));
  b.write(dir + "/big.gguf");
  {
    const GgufFile f = GgufFile::open(dir + "/big.gguf");
    EXPECT_EQ(f.read("big").to(DType::F32).data<float>()[0], -8 * 16384.0f);
    const Tensor direct = gguf_read_direct(f, f.tensor_info("big"));
    EXPECT_EQ(direct.dtype(), DType::Q4_0);
    EXPECT_EQ(direct.to(DType::F32).data<float>()[0], -8 * 16384.0f);
  }
  fs::remove_all(dir);
}

// A plain tensor is a view of the mapped file.
TEST(Gguf, PlainTensorsAreViewsOfTheMapping) {
  const GgufFile f = GgufFile::open(test::data_path("gguf/tinycoder-bf16.gguf"));
  const Tensor t = f.read("blk.0.attn_q.weight");
  EXPECT_EQ(t.dtype(), DType::BF16);
  EXPECT_EQ(t.shape(), (Shape{256, 256}));
  EXPECT_FALSE(t.writable());
  EXPECT_EQ(t.raw(), f.tensor_data(f.tensor_info("blk.0.attn_q.weight")));
}

// --- malformed files ---

class GgufErrors : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("kiln-gguf"); }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes `bytes` and expects GgufFile::open to throw an Error containing the path and
  // every piece of `parts`.
  void expect_open_error(const std::string& bytes, const std::vector<std::string>& parts) {
    const std::string path = dir_ + "/bad.gguf";
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
    try {
      GgufFile::open(path);
      ADD_FAILURE() << "no error; expected " << parts.at(0);
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.rfind(path + ": ", 0), 0u) << what;
      for (const std::string& p : parts) EXPECT_NE(what.find(p), std::string::npos) << what;
    }
  }

  // A valid file: one key, one F32 tensor of 8 values.
  static test::GgufBuilder valid() {
    test::GgufBuilder b;
    b.kv_string("general.architecture", "llama");
    b.tensor("w", {4, 2}, 0, 0);
    b.data(std::string(32, '\0'));
    return b;
  }
  std::string dir_;
};

TEST_F(GgufErrors, ValidBaseOpens) {
  const std::string path = dir_ + "/ok.gguf";
  valid().write(path);
  const GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.read("w").shape(), (Shape{2, 4}));
}

TEST_F(GgufErrors, HeaderProblems) {
  expect_open_error("", {"not a GGUF file"});
  expect_open_error("GGML\x03\0\0\0", {"not a GGUF file"});
  expect_open_error(valid().version(1).bytes(), {"GGUF version 1 is not supported"});
  expect_open_error(valid().version(4).bytes(), {"GGUF version 4"});
  expect_open_error(valid().version(0x03000000).bytes(), {"a big-endian GGUF file"});
  std::string huge_counts = "GGUF";
  test::GgufBuilder::put_u32(huge_counts, 3);
  test::GgufBuilder::put_u64(huge_counts, 1ull << 60);
  test::GgufBuilder::put_u64(huge_counts, 0);
  expect_open_error(huge_counts, {"tensor count 1152921504606846976 cannot fit"});
  std::string huge_kv = "GGUF";
  test::GgufBuilder::put_u32(huge_kv, 3);
  test::GgufBuilder::put_u64(huge_kv, 0);
  test::GgufBuilder::put_u64(huge_kv, ~0ull);
  expect_open_error(huge_kv, {"metadata count", "cannot fit"});
}

TEST_F(GgufErrors, EveryTruncationOfTheHeaderIsAnError) {
  const std::string bytes = valid().bytes();
  const size_t header = bytes.size() - 32;
  for (size_t n = 0; n < header; ++n) {
    const std::string path = dir_ + "/cut.gguf";
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes.substr(0, n);
    EXPECT_THROW(GgufFile::open(path), Error) << n;
  }
  expect_open_error(bytes.substr(0, bytes.size() - 1),
                    {"tensor 'w'", "run past its end", "truncated"});
}

TEST_F(GgufErrors, BadMetadata) {
  std::string long_string;
  test::GgufBuilder::put_u64(long_string, 1ull << 50);
  expect_open_error(
      test::GgufBuilder().kv_raw("general.name", 8, long_string).bytes(),
      {"metadata key 'general.name'", "string length 1125899906842624", "runs past the end"});
  expect_open_error(test::GgufBuilder().kv_raw("k", 13, "").bytes(),
                    {"metadata key 'k'", "unknown value type 13"});
  expect_open_error(test::GgufBuilder().kv_raw("k", 7, "\x02").bytes(),
                    {"metadata key 'k'", "bool value 2"});
  std::string nested;
  test::GgufBuilder::put_u32(nested, 9);
  test::GgufBuilder::put_u64(nested, 1);
  expect_open_error(test::GgufBuilder().kv_raw("k", 9, nested).bytes(),
                    {"metadata key 'k'", "nested arrays"});
  std::string big_array;
  test::GgufBuilder::put_u32(big_array, 10);
  test::GgufBuilder::put_u64(big_array, 1ull << 58);
  expect_open_error(test::GgufBuilder().kv_raw("k", 9, big_array).bytes(),
                    {"metadata key 'k'", "array of 288230376151711744 u64 values cannot fit"});
  expect_open_error(test::GgufBuilder().kv_u32("k", 1).kv_u32("k", 2).bytes(),
                    {"metadata key 'k' appears twice"});
  expect_open_error(test::GgufBuilder().kv_u32("", 1).bytes(), {"empty key"});
  expect_open_error(valid().kv_u32("general.alignment", 24).bytes(),
                    {"'general.alignment' is 24, not a power of two"});
  expect_open_error(valid().kv_string("general.alignment", "x").bytes(),
                    {"'general.alignment' must be a u32"});
}

TEST_F(GgufErrors, BadTensorEntries) {
  auto one = [](const std::vector<uint64_t>& dims, uint32_t type, uint64_t offset) {
    test::GgufBuilder b;
    b.tensor("t", dims, type, offset).data(std::string(64, '\0'));
    return b.bytes();
  };
  expect_open_error(one({4}, 99, 0), {"tensor 't'", "unknown ggml type 99"});
  expect_open_error(one({256}, 10, 0), {"tensor 't'", "type Q2_K is not supported", "Q4_K"});
  expect_open_error(one({}, 0, 0), {"tensor 't'", "0 dimensions"});
  expect_open_error(one({1, 1, 1, 1, 1}, 0, 0), {"tensor 't'", "5 dimensions"});
  expect_open_error(one({1ull << 40, 1ull << 40}, 0, 0),
                    {"tensor 't'",
                     "dimensions [1099511627776, 1099511627776] of F32 need more "
                     "bytes than the file's"});
  expect_open_error(one({~0ull, 2}, 0, 0), {"tensor 't'", "need more bytes"});
  expect_open_error(one({48}, 8, 0), {"tensor 't'",
                                      "row length 48 is not a multiple of the "
                                      "Q8_0 block size 32"});
  expect_open_error(one({4}, 0, 4), {"tensor 't'", "offset 4 is not a multiple of the alignment"});
  expect_open_error(one({4}, 0, 64), {"tensor 't'", "run past its end"});
  expect_open_error(one({32}, 0, 0), {"tensor 't'", "bytes [0, 128)", "run past its end"});
  expect_open_error(one({4}, 0, ~0ull - 31), {"tensor 't'", "run past its end"});
  test::GgufBuilder overlap;
  overlap.tensor("a", {16}, 0, 0).tensor("b", {4}, 0, 32).data(std::string(64, '\0'));
  expect_open_error(overlap.bytes(), {"tensors 'a' and 'b' have overlapping byte ranges"});
  test::GgufBuilder twice;
  twice.tensor("a", {4}, 0, 0).tensor("a", {4}, 0, 32).data(std::string(64, '\0'));
  expect_open_error(twice.bytes(), {"tensor 'a': appears twice"});
  test::GgufBuilder unnamed;
  unnamed.tensor("", {4}, 0, 0).data(std::string(32, '\0'));
  expect_open_error(unnamed.bytes(), {"tensor 0 has an empty name"});
}

TEST_F(GgufErrors, AbsentTensorIsNamed) {
  const std::string path = dir_ + "/ok.gguf";
  valid().write(path);
  const GgufFile f = GgufFile::open(path);
  try {
    f.read("missing");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), path + ": no tensor named 'missing'");
  }
}

// Random damage (truncations and flipped bytes, mostly in the header) to the synthetic file:
// every outcome is a kiln::Error or a successful read of every tensor, never a crash.
TEST_F(GgufErrors, RandomDamageIsAnErrorOrAReadNeverACrash) {
  std::string original;
  {
    std::ifstream in(test::data_path(kReference + "synthetic.gguf"), std::ios::binary);
    original.assign(std::istreambuf_iterator<char>(in), {});
  }
  std::mt19937 rng(17);
  int errors = 0, reads = 0;
  const std::string path = dir_ + "/damaged.gguf";
  for (int trial = 0; trial < 400; ++trial) {
    std::string damaged = original;
    size_t position = rng() % std::min<size_t>(damaged.size(), 1200);
    if (rng() % 4 == 0) position = rng() % damaged.size();
    if (trial % 4 == 0)
      damaged.resize(position);
    else
      for (int flips = 1 + static_cast<int>(rng() % 3); flips > 0; --flips)
        damaged[(position + static_cast<size_t>(flips) * (rng() % 9)) % damaged.size()] ^=
            static_cast<char>(1 + rng() % 255);
    std::ofstream(path, std::ios::binary | std::ios::trunc) << damaged;
    try {
      const GgufFile f = GgufFile::open(path);
      for (const GgufTensorInfo& t : f.tensors()) f.read(t.name);
      ++reads;
    } catch (const Error&) {
      ++errors;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "trial " << trial << " escaped as " << typeid(e).name() << ": " << e.what();
    }
  }
  std::cout << "  " << errors << " errors, " << reads << " reads accepted\n";
  EXPECT_EQ(errors + reads, 400);
  EXPECT_GT(errors, 100);
}

}  // namespace
}  // namespace kiln
