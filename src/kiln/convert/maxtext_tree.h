// MaxText's parameter tree for each family MaxText implements: which MaxText array holds
// which Kiln tensor (of which decoder layers, stacked or not), and how its shape and values
// change (MaxText's [in, out] kernels with split head axes, RoPE order, folded query scale,
// Gemma's (1 + w) norms and sqrt(hidden)-scaled embedding). Learned from MaxText's
// converters (checkpoint_conversion/utils/param_mapping.py and the standalone scripts); the
// per-family tables and their sources are in docs/checkpoint_format.md ("MaxText trees").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/io/json.h"
#include "kiln/models/model_spec.h"

namespace kiln {

// How a Kiln tensor's shape becomes MaxText's (E = hidden, D = head_dim, X = experts).
enum class MaxTextReshape {
  kSame,
  kTransposed,         // [out, in] -> [in, out]
  kHeadsIn,            // [heads * D, E] -> [E, heads, D]   (query, key, value kernels)
  kHeadsOut,           // [E, heads * D] -> [heads, D, E]   (out kernel)
  kHeadsBias,          // [heads * D] -> [heads, D]         (query, key, value biases)
  kExpertsTransposed,  // [X, out, in] -> [X, in, out]      (stacked expert kernels)
};

// A change of values MaxText's converter makes (computed in float32 for 16/32-bit dtypes, as
// numpy and ml_dtypes do; float64 for f64).
enum class MaxTextValueOp {
  kNone,
  kDivideRounded,  // x / s, s = sqrt(D) rounded to the array's dtype (llama_or_mistral_ckpt.py)
  kMultiplyF32,    // x * c, c rounded to float32 (Gemma's query and embedding scales)
  kMultiplyBf16,   // x * c, c rounded to bfloat16 (Gemma 3's embedding scale)
  kAddOne,         // x + 1 (Gemma's RMSNorm scales: MaxText stores 1 + w)
};

struct MaxTextTransform {
  MaxTextReshape reshape = MaxTextReshape::kSame;
  int64_t heads = 0;  // for the head reshapes
  int64_t head_dim = 0;
  bool rope_pairs = false;  // HF's rotate-half rows -> interleaved pairs
  MaxTextValueOp op = MaxTextValueOp::kNone;
  double constant = 0;  // the divisor / factor before rounding (kDivideRounded: sqrt(D))
  std::string op_description() const;  // e.g. "x * 0.25 (float32)", "" for kNone
};

// One array of MaxText's tree.
struct MaxTextArraySpec {
  std::string path;             // tree path without the leading params/params/
  std::string kiln_param;       // per-layer Kiln name ("self_attention/query/kernel"), or the
                                // full Kiln name of a top-level tensor
  std::vector<int64_t> layers;  // decoder layers in stacking order; empty: top-level
  bool stacked = false;         // scanned: layers stacked on axis 1 (MaxText's param_scan_axis)
  MaxTextTransform transform;
  Shape kiln_shape;     // per layer
  Shape maxtext_shape;  // per layer (without the layer axis)
  // Gemma's embedding: MaxText's vocab_size when it differs from the model's (rows appended
  // as zeros, or the last rows cut off, as MaxText's converters do); 0: the Kiln rows.
  int64_t maxtext_rows = 0;
  std::string source;  // the MaxText file and function this array's layout comes from
  // The full shape MaxText stores (with the layer axis when stacked).
  Shape stored_shape() const;
};

// One Kiln tensor in MaxText's layout, with the per-element residual that undoes a value
// op bit for bit (undefined when the op is kNone).
struct MaxTextValue {
  Tensor array;
  Tensor residual;  // I32 for 1 + x (tiny x lose every bit), else I8; all zero: nothing lost
                    // (of the rows the array keeps from the Kiln tensor)
  Tensor dropped;   // the Kiln rows MaxText's vocab cuts off (unchanged); undefined if none
};

// MaxText's vocab_size for a Gemma model whose HuggingFace vocab is `hf_vocab`: the padded
// size of MaxText's model configs for the stock vocabularies (Gemma 1 and 2: 256000 ->
// 256128, configs/models/gemma-2b.yml, gemma2-*.yml; Gemma 3: 262208 -> 262144,
// configs/models/gemma3-*.yml), else `hf_vocab` (a model MaxText would be configured for
// with its own vocab_size). 0 for families whose converters copy the vocabulary as it is.
int64_t maxtext_default_vocab(const std::string& family, int64_t hf_vocab);

struct MaxTextValueChange {
  std::string param;  // Kiln's per-layer (or top-level) tensor name
  std::string what;   // the change, e.g. "1 + x"
  bool lossy = false;
};

// Buffers that to_maxtext reuses from layer to layer for MaxText's transposed, reordered and
// scaled arrays. Fresh memory costs a page fault and a cleared page per 4 KiB (on this
// project's VM as much as the transpose itself, and glibc maps every block above 32 MiB
// afresh), so an export hands the same few buffers out again once no tensor views them.
// Not thread-safe.
class MaxTextScratch {
 public:
  // A contiguous tensor of `dtype` and `shape`, contents unspecified, in a buffer no live
  // tensor views: the smallest free one that fits, else a new one; at most kMaxBuffers are
  // kept (free ones dropped, the largest first). An export's per-layer arrays (a layer's
  // query and its residual, then each kernel alone) settle on two or three buffers.
  Tensor take(DType dtype, const Shape& shape);
  // The bytes of the buffers kept (whether in use or not).
  size_t bytes_held() const;
  static constexpr size_t kMaxBuffers = 4;

 private:
  std::vector<std::shared_ptr<Storage>> buffers_;
};

class MaxTextTree {
 public:
  // The tree of the model whose config.json is `config`, scanned (layers stacked as
  // MaxText's scan_layers=True) or not, with the Kiln tensors (names and per-layer shapes,
  // HF layout) each array holds, derived from the config. Throws Error "MaxText has no
  // <family>" for families MaxText does not implement, and a clear Error for ones Kiln
  // cannot map yet.
  // `maxtext_vocab` (Gemma only): MaxText's vocab_size, the rows of MaxText's embedding;
  // 0: maxtext_default_vocab.
  static MaxTextTree build(const Json& config, bool scanned, int64_t maxtext_vocab = 0);
  // Whether MaxText implements the family at all (else export refuses it).
  static bool maxtext_has(const std::string& family);

  const std::string& family() const { return family_; }
  bool scanned() const { return scanned_; }
  // MaxText's vocab_size (rows of its embedding), and the model's.
  int64_t maxtext_vocab() const { return maxtext_vocab_; }
  const std::vector<MaxTextArraySpec>& arrays() const { return arrays_; }
  // Each distinct value change of the tree for weights of `dtype`, and whether it loses
  // information (without Kiln's residual arrays): Gemma's 1 + w always, a scale whenever its
  // rounded constant is not a power of two.
  std::vector<MaxTextValueChange> value_changes(DType dtype) const;
  // The lossy ones as "<Kiln param>: <change>" lines (for inspect and verify reports); empty
  // when MaxText's tree is HF's weights permuted, or scaled by powers of two.
  std::vector<std::string> lossy_steps(DType dtype) const;
  const ModelSpec& spec() const { return spec_; }

  // Kiln tensor (per-layer shape) -> MaxText array (per-layer shape). With `scratch`, the
  // new arrays (and residual) are views of its reused buffers: they must be dropped before
  // the buffers can serve the next call (a writer that copies them out, as OrbaxWriter does).
  static MaxTextValue to_maxtext(const MaxTextArraySpec& spec, const Tensor& tensor,
                                 MaxTextScratch* scratch = nullptr);
  // The inverse; `residual` may be undefined (a tree MaxText wrote: values unscaled by
  // arithmetic, not bit for bit). Rows of the embedding beyond the model's vocab are dropped
  // (whatever they hold); rows MaxText's vocab lacks come from `dropped` when given (Kiln's
  // side array), else they are zeros (as MaxText's converters write them back to HF).
  static Tensor from_maxtext(const MaxTextArraySpec& spec, const Tensor& array,
                             const Tensor& residual, const Tensor& dropped = Tensor());

 private:
  std::string family_;
  bool scanned_ = false;
  int64_t maxtext_vocab_ = 0;
  ModelSpec spec_;
  std::vector<MaxTextArraySpec> arrays_;
};

}  // namespace kiln
