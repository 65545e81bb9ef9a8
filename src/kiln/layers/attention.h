// Attention: projections, optional per-head QK norm, RoPE (or none: NoPE layers), an
// optional weightless L2 QK norm after RoPE and query temperature tuning (Llama 4), causal
// attention over the KV cache (GQA/MQA, sliding window or chunks, soft-cap,
// learned sinks) and the output
// projection; multi-head latent attention specs are delegated to Mla (layers/mla.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/layers/linear.h"
#include "kiln/layers/mla.h"
#include "kiln/layers/norm.h"
#include "kiln/layers/observer.h"
#include "kiln/layers/weights.h"
#include "kiln/layers/workspace.h"
#include "kiln/models/model_spec.h"
#include "kiln/runtime/kv_cache.h"

namespace kiln {

class Attention {
 public:
  Attention() = default;
  // Reads the weights under `module` (models/weight_names.h; `sinks` [heads] when
  // spec.sinks), or builds an Mla when
  // spec.is_mla().
  Attention(const AttentionSpec& spec, int64_t hidden, const WeightMap& weights,
            const std::string& module);

  // Attends tokens at positions [start, start + T) of every row to themselves and to the
  // cached positions before them; stores their keys and values in `cache` first.
  // Intermediates come from `workspace`.
  //   x:   [B, T, hidden] f32 (the normed hidden states)
  //   out: [B, T, hidden] f32
  // `observer` (may be null) receives the projections and QK-norm outputs.
  void forward(const float* x, int64_t batch, int64_t tokens, int64_t start, LayerKvCache& cache,
               float* out, Workspace& workspace, const ActivationObserver* observer) const;
  // One decode step of `rows` independent sequences: row r is the token at position starts[r]
  // of the sequence whose cache is caches[r] (batch 1 each; rows of one sequence, at
  // consecutive positions, attend in row order, each to the keys of the rows before it). The
  // projections read each weight once for all rows; each row's result equals forward() of that
  // row alone, bit for bit.
  //   x, out: [rows, hidden] f32
  void forward_rows(const float* x, int64_t rows, const int64_t* starts,
                    LayerKvCache* const* caches, float* out, Workspace& workspace) const;

  // The per-head QK norms (kind kNone when the spec has none).
  const Norm& query_norm() const { return query_norm_; }
  const Norm& key_norm() const { return key_norm_; }
  // The latent attention that does the work when the spec is MLA.
  const Mla& mla() const { return mla_; }

 private:
  // q, k, v [B, T, heads, dim] of x [B, T, hidden] (clipped when spec_.clip_qkv); reports them.
  void project(const float* x, int64_t batch, int64_t tokens, float* q, float* k, float* v,
               Workspace& workspace, const ActivationObserver* observer) const;
  // QK norms, RoPE, temperature, the cache update and the attention itself, into mixed
  // [B, T, Hq, Dv] (before the output projection).
  void attend(float* q, float* k, float* v, int64_t batch, int64_t tokens, int64_t start,
              LayerKvCache& cache, float* mixed, Workspace& workspace,
              const ActivationObserver* observer) const;

  AttentionSpec spec_;
  std::string module_;
  int64_t hidden_ = 0;
  int64_t value_dim_ = 0;
  int64_t rotary_dim_ = 0;
  Linear query_, key_, value_, out_;
  Norm query_norm_, key_norm_;  // per head, over head_dim (kind kNone when absent)
  std::vector<float> sinks_;    // [heads] sink logits when spec_.sinks, else empty
  Mla mla_;                     // used instead of the above when spec_.is_mla()
};

}  // namespace kiln
