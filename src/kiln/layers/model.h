// Model: embedding -> decoder layers -> final norm -> lm_head, built from a ModelSpec and
// its weights. The forward pass serves batched prefill and incremental decode alike.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/layers/decoder_layer.h"
#include "kiln/layers/linear.h"
#include "kiln/layers/norm.h"
#include "kiln/layers/observer.h"
#include "kiln/layers/weights.h"
#include "kiln/layers/workspace.h"
#include "kiln/models/model_spec.h"
#include "kiln/ops/linear.h"
#include "kiln/runtime/kv_cache.h"

namespace kiln {

struct ForwardOptions {
  // Receives named activations (models/weight_names.h) when set.
  const ActivationObserver* observer = nullptr;
  // Compute logits only for the last position of each row (generation).
  bool last_position_only = false;
};

class Model {
 public:
  // Builds every layer; the weights (views, often of mmapped files) are shared, not
  // copied. Throws Error naming the feature when the spec needs one that is not
  // implemented, and naming the tensor when a weight is missing or misshapen.
  Model(ModelSpec spec, const WeightMap& weights);

  // Runs B rows of T new tokens each. Positions continue from cache.length() (0 for a
  // prefill); the cache receives their keys/values and advances by T. When the new length
  // changes a layer's RoPE frequencies (dynamic NTK, LongRoPE; see docs/rope.md), the
  // cached positions are recomputed from their token ids first, so that the result equals
  // a forward pass over the whole sequence.
  //   tokens: [B, T] token ids
  //   returns logits [B, T, V] f32 ([B, 1, V] with last_position_only), a new tensor
  Tensor forward(const int32_t* tokens, int64_t batch, int64_t tokens_per_row, KvCache& cache,
                 const ForwardOptions& options = {}) const;
  // The same pass with every activation, and the logits, in `workspace`: it grows on first
  // use and is then reused, so that a decode loop (equal or smaller shapes, no RoPE change)
  // allocates nothing. Returns the logits [B, T, V] f32 ([B, 1, V] with
  // last_position_only), valid until the workspace is used again.
  const float* forward(const int32_t* tokens, int64_t batch, int64_t tokens_per_row, KvCache& cache,
                       Workspace& workspace, const ForwardOptions& options = {}) const;

  // One step of `rows` rows, each one token of a sequence with its own cache (batch 1): row r
  // feeds tokens[r] at the next position of caches[r]. A cache may appear in several rows:
  // they are its next positions in row order (a chunk of a prompt), so that prompt chunks and
  // decode tokens of other sequences share one pass. Norms, projections and MLPs run over all
  // rows at once (each weight is read once per step for up to kMaxDecodeRows rows), attention
  // per row over its own cache; every cache advances by its rows. Each row's results (logits,
  // keys and values) are bitwise those of forward() feeding that sequence's tokens one at a
  // time, whatever other rows share the call and however a prompt is cut into chunks (linear
  // kernels give a row the same result whatever rows share the call, up to kMaxDecodeRows).
  // `want` [rows] (null: every row) selects the rows whose logits are computed; returns them
  // packed, [wanted rows, V] f32 in `workspace`. Throws Error when rows exceeds
  // kMaxDecodeRows or a cache is full or not of batch 1.
  static constexpr int64_t kMaxDecodeRows = ops::kGemvMaxRows;
  const float* step_rows(const int32_t* tokens, int64_t rows, KvCache* const* caches,
                         const bool* want, Workspace& workspace) const;
  // The same pass for the rows of prompts (any number of rows, several sequences, each a run of
  // its next positions in order): every linear product through the GEMM (ops::GemmRowsScope),
  // attention per row over its own cache as in step_rows, the wanted rows' logits through the
  // GEMV. Each row's results are bitwise the same whatever other rows share the call, and
  // however a sequence's tokens are cut into calls (one token per call included) — not those
  // of step_rows, whose products are the GEMV's. The server's prompts (kiln serve).
  const float* prefill_rows(const int32_t* tokens, int64_t rows, KvCache* const* caches,
                            const bool* want, Workspace& workspace) const;
  // step_rows with one row per sequence, every row's logits: [rows, V].
  const float* decode_rows(const int32_t* tokens, int64_t rows, KvCache* const* caches,
                           Workspace& workspace) const {
    return step_rows(tokens, rows, caches, nullptr, workspace);
  }

  // An empty cache for `batch` rows of up to `capacity` positions (f32 or bf16 values).
  KvCache make_cache(int64_t batch, int64_t capacity, DType dtype = DType::F32) const {
    return {spec_, batch, capacity, dtype};
  }

  const ModelSpec& spec() const { return spec_; }
  const DecoderLayer& layer(int64_t index) const { return layers_.at(index); }

 private:
  // The logits of `rows` final hidden states: the output matrix, then (refine_head_) its top
  // kHeadRefined of each row recomputed from the unquantized tied table.
  //   x: [rows, hidden];  logits: [rows, V]
  void head(const float* x, int64_t rows, float* logits) const;
  // The logit scale and soft-cap, in place.   logits: [rows, V]
  void finish_logits(float* logits, int64_t rows) const;
  // step_rows (gemm false: up to kMaxDecodeRows rows) and prefill_rows (gemm true).
  const float* rows_pass(const int32_t* tokens, int64_t rows, KvCache* const* caches,
                         const bool* want, Workspace& workspace, bool gemm) const;
  // True when some layer's RoPE frequencies differ between the two sequence lengths.
  bool rope_changes(int64_t cached_length, int64_t new_length) const;
  // forward() over the cached tokens followed by `tokens`, from an emptied cache; returns
  // the logits of the new positions only (in `workspace`).
  const float* recompute(const int32_t* tokens, int64_t tokens_per_row, KvCache& cache,
                         Workspace& workspace, const ForwardOptions& options) const;

  ModelSpec spec_;
  Tensor embedding_;  // [V, hidden] in its stored dtype
  Tensor positions_;  // [max_position_embeddings, hidden] learned positions, or undefined
  std::vector<DecoderLayer> layers_;
  Norm final_norm_;
  Linear lm_head_;  // [V, hidden]; the embedding table when tied
  // Logits per row recomputed from the unquantized table when refine_head_ (measured on
  // tinycoder: 2 already give the table's argmax at every position; 16 bring the KL from the
  // table's logits to a third of the copy's alone, docs/performance.md).
  static constexpr int64_t kHeadRefined = 16;
  // The output matrix is a quantized copy of the tied, unquantized embedding table (`kiln
  // convert --dtype int8|int4`): each row's largest logits are recomputed from the table.
  bool refine_head_ = false;
};

}  // namespace kiln
