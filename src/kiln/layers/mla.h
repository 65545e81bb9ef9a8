// Mla: multi-head latent attention (DeepSeek-V2/V3). Queries come through a low-rank
// down-projection, norm and up-projection (or one projection); keys and values share one
// compressed latent per token plus one rotary key, which is all the KV cache keeps
// (KvLayout::kLatent). Prefill expands the latents into per-head keys and values; decode
// attends in latent space (absorbed form, ops/latent_attention.h) and never expands them.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/core/tensor.h"
#include "kiln/layers/linear.h"
#include "kiln/layers/norm.h"
#include "kiln/layers/observer.h"
#include "kiln/layers/weights.h"
#include "kiln/layers/workspace.h"
#include "kiln/models/model_spec.h"
#include "kiln/runtime/kv_cache.h"

namespace kiln {

// How attention over the cached latents is computed; both give the same result.
enum class MlaForm {
  kExpanded,  // up-project every cached latent into per-head keys and values, then attend
  kAbsorbed,  // fold the key up-projection into the query, attend over the latents, then
              // apply the value up-projection to the result
};

class Mla {
 public:
  Mla() = default;
  // Reads the weights under `module` (models/weight_names.h): wq_a, q_norm, wq_b (or query
  // when spec.q_lora_rank is 0), wkv_a, kv_norm, wkv_b, out. Throws Error naming the tensor
  // when one is missing or misshapen, and for settings it cannot run (sliding windows,
  // soft-capping, QK norms, a rotary part that is odd).
  Mla(const AttentionSpec& spec, int64_t hidden, const WeightMap& weights,
      const std::string& module);

  // Attends tokens at positions [start, start + T) of every row to themselves and to the
  // cached positions before them; stores their latents and rotary keys in `cache` (layout
  // kLatent) first. Uses the absorbed form for single-token steps (decode) and the expanded
  // form otherwise. Intermediates come from `workspace`.
  //   x:   [B, T, hidden] f32 (the normed hidden states)
  //   out: [B, T, hidden] f32
  void forward(const float* x, int64_t batch, int64_t tokens, int64_t start, LayerKvCache& cache,
               float* out, Workspace& workspace, const ActivationObserver* observer) const;
  // The same in the given form.
  void forward_in_form(MlaForm form, const float* x, int64_t batch, int64_t tokens, int64_t start,
                       LayerKvCache& cache, float* out, Workspace& workspace,
                       const ActivationObserver* observer) const;

 private:
  // Reports `data` [B * T, features] (workspace memory) to `observer` (when set) as
  // `<module>/<part>` [B, T, features].
  void report(const ActivationObserver* observer, const char* part, const float* data,
              int64_t batch, int64_t tokens, int64_t features, const Workspace& workspace) const;
  // Per-head attention outputs of the new tokens over every filled position.
  //   q:     [B, T, H, nope + rope] (rotary part already rotated)
  //   mixed: [B, T, H, value_dim]
  void attend_expanded(const float* q, int64_t batch, int64_t tokens, int64_t start,
                       const LayerKvCache& cache, float* mixed, Workspace& workspace) const;
  void attend_absorbed(const float* q, int64_t batch, int64_t tokens, int64_t start,
                       const LayerKvCache& cache, float* mixed, Workspace& workspace) const;

  AttentionSpec spec_;
  std::string module_;
  int64_t hidden_ = 0;
  float scale_ = 0.0f;
  Linear query_down_, query_up_, query_;  // query_ when q_lora_rank is 0
  Norm query_norm_;                       // over q_lora_rank
  Linear kv_down_;                        // [kv_lora_rank + rope, hidden]
  Norm kv_norm_;                          // over kv_lora_rank
  Tensor kv_up_weight_;                   // [heads * (nope + value_dim), kv_lora_rank]
  Linear kv_up_;                          // the same, as a Linear
  Linear out_;                            // [hidden, heads * value_dim]
};

}  // namespace kiln
