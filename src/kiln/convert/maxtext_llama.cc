#include "kiln/convert/maxtext_llama.h"

#include <cmath>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/io/hf_config.h"
#include "kiln/models/family.h"

namespace kiln {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// How a Kiln tensor's shape becomes MaxText's (E = hidden, D = head_dim).
enum class Reshape {
  kSame,
  kTransposed,  // [out, in] -> [in, out]
  kHeadsIn,     // [heads * D, E] -> [E, heads, D]   (query, key, value kernels)
  kHeadsOut,    // [E, heads * D] -> [heads, D, E]   (out kernel)
  kHeadsBias,   // [heads * D] -> [heads, D]         (query, key, value biases)
};

struct Role {
  Reshape reshape = Reshape::kSame;
  bool query_heads = false;  // heads are query heads (else KV heads)
  bool rope = false;         // last dimension is rotated by RoPE (query, key)
  bool scale = false;        // query: divided by maxtext_query_divisor
};

Role role_of(const std::string& name) {
  struct Suffix {
    const char* suffix;
    Role role;
  };
  static const Suffix kRoles[] = {
      {"/self_attention/query/kernel", {Reshape::kHeadsIn, true, true, true}},
      {"/self_attention/key/kernel", {Reshape::kHeadsIn, false, true, false}},
      {"/self_attention/value/kernel", {Reshape::kHeadsIn, false, false, false}},
      {"/self_attention/out/kernel", {Reshape::kHeadsOut, true, false, false}},
      {"/self_attention/query/bias", {Reshape::kHeadsBias, true, true, true}},
      {"/self_attention/key/bias", {Reshape::kHeadsBias, false, true, false}},
      {"/self_attention/value/bias", {Reshape::kHeadsBias, false, false, false}},
      {"/mlp/wi_0/kernel", {Reshape::kTransposed}},
      {"/mlp/wi_1/kernel", {Reshape::kTransposed}},
      {"/mlp/wo/kernel", {Reshape::kTransposed}},
  };
  for (const Suffix& s : kRoles)
    if (ends_with(name, s.suffix)) return s.role;
  if (name == "decoder/logits_dense/kernel") return {Reshape::kTransposed};
  return {};
}

Tensor transposed_copy(const Tensor& matrix) {
  return matrix.transpose(0, 1).contiguous(true);
}

// Swaps the two middle axes of `t` viewed as [outer, a, b] (b = size of the last axis / a).
Tensor swap_last_axis_blocks(const Tensor& t, int64_t a) {
  const int64_t last = t.dim(t.ndim() - 1);
  return t.contiguous()
      .reshape({-1, a, last / a})
      .transpose(1, 2)
      .contiguous(true)
      .reshape(t.shape());
}

// HF's rotate-half order (x[i] pairs with x[i + D/2]) -> interleaved pairs (x[2i], x[2i+1]).
Tensor halves_to_pairs(const Tensor& t) {
  return swap_last_axis_blocks(t, 2);
}
Tensor pairs_to_halves(const Tensor& t) {
  return swap_last_axis_blocks(t, t.dim(t.ndim() - 1) / 2);
}

// Rounds the positive normal `x` to `bits` significant bits, to nearest even.
double round_to_bits(double x, int bits) {
  int exponent = 0;
  const double mantissa = std::frexp(x, &exponent);
  return std::ldexp(std::nearbyint(std::ldexp(mantissa, bits)), exponent - bits);
}

// Element access for one floating dtype: bit patterns of type Bits, arithmetic in Compute
// (float for 16- and 32-bit types: ml_dtypes and numpy compute bf16/f16 through float32).
template <typename Bits, typename Compute>
struct FloatFormat {
  Compute (*load)(Bits);
  Bits (*store)(Compute);
};

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

// Divides every element by `divisor` as MaxText does (q / s rounded to the dtype) and
// records, per element, how far q lies from round(y * s) in units in the last place.
template <typename Bits, typename Compute>
void scale_with_residual(const FloatFormat<Bits, Compute>& f, const Bits* in, Bits* out,
                         int8_t* residual, int64_t n, Compute divisor, const std::string& name) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = f.store(f.load(in[i]) / divisor);
    const Bits back = f.store(f.load(out[i]) * divisor);
    const int64_t distance = ordered(in[i]) - ordered(back);
    if (distance < -127 || distance > 127)
      throw Error("tensor '" + name + "': element " + std::to_string(i) +
                  " cannot be scaled reversibly (NaN or infinity?)");
    residual[i] = static_cast<int8_t>(distance);
  }
}
template <typename Bits, typename Compute>
void unscale_with_residual(const FloatFormat<Bits, Compute>& f, const Bits* in, Bits* out,
                           const int8_t* residual, int64_t n, Compute divisor) {
  for (int64_t i = 0; i < n; ++i) {
    const Bits back = f.store(f.load(in[i]) * divisor);
    out[i] = residual ? from_ordered<Bits>(ordered(back) + residual[i], back) : back;
  }
}

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

// Calls `fn(format, divisor)` with the element format of `dtype`.
template <typename Fn>
void with_format(DType dtype, double divisor, const std::string& name, Fn&& fn) {
  switch (dtype) {
    case DType::BF16:
      return fn(FloatFormat<uint16_t, float>{load_bf16, store_bf16}, static_cast<float>(divisor));
    case DType::F16:
      return fn(FloatFormat<uint16_t, float>{load_f16, store_f16}, static_cast<float>(divisor));
    case DType::F32:
      return fn(FloatFormat<uint32_t, float>{load_f32, store_f32}, static_cast<float>(divisor));
    case DType::F64:
      return fn(FloatFormat<uint64_t, double>{load_f64, store_f64}, divisor);
    default:
      throw Error("tensor '" + name + "': the query scale needs a floating dtype, not " +
                  std::string(dtype_name(dtype)));
  }
}

}  // namespace

double maxtext_query_divisor(int64_t head_dim, DType dtype) {
  const double root = std::sqrt(static_cast<double>(head_dim));
  switch (dtype) {
    case DType::BF16:
      return round_to_bits(root, 8);
    case DType::F16:
      return round_to_bits(root, 11);
    case DType::F32:
      return round_to_bits(root, 24);
    case DType::F64:
      return root;
    default:
      throw Error("maxtext query scale: no divisor for dtype " + std::string(dtype_name(dtype)));
  }
}

std::optional<MaxTextLlamaLayout> MaxTextLlamaLayout::for_config(const Json& source_config) {
  if (!source_config.is_object() || source_config.empty()) return std::nullopt;
  ModelSpec spec;
  try {
    spec = spec_from_config(HfConfig::from_json(source_config, "source_config"));
  } catch (const Error&) {
    return std::nullopt;
  }
  if (spec.family != "llama" && spec.family != "mistral" && spec.family != "qwen2")
    return std::nullopt;
  if (spec.layers.empty()) return std::nullopt;
  const AttentionSpec& first = spec.layers[0].attention;
  for (const LayerSpec& layer : spec.layers) {
    const AttentionSpec& a = layer.attention;
    if (a.num_heads != first.num_heads || a.num_kv_heads != first.num_kv_heads ||
        a.head_dim != first.head_dim || a.value_head_dim != a.head_dim ||
        a.qk_norm != QkNormKind::kNone || a.rope.interleaved ||
        (a.rope.rotary_dim != 0 && a.rope.rotary_dim != a.head_dim) ||
        a.rope.type != first.rope.type || layer.moe.num_experts != 0 || !layer.mlp.gated ||
        layer.placement != NormPlacement::kPre)
      return std::nullopt;
  }
  MaxTextLlamaLayout layout;
  layout.num_heads_ = first.num_heads;
  layout.num_kv_heads_ = first.num_kv_heads;
  layout.head_dim_ = first.head_dim;
  layout.rope_interleaved_ = first.rope.type == RopeType::kLlama3;
  return layout;
}

MaxTextLlamaLayout MaxTextLlamaLayout::from_json(const Json& json, const std::string& where) {
  MaxTextLlamaLayout layout;
  try {
    check(json.at("layout") == "llama",
          where + ": unknown MaxText layout " + json["layout"].dump());
    layout.num_heads_ = json.at("num_heads").get<int64_t>();
    layout.num_kv_heads_ = json.at("num_kv_heads").get<int64_t>();
    layout.head_dim_ = json.at("head_dim").get<int64_t>();
    layout.rope_interleaved_ = json.at("rope_interleaved").get<bool>();
  } catch (const Json::exception& e) {
    throw Error(where + ": malformed MaxText layout: " + e.what());
  }
  check(layout.num_heads_ > 0 && layout.num_kv_heads_ > 0 && layout.head_dim_ > 0 &&
            layout.head_dim_ % 2 == 0,
        where + ": MaxText layout needs positive head counts and an even head_dim");
  return layout;
}

Json MaxTextLlamaLayout::to_json() const {
  return {{"layout", "llama"},
          {"num_heads", num_heads_},
          {"num_kv_heads", num_kv_heads_},
          {"head_dim", head_dim_},
          {"rope_interleaved", rope_interleaved_}};
}

MaxTextArray MaxTextLlamaLayout::to_maxtext(const std::string& name, const Tensor& tensor) const {
  const Role role = role_of(name);
  const int64_t heads = role.query_heads ? num_heads_ : num_kv_heads_;
  const int64_t d = head_dim_;
  const std::string where = "tensor '" + name + "' of shape " + tensor.shape_string();
  MaxTextArray out;
  switch (role.reshape) {
    case Reshape::kSame:
      out.array = tensor;
      break;
    case Reshape::kTransposed:
      check(tensor.ndim() == 2, where + ": expected a matrix");
      out.array = transposed_copy(tensor);
      break;
    case Reshape::kHeadsIn:
      check(tensor.ndim() == 2 && tensor.dim(0) == heads * d,
            where + ": expected [" + std::to_string(heads * d) + ", hidden]");
      out.array = transposed_copy(tensor).reshape({tensor.dim(1), heads, d});
      break;
    case Reshape::kHeadsOut:
      check(tensor.ndim() == 2 && tensor.dim(1) == heads * d,
            where + ": expected [hidden, " + std::to_string(heads * d) + "]");
      out.array = transposed_copy(tensor).reshape({heads, d, tensor.dim(0)});
      break;
    case Reshape::kHeadsBias:
      check(tensor.ndim() == 1 && tensor.dim(0) == heads * d,
            where + ": expected [" + std::to_string(heads * d) + "]");
      out.array = tensor.contiguous(true).reshape({heads, d});
      break;
  }
  if (role.rope && rope_interleaved_) out.array = halves_to_pairs(out.array);
  if (role.scale) {
    const Tensor source = out.array.contiguous();
    Tensor scaled = Tensor::zeros(source.dtype(), source.shape());
    out.residual = Tensor::zeros(DType::I8, source.shape());
    const double divisor = maxtext_query_divisor(d, source.dtype());
    with_format(source.dtype(), divisor, name,
                [&]<typename Bits, typename Compute>(FloatFormat<Bits, Compute> format, Compute s) {
                  scale_with_residual(format, static_cast<const Bits*>(source.raw()),
                                      static_cast<Bits*>(scaled.mutable_raw()),
                                      out.residual.mutable_data<int8_t>(), source.numel(), s, name);
                });
    out.array = scaled;
  }
  return out;
}

Tensor MaxTextLlamaLayout::from_maxtext(const std::string& name, const Tensor& array,
                                        const Tensor& residual) const {
  const Role role = role_of(name);
  const int64_t heads = role.query_heads ? num_heads_ : num_kv_heads_;
  const int64_t d = head_dim_;
  const std::string where = "MaxText array for '" + name + "' of shape " + array.shape_string();
  Tensor x = array.contiguous();
  const bool headed = role.reshape == Reshape::kHeadsIn || role.reshape == Reshape::kHeadsOut ||
                      role.reshape == Reshape::kHeadsBias;
  if (headed) {
    const int head_axis = role.reshape == Reshape::kHeadsIn ? 1 : 0;
    const int dim_axis = head_axis + 1;
    check(x.ndim() == (role.reshape == Reshape::kHeadsBias ? 2 : 3) && x.dim(head_axis) == heads &&
              x.dim(dim_axis) == d,
          where + ": expected " + std::to_string(heads) + " heads of " + std::to_string(d));
  }
  if (role.scale) {
    check(!residual.defined() || (residual.dtype() == DType::I8 && residual.shape() == x.shape()),
          where + ": residual of shape " + residual.shape_string() + " does not match");
    const Tensor r = residual.defined() ? residual.contiguous() : Tensor();
    Tensor restored = Tensor::zeros(x.dtype(), x.shape());
    const double divisor = maxtext_query_divisor(d, x.dtype());
    with_format(x.dtype(), divisor, name,
                [&]<typename Bits, typename Compute>(FloatFormat<Bits, Compute> format, Compute s) {
                  unscale_with_residual(format, static_cast<const Bits*>(x.raw()),
                                        static_cast<Bits*>(restored.mutable_raw()),
                                        r.defined() ? r.data<int8_t>() : nullptr, x.numel(), s);
                });
    x = restored;
  }
  if (role.rope && rope_interleaved_) x = pairs_to_halves(x);
  switch (role.reshape) {
    case Reshape::kSame:
      return x;
    case Reshape::kTransposed:
      check(x.ndim() == 2, where + ": expected a matrix");
      return transposed_copy(x);
    case Reshape::kHeadsIn:
      return transposed_copy(x.reshape({x.dim(0), heads * d}));
    case Reshape::kHeadsOut:
      return transposed_copy(x.reshape({heads * d, x.dim(2)}));
    case Reshape::kHeadsBias:
      return x.reshape({heads * d});
  }
  return x;
}

}  // namespace kiln
