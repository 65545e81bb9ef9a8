#include "kiln/layers/mla.h"

#include <algorithm>
#include <cmath>
#include <vector>

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

void Mla::report(const ActivationObserver* observer, const std::string& part, int64_t batch,
                 int64_t tokens, const std::vector<float>& values) const {
  if (!observer) return;
  const int64_t features = static_cast<int64_t>(values.size()) / (batch * tokens);
  (*observer)(names::child(module_, part), Tensor::from_f32({batch, tokens, features}, values));
}

void Mla::forward(const float* x, int64_t batch, int64_t tokens, int64_t start, LayerKvCache& cache,
                  float* out, const ActivationObserver* observer) const {
  forward_in_form(tokens == 1 ? MlaForm::kAbsorbed : MlaForm::kExpanded, x, batch, tokens, start,
                  cache, out, observer);
}

void Mla::forward_in_form(MlaForm form, const float* x, int64_t batch, int64_t tokens,
                          int64_t start, LayerKvCache& cache, float* out,
                          const ActivationObserver* observer) const {
  check(cache.layout == KvLayout::kLatent, module_ + ": the KV cache layer is not a latent cache");
  const int64_t rows = batch * tokens, H = spec_.num_heads, nope = spec_.qk_nope_head_dim;
  const int64_t P = spec_.qk_rope_head_dim, V = spec_.value_head_dim, R = spec_.kv_lora_rank;
  const int64_t capacity = cache.latent.dim(1);
  check(start + tokens <= capacity, module_ + ": positions exceed the KV cache capacity");

  Tensor q = Tensor::zeros(DType::F32, {batch, tokens, H, nope + P});  // [B, T, H, nope + P]
  if (spec_.q_lora_rank > 0) {
    std::vector<float> q_latent(rows * spec_.q_lora_rank);  // [B * T, Rq]
    query_down_.forward(x, rows, q_latent.data());
    report(observer, "wq_a", batch, tokens, q_latent);
    query_norm_.forward(q_latent.data(), rows, q_latent.data());
    report(observer, "q_norm", batch, tokens, q_latent);
    query_up_.forward(q_latent.data(), rows, q.mutable_data<float>());
  } else {
    query_.forward(x, rows, q.mutable_data<float>());
  }
  if (observer) (*observer)(names::child(module_, "query"), q);
  std::vector<float> kv(rows * (R + P));  // [B * T, R + P]: latent, then the rotary key
  kv_down_.forward(x, rows, kv.data());
  report(observer, "wkv_a", batch, tokens, kv);
  std::vector<float> latent(rows * R), rotary_key(rows * P);  // [B * T, R], [B * T, P]
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(kv.data() + r * (R + P), R, latent.data() + r * R);
    std::copy_n(kv.data() + r * (R + P) + R, P, rotary_key.data() + r * P);
  }
  kv_norm_.forward(latent.data(), rows, latent.data());
  report(observer, "kv_norm", batch, tokens, latent);

  // RoPE on the rotary part of every query head (features [nope, nope + P) of each head:
  // the rows start nope floats in, with a head stride of nope + P) and on the rotary key.
  const ops::RopeFrequencies rope = ops::rope_frequencies(spec_.rope, P, start + tokens);
  std::vector<int64_t> positions(rows);  // [B * T]
  for (int64_t r = 0; r < rows; ++r) positions[r] = start + r % tokens;
  ops::apply_rope(q.mutable_data<float>() + nope, positions.data(), rows, H, nope + P, P,
                  rope.inv_freq.data(), rope.attention_scaling, spec_.rope.interleaved);
  ops::apply_rope(rotary_key.data(), positions.data(), rows, 1, P, P, rope.inv_freq.data(),
                  rope.attention_scaling, spec_.rope.interleaved);

  float* latent_cache = cache.latent.mutable_data<float>();       // [B, capacity, R]
  float* rotary_cache = cache.rotary_keys.mutable_data<float>();  // [B, capacity, P]
  for (int64_t b = 0; b < batch; ++b) {
    std::copy_n(latent.data() + b * tokens * R, tokens * R,
                latent_cache + (b * capacity + start) * R);
    std::copy_n(rotary_key.data() + b * tokens * P, tokens * P,
                rotary_cache + (b * capacity + start) * P);
  }

  std::vector<float> mixed(rows * H * V);  // [B, T, H, V]
  if (form == MlaForm::kExpanded)
    attend_expanded(q.data<float>(), batch, tokens, start, cache, mixed.data());
  else
    attend_absorbed(q.data<float>(), batch, tokens, start, cache, mixed.data());
  out_.forward(mixed.data(), rows, out);
}

void Mla::attend_expanded(const float* q, int64_t batch, int64_t tokens, int64_t start,
                          const LayerKvCache& cache, float* mixed) const {
  const int64_t H = spec_.num_heads, nope = spec_.qk_nope_head_dim, P = spec_.qk_rope_head_dim;
  const int64_t V = spec_.value_head_dim, R = spec_.kv_lora_rank, D = nope + P;
  const int64_t S = start + tokens, capacity = cache.latent.dim(1);
  std::vector<float> up(S * H * (nope + V));     // [S, H, nope + V] of one row
  std::vector<float> keys(batch * S * H * D);    // [B, S, H, nope + P]
  std::vector<float> values(batch * S * H * V);  // [B, S, H, V]
  for (int64_t b = 0; b < batch; ++b) {
    kv_up_.forward(cache.latent.data<float>() + b * capacity * R, S, up.data());
    const float* rotary = cache.rotary_keys.data<float>() + b * capacity * P;  // [S, P]
    for (int64_t j = 0; j < S; ++j)
      for (int64_t h = 0; h < H; ++h) {
        const float* from = up.data() + (j * H + h) * (nope + V);
        float* key = keys.data() + ((b * S + j) * H + h) * D;
        std::copy_n(from, nope, key);
        std::copy_n(rotary + j * P, P, key + nope);
        std::copy_n(from + nope, V, values.data() + ((b * S + j) * H + h) * V);
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
  ops::causal_attention(q, keys.data(), values.data(), mixed, shape);
}

void Mla::attend_absorbed(const float* q, int64_t batch, int64_t tokens, int64_t start,
                          const LayerKvCache& cache, float* mixed) const {
  const int64_t rows = batch * tokens, H = spec_.num_heads, nope = spec_.qk_nope_head_dim;
  const int64_t P = spec_.qk_rope_head_dim, V = spec_.value_head_dim, R = spec_.kv_lora_rank;
  std::vector<float> q_nope(rows * H * nope), q_rope(rows * H * P);  // [B*T, H, nope], [.., P]
  for (int64_t i = 0; i < rows * H; ++i) {
    std::copy_n(q + i * (nope + P), nope, q_nope.data() + i * nope);
    std::copy_n(q + i * (nope + P) + nope, P, q_rope.data() + i * P);
  }
  const ops::KvUpProjection kv_up{kv_up_weight_.raw(), kv_up_weight_.dtype(), H, nope, V, R};
  std::vector<float> q_latent(rows * H * R);  // [B, T, H, R]
  ops::absorb_query(q_nope.data(), kv_up, q_latent.data(), rows);
  ops::LatentAttentionShape shape;
  shape.batch = batch;
  shape.tokens = tokens;
  shape.start = start;
  shape.cache_len = start + tokens;
  shape.cache_max = cache.latent.dim(1);
  shape.heads = H;
  shape.latent_dim = R;
  shape.rope_dim = P;
  shape.scale = scale_;
  std::vector<float> attended(rows * H * R);  // [B, T, H, R]
  ops::latent_attention(q_latent.data(), q_rope.data(), cache.latent.data<float>(),
                        cache.rotary_keys.data<float>(), attended.data(), shape);
  ops::expand_values(attended.data(), kv_up, mixed, rows);
}

}  // namespace kiln
