// Pre-quantized HF checkpoints (io/hf_quantized.h): the float8 e4m3fn codec, the exact byte
// layouts of fp8 block scales (partial edge blocks included) and of MXFP4 blocks, and the
// errors for malformed checkpoints and configs.
#include "kiln/io/hf_quantized.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <set>

#include "kiln/core/error.h"
#include "map_source.h"

namespace kiln {
namespace {

Tensor bytes(DType dtype, Shape shape, uint8_t fill) {
  Tensor t = Tensor::zeros(dtype, std::move(shape));
  std::memset(t.mutable_raw(), fill, t.nbytes());
  return t;
}

HfConfig config_with(const std::string& quantization_json) {
  return HfConfig::from_json(
      Json::parse(R"({"model_type": "x", "quantization_config": )" + quantization_json + "}"),
      "cfg.json");
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Fp8E4M3, DecodesKnownCodes) {
  EXPECT_EQ(f8e4m3_to_f32(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(f8e4m3_to_f32(0x80)));
  EXPECT_EQ(f8e4m3_to_f32(0x38), 1.0f);                  // exponent 7 = bias
  EXPECT_EQ(f8e4m3_to_f32(0x3c), 1.5f);                  // mantissa 4/8
  EXPECT_EQ(f8e4m3_to_f32(0xc4), -3.0f);                 // -(1 + 4/8) * 2
  EXPECT_EQ(f8e4m3_to_f32(0x7e), 448.0f);                // the largest
  EXPECT_EQ(f8e4m3_to_f32(0x08), 0.015625f);             // 2^-6, the smallest normal
  EXPECT_EQ(f8e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // the smallest subnormal
  EXPECT_EQ(f8e4m3_to_f32(0x07), std::ldexp(7.0f, -9));
  EXPECT_TRUE(std::isnan(f8e4m3_to_f32(0x7f)));
  EXPECT_TRUE(std::isnan(f8e4m3_to_f32(0xff)));
  EXPECT_EQ(f8e4m3_to_f32(0x78), 256.0f);  // S.1111.000 is a number (no infinities)
}

TEST(Fp8E4M3, EncodesToNearestEvenAndSaturates) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f) continue;  // NaN
    EXPECT_EQ(f32_to_f8e4m3(f8e4m3_to_f32(static_cast<uint8_t>(code))), code) << code;
  }
  EXPECT_EQ(f32_to_f8e4m3(1.0625f), 0x38);  // halfway between 1 and 1.125: even code
  EXPECT_EQ(f32_to_f8e4m3(1.1875f), 0x3a);  // halfway between 1.125 and 1.25: even code
  EXPECT_EQ(f32_to_f8e4m3(1.07f), 0x39);
  EXPECT_EQ(f32_to_f8e4m3(std::ldexp(1.0f, -10)), 0x00);   // half the smallest subnormal
  EXPECT_EQ(f32_to_f8e4m3(std::ldexp(3.0f, -10)), 0x02);   // 1.5 subnormal steps: even
  EXPECT_EQ(f32_to_f8e4m3(std::ldexp(15.5f, -10)), 0x08);  // rounds up into the normals
  EXPECT_EQ(f32_to_f8e4m3(464.0f), 0x7e);                  // beyond 448: saturates
  EXPECT_EQ(f32_to_f8e4m3(-std::numeric_limits<float>::infinity()), 0xfe);
  EXPECT_EQ(f32_to_f8e4m3(std::nanf("")) & 0x7f, 0x7f);
  EXPECT_EQ(f32_to_f8e4m3(0.3f), 0x2a);    // 1.25 * 2^-2 = 0.3125
  EXPECT_EQ(f32_to_f8e4m3(-2.75f), 0xc3);  // -(1 + 3/8) * 2^(8 - 7)
}

// Known values -> known bytes: a [3, 130] weight quantized the way DeepSeek's are (per
// 128x128 block, scale_inv = amax / 448, fp8 = nearest(w / scale_inv)), its second column
// block partial (2 columns), read back through the dequantizer.
TEST(HfQuantizedFp8, KnownValuesGiveKnownBytes) {
  std::vector<float> w(3 * 130, 0.0f);
  w[0] = 7.0f;               // the amax of block (0, 0): scale_inv 7/448 = 1/64, fp8 448
  w[1] = -1.0f;              // -64 -> 0xe8 (-(1 + 0/8) * 2^(13 - 7))
  w[130 + 5] = 0.1f;         // 6.4 -> 6.5 (0x4d) after rounding to 3 mantissa bits
  w[128] = 3.5f;             // block (0, 1): scale_inv 3.5/448 = 1/128, fp8 448
  w[2 * 130 + 129] = -1.5f;  // -192 -> 0xf4 (-(1 + 4/8) * 2^(14 - 7))
  const float s0 = 7.0f / 448.0f, s1 = 3.5f / 448.0f;
  Tensor bytes = Tensor::zeros(DType::U8, {3, 130});
  for (int64_t i = 0; i < 3 * 130; ++i) {
    const float s = i % 130 < 128 ? s0 : s1;
    bytes.mutable_data<uint8_t>()[i] = f32_to_f8e4m3(w[i] / s);
  }
  const uint8_t* b = bytes.data<uint8_t>();
  EXPECT_EQ(b[0], 0x7e);
  EXPECT_EQ(b[1], 0xe8);
  EXPECT_EQ(b[130 + 5], 0x4d);
  EXPECT_EQ(b[128], 0x7e);
  EXPECT_EQ(b[2 * 130 + 129], 0xf4);
  EXPECT_EQ(b[2], 0x00);
  const Tensor scale = Tensor::from_f32({1, 2}, {s0, s1});
  const Tensor d = dequantize_fp8_blocks(bytes, scale, 128, 128, DType::F32, "w");
  const float* v = d.data<float>();
  EXPECT_EQ(v[0], 7.0f);
  EXPECT_EQ(v[1], -1.0f);
  EXPECT_EQ(v[130 + 5], 6.5f * s0);  // 0.1015625: fp8's rounding of 0.1
  EXPECT_EQ(v[128], 3.5f);
  EXPECT_EQ(v[2 * 130 + 129], -1.5f);
}

// A [130, 260] weight in 128x128 blocks: scales [2, 3], the last row and column of blocks
// partial (2 rows, 4 columns). Every fp8 byte is 0x38 (1.0) except two, so each element shows
// which scale it got.
TEST(HfQuantizedFp8, BlockScalesCoverPartialEdgeBlocks) {
  Tensor weight = bytes(DType::U8, {130, 260}, 0x38);
  weight.mutable_data<uint8_t>()[129 * 260 + 256] = 0xc4;  // -3 in the bottom-right block
  weight.mutable_data<uint8_t>()[127 * 260 + 127] = 0x01;  // 2^-9 in the top-left block
  Tensor scale = Tensor::zeros(DType::F32, {2, 3});
  for (int i = 0; i < 6; ++i) scale.mutable_data<float>()[i] = static_cast<float>(i + 1);
  const Tensor w = dequantize_fp8_blocks(weight, scale, 128, 128, DType::F32, "w");
  ASSERT_EQ(w.shape(), (Shape{130, 260}));
  auto at = [&](int64_t r, int64_t c) { return w.data<float>()[r * 260 + c]; };
  EXPECT_EQ(at(0, 0), 1.0f);
  EXPECT_EQ(at(127, 127), std::ldexp(1.0f, -9));
  EXPECT_EQ(at(0, 127), 1.0f);
  EXPECT_EQ(at(0, 128), 2.0f);  // second block column
  EXPECT_EQ(at(127, 255), 2.0f);
  EXPECT_EQ(at(0, 256), 3.0f);  // the partial third block column
  EXPECT_EQ(at(0, 259), 3.0f);
  EXPECT_EQ(at(128, 0), 4.0f);  // the partial second block row
  EXPECT_EQ(at(129, 128), 5.0f);
  EXPECT_EQ(at(129, 256), -18.0f);  // -3 * 6
  EXPECT_EQ(at(129, 259), 6.0f);

  // BF16: the f32 product rounded once to nearest even.
  scale.mutable_data<float>()[0] = 0.1f;
  const Tensor b = dequantize_fp8_blocks(weight, scale, 128, 128, DType::BF16, "w");
  EXPECT_EQ(b.dtype(), DType::BF16);
  EXPECT_EQ(b.data<uint16_t>()[0], f32_to_bf16(0.1f));
  EXPECT_EQ(b.data<uint16_t>()[129 * 260 + 256], f32_to_bf16(-18.0f));

  // Leading dimensions (stacked experts) and blocks that are not square: [2, 3, 5] in 2x4
  // blocks has scales [2, 2, 2].
  Tensor stacked = bytes(DType::U8, {2, 3, 5}, 0x38);
  Tensor stacked_scale = Tensor::zeros(DType::BF16, {2, 2, 2});
  for (int i = 0; i < 8; ++i)
    stacked_scale.mutable_data<uint16_t>()[i] = f32_to_bf16(static_cast<float>(10 + i));
  const Tensor s = dequantize_fp8_blocks(stacked, stacked_scale, 2, 4, DType::F32, "s");
  const float* v = s.data<float>();
  EXPECT_EQ(v[0], 10.0f);               // [0, 0, 0]
  EXPECT_EQ(v[4], 11.0f);               // [0, 0, 4]: second column block
  EXPECT_EQ(v[2 * 5 + 3], 12.0f);       // [0, 2, 3]: second row block
  EXPECT_EQ(v[15 + 2 * 5 + 4], 17.0f);  // [1, 2, 4]: the last block of the second matrix
}

// MXFP4: a byte holds two e2m1 values, the low nibble first; the block's e8m0 byte s scales
// by 2^(s - 127).
TEST(HfQuantizedMxfp4, NibblesAndExponents) {
  Tensor blocks = bytes(DType::U8, {1, 2, 2, 16}, 0x00);  // 1 expert, 2 rows, 2 blocks
  Tensor scales = bytes(DType::U8, {1, 2, 2}, 127);       // 2^0
  uint8_t* b = blocks.mutable_data<uint8_t>();
  b[0] = 0x21;                      // row 0, block 0: values 0 (0.5) and 1 (1.0)
  b[(1 * 2 + 1) * 16] = 0x2f;       // row 1, block 1, byte 0: values 32 (-6) and 33 (1.0)
  b[(1 * 2 + 1) * 16 + 15] = 0x97;  // byte 15: values 62 (6) and 63 (-0.5)
  scales.mutable_data<uint8_t>()[1 * 2 + 1] = 128;  // row 1, block 1: x2
  scales.mutable_data<uint8_t>()[0] = 0;            // row 0, block 0: 2^-127
  const Tensor w = dequantize_mxfp4(blocks, scales, DType::F32, "e");
  ASSERT_EQ(w.shape(), (Shape{1, 2, 64}));
  const float* v = w.data<float>();
  EXPECT_EQ(v[0], std::ldexp(0.5f, -127));  // a subnormal f32, exact
  EXPECT_EQ(v[1], std::ldexp(1.0f, -127));
  EXPECT_EQ(v[64 + 32], -12.0f);
  EXPECT_EQ(v[64 + 33], 2.0f);
  EXPECT_EQ(v[64 + 62], 12.0f);
  EXPECT_EQ(v[64 + 63], -1.0f);
  EXPECT_EQ(v[64 + 31], 0.0f);

  // Through the source: `X_blocks` + `X_scales` read as `X`, transposed to [E, in, out].
  auto inner = std::make_unique<test::MapSource>();
  inner->tensors["m.experts.down_proj_blocks"] = blocks;
  inner->tensors["m.experts.down_proj_scales"] = scales;
  inner->tensors["m.experts.down_proj_bias"] = Tensor::zeros(DType::F32, {1, 2});
  HfQuantization q;
  q.method = "mxfp4";
  const QuantizedHfSource source(std::move(inner), q, {}, DType::BF16, false);
  EXPECT_EQ(source.names(),
            (std::vector<std::string>{"m.experts.down_proj_bias", "m.experts.down_proj"}));
  EXPECT_FALSE(source.contains("m.experts.down_proj_blocks"));
  EXPECT_EQ(source.shape_of("m.experts.down_proj"), (Shape{1, 64, 2}));
  EXPECT_EQ(source.dtype_of("m.experts.down_proj"), DType::BF16);
  const Tensor x = source.get("m.experts.down_proj");
  ASSERT_EQ(x.shape(), (Shape{1, 64, 2}));
  EXPECT_EQ(x.item_as_double(32 * 2 + 1), -12.0);                 // [0, 32, 1]
  EXPECT_EQ(x.item_as_double(63 * 2 + 1), -1.0);                  // [0, 63, 1]
  EXPECT_EQ(x.item_as_double(1 * 2 + 0), std::ldexp(1.0, -127));  // bf16 keeps it exactly
}

TEST(HfQuantizedFp8, SourceHidesScalesAndDequantizes) {
  auto inner = std::make_unique<test::MapSource>();
  Tensor scale = Tensor::from_f32({1, 1}, {0.5f});
  inner->tensors["a.weight"] = bytes(DType::U8, {3, 4}, 0x40);  // 2.0
  inner->tensors["a.weight_scale_inv"] = scale;
  inner->tensors["norm.weight"] = Tensor::from_f32({4}, {1, 2, 3, 4});
  const QuantizedHfSource source(std::move(inner), hf_quantization(config_with(R"({
      "quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]})")),
                                 {"a.weight"}, DType::F32, false);
  EXPECT_EQ(source.names(), (std::vector<std::string>{"a.weight", "norm.weight"}));
  EXPECT_FALSE(source.contains("a.weight_scale_inv"));
  EXPECT_EQ(source.dtype_of("a.weight"), DType::F32);
  EXPECT_EQ(source.dtype_of("norm.weight"), DType::F32);
  EXPECT_EQ(source.quantized_count(), 1u);
  const Tensor a = source.get("a.weight");
  for (int i = 0; i < 12; ++i) EXPECT_EQ(a.data<float>()[i], 1.0f);
}

TEST(HfQuantized, ConfigErrorsNameTheKey) {
  EXPECT_EQ(hf_quantization(HfConfig::from_json(Json::parse(R"({"a": 1})"), "c")).method, "");
  const HfQuantization fp8 = hf_quantization(config_with(R"({"quant_method": "fp8"})"));
  EXPECT_EQ(fp8.block_rows, 128);
  EXPECT_EQ(fp8.block_cols, 128);
  EXPECT_EQ(hf_quantization(config_with(R"({"quant_method": "mxfp4"})")).method, "mxfp4");
  std::string e = error_of([] { hf_quantization(config_with(R"({"quant_method": "awq"})")); });
  EXPECT_NE(e.find("cfg.json: quantization_config: quant_method 'awq' is not read"),
            std::string::npos)
      << e;
  e = error_of([] { hf_quantization(config_with(R"({"quant_method": "fp8", "fmt": "e5m2"})")); });
  EXPECT_NE(e.find("fmt \"e5m2\""), std::string::npos) << e;
  e = error_of([] {
    hf_quantization(config_with(R"({"quant_method": "fp8", "weight_block_size": [128]})"));
  });
  EXPECT_NE(e.find("weight_block_size must be two positive integers"), std::string::npos) << e;
  e = error_of([] { hf_quantization(config_with(R"({"bits": 4})")); });
  EXPECT_NE(e.find("missing 'quant_method'"), std::string::npos) << e;
}

TEST(HfQuantized, CheckpointErrorsNameTheTensor) {
  const HfQuantization fp8 = hf_quantization(config_with(R"({"quant_method": "fp8"})"));
  HfQuantization mxfp4;
  mxfp4.method = "mxfp4";
  // Tensors named `*.weight` are the fp8 ones (as a safetensors header would say).
  auto open = [](std::map<std::string, Tensor> tensors, const HfQuantization& q) {
    auto inner = std::make_unique<test::MapSource>();
    std::set<std::string> fp8;
    for (const auto& [name, t] : tensors)
      if (name.ends_with(".weight")) fp8.insert(name);
    inner->tensors = std::move(tensors);
    QuantizedHfSource source(std::move(inner), q, fp8, DType::BF16, false);
  };
  std::string e = error_of([&] { open({{"a.weight", bytes(DType::U8, {4, 4}, 0)}}, fp8); });
  EXPECT_NE(e.find("F8_E4M3 tensor 'a.weight' has no block scales 'a.weight_scale_inv'"),
            std::string::npos)
      << e;
  e = error_of([&] {
    open({{"a.weight", bytes(DType::U8, {200, 300}, 0)},
          {"a.weight_scale_inv", Tensor::zeros(DType::F32, {2, 2})}},
         fp8);
  });
  EXPECT_NE(
      e.find(
          "memory: tensor 'a.weight_scale_inv': block scales of shape [2, 2], expected [2, 3] for "
          "'a.weight' of shape [200, 300] in 128x128 blocks"),
      std::string::npos)
      << e;
  e = error_of([&] {
    open({{"a.weight", bytes(DType::U8, {4, 4}, 0)},
          {"a.weight_scale_inv", Tensor::zeros(DType::I32, {1, 1})}},
         fp8);
  });
  EXPECT_NE(e.find("'a.weight_scale_inv': the block scales of"), std::string::npos) << e;
  e = error_of([&] { open({{"b.weight_scale_inv", Tensor::zeros(DType::F32, {1, 1})}}, fp8); });
  EXPECT_NE(e.find("block scales 'b.weight_scale_inv' belong to no F8_E4M3 tensor"),
            std::string::npos)
      << e;
  e = error_of([&] { open({{"a.weight", bytes(DType::U8, {4, 4}, 0)}}, HfQuantization{}); });
  EXPECT_NE(e.find("tensor 'a.weight' is F8_E4M3 but the config declares no quantization_config"),
            std::string::npos)
      << e;
  e = error_of([&] { open({{"x_blocks", bytes(DType::U8, {1, 2, 2, 16}, 0)}}, mxfp4); });
  EXPECT_NE(e.find("MXFP4 tensor 'x_blocks' has no scales 'x_scales'"), std::string::npos) << e;
  e = error_of([&] { open({{"x_scales", bytes(DType::U8, {1, 2, 2}, 0)}}, mxfp4); });
  EXPECT_NE(e.find("MXFP4 scales 'x_scales' have no blocks 'x_blocks'"), std::string::npos) << e;
  e = error_of([&] {
    open({{"x_blocks", bytes(DType::U8, {1, 2, 2, 16}, 0)},
          {"x_scales", bytes(DType::U8, {1, 2, 3}, 0)}},
         mxfp4);
  });
  EXPECT_NE(
      e.find("memory: tensor 'x_scales': MXFP4 scales of shape [1, 2, 3], expected [1, 2, 2] for "
             "'x_blocks'"),
      std::string::npos)
      << e;
  e = error_of([&] {
    open({{"x_blocks", bytes(DType::U8, {2, 2, 8}, 0)}, {"x_scales", bytes(DType::U8, {2, 2}, 0)}},
         mxfp4);
  });
  EXPECT_NE(e.find("memory: tensor 'x_blocks': MXFP4 blocks have shape [..., blocks, 16]"),
            std::string::npos)
      << e;
  e = error_of([] {
    dequantize_fp8_blocks(Tensor::zeros(DType::F32, {2, 2}), Tensor::zeros(DType::F32, {1, 1}), 128,
                          128, DType::F32, "u");
  });
  EXPECT_NE(e.find("tensor 'u': expected F8_E4M3 bytes (U8), got F32"), std::string::npos) << e;
}

}  // namespace
}  // namespace kiln
