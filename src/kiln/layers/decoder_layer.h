// DecoderLayer: one transformer block: attention and MLP with their residuals, and norms
// placed before (pre), after (post), around (sandwich) them, or one block computing both
// branches from the same input (parallel).
#pragma once

#include <cstdint>

#include "kiln/layers/attention.h"
#include "kiln/layers/feed_forward.h"
#include "kiln/layers/norm.h"
#include "kiln/layers/observer.h"
#include "kiln/layers/workspace.h"
#include "kiln/runtime/kv_cache.h"

namespace kiln {

class DecoderLayer {
 public:
  // Builds layer `index` from its spec and the weights under names::layer(index). The norms
  // read depend on the placement (models/weight_names.h):
  //   pre       input_norm -> attention; post_attention_norm -> MLP
  //   post      attention -> post_attention_norm; MLP -> post_ffw_norm
  //   sandwich  input_norm -> attention -> post_attention_norm;
  //             pre_ffw_norm -> MLP -> post_ffw_norm
  //   parallel  x + attention(input_norm(x)) + MLP(post_attention_norm(x)), or MLP of the
  //             same input_norm(x) when spec.parallel_shared_norm
  // The feed-forward block is an MLP or, when spec.moe is enabled, a mixture of experts.
  DecoderLayer(const LayerSpec& spec, int64_t index, int64_t hidden, const WeightMap& weights);

  // Runs the block in place on the residual stream at positions [start, start + T), with
  // intermediates from `workspace`.
  //   x: [B, T, hidden] f32
  void forward(float* x, int64_t batch, int64_t tokens, int64_t start, LayerKvCache& cache,
               Workspace& workspace, const ActivationObserver* observer) const;
  // One decode step of `rows` independent sequences (Attention::forward_rows): row r is at
  // position starts[r] with cache caches[r]; each row's result equals forward() of it alone.
  //   x: [rows, hidden] f32, in place
  void forward_rows(float* x, int64_t rows, const int64_t* starts, LayerKvCache* const* caches,
                    Workspace& workspace) const;

  const Norm& input_norm() const { return attention_in_; }
  const Attention& attention() const { return attention_; }
  // The norm stored as post_attention_norm: the MLP's input norm (pre, parallel) or the
  // attention output's (post, sandwich).
  const Norm& post_attention_norm() const {
    return placement_ == NormPlacement::kPre || placement_ == NormPlacement::kParallel
               ? mlp_in_
               : attention_out_;
  }
  const FeedForward& mlp() const { return mlp_; }

 private:
  // The module name of this layer's part (a names:: function of the layer index).
  using PartName = std::string (*)(int64_t layer);
  // Passes `data` [B, T, hidden] to the observer under `name` (nothing when it is null).
  void report(const ActivationObserver* observer, PartName name, const float* data, int64_t batch,
              int64_t tokens, const Workspace& workspace) const;
  // Applies `norm` to x into y and reports y under `name`; false (nothing done) when the
  // placement has no such norm.   x, y: [B, T, hidden]
  bool apply_norm(const Norm& norm, PartName name, const float* x, float* y, int64_t batch,
                  int64_t tokens, const Workspace& workspace,
                  const ActivationObserver* observer) const;
  // The feed-forward block on x [B * T, hidden] into y [B, T, hidden]; reports the router's
  // logits (`mlp/gate`, [B, T, E]) and routing weights (`mlp/routing`, [B, T, E], 0 for the
  // experts not chosen) of a mixture of experts, or a dense MLP's output before any post
  // norm (`mlp/wo`).
  void feed_forward(const float* x, int64_t batch, int64_t tokens, float* y, Workspace& workspace,
                    const ActivationObserver* observer) const;
  // x += (branch + other) * residual_scale (other may be null).   x, branch, other: [n]
  void add_residual(float* x, const float* branch, const float* other, int64_t n) const;

  int64_t index_;
  int64_t hidden_;
  NormPlacement placement_;
  bool shared_norm_;
  float residual_scale_;                                  // LayerSpec::residual_scale
  Norm attention_in_, attention_out_, mlp_in_, mlp_out_;  // kind kNone when absent
  Attention attention_;
  FeedForward mlp_;  // dense MLP or mixture of experts
};

}  // namespace kiln
