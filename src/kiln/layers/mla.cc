#include "kiln/layers/mla.h"

#include <algorithm>
#include <cmath>

#include "kiln/core/error.h"
#include "kiln/models/capabilities.h"
#include "kiln/models/weight_names.h"
#include "kiln/ops/attention.h"
#include "kiln/ops/latent_attention.h"
#include "kiln/ops/rope.h"
#include "kiln/ops/rope_frequencies.h"

namespace kiln {

KILN_CAPABILITY("attention.kind", "mla");

Mla::Mla(const AttentionSpec& spec, int64_t hidden, const WeightMap& weights,
         const std::string& module)
    : spec_(spec), module_(module), hidden_(hidden) {
  const int64_t H = spec.num_heads, nope = spec.qk_nope_head_dim, P = spec.qk_rope_head_dim;
  const int64_t V = spec.value_head_dim, R = spec.kv_lora_rank, Rq = spec.q_lora_rank;
  check(H > 0 && nope > 0 && P > 0 && V > 0 && R > 0 && Rq >= 0,
        module + ": MLA heads, head dims and ranks must be positive");
  check(P % 2 == 0, module + ": the rotary head dimension " + std::to_string(P) + " is odd");
  check(spec.sliding_window == 0 && spec.softcap == 0.0f && spec.qk_norm == QkNormKind::kNone,
        module + ": MLA with sliding windows, soft-capping or QK norms is not implemented");
  check(spec.rope.type != RopeType::kNone, module + ": MLA without RoPE is not implemented");
  check(spec.chunk_size == 0 && spec.temperature_floor_scale == 0.0,
        module + ": MLA with chunked attention or temperature tuning is not implemented");
  const int64_t q_width = H * (nope + P);
  if (Rq > 0) {
    query_down_ = Linear(weights, names::child(module, "wq_a"), hidden, Rq, spec.q_bias);
    query_norm_ = Norm(spec.latent_norm, weights, names::child(module, "q_norm"), Rq);
    query_up_ = Linear(weights, names::child(module, "wq_b"), Rq, q_width, false);
  } else {
    query_ = Linear(weights, names::child(module, "query"), hidden, q_width, false);
  }
  kv_down_ = Linear(weights, names::child(module, "wkv_a"), hidden, R + P, spec.k_bias);
  kv_norm_ = Norm(spec.latent_norm, weights, names::child(module, "kv_norm"), R);
  kv_up_weight_ =
      require_weight(weights, names::kernel(names::child(module, "wkv_b")), {H * (nope + V), R})
          .contiguous();
  kv_up_ = Linear(kv_up_weight_);
  out_ = Linear(weights, names::child(module, "out"), H * V, hidden, spec.o_bias);
  scale_ = spec.scale > 0.0f ? spec.scale
                             : static_cast<float>(1.0 / std::sqrt(static_cast<double>(nope + P)));
  ops::rope_frequencies(spec.rope, P, 1);  // rejects unusable settings now
}

void Mla::report(const ActivationObserver* observer, const char* part, const float* data,
                 int64_t batch, int64_t tokens, int64_t features,
                 const Workspace& workspace) const {
  if (observer)
    (*observer)(names::child(module_, part), workspace.view(data, {batch, tokens, features}));
}

void Mla::forward(const float* x, int64_t batch, int64_t tokens, int64_t start, LayerKvCache& cache,
                  float* out, Workspace& workspace, const ActivationObserver* observer) const {
  forward_in_form(tokens == 1 ? MlaForm::kAbsorbed : MlaForm::kExpanded, x, batch, tokens, start,
                  cache, out, workspace, observer);
}

void Mla::forward_in_form(MlaForm form, const float* x, int64_t batch, int64_t tokens,
                          int64_t start, LayerKvCache& cache, float* out, Workspace& workspace,
                          const ActivationObserver* observer) const {
  if (cache.layout != KvLayout::kLatent)
    throw Error(module_ + ": the KV cache layer is not a latent cache");
  const int64_t rows = batch * tokens, H = spec_.num_heads, nope = spec_.qk_nope_head_dim;
  const int64_t P = spec_.qk_rope_head_dim, V = spec_.value_head_dim, R = spec_.kv_lora_rank;
  const int64_t capacity = cache.latent.dim(1);
  if (start + tokens > capacity) throw Error(module_ + ": positions exceed the KV cache capacity");
  Workspace::Scope scope(workspace);

  float* q = workspace.take<float>(rows * H * (nope + P));  // [B, T, H, nope + P]
  if (spec_.q_lora_rank > 0) {
    Workspace::Scope query_scope(workspace);
    float* q_latent = workspace.take<float>(rows * spec_.q_lora_rank);  // [B * T, Rq]
    query_down_.forward(x, rows, q_latent);
    report(observer, "wq_a", q_latent, batch, tokens, spec_.q_lora_rank, workspace);
    query_norm_.forward(q_latent, rows, q_latent);
    report(observer, "q_norm", q_latent, batch, tokens, spec_.q_lora_rank, workspace);
    query_up_.forward(q_latent, rows, q);
  } else {
    query_.forward(x, rows, q);
  }
  if (observer)
    (*observer)(names::child(module_, "query"), workspace.view(q, {batch, tokens, H, nope + P}));
  float* kv = workspace.take<float>(rows * (R + P));  // [B * T, R + P]: latent, then rotary key
  kv_down_.forward(x, rows, kv);
  report(observer, "wkv_a", kv, batch, tokens, R + P, workspace);
  float* latent = workspace.take<float>(rows * R);      // [B * T, R]
  float* rotary_key = workspace.take<float>(rows * P);  // [B * T, P]
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(kv + r * (R + P), R, latent + r * R);
    std::copy_n(kv + r * (R + P) + R, P, rotary_key + r * P);
  }
  kv_norm_.forward(latent, rows, latent);
  report(observer, "kv_norm", latent, batch, tokens, R, workspace);

  // RoPE on the rotary part of every query head (features [nope, nope + P) of each head:
  // the rows start nope floats in, with a head stride of nope + P) and on the rotary key.
  const ops::RopeFrequencies& rope = cache.rope_frequencies(spec_.rope, P, start + tokens);
  int64_t* positions = workspace.take<int64_t>(rows);  // [B * T]
  for (int64_t r = 0; r < rows; ++r) positions[r] = start + r % tokens;
  ops::apply_rope(q + nope, positions, rows, H, nope + P, P, rope.inv_freq.data(),
                  rope.attention_scaling, spec_.rope.interleaved);
  ops::apply_rope(rotary_key, positions, rows, 1, P, P, rope.inv_freq.data(),
                  rope.attention_scaling, spec_.rope.interleaved);

  for (int64_t b = 0; b < batch; ++b) {
    write_positions(cache.latent, b, start, latent + b * tokens * R, tokens);
    write_positions(cache.rotary_keys, b, start, rotary_key + b * tokens * P, tokens);
  }

  float* mixed = workspace.take<float>(rows * H * V);  // [B, T, H, V]
  if (form == MlaForm::kExpanded)
    attend_expanded(q, batch, tokens, start, cache, mixed, workspace);
  else
    attend_absorbed(q, batch, tokens, start, cache, mixed, workspace);
  out_.forward(mixed, rows, out);
}

void Mla::attend_expanded(const float* q, int64_t batch, int64_t tokens, int64_t start,
                          const LayerKvCache& cache, float* mixed, Workspace& workspace) const {
  const int64_t H = spec_.num_heads, nope = spec_.qk_nope_head_dim, P = spec_.qk_rope_head_dim;
  const int64_t V = spec_.value_head_dim, R = spec_.kv_lora_rank, D = nope + P;
  const int64_t S = start + tokens;
  Workspace::Scope scope(workspace);
  // The cached latents and rotary keys as f32 (converted when the cache is bf16).
  const bool convert = cache.latent.dtype() != DType::F32;
  int64_t stride = 0;
  const float* latents = read_positions(
      cache.latent, S, convert ? workspace.take<float>(batch * S * R) : nullptr, stride);
  const float* rotaries = read_positions(
      cache.rotary_keys, S, convert ? workspace.take<float>(batch * S * P) : nullptr, stride);
  float* up = workspace.take<float>(S * H * (nope + V));     // [S, H, nope + V] of one row
  float* keys = workspace.take<float>(batch * S * H * D);    // [B, S, H, nope + P]
  float* values = workspace.take<float>(batch * S * H * V);  // [B, S, H, V]
  for (int64_t b = 0; b < batch; ++b) {
    kv_up_.forward(latents + b * stride * R, S, up);
    const float* rotary = rotaries + b * stride * P;  // [S, P]
    for (int64_t j = 0; j < S; ++j)
      for (int64_t h = 0; h < H; ++h) {
        const float* from = up + (j * H + h) * (nope + V);
        float* key = keys + ((b * S + j) * H + h) * D;
        std::copy_n(from, nope, key);
        std::copy_n(rotary + j * P, P, key + nope);
        std::copy_n(from + nope, V, values + ((b * S + j) * H + h) * V);
      }
  }
  ops::AttentionShape shape;
  shape.batch = batch;
  shape.tokens = tokens;
  shape.start = start;
  shape.cache_len = S;
  shape.cache_max = S;
  shape.heads = H;
  shape.kv_heads = H;
  shape.head_dim = D;
  shape.value_dim = V;
  shape.scale = scale_;
  ops::causal_attention(q, keys, values, mixed, shape);
}

void Mla::attend_absorbed(const float* q, int64_t batch, int64_t tokens, int64_t start,
                          const LayerKvCache& cache, float* mixed, Workspace& workspace) const {
  const int64_t rows = batch * tokens, H = spec_.num_heads, nope = spec_.qk_nope_head_dim;
  const int64_t P = spec_.qk_rope_head_dim, V = spec_.value_head_dim, R = spec_.kv_lora_rank;
  Workspace::Scope scope(workspace);
  float* q_nope = workspace.take<float>(rows * H * nope);  // [B * T, H, nope]
  float* q_rope = workspace.take<float>(rows * H * P);     // [B * T, H, P]
  for (int64_t i = 0; i < rows * H; ++i) {
    std::copy_n(q + i * (nope + P), nope, q_nope + i * nope);
    std::copy_n(q + i * (nope + P) + nope, P, q_rope + i * P);
  }
  const ops::KvUpProjection kv_up{kv_up_weight_.raw(), kv_up_weight_.dtype(), H, nope, V, R};
  float* q_latent = workspace.take<float>(rows * H * R);  // [B, T, H, R]
  ops::absorb_query(q_nope, kv_up, q_latent, rows);
  ops::LatentAttentionShape shape;
  shape.batch = batch;
  shape.tokens = tokens;
  shape.start = start;
  shape.cache_len = start + tokens;
  const bool convert = cache.latent.dtype() != DType::F32;
  const float* latents = read_positions(
      cache.latent, shape.cache_len,
      convert ? workspace.take<float>(batch * shape.cache_len * R) : nullptr, shape.cache_max);
  const float* rotaries = read_positions(
      cache.rotary_keys, shape.cache_len,
      convert ? workspace.take<float>(batch * shape.cache_len * P) : nullptr, shape.cache_max);
  shape.heads = H;
  shape.latent_dim = R;
  shape.rope_dim = P;
  shape.scale = scale_;
  float* attended = workspace.take<float>(rows * H * R);  // [B, T, H, R]
  ops::latent_attention(q_latent, q_rope, latents, rotaries, attended, shape);
  ops::expand_values(attended, kv_up, mixed, rows);
}

}  // namespace kiln
