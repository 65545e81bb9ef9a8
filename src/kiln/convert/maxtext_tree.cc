#include "kiln/convert/maxtext_tree.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <set>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "kiln/convert/maxtext_llama.h"
#include "kiln/core/error.h"
#include "kiln/io/hf_config.h"
#include "kiln/models/family.h"

namespace kiln {
namespace {

constexpr const char* kParamMapping = "checkpoint_conversion/utils/param_mapping.py";
constexpr const char* kLlamaScript =
    "checkpoint_conversion/standalone_scripts/llama_or_mistral_ckpt.py";
constexpr const char* kGemmaScript =
    "checkpoint_conversion/standalone_scripts/convert_gemma_chkpt.py";

// ---- value ops with residuals ---------------------------------------------------------------

template <typename T, typename Bits>
T bit_cast_to(Bits b) {
  T t;
  std::memcpy(&t, &b, sizeof(T));
  return t;
}

// Position of a float on the number line as an integer (adjacent floats differ by 1; both
// zeros are 0).
template <typename Bits>
int64_t ordered(Bits b) {
  constexpr Bits kSign = Bits(1) << (8 * sizeof(Bits) - 1);
  const int64_t magnitude = static_cast<int64_t>(b & ~kSign);
  return (b & kSign) ? -magnitude : magnitude;
}
template <typename Bits>
Bits from_ordered(int64_t key, Bits sign_of_zero) {
  constexpr Bits kSign = Bits(1) << (8 * sizeof(Bits) - 1);
  if (key > 0) return static_cast<Bits>(key);
  if (key < 0) return static_cast<Bits>(kSign | static_cast<Bits>(-key));
  return sign_of_zero & kSign;
}

// The element conversions as template arguments, so that the per-element loops inline them
// (through function pointers they were a call per element: a fifth of a bf16 export's time).
template <typename Bits, typename Compute, Compute (*Load)(Bits), Bits (*Store)(Compute)>
struct FloatFormat {
  static Compute load(Bits b) { return Load(b); }
  static Bits store(Compute c) { return Store(c); }
};

float load_bf16(uint16_t b) {
  return bf16_to_f32(b);
}
uint16_t store_bf16(float f) {
  return f32_to_bf16(f);
}
float load_f16(uint16_t b) {
  return f16_to_f32(b);
}
uint16_t store_f16(float f) {
  return f32_to_f16(f);
}
float load_f32(uint32_t b) {
  return bit_cast_to<float>(b);
}
uint32_t store_f32(float f) {
  return bit_cast_to<uint32_t>(f);
}
double load_f64(uint64_t b) {
  return bit_cast_to<double>(b);
}
uint64_t store_f64(double f) {
  return bit_cast_to<uint64_t>(f);
}

template <typename Fn>
void with_format(DType dtype, const std::string& name, Fn&& fn) {
  switch (dtype) {
    case DType::BF16:
      return fn(FloatFormat<uint16_t, float, load_bf16, store_bf16>{});
    case DType::F16:
      return fn(FloatFormat<uint16_t, float, load_f16, store_f16>{});
    case DType::F32:
      return fn(FloatFormat<uint32_t, float, load_f32, store_f32>{});
    case DType::F64:
      return fn(FloatFormat<uint64_t, double, load_f64, store_f64>{});
    default:
      throw Error("MaxText array '" + name + "': a value transform needs a floating dtype, not " +
                  std::string(dtype_name(dtype)));
  }
}

// The constant the op applies, as MaxText rounds it (to the array's dtype, float32 or bf16).
double op_constant(const MaxTextTransform& t, DType dtype) {
  switch (t.op) {
    case MaxTextValueOp::kDivideRounded:
      return maxtext_query_divisor(t.head_dim, dtype);
    case MaxTextValueOp::kMultiplyF32:
      return static_cast<float>(t.constant);
    case MaxTextValueOp::kMultiplyBf16:
      return bf16_to_f32(f32_to_bf16(static_cast<float>(t.constant)));
    default:
      return 1.0;
  }
}

template <typename Compute>
Compute forward(MaxTextValueOp op, Compute x, Compute c) {
  switch (op) {
    case MaxTextValueOp::kDivideRounded:
      return x / c;
    case MaxTextValueOp::kMultiplyF32:
    case MaxTextValueOp::kMultiplyBf16:
      return x * c;
    case MaxTextValueOp::kAddOne:
      return x + Compute(1);
    default:
      return x;
  }
}
template <typename Compute>
Compute inverse(MaxTextValueOp op, Compute y, Compute c) {
  switch (op) {
    case MaxTextValueOp::kDivideRounded:
      return y * c;
    case MaxTextValueOp::kMultiplyF32:
    case MaxTextValueOp::kMultiplyBf16:
      return y / c;
    case MaxTextValueOp::kAddOne:
      return y - Compute(1);
    default:
      return y;
  }
}

// A new contiguous tensor (contents unspecified when from `scratch`).
Tensor new_tensor(MaxTextScratch* scratch, DType dtype, const Shape& shape) {
  return scratch ? scratch->take(dtype, shape) : Tensor::zeros(dtype, shape);
}

// Applies the op to a contiguous tensor; the residual (ordered distance from the inverse of
// the result to the original, per element) goes to I8 when it fits, else I32.
// With `in_place` (a writable tensor no one else views) the result overwrites `source`.
MaxTextValue apply_op(const MaxTextTransform& t, const Tensor& source, const std::string& name,
                      MaxTextScratch* scratch = nullptr, bool in_place = false) {
  MaxTextValue out;
  out.array = in_place ? source : new_tensor(scratch, source.dtype(), source.shape());
  const bool wide = t.op == MaxTextValueOp::kAddOne;
  out.residual = new_tensor(scratch, wide ? DType::I32 : DType::I8, source.shape());
  const double c = op_constant(t, source.dtype());
  // The distance goes straight into the residual (no per-element int64 buffer: that was 8
  // bytes of fresh memory per element, 134 MB per query kernel of an 8B model).
  int32_t* wide_r = wide ? out.residual.mutable_data<int32_t>() : nullptr;
  int8_t* narrow_r = wide ? nullptr : out.residual.mutable_data<int8_t>();
  with_format(source.dtype(), name,
              [&]<typename Bits, typename Compute, Compute (*L)(Bits), Bits (*S)(Compute)>(
                  FloatFormat<Bits, Compute, L, S> f) {
                const Bits* in = static_cast<const Bits*>(source.raw());
                Bits* y = static_cast<Bits*>(out.array.mutable_raw());
                const Compute cc = static_cast<Compute>(c);
                for (int64_t i = 0; i < source.numel(); ++i) {
                  const Bits x = in[i];  // before y[i] overwrites it (in place)
                  y[i] = f.store(forward(t.op, f.load(x), cc));
                  const Bits back = f.store(inverse(t.op, f.load(y[i]), cc));
                  const int64_t distance = ordered(x) - ordered(back);
                  if (distance < INT32_MIN || distance > INT32_MAX)
                    throw Error("tensor '" + name + "': element " + std::to_string(i) +
                                " cannot be transformed reversibly (NaN or infinity?)");
                  if (wide) {
                    wide_r[i] = static_cast<int32_t>(distance);
                    continue;
                  }
                  if (distance < -127 || distance > 127)
                    throw Error("tensor '" + name + "': element " + std::to_string(i) +
                                " cannot be scaled reversibly (NaN or infinity?)");
                  narrow_r[i] = static_cast<int8_t>(distance);
                }
              });
  return out;
}

Tensor undo_op(const MaxTextTransform& t, const Tensor& array, const Tensor& residual,
               const std::string& name) {
  Tensor out = Tensor::zeros(array.dtype(), array.shape());
  const double c = op_constant(t, array.dtype());
  const Tensor r = residual.defined() ? residual.contiguous() : Tensor();
  check(!r.defined() ||
            ((r.dtype() == DType::I8 || r.dtype() == DType::I32) && r.shape() == array.shape()),
        "MaxText array '" + name + "': residual of shape " + r.shape_string() + " (" +
            std::string(r.defined() ? dtype_name(r.dtype()) : "none") + ") does not match " +
            array.shape_string());
  with_format(array.dtype(), name,
              [&]<typename Bits, typename Compute, Compute (*L)(Bits), Bits (*S)(Compute)>(
                  FloatFormat<Bits, Compute, L, S> f) {
                const Bits* y = static_cast<const Bits*>(array.raw());
                Bits* x = static_cast<Bits*>(out.mutable_raw());
                const Compute cc = static_cast<Compute>(c);
                for (int64_t i = 0; i < array.numel(); ++i) {
                  const Bits back = f.store(inverse(t.op, f.load(y[i]), cc));
                  int64_t d = 0;
                  if (r.defined())
                    d = r.dtype() == DType::I8 ? r.data<int8_t>()[i] : r.data<int32_t>()[i];
                  x[i] = d != 0 ? from_ordered<Bits>(ordered(back) + d, back) : back;
                }
              });
  return out;
}

std::string shape_text(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// ---- reshapes ----------------------------------------------------------------------------

// Copies the [rows, cols] matrices at `src` (`batch` of them, back to back) transposed to
// `dst`, in tiles that fit the cache: one pass over the source, in its order, tile row by tile
// row (a mapped source is read sequentially), instead of an element-wise strided gather.
// The tiles of 64 x 64 (fewer at the edges) in that order: tile(src, dst, r0, r1, c0, c1) with
// src and dst at the current matrix.
template <typename T, typename Tile>
void for_each_tile(const T* src, T* dst, int64_t batch, int64_t rows, int64_t cols, Tile&& tile) {
  constexpr int64_t kTile = 64;
  for (int64_t b = 0; b < batch; ++b, src += rows * cols, dst += rows * cols)
    for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
      const int64_t r1 = std::min(rows, r0 + kTile);
      for (int64_t c0 = 0; c0 < cols; c0 += kTile)
        tile(src, dst, r0, r1, c0, std::min(cols, c0 + kTile));
    }
}

template <typename T>
void transpose_tiles(const T* src, T* dst, int64_t batch, int64_t rows, int64_t cols) {
  for_each_tile(src, dst, batch, rows, cols,
                [&](const T* s, T* d, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
                  for (int64_t c = c0; c < c1; ++c)
                    for (int64_t r = r0; r < r1; ++r) d[c * rows + r] = s[r * cols + c];
                });
}

#if defined(__SSE2__)
// The 8x8 block of 16-bit elements at `src` (rows `src_stride` apart) transposed to `dst`
// (rows `dst_stride` apart): three rounds of interleaving in registers.
inline void transpose_8x8_u16(const uint16_t* src, int64_t src_stride, uint16_t* dst,
                              int64_t dst_stride) {
  __m128i a[8], b[8];
  for (int i = 0; i < 8; ++i)
    a[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i * src_stride));
  for (int i = 0; i < 4; ++i) {  // pairs of rows, element by element
    b[2 * i] = _mm_unpacklo_epi16(a[2 * i], a[2 * i + 1]);
    b[2 * i + 1] = _mm_unpackhi_epi16(a[2 * i], a[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i)  // quads of rows, pair by pair
    for (int h = 0; h < 2; ++h) {
      a[4 * i + 2 * h] = _mm_unpacklo_epi32(b[4 * i + h], b[4 * i + h + 2]);
      a[4 * i + 2 * h + 1] = _mm_unpackhi_epi32(b[4 * i + h], b[4 * i + h + 2]);
    }
  for (int k = 0; k < 4; ++k) {  // all eight rows, quad by quad: column 2k and 2k + 1
    const __m128i lo = _mm_unpacklo_epi64(a[k], a[k + 4]);
    const __m128i hi = _mm_unpackhi_epi64(a[k], a[k + 4]);
    const int column = 2 * k;
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + column * dst_stride), lo);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (column + 1) * dst_stride), hi);
  }
}

// 16-bit elements (bf16, f16): 8x8 blocks in registers inside each tile, the edges by element.
template <>
void transpose_tiles<uint16_t>(const uint16_t* src, uint16_t* dst, int64_t batch, int64_t rows,
                               int64_t cols) {
  for_each_tile(
      src, dst, batch, rows, cols,
      [&](const uint16_t* s, uint16_t* d, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
        const int64_t r8 = r0 + (r1 - r0) / 8 * 8, c8 = c0 + (c1 - c0) / 8 * 8;
        for (int64_t r = r0; r < r8; r += 8)
          for (int64_t c = c0; c < c8; c += 8)
            transpose_8x8_u16(s + r * cols + c, cols, d + c * rows + r, rows);
        // the edges: rows r8.., and columns c8.. of all
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t r = c < c8 ? r8 : r0; r < r1; ++r) d[c * rows + r] = s[r * cols + c];
      });
}
#endif

// `t` viewed as [batch, rows, cols] (its last two axes, any leading ones flattened) with the
// last two axes swapped: a new contiguous [..., cols, rows] tensor.
Tensor transpose_last_two(const Tensor& t, MaxTextScratch* scratch = nullptr) {
  const int n = t.ndim();
  const int64_t rows = t.dim(n - 2), cols = t.dim(n - 1);
  if (is_quantized(t.dtype())) return t.transpose(n - 2, n - 1).contiguous(true);
  const Tensor src = t.contiguous();
  Shape shape = t.shape();
  std::swap(shape[n - 2], shape[n - 1]);
  Tensor out = new_tensor(scratch, t.dtype(), shape);
  const int64_t batch = rows * cols == 0 ? 0 : src.numel() / (rows * cols);
  switch (dtype_size(t.dtype())) {
    case 1:
      transpose_tiles(src.data<uint8_t>(), out.mutable_data<uint8_t>(), batch, rows, cols);
      break;
    case 2:
      transpose_tiles(src.data<uint16_t>(), out.mutable_data<uint16_t>(), batch, rows, cols);
      break;
    case 4:
      transpose_tiles(src.data<uint32_t>(), out.mutable_data<uint32_t>(), batch, rows, cols);
      break;
    case 8:
      transpose_tiles(src.data<uint64_t>(), out.mutable_data<uint64_t>(), batch, rows, cols);
      break;
    default:
      return t.transpose(n - 2, n - 1).contiguous(true);
  }
  return out;
}

Tensor transposed_copy(const Tensor& matrix, MaxTextScratch* scratch = nullptr) {
  check(matrix.ndim() == 2, "MaxText tree: transposing a tensor of rank " +
                                std::to_string(matrix.ndim()) + ", expected a matrix");
  return transpose_last_two(matrix, scratch);
}

// Swaps the two middle axes of `t` viewed as [outer, a, b] (b = size of the last axis / a).
Tensor swap_last_axis_blocks(const Tensor& t, int64_t a) {
  const int64_t last = t.dim(t.ndim() - 1);
  return transpose_last_two(t.contiguous().reshape({-1, a, last / a})).reshape(t.shape());
}

// HF's rotate-half order -> interleaved pairs in place: each run of the last axis [a_0 ..
// a_{h-1}, b_0 .. b_{h-1}] becomes [a_0, b_0, a_1, b_1, ...] (swap_last_axis_blocks(t, 2)
// without a new tensor; 16-bit elements eight pairs at a time in SSE2 registers).
template <typename T>
void interleave_halves(T* data, int64_t runs, int64_t last) {
  const int64_t h = last / 2;
  std::vector<T> run(static_cast<size_t>(last));
  for (int64_t r = 0; r < runs; ++r, data += last) {
    std::memcpy(run.data(), data, static_cast<size_t>(last) * sizeof(T));
    int64_t j = 0;
#if defined(__SSE2__)
    if constexpr (sizeof(T) == 2) {
      for (; j + 8 <= h; j += 8) {
        const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(run.data() + j));
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(run.data() + h + j));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(data + 2 * j), _mm_unpacklo_epi16(a, b));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(data + 2 * j + 8), _mm_unpackhi_epi16(a, b));
      }
    }
#endif
    for (; j < h; ++j) {
      data[2 * j] = run[j];
      data[2 * j + 1] = run[h + j];
    }
  }
}

// swap_last_axis_blocks(x, 2), in place when `x` is a contiguous tensor of 1 to 8-byte
// elements that only the caller views (not `input`'s memory).
Tensor rope_pairs_of(const Tensor& x, const Tensor& input) {
  const int64_t last = x.ndim() ? x.dim(x.ndim() - 1) : 0;
  if (!x.writable() || !x.is_contiguous() || x.storage() == input.storage() || last % 2 != 0 ||
      is_quantized(x.dtype()) || x.numel() == 0)
    return swap_last_axis_blocks(x, 2);
  Tensor out = x;
  const int64_t runs = x.numel() / last;
  switch (dtype_size(x.dtype())) {
    case 1:
      interleave_halves(out.mutable_data<uint8_t>(), runs, last);
      return out;
    case 2:
      interleave_halves(out.mutable_data<uint16_t>(), runs, last);
      return out;
    case 4:
      interleave_halves(out.mutable_data<uint32_t>(), runs, last);
      return out;
    case 8:
      interleave_halves(out.mutable_data<uint64_t>(), runs, last);
      return out;
    default:
      return swap_last_axis_blocks(x, 2);
  }
}

// ---- the family tables ---------------------------------------------------------------------

// How Kiln names a layer's parameter; what MaxText calls it and how it transforms.
struct ParamRule {
  std::string maxtext;  // MaxText's name inside the layer ("" = Kiln's)
  MaxTextTransform transform;
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

struct FamilyRules {
  std::string source;  // MaxText file and function
  // Query scale: kNone, kDivideRounded (sqrt(D) in the dtype), kMultiplyF32 (1/sqrt(D)).
  MaxTextValueOp query_op = MaxTextValueOp::kNone;
  bool rope_pairs = false;
  bool gemma_norms = false;                         // norms stored as 1 + w
  MaxTextValueOp embed_op = MaxTextValueOp::kNone;  // embedding * sqrt(hidden)
  std::map<std::string, std::string> renames;       // Kiln per-layer prefix -> MaxText's
  std::string moe_block;                            // MaxText's MoE module name
  bool local_global_pairs = false;                  // Gemma 2: two HF layers per MaxText layer
  int64_t scan_block = 0;        // Gemma 3, gpt-oss: scanned in blocks of this many layers
  bool block_remainder = false;  // Gemma 3: layers past the last whole block stay unstacked
  std::string attention = "self_attention";  // MaxText's attention module
  std::string shared_block;                  // DeepSeek: the shared experts' module
  bool dense_moe_groups = false;             // DeepSeek: dense_layers and moe_layers
};

const std::set<std::string>& maxtext_families() {
  // Families with a MaxText decoder block (MaxText's DecoderBlockType / model configs).
  static const std::set<std::string> kHas = {
      "llama",  "mistral",     "qwen2",  "qwen3",       "qwen3_moe", "mixtral", "gemma",
      "gemma2", "gemma3_text", "gemma3", "deepseek_v3", "gpt_oss",   "llama4",  "llama4_text"};
  return kHas;
}

FamilyRules rules_for(const ModelSpec& spec, const Json& config) {
  const std::string& f = spec.family;
  FamilyRules r;
  if (f == "llama" || f == "mistral" || f == "qwen2" || f == "mixtral") {
    r.source = std::string(kLlamaScript) + ": _convert_huggingface_to_jax_weights";
    r.query_op = MaxTextValueOp::kDivideRounded;
    r.rope_pairs = spec.layers[0].attention.rope.type == RopeType::kLlama3;
    if (f == "mixtral") {
      r.moe_block = "MoeBlock_0";
      r.source += "; " + std::string(kParamMapping) + ": MIXTRAL_MAXTEXT_TO_HF_PARAM_MAPPING";
    }
    return r;
  }
  if (f == "qwen3" || f == "qwen3_moe") {
    r.source = std::string(kParamMapping) +
               ": QWEN_MAXTEXT_TO_HF_PARAM_MAPPING, QWEN_MAXTEXT_TO_HF_PARAM_HOOK_FN";
    r.moe_block = "moe_block";
    return r;
  }
  if (f == "gemma") {
    r.source = std::string(kGemmaScript) + ": main";
    r.query_op = MaxTextValueOp::kMultiplyF32;
    r.gemma_norms = true;
    r.embed_op = MaxTextValueOp::kMultiplyF32;
    r.renames = {{"pre_self_attention_layer_norm", "pre_self_attention_norm"},
                 {"post_self_attention_layer_norm", "pre_ffw_norm"}};
    return r;
  }
  if (f == "gemma2") {
    r.source = std::string(kParamMapping) +
               ": GEMMA2_MAXTEXT_TO_HF_PARAM_MAPPING, GEMMA2_MAXTEXT_TO_HF_PARAM_HOOK_FN";
    r.query_op = MaxTextValueOp::kMultiplyF32;
    r.gemma_norms = true;
    r.embed_op = MaxTextValueOp::kMultiplyF32;
    r.renames = {{"pre_self_attention_layer_norm", "pre_self_attention_norm"},
                 {"post_self_attention_layer_norm", "post_self_attention_norm"}};
    r.local_global_pairs = true;
    return r;
  }
  if (f == "gemma3_text" || f == "gemma3") {
    r.source = std::string(kParamMapping) +
               ": GEMMA3_MAXTEXT_TO_HF_PARAM_MAPPING, GEMMA3_MAXTEXT_TO_HF_PARAM_HOOK_FN";
    r.gemma_norms = true;
    r.embed_op = MaxTextValueOp::kMultiplyBf16;
    r.renames = {{"pre_self_attention_layer_norm", "pre_self_attention_norm"},
                 {"post_self_attention_layer_norm", "post_self_attention_norm"}};
    r.scan_block = 6;
    r.block_remainder = true;
    return r;
  }
  if (f == "deepseek_v3") {
    r.source = std::string(kParamMapping) +
               ": DEEPSEEK_MAXTEXT_TO_HF_PARAM_MAPPING, DEEPSEEK_MAXTEXT_TO_HF_PARAM_HOOK_FN";
    r.moe_block = "DeepSeekMoeBlock_0/MoeBlock_0";
    r.shared_block = "DeepSeekMoeBlock_0/shared_experts";
    r.dense_moe_groups = true;
    return r;
  }
  if (f == "gpt_oss") {
    r.source = std::string(kParamMapping) +
               ": GPT_OSS_MAXTEXT_TO_HF_PARAM_MAPPING, GPT_OSS_TO_HF_PARAM_HOOK_FN";
    r.moe_block = "GptOssMlp";
    r.attention = "GptOssAttention";
    r.scan_block = 2;  // inhomogeneous_layer_cycle_interval in configs/models/gpt-oss-*.yml
    return r;
  }
  if (f == "llama4_text" || f == "llama4") {
    r.source = std::string(kLlamaScript) +
               ": _convert_huggingface_to_jax_weights (scale_query False for llama4); "
               "standalone_scripts/llama4_ckpt_unscanned.py";
    r.moe_block = "Llama4MoEBlock_0/MoeBlock_0";
    r.shared_block = "Llama4MoEBlock_0/shared_experts";
    // inhomogeneous_layer_cycle_interval: the period of the NoPE and MoE patterns
    // (4 in configs/models/llama4-17b-*.yml).
    const Json& text = config.contains("text_config") ? config["text_config"] : config;
    const int64_t nope = text.value("no_rope_layer_interval", int64_t{4});
    const int64_t moe = text.value("interleave_moe_layer_step", int64_t{1});
    r.scan_block = std::lcm(nope, moe);
    return r;
  }
  if (maxtext_families().count(f))
    throw Error("MaxText's " + f +
                " tree is not mapped by Kiln yet (MaxText has it; export with --orbax-tree plain "
                "for Kiln's own names, which MaxText cannot load)");
  throw Error("MaxText has no " + f +
              " (no MaxText decoder block or converter for it); use --orbax-tree plain for an "
              "Orbax checkpoint in Kiln's own tree, which MaxText cannot load");
}

// Kiln's per-layer parameters of layer `layer` with their shapes (HF layout, as the family
// files store them).
std::vector<std::pair<std::string, Shape>> kiln_layer_params(const ModelSpec& spec,
                                                             const LayerSpec& layer) {
  const AttentionSpec& a = layer.attention;
  const int64_t e = spec.hidden_size, d = a.head_dim, v = a.value_head_dim ? a.value_head_dim : d;
  std::vector<std::pair<std::string, Shape>> p;
  p.push_back({"pre_self_attention_layer_norm/scale", {e}});
  if (a.is_mla()) {
    const int64_t h = a.num_heads, rq = a.q_lora_rank, rkv = a.kv_lora_rank;
    if (rq > 0) {
      p.push_back({"self_attention/wq_a/kernel", {rq, e}});
      p.push_back({"self_attention/q_norm/scale", {rq}});
      p.push_back({"self_attention/wq_b/kernel", {h * d, rq}});
    } else {
      p.push_back({"self_attention/query/kernel", {h * d, e}});
    }
    p.push_back({"self_attention/wkv_a/kernel", {rkv + a.qk_rope_head_dim, e}});
    p.push_back({"self_attention/kv_norm/scale", {rkv}});
    p.push_back({"self_attention/wkv_b/kernel", {h * (a.qk_nope_head_dim + v), rkv}});
    p.push_back({"self_attention/out/kernel", {e, h * v}});
    p.push_back({"post_self_attention_layer_norm/scale", {e}});
  } else {
    p.push_back({"self_attention/query/kernel", {a.num_heads * d, e}});
    p.push_back({"self_attention/key/kernel", {a.num_kv_heads * d, e}});
    p.push_back({"self_attention/value/kernel", {a.num_kv_heads * v, e}});
    p.push_back({"self_attention/out/kernel", {e, a.num_heads * v}});
    if (a.q_bias) p.push_back({"self_attention/query/bias", {a.num_heads * d}});
    if (a.k_bias) p.push_back({"self_attention/key/bias", {a.num_kv_heads * d}});
    if (a.v_bias) p.push_back({"self_attention/value/bias", {a.num_kv_heads * v}});
    if (a.o_bias) p.push_back({"self_attention/out/bias", {e}});
    if (a.qk_norm == QkNormKind::kPerHead) {
      p.push_back({"self_attention/query_norm/scale", {d}});
      p.push_back({"self_attention/key_norm/scale", {d}});
    }
    if (a.sinks) p.push_back({"self_attention/sinks", {a.num_heads}});
    p.push_back({"post_self_attention_layer_norm/scale", {e}});
  }
  if (layer.placement == NormPlacement::kSandwich) {
    p.push_back({"pre_ffw_norm/scale", {e}});
    p.push_back({"post_ffw_norm/scale", {e}});
  }
  if (layer.moe.num_experts > 0) {
    const int64_t x = layer.moe.num_experts, i = layer.moe.expert_intermediate;
    p.push_back({"mlp/gate/kernel", {x, e}});
    if (layer.moe.score_correction_bias) p.push_back({"mlp/gate/score_correction_bias", {x}});
    if (layer.moe.router_bias) p.push_back({"mlp/gate/bias", {x}});
    p.push_back({"mlp/wi_0/kernel", {x, i, e}});
    p.push_back({"mlp/wi_1/kernel", {x, i, e}});
    p.push_back({"mlp/wo/kernel", {x, e, i}});
    if (layer.moe.expert_bias) {
      p.push_back({"mlp/wi_0/bias", {x, i}});
      p.push_back({"mlp/wi_1/bias", {x, i}});
      p.push_back({"mlp/wo/bias", {x, e}});
    }
    if (layer.moe.num_shared_experts > 0) {
      const int64_t s = layer.moe.shared_intermediate;
      p.push_back({"mlp/shared_experts/wi_0/kernel", {s, e}});
      p.push_back({"mlp/shared_experts/wi_1/kernel", {s, e}});
      p.push_back({"mlp/shared_experts/wo/kernel", {e, s}});
    }
  } else {
    const int64_t m = layer.mlp.intermediate;
    p.push_back({"mlp/wi_0/kernel", {m, e}});
    p.push_back({"mlp/wi_1/kernel", {m, e}});
    p.push_back({"mlp/wo/kernel", {e, m}});
  }
  return p;
}

// The rule for one Kiln per-layer parameter.
ParamRule layer_rule(const FamilyRules& r, const ModelSpec& spec, const LayerSpec& layer,
                     const std::string& param) {
  const AttentionSpec& a = layer.attention;
  ParamRule rule;
  MaxTextTransform& t = rule.transform;
  t.head_dim = a.head_dim;
  const bool q = param.rfind("self_attention/query/", 0) == 0;
  const bool k = param.rfind("self_attention/key/", 0) == 0;
  const bool v = param.rfind("self_attention/value/", 0) == 0;
  if ((q || k || v) && ends_with(param, "/kernel")) {
    t.reshape = MaxTextReshape::kHeadsIn;
  } else if ((q || k || v) && ends_with(param, "/bias")) {
    t.reshape = MaxTextReshape::kHeadsBias;
  } else if (param == "self_attention/out/kernel") {
    t.reshape = MaxTextReshape::kHeadsOut;
  } else if (param == "self_attention/wq_b/kernel" || param == "self_attention/wkv_b/kernel") {
    t.reshape = MaxTextReshape::kHeadsIn;  // [Rank, heads, dims]
  } else if (param == "self_attention/wq_a/kernel" || param == "self_attention/wkv_a/kernel") {
    t.reshape = MaxTextReshape::kTransposed;
  }
  t.heads = k || v ? a.num_kv_heads : a.num_heads;
  if ((q || k) && r.rope_pairs) t.rope_pairs = true;
  if (q && r.query_op != MaxTextValueOp::kNone) {
    t.op = r.query_op;
    t.constant = r.query_op == MaxTextValueOp::kDivideRounded
                     ? std::sqrt(static_cast<double>(a.head_dim))
                     : 1.0 / std::sqrt(static_cast<double>(a.head_dim));
  }
  if (ends_with(param, "/scale") && r.gemma_norms) t.op = MaxTextValueOp::kAddOne;
  const bool moe = layer.moe.num_experts > 0;
  if (param.rfind("mlp/shared_experts/", 0) == 0) {
    rule.maxtext = r.shared_block + param.substr(std::string("mlp/shared_experts").size());
    t.reshape = MaxTextReshape::kTransposed;
  } else if (param.rfind("mlp/", 0) == 0) {
    if (moe) {
      const std::string leaf = param.substr(4);  // gate/kernel, wi_0/kernel, wi_0/bias, ...
      const std::string module = leaf.substr(0, leaf.find('/'));
      if (leaf == "gate/kernel") {
        rule.maxtext = r.moe_block + "/gate/kernel";
        t.reshape = MaxTextReshape::kTransposed;
      } else if (leaf == "gate/bias" || leaf == "gate/score_correction_bias") {
        rule.maxtext = r.moe_block + "/gate/bias";
      } else if (ends_with(leaf, "/bias")) {
        rule.maxtext = r.moe_block + "/" + module + "_bias";  // wi_0_bias [X, I]
      } else {
        rule.maxtext = r.moe_block + "/" + module;  // stacked experts: no /kernel
        t.reshape = MaxTextReshape::kExpertsTransposed;
      }
    } else {
      t.reshape = MaxTextReshape::kTransposed;
    }
  }
  if (rule.maxtext.empty() && r.attention != "self_attention" &&
      param.rfind("self_attention/", 0) == 0)
    rule.maxtext = r.attention + param.substr(std::string("self_attention").size());
  if (rule.maxtext.empty()) {
    rule.maxtext = param;
    for (const auto& [from, to] : r.renames)
      if (param.rfind(from + "/", 0) == 0) rule.maxtext = to + param.substr(from.size());
  }
  (void)spec;
  return rule;
}

// MaxText's name of a Gemma 2 parameter in the local (sliding) or global layer of a pair:
// the suffix goes on the module (self_attention_local/query/kernel, mlp_global/wo/kernel,
// pre_ffw_norm_local/scale).
std::string with_pair_suffix(const std::string& name, bool local) {
  const size_t slash = name.find('/');
  return name.substr(0, slash) + (local ? "_local" : "_global") + name.substr(slash);
}

Shape maxtext_shape_of(const MaxTextTransform& t, const Shape& kiln) {
  switch (t.reshape) {
    case MaxTextReshape::kSame:
      return kiln;
    case MaxTextReshape::kTransposed:
      return {kiln[1], kiln[0]};
    case MaxTextReshape::kHeadsIn:
      return {kiln[1], t.heads, kiln[0] / t.heads};
    case MaxTextReshape::kHeadsOut:
      return {t.heads, kiln[1] / t.heads, kiln[0]};
    case MaxTextReshape::kHeadsBias:
      return {t.heads, kiln[0] / t.heads};
    case MaxTextReshape::kExpertsTransposed:
      return {kiln[0], kiln[2], kiln[1]};
  }
  return kiln;
}

}  // namespace

std::string MaxTextTransform::op_description() const {
  switch (op) {
    case MaxTextValueOp::kNone:
      return "";
    case MaxTextValueOp::kDivideRounded:
      return "x / sqrt(" + std::to_string(head_dim) + ") rounded to the array's dtype";
    case MaxTextValueOp::kMultiplyF32:
      return "x * float32(" + std::to_string(constant) + ")";
    case MaxTextValueOp::kMultiplyBf16:
      return "x * bfloat16(" + std::to_string(constant) + ")";
    case MaxTextValueOp::kAddOne:
      return "1 + x";
  }
  return "";
}

Shape MaxTextArraySpec::stored_shape() const {
  Shape s = maxtext_shape;
  if (stacked) s.insert(s.begin() + (s.empty() ? 0 : 1), static_cast<int64_t>(layers.size()));
  return s;
}

bool MaxTextTree::maxtext_has(const std::string& family) {
  return maxtext_families().count(family) > 0;
}

int64_t maxtext_default_vocab(const std::string& family, int64_t hf_vocab) {
  if (family == "gemma" || family == "gemma2") return hf_vocab == 256000 ? 256128 : hf_vocab;
  if (family == "gemma3" || family == "gemma3_text")
    return hf_vocab == 262208 || hf_vocab == 262144 ? 262144 : hf_vocab;
  return 0;
}

MaxTextTree MaxTextTree::build(const Json& config, bool scanned, int64_t maxtext_vocab) {
  check(config.is_object() && !config.empty(),
        "MaxText tree: the model's config.json is needed to know its family");
  MaxTextTree tree;
  tree.spec_ = spec_from_config(HfConfig::from_json(config, "config.json"));
  tree.scanned_ = scanned;
  const ModelSpec& spec = tree.spec_;
  tree.family_ = spec.family;
  check(!spec.layers.empty(), "MaxText tree: the model has no layers");
  const FamilyRules r = rules_for(spec, config);
  for (const LayerSpec& layer : spec.layers) {
    const AttentionSpec& a = layer.attention;
    const bool mla_ok =
        !a.is_mla() || (spec.family == "deepseek_v3" && !a.q_bias && !a.k_bias && !a.o_bias);
    check(mla_ok && a.qk_norm != QkNormKind::kWholeProjection &&
              (a.qk_norm != QkNormKind::kL2 || r.shared_block.rfind("Llama4", 0) == 0) &&
              (!a.rope.interleaved || a.is_mla() || r.shared_block.rfind("Llama4", 0) == 0) &&
              (a.is_mla() || a.rope.rotary_dim == 0 || a.rope.rotary_dim == a.head_dim) &&
              (!a.sinks || spec.family == "gpt_oss") &&
              (layer.moe.num_experts == 0 || !r.moe_block.empty()) &&
              (layer.moe.num_experts > 0 || layer.mlp.gated) &&
              (layer.moe.num_shared_experts == 0 || !r.shared_block.empty()) &&
              !layer.moe.shared_expert_gate && !layer.mlp.bias,
          "MaxText tree: this " + spec.family +
              " model has a layer shape Kiln cannot map to MaxText's tree");
  }
  int64_t dense_prefix = 0;  // DeepSeek: the leading dense layers
  if (r.dense_moe_groups) {
    while (dense_prefix < spec.num_layers() && spec.layers[dense_prefix].moe.num_experts == 0)
      ++dense_prefix;
    for (int64_t i = dense_prefix; i < spec.num_layers(); ++i)
      check(spec.layers[i].moe.num_experts > 0,
            "MaxText tree: DeepSeek's dense layers must all precede its MoE layers (layer " +
                std::to_string(i) + ")");
  }
  auto top = [&](const std::string& kiln, Shape shape, MaxTextTransform t) {
    MaxTextArraySpec s;
    s.path = kiln;
    s.kiln_param = kiln;
    s.transform = t;
    s.kiln_shape = shape;
    s.maxtext_shape = maxtext_shape_of(t, shape);
    s.source = r.source;
    tree.arrays_.push_back(s);
  };
  MaxTextTransform embed;
  if (r.embed_op != MaxTextValueOp::kNone) {
    embed.op = r.embed_op;
    embed.constant = std::sqrt(static_cast<double>(spec.hidden_size));
  }
  top("token_embedder/embedding", {spec.vocab_size, spec.hidden_size}, embed);
  {
    // Gemma: MaxText's embedding has MaxText's vocab_size rows (param_mapping.py:
    // GEMMA2_MAXTEXT_TO_HF_PARAM_HOOK_FN.pad_hf_embedding_layer pads zeros,
    // GEMMA3_MAXTEXT_TO_HF_PARAM_HOOK_FN.pad_and_scale_embedding pads or truncates).
    const int64_t fallback = maxtext_default_vocab(spec.family, spec.vocab_size);
    check(maxtext_vocab <= 0 || maxtext_vocab == spec.vocab_size || fallback > 0,
          "MaxText tree: a MaxText vocab size differing from the model's is a Gemma padding; "
          "MaxText's " +
              spec.family + " converter keeps the model's " + std::to_string(spec.vocab_size) +
              " rows");
    tree.maxtext_vocab_ = maxtext_vocab > 0 ? maxtext_vocab : fallback;
    if (tree.maxtext_vocab_ <= 0) tree.maxtext_vocab_ = spec.vocab_size;
    MaxTextArraySpec& e = tree.arrays_.back();
    if (tree.maxtext_vocab_ != spec.vocab_size) {
      e.maxtext_rows = tree.maxtext_vocab_;
      e.maxtext_shape[0] = tree.maxtext_vocab_;
    }
  }
  MaxTextTransform norm;
  if (r.gemma_norms) norm.op = MaxTextValueOp::kAddOne;
  top("decoder/decoder_norm/scale", {spec.hidden_size}, norm);
  if (!spec.tie_word_embeddings) {
    MaxTextTransform lm;
    lm.reshape = MaxTextReshape::kTransposed;
    top("decoder/logits_dense/kernel", {spec.vocab_size, spec.hidden_size}, lm);
  }
  // Layer arrays keyed by path, in first-seen order.
  std::map<std::string, size_t> index;
  const int64_t n = spec.num_layers();
  if (r.local_global_pairs)
    check(n % 2 == 0, "MaxText tree: Gemma 2 layers come in (local, global) pairs; " +
                          std::to_string(n) + " layers");
  const int64_t block = r.scan_block;
  const int64_t scanned_layers = block > 0 ? n - n % block : n;
  if (block > 0 && scanned && !r.block_remainder)
    check(n % block == 0, "MaxText tree: MaxText scans " + spec.family + " in blocks of " +
                              std::to_string(block) + " layers; " + std::to_string(n) +
                              " layers do not divide (export unscanned)");
  for (int64_t i = 0; i < n; ++i) {
    const LayerSpec& layer = spec.layers[i];
    if (r.local_global_pairs)
      check((i % 2 == 0) == (layer.kind == LayerKind::kSlidingAttention),
            "MaxText tree: Gemma 2 needs sliding layers at even indices (layer " +
                std::to_string(i) + ")");
    for (const auto& [param, shape] : kiln_layer_params(spec, layer)) {
      const ParamRule rule = layer_rule(r, spec, layer, param);
      std::string path;
      bool stacked = false;
      std::string name = rule.maxtext;
      if (r.local_global_pairs) name = with_pair_suffix(name, i % 2 == 0);
      if (r.dense_moe_groups) {
        const bool dense = i < dense_prefix;
        const std::string group = dense ? "dense_layers" : "moe_layers";
        path = "decoder/" + group +
               (scanned ? "" : "_" + std::to_string(dense ? i : i - dense_prefix)) + "/" + name;
        stacked = scanned;
      } else if (!scanned) {
        path = "decoder/layers_" + std::to_string(r.local_global_pairs ? i / 2 : i) + "/" + name;
      } else if (block > 0) {
        if (i < scanned_layers) {
          path = "decoder/layers/layers_" + std::to_string(i % block) + "/" + name;
          stacked = true;
        } else {
          path =
              "decoder/layers_remainder/layers_" + std::to_string(i - scanned_layers) + "/" + name;
        }
      } else {
        path = "decoder/layers/" + name;
        stacked = true;
      }
      auto it = index.find(path);
      if (it == index.end()) {
        MaxTextArraySpec s;
        s.path = path;
        s.kiln_param = param;
        s.stacked = stacked;
        s.transform = rule.transform;
        s.kiln_shape = shape;
        s.maxtext_shape = maxtext_shape_of(rule.transform, shape);
        s.source = r.source;
        index[path] = tree.arrays_.size();
        tree.arrays_.push_back(s);
        it = index.find(path);
      }
      MaxTextArraySpec& s = tree.arrays_[it->second];
      check(s.kiln_param == param && s.kiln_shape == shape,
            "MaxText tree: layer " + std::to_string(i) + "'s " + param +
                " does not stack with the other layers of " + path);
      s.layers.push_back(i);
    }
  }
  return tree;
}

std::vector<MaxTextValueChange> MaxTextTree::value_changes(DType dtype) const {
  std::vector<MaxTextValueChange> changes;
  std::set<std::string> seen;
  for (const MaxTextArraySpec& a : arrays_) {
    const MaxTextTransform& t = a.transform;
    if (t.op == MaxTextValueOp::kNone) continue;
    MaxTextValueChange c;
    c.param = a.kiln_param;
    c.what = t.op_description();
    if (t.op == MaxTextValueOp::kAddOne) {
      c.lossy = true;
      c.what += " (the bits of w below the last place of 1 + w are rounded away)";
    } else {
      const double k = op_constant(t, dtype);
      int exponent = 0;
      const bool power_of_two = std::frexp(k, &exponent) == 0.5;
      c.lossy = !power_of_two;
      c.what += power_of_two ? " (a power of two in " + std::string(dtype_name(dtype)) +
                                   ": exact for normal values)"
                             : " (" + std::to_string(k) + " in " + std::string(dtype_name(dtype)) +
                                   ": each value rounded)";
    }
    if (seen.insert(c.param + c.what).second) changes.push_back(c);
  }
  for (const MaxTextArraySpec& a : arrays_) {
    if (a.maxtext_rows <= 0 || a.maxtext_rows == a.kiln_shape[0]) continue;
    const int64_t rows = a.kiln_shape[0];
    MaxTextValueChange c;
    c.param = a.kiln_param;
    if (a.maxtext_rows > rows) {
      c.what = "padded from the model's " + std::to_string(rows) +
               " rows to MaxText's vocab_size " + std::to_string(a.maxtext_rows) +
               " with rows of zeros (dropped on import)";
    } else {
      c.lossy = true;
      c.what = "rows " + std::to_string(a.maxtext_rows) + ".." + std::to_string(rows - 1) +
               " cut off at MaxText's vocab_size " + std::to_string(a.maxtext_rows) +
               " (read back as zeros)";
    }
    changes.push_back(c);
  }
  return changes;
}

std::vector<std::string> MaxTextTree::lossy_steps(DType dtype) const {
  std::vector<std::string> steps;
  for (const MaxTextValueChange& c : value_changes(dtype))
    if (c.lossy) steps.push_back(c.param + ": " + c.what);
  return steps;
}

Tensor MaxTextScratch::take(DType dtype, const Shape& shape) {
  const size_t bytes = std::max<size_t>(dtype_nbytes(dtype, shape_numel(shape)), 1);
  std::shared_ptr<Storage>* best = nullptr;
  for (auto& b : buffers_)
    if (b.use_count() == 1 && b->size() >= bytes && (!best || b->size() < (*best)->size()))
      best = &b;
  if (best) return Tensor::view_of(*best, 0, dtype, shape);
  std::shared_ptr<Storage> fresh = Storage::allocate(bytes);
  while (buffers_.size() >= kMaxBuffers) {
    auto largest = buffers_.end();
    for (auto it = buffers_.begin(); it != buffers_.end(); ++it)
      if (it->use_count() == 1 && (largest == buffers_.end() || (*it)->size() > (*largest)->size()))
        largest = it;
    if (largest == buffers_.end()) break;  // all in use: the new one is not kept
    buffers_.erase(largest);
  }
  if (buffers_.size() < kMaxBuffers) buffers_.push_back(fresh);
  return Tensor::view_of(std::move(fresh), 0, dtype, shape);
}

size_t MaxTextScratch::bytes_held() const {
  size_t total = 0;
  for (const auto& b : buffers_) total += b->size();
  return total;
}

MaxTextValue MaxTextTree::to_maxtext(const MaxTextArraySpec& spec, const Tensor& tensor,
                                     MaxTextScratch* scratch) {
  const MaxTextTransform& t = spec.transform;
  const std::string where = "tensor '" + spec.kiln_param + "' of shape " + tensor.shape_string();
  check(tensor.shape() == spec.kiln_shape,
        where + ": MaxText's " + spec.path + " needs Kiln shape " + shape_text(spec.kiln_shape));
  MaxTextValue out;
  Tensor x;
  switch (t.reshape) {
    case MaxTextReshape::kSame:
      x = tensor;  // no copy: the writer reads any strides
      break;
    case MaxTextReshape::kTransposed:
      x = transposed_copy(tensor, scratch);
      break;
    case MaxTextReshape::kHeadsIn:
      x = transposed_copy(tensor, scratch).reshape(spec.maxtext_shape);
      break;
    case MaxTextReshape::kHeadsOut:
      x = transposed_copy(tensor, scratch).reshape(spec.maxtext_shape);
      break;
    case MaxTextReshape::kHeadsBias:
      x = tensor.contiguous(true).reshape(spec.maxtext_shape);
      break;
    case MaxTextReshape::kExpertsTransposed:
      x = transpose_last_two(tensor, scratch);
      break;
  }
  if (t.rope_pairs) x = rope_pairs_of(x, tensor);
  if (spec.maxtext_rows > 0 && spec.maxtext_rows != x.dim(0)) {
    // Gemma's embedding: scale the rows MaxText keeps, then pad zeros to MaxText's vocab
    // (zero times the scale is zero in either order), or keep the cut-off rows aside.
    const int64_t rows = x.dim(0), keep = std::min(rows, spec.maxtext_rows);
    if (keep < rows) out.dropped = x.slice(0, keep, rows);
    const Tensor kept = x.slice(0, 0, keep);
    Shape padded = x.shape();
    padded[0] = spec.maxtext_rows;
    out.array = Tensor::zeros(x.dtype(), padded);
    Tensor head = out.array.slice(0, 0, keep);
    if (t.op == MaxTextValueOp::kNone) {
      std::memcpy(head.mutable_raw(), kept.contiguous().raw(), kept.nbytes());
    } else {
      MaxTextValue scaled = apply_op(t, kept.contiguous(), spec.path);
      std::memcpy(head.mutable_raw(), scaled.array.raw(), scaled.array.nbytes());
      out.residual = scaled.residual;
    }
    return out;
  }
  if (t.op == MaxTextValueOp::kNone) {
    out.array = x;
    return out;
  }
  // In place when `x` is a copy only this call views (a transposed or reordered one).
  const bool own = x.writable() && x.is_contiguous() && x.storage() != tensor.storage() &&
                   x.storage().use_count() <= 2;
  return apply_op(t, x.contiguous(), spec.path, scratch, own);
}

Tensor MaxTextTree::from_maxtext(const MaxTextArraySpec& spec, const Tensor& array,
                                 const Tensor& residual, const Tensor& dropped) {
  const MaxTextTransform& t = spec.transform;
  check(array.shape() == spec.maxtext_shape, "MaxText array '" + spec.path +
                                                 "' has per-layer shape " + array.shape_string() +
                                                 ", expected " + shape_text(spec.maxtext_shape));
  if (spec.maxtext_rows > 0 && spec.maxtext_rows != spec.kiln_shape[0]) {
    // Gemma's embedding: MaxText's padding rows dropped (whatever they hold), its scale
    // undone on the rows it kept, the rows it cut off from `dropped` or zeros.
    const int64_t rows = spec.kiln_shape[0], keep = std::min(rows, spec.maxtext_rows);
    Tensor kept = array.slice(0, 0, keep).contiguous();
    if (t.op != MaxTextValueOp::kNone) kept = undo_op(t, kept, residual, spec.path);
    if (keep == rows) return kept;
    Tensor out = Tensor::zeros(array.dtype(), spec.kiln_shape);
    std::memcpy(out.mutable_raw(), kept.raw(), kept.nbytes());
    if (dropped.defined()) {
      Shape want = spec.kiln_shape;
      want[0] = rows - keep;
      check(dropped.shape() == want && dropped.dtype() == array.dtype(),
            "MaxText array '" + spec.path + "': Kiln's cut-off rows have shape " +
                dropped.shape_string() + ", expected " + shape_text(want));
      Tensor tail = out.slice(0, keep, rows);
      std::memcpy(tail.mutable_raw(), dropped.contiguous().raw(), dropped.nbytes());
    }
    return out;
  }
  Tensor x = array.contiguous();
  if (t.op != MaxTextValueOp::kNone) x = undo_op(t, x, residual, spec.path);
  if (t.rope_pairs) x = swap_last_axis_blocks(x, x.dim(x.ndim() - 1) / 2);
  switch (t.reshape) {
    case MaxTextReshape::kSame:
      return x;
    case MaxTextReshape::kTransposed:
      return transposed_copy(x);
    case MaxTextReshape::kHeadsIn:
      return transposed_copy(x.reshape({x.dim(0), x.dim(1) * x.dim(2)}));
    case MaxTextReshape::kHeadsOut:
      return transposed_copy(x.reshape({x.dim(0) * x.dim(1), x.dim(2)}));
    case MaxTextReshape::kHeadsBias:
      return x.reshape({x.numel()});
    case MaxTextReshape::kExpertsTransposed:
      return transpose_last_two(x);
  }
  return x;
}

}  // namespace kiln
