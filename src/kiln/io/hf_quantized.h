// Pre-quantized HuggingFace checkpoints, read by dequantizing their weights one tensor at a
// time as they are loaded or converted:
//  - fp8 (DeepSeek-V3/R1, Kimi-K2): `quantization_config.quant_method` "fp8", fmt "e4m3".
//    A weight is stored as float8 e4m3fn (safetensors "F8_E4M3") of shape [..., rows, cols]
//    beside `<name>_scale_inv` (float, [..., ceil(rows/br), ceil(cols/bc)]), where
//    [br, bc] is `weight_block_size` (128x128 in the published models); element (r, c) is
//    fp8(r, c) * scale_inv(r / br, c / bc), edge blocks being partial.
//  - MXFP4 (gpt-oss): quant_method "mxfp4". A stacked expert weight `<name>` is stored as
//    `<name>_blocks` (uint8 [E, rows, G, 16]: 32 fp4 e2m1 values per block along the input,
//    two per byte, the low nibble first) and `<name>_scales` (uint8 [E, rows, G]: the
//    block's e8m0 exponent s, scale 2^(s - 127)); the dequantized [E, rows, 32 G] matrix is
//    transposed to [E, 32 G, rows], the layout of the unquantized checkpoints (as
//    transformers' dequantization does).
// open_model_source() (models/language_model.h) reads every HF folder through
// dequantizing_source(), so the loader and `kiln convert` see dequantized weights under the
// unquantized names. Kiln has no fp8 compute dtype: the safetensors reader gives F8_E4M3
// tensors as U8 bytes, and the header says which they are (safetensors_fp8_tensors).
// docs/checkpoint_format.md ("Pre-quantized HuggingFace checkpoints") has the details.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/io/hf_config.h"
#include "kiln/models/family.h"

namespace kiln {

// float8 e4m3fn (torch.float8_e4m3fn; 1 sign, 4 exponent bits biased by 7, 3 mantissa bits,
// subnormals, no infinities, S.1111.111 NaN, largest 448) <-> float32. Decoding is exact;
// encoding rounds to nearest even and saturates (beyond 448, infinities too: +-448).
float f8e4m3_to_f32(uint8_t bits);
uint8_t f32_to_f8e4m3(float f);

// What a config.json's `quantization_config` declares.
struct HfQuantization {
  std::string method;       // "" (no quantization_config), "fp8" or "mxfp4"
  int64_t block_rows = 0;   // fp8: weight_block_size[0] (output rows per block)
  int64_t block_cols = 0;   // fp8: weight_block_size[1] (input columns per block)
  std::string description;  // "fp8 e4m3, 128x128 blocks" for notes
};

// Reads `quantization_config` (also from a wrapper's text_config). Throws Error naming the
// config and key for: a quant_method Kiln does not read (awq, gptq, bitsandbytes, ...; it
// reads fp8 and mxfp4), an fp8 `fmt` other than e4m3, or a `weight_block_size` that is not two
// positive integers (absent: 128x128).
HfQuantization hf_quantization(const HfConfig& config);

// fp8 e4m3 with block scales -> `out` (F32: the f32 product, rounded once; BF16: that product
// rounded to nearest even, as torch's `(w.float() * s).bfloat16()`). `weight` is the e4m3
// bytes (U8) [..., rows, cols]; `scale_inv` any float dtype [..., ceil(rows/block_rows),
// ceil(cols/block_cols)] with the same leading dimensions. Throws Error naming `name` on a
// wrong dtype or scale shape.
Tensor dequantize_fp8_blocks(const Tensor& weight, const Tensor& scale_inv, int64_t block_rows,
                             int64_t block_cols, DType out, const std::string& name);

// MXFP4 -> `out` (F32 or BF16, both exact: an fp4 value times a power of two). `blocks` is U8
// [..., G, 16], `scales` U8 [..., G]; the result is [..., 32 G] (not transposed). Throws
// Error naming `name` on a wrong dtype or shape.
Tensor dequantize_mxfp4(const Tensor& blocks, const Tensor& scales, DType out,
                        const std::string& name);

// The tensors of `source` that its safetensors headers store as "F8_E4M3" (read again from
// the files; empty for other formats).
std::set<std::string> safetensors_fp8_tensors(const TensorSource& source);

// An HF checkpoint's tensors with the quantized ones dequantized on get(): fp8 weights (the
// names in `fp8_tensors`) keep their names (their `_scale_inv` companions are not listed),
// MXFP4 `X_blocks` + `X_scales` pairs read as `X` (transposed as above). Other tensors pass
// through untouched. The constructor checks every pairing and scale shape from the headers
// (no data is read) and throws Error naming the file and tensor: an fp8 tensor without
// `_scale_inv` (or the reverse), a `_blocks` without `_scales` (or the reverse), wrong scale
// shapes or dtypes, fp8 tensors in a checkpoint whose config is not fp8.
class QuantizedHfSource : public TensorSource {
 public:
  // `dequantized`: F32 or BF16. `release_mapped_inputs`: after dequantizing, drop the pages of
  // the quantized data (only when `inner` maps its files, Residency::kMapped).
  QuantizedHfSource(std::unique_ptr<TensorSource> inner, HfQuantization quantization,
                    std::set<std::string> fp8_tensors, DType dequantized,
                    bool release_mapped_inputs);
  // What later get()s dequantize to (F32 or BF16): `kiln convert` asks for F32 when the target
  // dtype is not bf16.
  void set_dequantized_dtype(DType dtype);

  std::vector<std::string> names() const override { return names_; }
  bool contains(const std::string& name) const override;
  Tensor get(const std::string& name) const override;
  Shape shape_of(const std::string& name) const override;
  DType dtype_of(const std::string& name) const override;
  std::string where() const override { return inner_->where(); }

  const TensorSource& inner() const { return *inner_; }
  const HfQuantization& quantization() const { return quantization_; }
  DType dequantized_dtype() const { return dequantized_; }
  // How many tensors are dequantized on get().
  size_t quantized_count() const { return quantized_.size(); }

 private:
  struct Quantized {
    bool mxfp4 = false;
    std::string data;   // the fp8 tensor or the _blocks tensor
    std::string scale;  // _scale_inv or _scales
    Shape shape;        // the dequantized shape
  };
  std::unique_ptr<TensorSource> inner_;
  HfQuantization quantization_;
  DType dequantized_;
  bool release_;
  std::vector<std::string> names_;
  std::set<std::string> hidden_;  // the companions (_scale_inv, _blocks, _scales)
  std::map<std::string, Quantized> quantized_;
};

// `source` seen through a QuantizedHfSource when `config` declares fp8 or mxfp4
// quantization or any of its tensors is stored as F8_E4M3 (which then is an error naming it);
// else `source` itself. Throws hf_quantization()'s errors.
std::unique_ptr<TensorSource> dequantizing_source(std::unique_ptr<TensorSource> source,
                                                  const HfConfig& config, DType dequantized,
                                                  bool release_mapped_inputs);

}  // namespace kiln
