#include "kiln/layers/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/models/capabilities.h"
#include "kiln/models/weight_names.h"
#include "kiln/ops/attention.h"
#include "kiln/ops/norm.h"
#include "kiln/ops/rope.h"
#include "kiln/ops/rope_frequencies.h"

namespace kiln {

// What the Attention layer computes (`kiln analyze` reports these supported): grouped KV
// heads, projection biases, per-head QK-norm, a custom softmax scale, and each layer's own
// RoPE settings.
KILN_CAPABILITY("attention.kind", "mha");
KILN_CAPABILITY("attention.kind", "gqa");
KILN_CAPABILITY("attention.kind", "mqa");
KILN_CAPABILITY("attention.bias", "yes");
KILN_CAPABILITY("attention.clip_qkv", "yes");
KILN_CAPABILITY("attention.qk_norm", "per_head");
KILN_CAPABILITY("attention.qk_norm", "whole_projection");
KILN_CAPABILITY("attention.scale", "yes");
KILN_CAPABILITY("rope.local", "yes");
KILN_CAPABILITY("attention.qk_norm", "l2");
KILN_CAPABILITY("attention.temperature_tuning", "yes");
KILN_CAPABILITY("rope.skipped_layers", "yes");  // per-layer RopeSpec type kNone

namespace {
NormSpec qk_norm_spec(const AttentionSpec& spec) {
  // The weightless L2 norm is applied by forward() itself.
  if (spec.qk_norm == QkNormKind::kNone || spec.qk_norm == QkNormKind::kL2)
    return {NormKind::kNone, 0.0f};
  return spec.qk_norm_spec;
}
}  // namespace

Attention::Attention(const AttentionSpec& spec, int64_t hidden, const WeightMap& weights,
                     const std::string& module)
    : spec_(spec), module_(module), hidden_(hidden) {
  check(!(spec.sinks && spec.is_mla()),
        module + ": attention sinks with latent attention are not implemented");
  check(!(spec.clip_qkv > 0.0f && spec.is_mla()),
        module + ": clip_qkv with latent attention is not implemented");
  if (spec.is_mla()) {
    mla_ = Mla(spec, hidden, weights, module);
    return;
  }
  check(spec.num_heads > 0 && spec.num_kv_heads > 0 && spec.head_dim > 0,
        module + ": heads, KV heads and head_dim must be positive");
  check(spec.num_heads % spec.num_kv_heads == 0,
        module + ": " + std::to_string(spec.num_heads) + " query heads are not a multiple of " +
            std::to_string(spec.num_kv_heads) + " KV heads");
  value_dim_ = spec.value_head_dim > 0 ? spec.value_head_dim : spec.head_dim;
  const int64_t q_width = spec.num_heads * spec.head_dim;
  const int64_t k_width = spec.num_kv_heads * spec.head_dim;
  const int64_t v_width = spec.num_kv_heads * value_dim_;
  query_ = Linear(weights, names::child(module, "query"), hidden, q_width, spec.q_bias);
  key_ = Linear(weights, names::child(module, "key"), hidden, k_width, spec.k_bias);
  value_ = Linear(weights, names::child(module, "value"), hidden, v_width, spec.v_bias);
  out_ = Linear(weights, names::child(module, "out"), spec.num_heads * value_dim_, hidden,
                spec.o_bias);
  const NormSpec norm = qk_norm_spec(spec);
  // Per head: over head_dim; whole projection (OLMo-2): over all heads at once.
  const bool whole = spec.qk_norm == QkNormKind::kWholeProjection;
  query_norm_ =
      Norm(norm, weights, names::child(module, "query_norm"), whole ? q_width : spec.head_dim);
  key_norm_ =
      Norm(norm, weights, names::child(module, "key_norm"), whole ? k_width : spec.head_dim);
  if (spec.sinks) sinks_ = require_f32(weights, names::sinks(module), {spec.num_heads});
  if (spec.rope.type != RopeType::kNone) {
    rotary_dim_ = spec.rope.rotary_dim > 0 ? spec.rope.rotary_dim : spec.head_dim;
    ops::rope_frequencies(spec.rope, spec.head_dim, 1);  // rejects unusable settings now
  }
}

void Attention::forward(const float* x, int64_t batch, int64_t tokens, int64_t start,
                        LayerKvCache& cache, float* out, Workspace& workspace,
                        const ActivationObserver* observer) const {
  if (spec_.is_mla()) return mla_.forward(x, batch, tokens, start, cache, out, workspace, observer);
  const int64_t rows = batch * tokens;
  const int64_t heads = spec_.num_heads, kv_heads = spec_.num_kv_heads, head_dim = spec_.head_dim;
  Workspace::Scope scope(workspace);
  float* q = workspace.take<float>(rows * heads * head_dim);       // [B, T, Hq, D]
  float* k = workspace.take<float>(rows * kv_heads * head_dim);    // [B, T, Hkv, D]
  float* v = workspace.take<float>(rows * kv_heads * value_dim_);  // [B, T, Hkv, Dv]
  project(x, batch, tokens, q, k, v, workspace, observer);
  float* mixed = workspace.take<float>(rows * heads * value_dim_);  // [B, T, Hq, Dv]
  attend(q, k, v, batch, tokens, start, cache, mixed, workspace, observer);
  out_.forward(mixed, rows, out);
}

void Attention::forward_rows(const float* x, int64_t rows, const int64_t* starts,
                             LayerKvCache* const* caches, float* out, Workspace& workspace) const {
  if (spec_.is_mla()) {
    for (int64_t r = 0; r < rows; ++r)
      mla_.forward(x + r * hidden_, 1, 1, starts[r], *caches[r], out + r * hidden_, workspace,
                   nullptr);
    return;
  }
  const int64_t heads = spec_.num_heads, kv_heads = spec_.num_kv_heads, head_dim = spec_.head_dim;
  Workspace::Scope scope(workspace);
  float* q = workspace.take<float>(rows * heads * head_dim);       // [rows, Hq, D]
  float* k = workspace.take<float>(rows * kv_heads * head_dim);    // [rows, Hkv, D]
  float* v = workspace.take<float>(rows * kv_heads * value_dim_);  // [rows, Hkv, Dv]
  project(x, rows, 1, q, k, v, workspace, nullptr);
  float* mixed = workspace.take<float>(rows * heads * value_dim_);  // [rows, Hq, Dv]
  for (int64_t r = 0; r < rows; ++r) {
    Workspace::Scope row_scope(workspace);  // a row's positions and converted cache
    attend(q + r * heads * head_dim, k + r * kv_heads * head_dim, v + r * kv_heads * value_dim_, 1,
           1, starts[r], *caches[r], mixed + r * heads * value_dim_, workspace, nullptr);
  }
  out_.forward(mixed, rows, out);
}

void Attention::project(const float* x, int64_t batch, int64_t tokens, float* q, float* k, float* v,
                        Workspace& workspace, const ActivationObserver* observer) const {
  const int64_t rows = batch * tokens;
  const int64_t heads = spec_.num_heads, kv_heads = spec_.num_kv_heads, head_dim = spec_.head_dim;
  Linear::forward_group(x, rows, {{&query_, q}, {&key_, k}, {&value_, v}});
  auto report = [&](const char* child, const float* data, int64_t width, int64_t dim) {
    (*observer)(names::child(module_, child), workspace.view(data, {batch, tokens, width, dim}));
  };
  if (observer) {
    report("query", q, heads, head_dim);
    report("key", k, kv_heads, head_dim);
    report("value", v, kv_heads, value_dim_);
  }
  if (spec_.clip_qkv > 0.0f) {  // OLMo, DBRX: clamp the projections (the reports show them before)
    const float c = spec_.clip_qkv;
    auto clamp = [c](float* data, int64_t n) {
      for (int64_t i = 0; i < n; ++i) data[i] = std::clamp(data[i], -c, c);
    };
    clamp(q, rows * heads * head_dim);
    clamp(k, rows * kv_heads * head_dim);
    clamp(v, rows * kv_heads * value_dim_);
  }
}

void Attention::attend(float* q, float* k, float* v, int64_t batch, int64_t tokens, int64_t start,
                       LayerKvCache& cache, float* mixed, Workspace& workspace,
                       const ActivationObserver* observer) const {
  const int64_t rows = batch * tokens;
  const int64_t heads = spec_.num_heads, kv_heads = spec_.num_kv_heads, head_dim = spec_.head_dim;
  const int64_t capacity = cache.keys.dim(1);
  if (start + tokens > capacity) throw Error(module_ + ": positions exceed the KV cache capacity");
  auto report = [&](const char* child, const float* data, int64_t width, int64_t dim) {
    (*observer)(names::child(module_, child), workspace.view(data, {batch, tokens, width, dim}));
  };
  const bool weighted_qk_norm =
      spec_.qk_norm != QkNormKind::kNone && spec_.qk_norm != QkNormKind::kL2;
  if (weighted_qk_norm) {
    const bool whole = spec_.qk_norm == QkNormKind::kWholeProjection;
    query_norm_.forward(q, whole ? rows : rows * heads, q);
    key_norm_.forward(k, whole ? rows : rows * kv_heads, k);
    if (observer) {
      report("query_norm", q, heads, head_dim);
      report("key_norm", k, kv_heads, head_dim);
    }
  }
  if (spec_.rope.type != RopeType::kNone) {
    // Frequencies for a sequence of start + T positions (some scalings depend on it).
    const ops::RopeFrequencies& rope = cache.rope_frequencies(spec_.rope, head_dim, start + tokens);
    int64_t* positions = workspace.take<int64_t>(rows);  // [B * T]
    for (int64_t r = 0; r < rows; ++r) positions[r] = start + r % tokens;
    const bool interleaved = spec_.rope.interleaved;
    ops::apply_rope(q, positions, rows, heads, head_dim, rotary_dim_, rope.inv_freq.data(),
                    rope.attention_scaling, interleaved);
    ops::apply_rope(k, positions, rows, kv_heads, head_dim, rotary_dim_, rope.inv_freq.data(),
                    rope.attention_scaling, interleaved);
  }
  if (spec_.qk_norm == QkNormKind::kL2) {  // after RoPE, as transformers' Llama 4 does
    const float eps = spec_.qk_norm_spec.eps;
    ops::rms_norm(q, nullptr, q, rows * heads, head_dim, eps, false);
    ops::rms_norm(k, nullptr, k, rows * kv_heads, head_dim, eps, false);
    if (observer) {
      report("query_norm", q, heads, head_dim);
      report("key_norm", k, kv_heads, head_dim);
    }
  }
  if (spec_.temperature_floor_scale > 0.0) {
    // In float32 like transformers: log1p(floor((p + 1) / floor_scale)) * attn_scale + 1.
    const auto floor_scale = static_cast<float>(spec_.temperature_floor_scale);
    const auto attn_scale = static_cast<float>(spec_.temperature_attn_scale);
    for (int64_t r = 0; r < rows; ++r) {
      const auto position = static_cast<float>(start + r % tokens);
      const float factor =
          std::log1p(std::floor((position + 1.0f) / floor_scale)) * attn_scale + 1.0f;
      float* row = q + r * heads * head_dim;  // [Hq, D]
      for (int64_t i = 0; i < heads * head_dim; ++i) row[i] *= factor;
    }
  }
  for (int64_t b = 0; b < batch; ++b) {
    write_positions(cache.keys, b, start, k + b * tokens * kv_heads * head_dim, tokens);
    write_positions(cache.values, b, start, v + b * tokens * kv_heads * value_dim_, tokens);
  }
  // The cached keys and values as f32 (converted into the workspace when the cache is bf16).
  const int64_t length = start + tokens;
  const bool convert = cache.keys.dtype() != DType::F32;
  float* k_scratch =
      convert ? workspace.take<float>(batch * length * kv_heads * head_dim) : nullptr;
  float* v_scratch =
      convert ? workspace.take<float>(batch * length * kv_heads * value_dim_) : nullptr;
  int64_t stride = 0;
  const float* k_cache = read_positions(cache.keys, length, k_scratch, stride);
  const float* v_cache = read_positions(cache.values, length, v_scratch, stride);
  ops::AttentionShape shape;
  shape.batch = batch;
  shape.tokens = tokens;
  shape.start = start;
  shape.cache_len = start + tokens;
  shape.cache_max = stride;
  shape.heads = heads;
  shape.kv_heads = kv_heads;
  shape.head_dim = head_dim;
  shape.value_dim = value_dim_;
  shape.scale = spec_.scale > 0.0f
                    ? spec_.scale
                    : static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  shape.window = spec_.sliding_window;
  shape.chunk = spec_.chunk_size;
  shape.softcap = spec_.softcap;
  shape.sinks = sinks_.empty() ? nullptr : sinks_.data();
  ops::causal_attention(q, k_cache, v_cache, mixed, shape);
}

}  // namespace kiln
