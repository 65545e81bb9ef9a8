// DecoderLayer: one transformer block, norm -> attention -> residual, norm -> MLP ->
// residual (pre-norm placement).
#pragma once

#include <cstdint>

#include "kiln/layers/attention.h"
#include "kiln/layers/mlp.h"
#include "kiln/layers/norm.h"
#include "kiln/layers/observer.h"
#include "kiln/runtime/kv_cache.h"

namespace kiln {

class DecoderLayer {
 public:
  // Builds layer `index` from its spec and the weights under names::layer(index). Throws
  // Error for placements and MoE, which are not implemented yet.
  DecoderLayer(const LayerSpec& spec, int64_t index, int64_t hidden, const WeightMap& weights);

  // Runs the block in place on the residual stream at positions [start, start + T).
  //   x: [B, T, hidden] f32
  void forward(float* x, int64_t batch, int64_t tokens, int64_t start, LayerKvCache& cache,
               const ActivationObserver* observer) const;

  const Norm& input_norm() const { return input_norm_; }
  const Attention& attention() const { return attention_; }
  const Norm& post_attention_norm() const { return post_attention_norm_; }
  const Mlp& mlp() const { return mlp_; }

 private:
  int64_t index_;
  int64_t hidden_;
  Norm input_norm_;
  Attention attention_;
  Norm post_attention_norm_;
  Mlp mlp_;
};

}  // namespace kiln
