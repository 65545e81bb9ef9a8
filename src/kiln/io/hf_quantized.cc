#include "kiln/io/hf_quantized.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include "kiln/core/error.h"
#include "kiln/core/page_release.h"
#include "kiln/io/safetensors_source.h"
#include "kiln/models/capabilities.h"

namespace kiln {

// The loader and the converter read these checkpoints (weights dequantized on load).
KILN_CAPABILITY("quantization", "fp8");
KILN_CAPABILITY("quantization", "mxfp4");

namespace {

constexpr const char* kScaleInv = "_scale_inv";
constexpr const char* kBlocks = "_blocks";
constexpr const char* kScales = "_scales";

// The e2m1 values of the 16 nibbles: sign bit 3, then 0, 0.5, 1, 1.5, 2, 3, 4, 6.
constexpr float kFp4Values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                  -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

std::string file_of(const TensorSource& source, const std::string& name) {
  if (const auto* safetensors = dynamic_cast<const SafetensorsSource*>(&source))
    return safetensors->set().file_of(name);
  return source.where();
}

// Writes f32 `values` (n of them) at element `at` of the F32 or BF16 tensor `out`.
void store(Tensor& out, int64_t at, const float* values, int64_t n) {
  if (out.dtype() == DType::F32) {
    std::memcpy(out.mutable_data<float>() + at, values, static_cast<size_t>(n) * 4);
  } else {
    uint16_t* dst = out.mutable_data<uint16_t>() + at;
    for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(values[i]);
  }
}

void check_out_dtype(DType out, const std::string& name) {
  check(out == DType::F32 || out == DType::BF16,
        name + ": dequantizes to F32 or BF16, not " + std::string(dtype_name(out)));
}

// The expected fp8 scale shape of a weight of shape `shape`.
Shape fp8_scale_shape(const Shape& shape, int64_t block_rows, int64_t block_cols) {
  Shape scale(shape.begin(), shape.end() - 2);
  scale.push_back(ceil_div(shape[shape.size() - 2], block_rows));
  scale.push_back(ceil_div(shape.back(), block_cols));
  return scale;
}

// "<where>: tensor '<name>'" (just "tensor '<name>'" without a file).
std::string label(const std::string& where, const std::string& name) {
  return (where.empty() ? "" : where + ": ") + "tensor '" + name + "'";
}

// The fp8 checks shared by the constructor (shapes from headers) and dequantize_fp8_blocks;
// `*_where` name the files holding the tensors ("" when unknown).
void check_fp8(const std::string& where, const std::string& name, DType weight_dtype,
               const Shape& weight, const std::string& scale_where, const std::string& scale_name,
               DType scale_dtype, const Shape& scale, int64_t block_rows, int64_t block_cols) {
  check(weight_dtype == DType::U8, label(where, name) + ": expected F8_E4M3 bytes (U8), got " +
                                       std::string(dtype_name(weight_dtype)));
  check(weight.size() >= 2,
        label(where, name) + ": an fp8 block-quantized tensor needs at least 2 dimensions, got " +
            shape_to_string(weight));
  check(is_float(scale_dtype), label(scale_where, scale_name) + ": the block scales of '" + name +
                                   "' must be a float dtype, got " +
                                   std::string(dtype_name(scale_dtype)));
  const Shape expected = fp8_scale_shape(weight, block_rows, block_cols);
  check(scale == expected, label(scale_where, scale_name) + ": block scales of shape " +
                               shape_to_string(scale) + ", expected " + shape_to_string(expected) +
                               " for '" + name + "' of shape " + shape_to_string(weight) + " in " +
                               std::to_string(block_rows) + "x" + std::to_string(block_cols) +
                               " blocks");
}

// The MXFP4 checks: blocks U8 [..., G, 16] ([E, rows, G, 16] for `expert_stack`), scales U8
// [..., G].
void check_mxfp4(const std::string& where, const std::string& blocks_name, DType blocks_dtype,
                 const Shape& blocks, const std::string& scales_where,
                 const std::string& scales_name, DType scales_dtype, const Shape& scales,
                 bool expert_stack) {
  check(blocks_dtype == DType::U8, label(where, blocks_name) + ": MXFP4 blocks must be U8, got " +
                                       std::string(dtype_name(blocks_dtype)));
  check(scales_dtype == DType::U8, label(scales_where, scales_name) +
                                       ": MXFP4 scales must be U8, got " +
                                       std::string(dtype_name(scales_dtype)));
  check(blocks.size() >= 2 && blocks.back() == 16,
        label(where, blocks_name) +
            ": MXFP4 blocks have shape [..., blocks, 16] (32 fp4 values in 16 bytes), got " +
            shape_to_string(blocks));
  if (expert_stack)
    check(blocks.size() == 4,
          label(where, blocks_name) +
              ": MXFP4 expert blocks have shape [experts, rows, blocks, 16], got " +
              shape_to_string(blocks));
  const Shape expected(blocks.begin(), blocks.end() - 1);
  check(scales == expected, label(scales_where, scales_name) + ": MXFP4 scales of shape " +
                                shape_to_string(scales) + ", expected " +
                                shape_to_string(expected) + " for '" + blocks_name + "' of shape " +
                                shape_to_string(blocks));
}

}  // namespace

float f8e4m3_to_f32(uint8_t bits) {
  const int exponent = (bits >> 3) & 0xf;
  const int mantissa = bits & 0x7;
  float magnitude;
  if (exponent == 0xf && mantissa == 0x7)
    magnitude = std::numeric_limits<float>::quiet_NaN();
  else if (exponent == 0)  // subnormal: mantissa * 2^-9
    magnitude = std::ldexp(static_cast<float>(mantissa), -9);
  else
    magnitude = std::ldexp(static_cast<float>(8 + mantissa), exponent - 10);
  return (bits & 0x80) != 0 ? -magnitude : magnitude;
}

uint8_t f32_to_f8e4m3(float f) {
  const int sign = std::signbit(f) ? 0x80 : 0x00;
  if (std::isnan(f)) return static_cast<uint8_t>(sign | 0x7f);
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 448.0) return static_cast<uint8_t>(sign | 0x7e);
  if (a < 0.015625)  // below 2^-6, the smallest normal: multiples of 2^-9 (code 8 is 2^-6)
    return static_cast<uint8_t>(sign | static_cast<int>(std::nearbyint(a * 512.0)));
  int e = 0;
  const double m = std::frexp(a, &e);                               // a = m * 2^e, m in [0.5, 1)
  int q = static_cast<int>(std::nearbyint((m * 2.0 - 1.0) * 8.0));  // ties to even
  int biased = e - 1 + 7;
  if (q == 8) {
    q = 0;
    ++biased;
  }
  return static_cast<uint8_t>(sign | std::min((biased << 3) | q, 0x7e));
}

HfQuantization hf_quantization(const HfConfig& config) {
  HfQuantization q;
  const Json* holder = &config.json();
  std::string where = config.source() + ": quantization_config";
  if (!config.has("quantization_config")) {
    const Json& text = config.json().value("text_config", Json());
    if (!text.is_object() || !text.contains("quantization_config")) return q;
    holder = &text;
    where = config.source() + ": text_config.quantization_config";
  }
  const Json& quant = (*holder)["quantization_config"];
  if (holder == &config.json()) config.get("quantization_config");  // marks it read
  check(quant.is_object(), where + " must be an object");
  check(quant.contains("quant_method") && quant["quant_method"].is_string(),
        where + ": missing 'quant_method'");
  const std::string method = quant["quant_method"].get<std::string>();
  if (method == "fp8") {
    if (quant.contains("fmt"))
      check(quant["fmt"] == "e4m3",
            where + ": fmt " + quant["fmt"].dump() + " is not read (Kiln reads fp8 fmt \"e4m3\")");
    q.block_rows = 128;
    q.block_cols = 128;
    if (quant.contains("weight_block_size") && !quant["weight_block_size"].is_null()) {
      const Json& block = quant["weight_block_size"];
      check(block.is_array() && block.size() == 2 && block[0].is_number_integer() &&
                block[1].is_number_integer() && block[0].get<int64_t>() > 0 &&
                block[1].get<int64_t>() > 0,
            where + ": weight_block_size must be two positive integers, got " + block.dump());
      q.block_rows = block[0].get<int64_t>();
      q.block_cols = block[1].get<int64_t>();
    }
    q.method = method;
    q.description = "fp8 e4m3, " + std::to_string(q.block_rows) + "x" +
                    std::to_string(q.block_cols) + " blocks";
    return q;
  }
  if (method == "mxfp4") {
    q.method = method;
    q.description = "mxfp4 experts";
    return q;
  }
  throw Error(where + ": quant_method '" + method +
              "' is not read by Kiln (it reads pre-quantized \"fp8\" and \"mxfp4\" "
              "checkpoints, dequantizing them on load)");
}

Tensor dequantize_fp8_blocks(const Tensor& weight, const Tensor& scale_inv, int64_t block_rows,
                             int64_t block_cols, DType out, const std::string& name) {
  check_out_dtype(out, name);
  check(block_rows > 0 && block_cols > 0, name + ": block sizes must be positive");
  check_fp8("", name, weight.dtype(), weight.shape(), "", name + kScaleInv, scale_inv.dtype(),
            scale_inv.shape(), block_rows, block_cols);
  const Tensor w = weight.contiguous();
  const Tensor s =
      scale_inv.dtype() == DType::F32 ? scale_inv.contiguous() : scale_inv.to(DType::F32);
  const Shape& shape = w.shape();
  const int64_t rows = shape[shape.size() - 2], cols = shape.back();
  const int64_t matrices = rows * cols == 0 ? 0 : w.numel() / (rows * cols);
  const int64_t scale_rows = ceil_div(rows, block_rows), scale_cols = ceil_div(cols, block_cols);
  Tensor result = Tensor::zeros(out, shape);
  float table[256];
  for (int b = 0; b < 256; ++b) table[b] = f8e4m3_to_f32(static_cast<uint8_t>(b));
  const uint8_t* src = w.data<uint8_t>();
  const float* scales = s.data<float>();
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t m = 0; m < matrices; ++m) {
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* in = src + (m * rows + r) * cols;
      const float* scale_row = scales + (m * scale_rows + r / block_rows) * scale_cols;
      for (int64_t c = 0; c < cols; ++c) row[c] = table[in[c]] * scale_row[c / block_cols];
      store(result, (m * rows + r) * cols, row.data(), cols);
    }
  }
  return result;
}

Tensor dequantize_mxfp4(const Tensor& blocks, const Tensor& scales, DType out,
                        const std::string& name) {
  check_out_dtype(out, name);
  check_mxfp4("", name + kBlocks, blocks.dtype(), blocks.shape(), "", name + kScales,
              scales.dtype(), scales.shape(), false);
  const Tensor b = blocks.contiguous();
  const Tensor s = scales.contiguous();
  Shape shape(b.shape().begin(), b.shape().end() - 1);
  shape.back() *= 32;
  Tensor result = Tensor::zeros(out, shape);
  const int64_t count = s.numel();  // blocks of 32 values
  const uint8_t* packed = b.data<uint8_t>();
  const uint8_t* exponents = s.data<uint8_t>();
  float values[32];
  for (int64_t k = 0; k < count; ++k) {
    const int exponent = static_cast<int>(exponents[k]) - 127;
    for (int i = 0; i < 16; ++i) {
      const uint8_t byte = packed[k * 16 + i];
      values[2 * i] = std::ldexp(kFp4Values[byte & 0x0f], exponent);
      values[2 * i + 1] = std::ldexp(kFp4Values[byte >> 4], exponent);
    }
    store(result, k * 32, values, 32);
  }
  return result;
}

std::set<std::string> safetensors_fp8_tensors(const TensorSource& source) {
  std::set<std::string> out;
  const auto* safetensors = dynamic_cast<const SafetensorsSource*>(&source);
  if (safetensors == nullptr) return out;
  std::set<std::string> files;
  for (const std::string& name : source.names()) files.insert(safetensors->set().file_of(name));
  for (const std::string& path : files) {
    // SafetensorsSet::open validated the header; only its dtype strings are read again.
    std::ifstream in(path, std::ios::binary);
    uint64_t length = 0;
    in.read(reinterpret_cast<char*>(&length), 8);
    std::string header(length, '\0');
    in.read(header.data(), static_cast<std::streamsize>(length));
    check(static_cast<bool>(in), path + ": cannot read the safetensors header again");
    const Json json = Json::parse(header);
    for (auto it = json.begin(); it != json.end(); ++it)
      if (it.key() != "__metadata__" && it.value().value("dtype", std::string()) == "F8_E4M3")
        out.insert(it.key());
  }
  return out;
}

QuantizedHfSource::QuantizedHfSource(std::unique_ptr<TensorSource> inner,
                                     HfQuantization quantization, std::set<std::string> fp8_tensors,
                                     DType dequantized, bool release_mapped_inputs)
    : inner_(std::move(inner)),
      quantization_(std::move(quantization)),
      dequantized_(dequantized),
      release_(release_mapped_inputs) {
  check_out_dtype(dequantized_, inner_->where());
  const std::vector<std::string> all = inner_->names();
  auto ends_with = [](const std::string& s, const char* suffix) {
    return s.size() > std::strlen(suffix) && s.ends_with(suffix);
  };
  auto base_of = [](const std::string& s, const char* suffix) {
    return s.substr(0, s.size() - std::strlen(suffix));
  };
  const bool fp8 = quantization_.method == "fp8";
  const bool mxfp4 = quantization_.method == "mxfp4";
  std::vector<std::string> hidden;  // companions not listed
  for (const std::string& name : all) {
    const DType dtype = inner_->dtype_of(name);
    if (fp8_tensors.count(name) != 0) {
      check(fp8,
            file_of(*inner_, name) + ": tensor '" + name + "' is F8_E4M3 but the config declares " +
                (quantization_.method.empty() ? std::string("no quantization_config")
                                              : "quant_method '" + quantization_.method + "'") +
                " (fp8 checkpoints have quantization_config.quant_method \"fp8\")");
      const std::string scale = name + kScaleInv;
      check(inner_->contains(scale), file_of(*inner_, name) + ": F8_E4M3 tensor '" + name +
                                         "' has no block scales '" + scale + "'");
      check_fp8(file_of(*inner_, name), name, dtype, inner_->shape_of(name),
                file_of(*inner_, scale), scale, inner_->dtype_of(scale), inner_->shape_of(scale),
                quantization_.block_rows, quantization_.block_cols);
      quantized_[name] = {false, name, scale, inner_->shape_of(name)};
      hidden.push_back(scale);
    } else if (mxfp4 && ends_with(name, kBlocks)) {
      const std::string base = base_of(name, kBlocks);
      const std::string scales = base + kScales;
      check(inner_->contains(scales), file_of(*inner_, name) + ": MXFP4 tensor '" + name +
                                          "' has no scales '" + scales + "'");
      const Shape blocks = inner_->shape_of(name);
      check_mxfp4(file_of(*inner_, name), name, dtype, blocks, file_of(*inner_, scales), scales,
                  inner_->dtype_of(scales), inner_->shape_of(scales), true);
      check(!inner_->contains(base), file_of(*inner_, name) + ": tensor '" + base +
                                         "' is stored both whole and as MXFP4 '" + name + "'");
      quantized_[base] = {true, name, scales, {blocks[0], blocks[2] * 32, blocks[1]}};
      hidden.push_back(name);
      hidden.push_back(scales);
    }
  }
  if (mxfp4)
    for (const std::string& name : all)
      if (ends_with(name, kScales) && inner_->dtype_of(name) == DType::U8)
        check(inner_->contains(base_of(name, kScales) + kBlocks),
              file_of(*inner_, name) + ": MXFP4 scales '" + name + "' have no blocks '" +
                  base_of(name, kScales) + kBlocks + "'");
  if (fp8)
    for (const std::string& name : all)
      if (ends_with(name, kScaleInv))
        check(quantized_.count(base_of(name, kScaleInv)) != 0,
              file_of(*inner_, name) + ": block scales '" + name +
                  "' belong to no F8_E4M3 tensor '" + base_of(name, kScaleInv) + "'");
  hidden_.insert(hidden.begin(), hidden.end());
  for (const std::string& name : all)
    if (hidden_.count(name) == 0) names_.push_back(name);
  for (const auto& [name, q] : quantized_)
    if (q.mxfp4) names_.push_back(name);
}

void QuantizedHfSource::set_dequantized_dtype(DType dtype) {
  check_out_dtype(dtype, inner_->where());
  dequantized_ = dtype;
}

bool QuantizedHfSource::contains(const std::string& name) const {
  if (quantized_.count(name) != 0) return true;
  return hidden_.count(name) == 0 && inner_->contains(name);
}

Tensor QuantizedHfSource::get(const std::string& name) const {
  auto it = quantized_.find(name);
  if (it == quantized_.end()) return inner_->get(name);
  const Quantized& q = it->second;
  const Tensor data = inner_->get(q.data);
  const Tensor scale = inner_->get(q.scale);
  // Shapes and dtypes were checked when the source was opened.
  const std::string& label = name;
  Tensor result;
  if (q.mxfp4) {
    // [E, rows, 32 G] -> [E, 32 G, rows]: the unquantized checkpoints' [experts, in, out].
    result = dequantize_mxfp4(data, scale, dequantized_, label).transpose(1, 2).contiguous();
  } else {
    result = dequantize_fp8_blocks(data, scale, quantization_.block_rows, quantization_.block_cols,
                                   dequantized_, label);
  }
  if (release_)
    for (const Tensor* input : {&data, &scale})
      if (!input->writable() && input->is_contiguous())
        release_mapped_pages(input->raw(), input->nbytes());
  return result;
}

Shape QuantizedHfSource::shape_of(const std::string& name) const {
  auto it = quantized_.find(name);
  return it == quantized_.end() ? inner_->shape_of(name) : it->second.shape;
}

DType QuantizedHfSource::dtype_of(const std::string& name) const {
  return quantized_.count(name) != 0 ? dequantized_ : inner_->dtype_of(name);
}

std::unique_ptr<TensorSource> dequantizing_source(std::unique_ptr<TensorSource> source,
                                                  const HfConfig& config, DType dequantized,
                                                  bool release_mapped_inputs) {
  HfQuantization quantization = hf_quantization(config);
  std::set<std::string> fp8 = safetensors_fp8_tensors(*source);
  // No quantization_config and no fp8 tensor: nothing to do. (With fp8 tensors, the
  // constructor names the first as an error.)
  if (quantization.method.empty() && fp8.empty()) return source;
  return std::make_unique<QuantizedHfSource>(std::move(source), std::move(quantization),
                                             std::move(fp8), dequantized, release_mapped_inputs);
}

}  // namespace kiln
