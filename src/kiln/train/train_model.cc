#include "kiln/train/train_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/models/weight_names.h"
#include "kiln/ops/norm.h"
#include "kiln/ops/rope.h"
#include "kiln/ops/rope_frequencies.h"
#include "kiln/train/backward.h"
#include "kiln/train/family_backward.h"
#include "kiln/train/mla_backward.h"
#include "kiln/train/moe_backward.h"
#include "kiln/train/sink_attention.h"

namespace kiln::train {

namespace {

bool is_rms(NormKind kind) {
  return kind == NormKind::kRms || kind == NormKind::kRmsOnePlus;
}

void refuse(const std::string& where, const std::string& feature) {
  throw Error("training: " + where + ": " + feature + " is not supported yet");
}

void check_layer(const LayerSpec& layer, const std::string& where) {
  const AttentionSpec& a = layer.attention;
  if (layer.norm.kind == NormKind::kNone) refuse(where, "norm kind 'none'");
  if (layer.moe.enabled()) check_moe_trainable(layer.moe, layer.mlp.activation, where);
  if (a.qk_norm != QkNormKind::kNone && a.qk_norm != QkNormKind::kL2 &&
      !is_rms(a.qk_norm_spec.kind))
    refuse(where, std::string("QK norm kind '") + norm_kind_name(a.qk_norm_spec.kind) + "'");
  if (a.clip_qkv > 0.0f && a.is_mla()) refuse(where, "clip_qkv with latent attention");
  if ((a.sinks || a.chunk_size > 0) && a.softcap > 0.0f)
    refuse(where, "attention sinks or chunked attention with logit soft-capping");
  if (a.is_mla()) {
    if (a.sinks) refuse(where, "attention sinks with latent attention");
    if (a.chunk_size > 0 || a.temperature_floor_scale > 0.0)
      refuse(where, "chunked attention or temperature tuning with latent attention");
    if (a.qk_norm != QkNormKind::kNone) refuse(where, "QK norm with latent attention");
    if (a.softcap > 0.0f) refuse(where, "attention logit soft-capping with latent attention");
    check_mla_trainable(a, where);
  } else {
    if (a.value_head_dim > 0 && a.value_head_dim != a.head_dim)
      refuse(where, "a value head size different from head_dim");
    if (a.num_heads <= 0 || a.num_kv_heads <= 0 || a.head_dim <= 0 ||
        a.num_heads % a.num_kv_heads != 0)
      throw Error("training: " + where + ": query heads must be a positive multiple of KV heads");
  }
  if (layer.moe.enabled()) return;  // the MoE block replaces the MLP
  if (layer.mlp.swiglu_limit > 0.0f) refuse(where, "clamped SwiGLU");
  if (layer.mlp.gated && layer.mlp.activation != Activation::kSilu &&
      layer.mlp.activation != Activation::kGeluTanh)
    refuse(where,
           std::string("gated MLP activation '") + activation_name(layer.mlp.activation) + "'");
}

}  // namespace

void check_trainable(const ModelSpec& spec) {
  const std::string model = "model '" + spec.architecture + "'";
  if (spec.vocab_size <= 0 || spec.hidden_size <= 0 || spec.num_layers() <= 0)
    throw Error("training: " + model +
                ": vocab_size, hidden_size and the layer count must be "
                "positive");
  if (spec.learned_positions && spec.max_position_embeddings <= 0)
    throw Error("training: " + model +
                ": a learned position table needs max_position_embeddings > 0");
  if (!spec.has_final_norm) refuse(model, "a model without a final norm");
  if (spec.final_norm.kind == NormKind::kNone) refuse(model, "final norm kind 'none'");
  if (spec.logit_scale != 1.0f && spec.lm_head_bias)
    refuse(model, "a logit scale with an lm_head bias");
  for (int64_t i = 0; i < spec.num_layers(); ++i)
    check_layer(spec.layers[i], model + " layer " + std::to_string(i));
}

// A norm's statistics per row: 1 / rms (RMSNorm), or the mean and 1 / std (LayerNorm).
struct TrainModel::NormStats {
  std::vector<float> mean, inv;  // [rows]
};

// What the forward keeps of one layer; rows = B * T. Buffers of parts the layer lacks stay empty.
struct TrainModel::LayerSaved {
  std::vector<float> input;          // [rows, hidden] the residual stream entering the layer
  NormStats n1;                      // attention_in
  std::vector<float> normed1;        // [rows, hidden] attention input (the input without a norm)
  std::vector<float> q_raw, k_raw;   // [rows, Hq * D], [rows, Hkv * D] before the QK norm
  std::vector<uint8_t> clipped;      // clip_qkv: 1 where q, k, v (in a row) were clamped
  NormStats qn, kn;                  // QK norm
  std::vector<float> q, k, v;        // [rows, Hq * D], [rows, Hkv * D] x 2 (after RoPE)
  std::vector<float> mixed;          // [rows, Hq * D] attention output before `out`
  std::vector<float> softmax_stats;  // [rows, Hq, 2] each query's softmax max and 1 / sum
  std::vector<float> attn_raw;       // [rows, hidden] attention branch before attention_out
  NormStats n_attn_out;              // attention_out
  std::vector<float> middle;         // [rows, hidden] the residual after attention
  NormStats n2;                      // mlp_in
  std::vector<float> normed2;        // [rows, hidden] MLP input (not kept when it is normed1)
  std::vector<float> gate, up, act;  // [rows, intermediate] (gate: gated MLPs only)
  std::vector<float> mlp_raw;        // [rows, hidden] MLP branch before mlp_out
  NormStats n_mlp_out;               // mlp_out
  MoeSaved moe;                      // MoE layers (gate, up, act unused)
  MlaSaved mla;                      // latent attention layers (q_raw .. mixed unused)
};

// What the forward keeps, per layer and at the end. With recomputation, only each layer's
// `input` is kept; the rest of a layer is made again (into `work`) before its backward.
struct TrainModel::Activations {
  std::vector<LayerSaved> layers;
  LayerSaved work;                  // recomputation: the layer being differentiated
  std::vector<float> last;          // [rows, hidden] the residual after the last layer
  NormStats final_stats;            // the final norm's
  std::vector<float> final_normed;  // [rows, hidden] the lm_head's input
  std::vector<int64_t> positions;   // [rows]
  // Packed rows: the documents as (first flattened row, length); empty when not packed.
  std::vector<std::pair<int64_t, int64_t>> documents;
};

// Gradient buffers of the backward, sized for the widest layer and reused by every layer.
struct TrainModel::Scratch {
  std::vector<float> d_raw, d_normed1, d_normed2;          // [rows, hidden]
  std::vector<float> d_act, d_gate, d_up;                  // [rows, intermediate]
  std::vector<float> d_mixed, dq, dk, dv, dq_raw, dk_raw;  // [rows, Hq or Hkv * D]
};

namespace {
// Llama 4's temperature tuning: the query at position p is multiplied by
// log1p(floor((p + 1) / floor_scale)) * attn_scale + 1 (float32, as transformers).   [rows]
std::vector<float> temperatures(const AttentionSpec& a, const std::vector<int64_t>& positions) {
  const auto floor_scale = static_cast<float>(a.temperature_floor_scale);
  const auto attn_scale = static_cast<float>(a.temperature_attn_scale);
  std::vector<float> factor(positions.size());
  for (size_t r = 0; r < positions.size(); ++r)
    factor[r] = std::log1p(std::floor((static_cast<float>(positions[r]) + 1.0f) / floor_scale)) *
                    attn_scale +
                1.0f;
  return factor;
}

AttentionDims attention_dims(const AttentionSpec& a, int64_t batch, int64_t T) {
  return {batch,
          T,
          a.num_heads,
          a.num_kv_heads,
          a.head_dim,
          a.scale > 0.0f ? a.scale : static_cast<float>(1.0 / std::sqrt(double(a.head_dim))),
          a.sliding_window};
}
}  // namespace

void TrainModel::norm_forward(const NormParams& n, const float* x, float* y, int64_t rows,
                              NormStats& st) {
  st.inv.resize(rows);
  if (is_rms(n.spec.kind)) {
    ops::rms_norm(x, n.w, y, rows, n.dim, n.spec.eps, n.spec.kind == NormKind::kRmsOnePlus,
                  st.inv.data());
  } else {
    st.mean.resize(rows);
    layer_norm_forward(x, n.w, n.b, y, rows, n.dim, n.spec.eps, st.mean.data(), st.inv.data());
  }
}

void TrainModel::norm_backward(const NormParams& n, const float* x, const NormStats& st,
                               const float* dy, float* dx, int64_t rows) {
  if (is_rms(n.spec.kind))
    rms_norm_backward(x, n.w, st.inv.data(), dy, dx, n.dw, rows, n.dim,
                      n.spec.kind == NormKind::kRmsOnePlus);
  else
    layer_norm_backward(x, n.w, st.mean.data(), st.inv.data(), dy, dx, n.dw, n.db, rows, n.dim);
}

float* TrainModel::add_parameter(const WeightMap& weights, const std::string& name,
                                 const Shape& shape) {
  Tensor p = require_weight(weights, name, shape).to(DType::F32);
  if (freeze_base_) {
    frozen_[name] = p;
    return p.mutable_data<float>();
  }
  gradients_[name] = Tensor::zeros(DType::F32, shape);
  parameters_[name] = p;
  return p.mutable_data<float>();
}

float* TrainModel::grad(const std::string& name) {
  auto it = gradients_.find(name);
  return it == gradients_.end() ? nullptr : it->second.mutable_data<float>();
}

Tensor TrainModel::add_trainable(const std::string& name, const Shape& shape) {
  check(!parameters_.count(name) && !frozen_.count(name),
        "training: parameter '" + name + "' already exists");
  Tensor p = Tensor::zeros(DType::F32, shape);
  parameters_[name] = p;
  gradients_[name] = Tensor::zeros(DType::F32, shape);
  return p;
}

TrainModel::LinearParams TrainModel::add_linear(const WeightMap& weights, const std::string& module,
                                                int64_t in, int64_t out, bool bias) {
  LinearParams l;
  l.w = add_parameter(weights, names::kernel(module), {out, in});
  l.dw = grad(names::kernel(module));
  if (bias) {
    l.b = add_parameter(weights, names::bias(module), {out});
    l.db = grad(names::bias(module));
  }
  return l;
}

TrainModel::NormParams TrainModel::add_norm(const WeightMap& weights, const std::string& module,
                                            const NormSpec& spec, int64_t dim) {
  NormParams n;
  n.spec = spec;
  n.dim = dim;
  if (spec.kind != NormKind::kNonParametric) {
    n.w = add_parameter(weights, names::scale(module), {dim});
    n.dw = grad(names::scale(module));
  }
  if (spec.kind == NormKind::kLayerNorm) {
    n.b = add_parameter(weights, names::bias(module), {dim});
    n.db = grad(names::bias(module));
  }
  return n;
}

const float* TrainModel::add_constant(const WeightMap& weights, const std::string& name,
                                      const Shape& shape) {
  Tensor p = require_weight(weights, name, shape).to(DType::F32);
  frozen_[name] = p;
  return p.data<float>();
}

namespace {
LinearRef ref(const float* w, float* dw, const float* b = nullptr, float* db = nullptr) {
  return LinearRef{w, b, dw, db};
}
}  // namespace

MoeParams TrainModel::add_moe(const WeightMap& weights, int64_t i) {
  const MoeSpec& m = spec_.layers[i].moe;
  const int64_t H = spec_.hidden_size, E = m.num_experts, I = m.expert_intermediate;
  const std::string module = names::mlp(i);
  auto linear = [&](const std::string& child, const Shape& shape, bool bias, const Shape& bshape) {
    const std::string name = names::child(module, child);
    LinearRef l;
    l.w = add_parameter(weights, names::kernel(name), shape);
    l.dw = grad(names::kernel(name));
    if (bias) {
      l.b = add_parameter(weights, names::bias(name), bshape);
      l.db = grad(names::bias(name));
    }
    return l;
  };
  MoeParams p;
  p.router = linear("gate", {E, H}, m.router_bias, {E});
  if (m.score_correction_bias)
    p.correction_bias =
        add_constant(weights, names::score_correction_bias(names::child(module, "gate")), {E});
  p.gate = linear("wi_0", {E, I, H}, m.expert_bias, {E, I});
  p.up = linear("wi_1", {E, I, H}, m.expert_bias, {E, I});
  p.down = linear("wo", {E, H, I}, m.expert_bias, {E, H});
  if (m.num_shared_experts > 0) {
    const int64_t S = m.shared_intermediate;
    p.shared_gate = linear("shared_experts/wi_0", {S, H}, false, {});
    p.shared_up = linear("shared_experts/wi_1", {S, H}, false, {});
    p.shared_down = linear("shared_experts/wo", {H, S}, false, {});
  }
  if (m.shared_expert_gate) p.shared_expert_gate = linear("shared_expert_gate", {1, H}, false, {});
  return p;
}

MlaParams TrainModel::add_mla(const WeightMap& weights, int64_t i) {
  const AttentionSpec& a = spec_.layers[i].attention;
  const int64_t hidden = spec_.hidden_size, H = a.num_heads, P = a.qk_rope_head_dim;
  const int64_t D = a.qk_nope_head_dim + P, V = a.value_head_dim, R = a.kv_lora_rank;
  const std::string attention = names::attention(i);
  auto linear = [&](const std::string& child, int64_t in, int64_t out, bool bias) {
    const LinearParams l = add_linear(weights, names::child(attention, child), in, out, bias);
    return ref(l.w, l.dw, l.b, l.db);
  };
  auto norm = [&](const std::string& child, int64_t dim, float*& d) {
    const std::string name = names::scale(names::child(attention, child));
    const float* w = add_parameter(weights, name, {dim});
    d = grad(name);
    return w;
  };
  MlaParams p;
  if (a.q_lora_rank > 0) {
    p.query_down = linear("wq_a", hidden, a.q_lora_rank, a.q_bias);
    p.query_norm = norm("q_norm", a.q_lora_rank, p.d_query_norm);
    p.query_up = linear("wq_b", a.q_lora_rank, H * D, false);
  } else {
    p.query = linear("query", hidden, H * D, false);
  }
  p.kv_down = linear("wkv_a", hidden, R + P, a.k_bias);
  p.kv_norm = norm("kv_norm", R, p.d_kv_norm);
  p.kv_up = linear("wkv_b", R, H * (a.qk_nope_head_dim + V), false);
  p.out = linear("out", H * V, hidden, a.o_bias);
  return p;
}

TrainModel::TrainModel(ModelSpec spec, const WeightMap& weights, bool freeze_base)
    : spec_(std::move(spec)), freeze_base_(freeze_base) {
  check_trainable(spec_);
  const int64_t hidden = spec_.hidden_size, vocab = spec_.vocab_size;
  const std::string embedding = names::embedding(names::token_embedder());
  embedding_ = add_parameter(weights, embedding, {vocab, hidden});
  if (spec_.learned_positions)
    positions_ = add_parameter(weights, names::embedding(names::position_embedder()),
                               {spec_.max_position_embeddings, hidden});
  for (int64_t i = 0; i < spec_.num_layers(); ++i) {
    const LayerSpec& ls = spec_.layers[i];
    const AttentionSpec& a = ls.attention;
    const NormPlacement p = ls.placement;
    const int64_t q_width = a.num_heads * a.head_dim, kv_width = a.num_kv_heads * a.head_dim;
    const int64_t inner = ls.mlp.intermediate;
    const std::string attention = names::attention(i);
    // The norms of the placement, under the names the inference DecoderLayer reads.
    Layer l;
    if (p != NormPlacement::kPost)
      l.attention_in = add_norm(weights, names::input_norm(i), ls.norm, hidden);
    if (a.is_mla()) {
      l.mla = add_mla(weights, i);
    } else {
      l.query = add_linear(weights, names::child(attention, "query"), hidden, q_width, a.q_bias);
      l.key = add_linear(weights, names::child(attention, "key"), hidden, kv_width, a.k_bias);
      l.value = add_linear(weights, names::child(attention, "value"), hidden, kv_width, a.v_bias);
      l.out = add_linear(weights, names::child(attention, "out"), q_width, hidden, a.o_bias);
    }
    if (a.sinks) {
      l.sinks = add_parameter(weights, names::sinks(attention), {a.num_heads});
      l.d_sinks = grad(names::sinks(attention));
    }
    if (a.qk_norm == QkNormKind::kPerHead || a.qk_norm == QkNormKind::kWholeProjection) {
      const bool whole = a.qk_norm == QkNormKind::kWholeProjection;
      l.query_norm = add_norm(weights, names::child(attention, "query_norm"), a.qk_norm_spec,
                              whole ? q_width : a.head_dim);
      l.key_norm = add_norm(weights, names::child(attention, "key_norm"), a.qk_norm_spec,
                            whole ? kv_width : a.head_dim);
    }
    if (p == NormPlacement::kPost || p == NormPlacement::kSandwich)
      l.attention_out = add_norm(weights, names::post_attention_norm(i), ls.norm, hidden);
    if (p == NormPlacement::kSandwich)
      l.mlp_in = add_norm(weights, names::pre_ffw_norm(i), ls.norm, hidden);
    else if (p == NormPlacement::kPre ||
             (p == NormPlacement::kParallel && !ls.parallel_shared_norm))
      l.mlp_in = add_norm(weights, names::post_attention_norm(i), ls.norm, hidden);
    if (ls.moe.enabled()) {
      l.moe = add_moe(weights, i);
    } else {
      if (ls.mlp.gated)
        l.gate = add_linear(weights, names::mlp_gate(i), hidden, inner, ls.mlp.bias);
      l.up = add_linear(weights, names::mlp_up(i), hidden, inner, ls.mlp.bias);
      l.down = add_linear(weights, names::mlp_down(i), inner, hidden, ls.mlp.bias);
    }
    if (p == NormPlacement::kPost || p == NormPlacement::kSandwich)
      l.mlp_out = add_norm(weights, names::post_ffw_norm(i), ls.norm, hidden);
    layers_.push_back(l);
  }
  final_norm_ = add_norm(weights, names::final_norm(), spec_.final_norm, hidden);
  lm_head_name_ = spec_.tie_word_embeddings ? embedding : names::kernel(names::lm_head());
  lm_head_ = spec_.tie_word_embeddings ? embedding_
                                       : add_parameter(weights, lm_head_name_, {vocab, hidden});
  if (!spec_.tie_word_embeddings && spec_.lm_head_bias)
    lm_head_bias_ = add_parameter(weights, names::bias(names::lm_head()), {vocab});
}

void TrainModel::zero_gradients() {
  for (auto& [name, g] : gradients_) std::memset(g.mutable_raw(), 0, g.nbytes());
}

void TrainModel::scale_gradients(float factor) {
  for (auto& [name, g] : gradients_) {
    float* data = g.mutable_data<float>();
    for (int64_t i = 0; i < g.numel(); ++i) data[i] *= factor;
  }
}

void TrainModel::forward(const int32_t* tokens, int64_t batch, int64_t T, Activations& saved,
                         bool training, const int32_t* segments, bool keep_inputs_only) const {
  check(batch > 0 && T > 0, "training: forward needs at least one row of one token");
  const int64_t rows = batch * T, hidden = spec_.hidden_size, vocab = spec_.vocab_size;
  for (int64_t r = 0; r < rows; ++r)
    if (tokens[r] < 0 || tokens[r] >= vocab)
      throw Error("training: token id " + std::to_string(tokens[r]) +
                  " is outside the vocabulary of " + std::to_string(vocab));
  std::vector<float> x(rows * hidden);  // [rows, hidden] the residual stream
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < hidden; ++i)
      x[r * hidden + i] = embedding_[tokens[r] * hidden + i] * spec_.embedding_scale;
  saved.positions.resize(rows);
  for (int64_t r = 0; r < rows; ++r) saved.positions[r] = r % T;
  saved.documents.clear();
  if (segments) {  // a document starts at each row's start and wherever the segment id changes
    for (int64_t r = 0; r < rows; ++r) {
      if (r % T == 0 || segments[r] != segments[r - 1]) saved.documents.emplace_back(r, 0);
      saved.positions[r] = r - saved.documents.back().first;
      ++saved.documents.back().second;
    }
  }
  if (positions_) {  // learned absolute positions (restarting with each packed document)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t p = saved.positions[r];
      if (p >= spec_.max_position_embeddings)
        throw Error("training: position " + std::to_string(p) +
                    " is beyond the learned position table of " +
                    std::to_string(spec_.max_position_embeddings));
      for (int64_t i = 0; i < hidden; ++i) x[r * hidden + i] += positions_[p * hidden + i];
    }
  }
  saved.layers.assign(layers_.size(), {});
  for (size_t i = 0; i < layers_.size(); ++i) {
    saved.layers[i].input = x;
    forward_layer(i, batch, T, saved, training, x, keep_inputs_only ? saved.work : saved.layers[i]);
  }
  saved.last = std::move(x);
  saved.final_normed.resize(rows * hidden);
  norm_forward(final_norm_, saved.last.data(), saved.final_normed.data(), rows, saved.final_stats);
}

void TrainModel::attention_forward(size_t i, int64_t batch, int64_t T, const Activations& saved,
                                   bool training, const float* in, float* out,
                                   LayerSaved& s) const {
  const int64_t rows = batch * T, hidden = spec_.hidden_size;
  const AttentionSpec& a = spec_.layers[i].attention;
  const Layer& l = layers_[i];
  if (a.is_mla())
    return mla_forward(a, l.mla, in, batch, T, hidden, saved.positions.data(), saved.documents, out,
                       s.mla);
  const int64_t Hq = a.num_heads, Hkv = a.num_kv_heads, D = a.head_dim;
  s.q.resize(rows * Hq * D);
  s.k.resize(rows * Hkv * D);
  s.v.resize(rows * Hkv * D);
  linear_forward(in, l.query.w, l.query.b, s.q.data(), rows, hidden, Hq * D);
  linear_forward(in, l.key.w, l.key.b, s.k.data(), rows, hidden, Hkv * D);
  linear_forward(in, l.value.w, l.value.b, s.v.data(), rows, hidden, Hkv * D);
  if (adapter_) {
    adapter_->forward(i, LinearSlot::kQuery, in, s.q.data(), rows, training);
    adapter_->forward(i, LinearSlot::kKey, in, s.k.data(), rows, training);
    adapter_->forward(i, LinearSlot::kValue, in, s.v.data(), rows, training);
  }
  if (a.clip_qkv > 0.0f) {  // OLMo, DBRX: clamp the projections (gradient 0 where clamped)
    const float c = a.clip_qkv;
    s.clipped.resize(rows * (Hq + 2 * Hkv) * D);
    uint8_t* mask = s.clipped.data();
    for (std::vector<float>* t : {&s.q, &s.k, &s.v})
      for (float& e : *t) {
        *mask++ = e < -c || e > c;
        e = std::clamp(e, -c, c);
      }
  }
  if (l.query_norm.dim > 0) {  // QK norm before RoPE: rows of head_dim, or of all heads
    s.q_raw = s.q;
    s.k_raw = s.k;
    norm_forward(l.query_norm, s.q_raw.data(), s.q.data(), rows * Hq * D / l.query_norm.dim, s.qn);
    norm_forward(l.key_norm, s.k_raw.data(), s.k.data(), rows * Hkv * D / l.key_norm.dim, s.kn);
  }
  if (a.rope.type != RopeType::kNone) {
    const ops::RopeFrequencies rope = ops::rope_frequencies(a.rope, D, T);
    const int64_t rotary = a.rope.rotary_dim > 0 ? a.rope.rotary_dim : D;
    ops::apply_rope(s.q.data(), saved.positions.data(), rows, Hq, D, rotary, rope.inv_freq.data(),
                    rope.attention_scaling, a.rope.interleaved);
    ops::apply_rope(s.k.data(), saved.positions.data(), rows, Hkv, D, rotary, rope.inv_freq.data(),
                    rope.attention_scaling, a.rope.interleaved);
  }
  if (a.qk_norm == QkNormKind::kL2) {  // Llama 4: x / rms(x) per head, after RoPE, no weight
    s.q_raw = s.q;
    s.k_raw = s.k;
    s.qn.inv.resize(rows * Hq);
    s.kn.inv.resize(rows * Hkv);
    ops::rms_norm(s.q_raw.data(), nullptr, s.q.data(), rows * Hq, D, a.qk_norm_spec.eps, false,
                  s.qn.inv.data());
    ops::rms_norm(s.k_raw.data(), nullptr, s.k.data(), rows * Hkv, D, a.qk_norm_spec.eps, false,
                  s.kn.inv.data());
  }
  if (a.temperature_floor_scale > 0.0) {
    const std::vector<float> factor = temperatures(a, saved.positions);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < Hq * D; ++j) s.q[r * Hq * D + j] *= factor[r];
  }
  s.mixed.resize(rows * Hq * D);
  s.softmax_stats.resize(rows * Hq * 2);
  attention_by_document(saved.documents, attention_dims(a, batch, T), a.softcap, s.q.data(),
                        s.k.data(), s.v.data(), s.mixed.data(), nullptr, nullptr, nullptr, nullptr,
                        l.sinks, nullptr, a.chunk_size, s.softmax_stats.data(), nullptr);
  linear_forward(s.mixed.data(), l.out.w, l.out.b, out, rows, Hq * D, hidden);
  if (adapter_) adapter_->forward(i, LinearSlot::kOut, s.mixed.data(), out, rows, training);
}

void TrainModel::mlp_forward(size_t i, int64_t rows, bool training, const float* in, float* out,
                             LayerSaved& s) const {
  const int64_t hidden = spec_.hidden_size;
  const MlpSpec& mlp = spec_.layers[i].mlp;
  const Layer& l = layers_[i];
  if (spec_.layers[i].moe.enabled())
    return moe_forward(spec_.layers[i].moe, mlp.activation, l.moe, in, rows, hidden, out, s.moe);
  const int64_t inner = mlp.intermediate;
  s.up.resize(rows * inner);
  s.act.resize(rows * inner);
  if (mlp.gated) {  // gate before up (adapters see the forwards in this order)
    s.gate.resize(rows * inner);
    linear_forward(in, l.gate.w, l.gate.b, s.gate.data(), rows, hidden, inner);
    if (adapter_) adapter_->forward(i, LinearSlot::kGate, in, s.gate.data(), rows, training);
  }
  linear_forward(in, l.up.w, l.up.b, s.up.data(), rows, hidden, inner);
  if (adapter_) adapter_->forward(i, LinearSlot::kUp, in, s.up.data(), rows, training);
  if (mlp.gated)
    gated_forward(mlp.activation, s.gate.data(), s.up.data(), s.act.data(), rows * inner);
  else
    activation_forward(mlp.activation, s.up.data(), s.act.data(), rows * inner);
  linear_forward(s.act.data(), l.down.w, l.down.b, out, rows, inner, hidden);
  if (adapter_) adapter_->forward(i, LinearSlot::kDown, s.act.data(), out, rows, training);
}

void TrainModel::forward_layer(size_t i, int64_t batch, int64_t T, const Activations& saved,
                               bool training, std::vector<float>& x, LayerSaved& s) const {
  const int64_t rows = batch * T, hidden = spec_.hidden_size;
  const LayerSpec& ls = spec_.layers[i];
  const Layer& l = layers_[i];
  s.normed1.resize(rows * hidden);
  if (l.attention_in.dim > 0)
    norm_forward(l.attention_in, x.data(), s.normed1.data(), rows, s.n1);
  else
    std::copy(x.begin(), x.end(), s.normed1.begin());
  std::vector<float> branch(rows * hidden);  // [rows, hidden]
  attention_forward(i, batch, T, saved, training, s.normed1.data(), branch.data(), s);
  if (ls.placement == NormPlacement::kParallel) {  // x + attn(n1(x)) + mlp(n2(x))
    const float* mlp_in = s.normed1.data();
    if (l.mlp_in.dim > 0) {
      s.normed2.resize(rows * hidden);
      norm_forward(l.mlp_in, x.data(), s.normed2.data(), rows, s.n2);
      mlp_in = s.normed2.data();
    }
    std::vector<float> mlp(rows * hidden);  // [rows, hidden]
    mlp_forward(i, rows, training, mlp_in, mlp.data(), s);
    const float rs = ls.residual_scale;  // Granite's residual_multiplier (1: exact)
    for (int64_t j = 0; j < rows * hidden; ++j) x[j] += branch[j] * rs + mlp[j] * rs;
    return;
  }
  if (l.attention_out.dim > 0) {
    s.attn_raw = branch;
    norm_forward(l.attention_out, s.attn_raw.data(), branch.data(), rows, s.n_attn_out);
  }
  for (int64_t j = 0; j < rows * hidden; ++j) x[j] += branch[j] * ls.residual_scale;
  s.middle = x;
  s.normed2.resize(rows * hidden);
  if (l.mlp_in.dim > 0)
    norm_forward(l.mlp_in, x.data(), s.normed2.data(), rows, s.n2);
  else
    std::copy(x.begin(), x.end(), s.normed2.begin());
  mlp_forward(i, rows, training, s.normed2.data(), branch.data(), s);
  if (l.mlp_out.dim > 0) {
    s.mlp_raw = branch;
    norm_forward(l.mlp_out, s.mlp_raw.data(), branch.data(), rows, s.n_mlp_out);
  }
  for (int64_t j = 0; j < rows * hidden; ++j) x[j] += branch[j] * ls.residual_scale;
}

void TrainModel::head_logits(const float* h, float* logits, int64_t rows) const {
  linear_forward(h, lm_head_, lm_head_bias_, logits, rows, spec_.hidden_size, spec_.vocab_size);
  if (spec_.logit_scale != 1.0f)  // as the inference Model: the logits times the scale
    for (int64_t j = 0; j < rows * spec_.vocab_size; ++j) logits[j] *= spec_.logit_scale;
  if (spec_.final_logit_softcap > 0.0f)
    softcap_forward(logits, rows * spec_.vocab_size, spec_.final_logit_softcap);
}

Tensor TrainModel::logits(const int32_t* tokens, int64_t batch, int64_t T,
                          const int32_t* segments) const {
  Activations saved;
  forward(tokens, batch, T, saved, false, segments, true);               // only the end is used
  Tensor out = Tensor::zeros(DType::F32, {batch, T, spec_.vocab_size});  // [B, T, V]
  head_logits(saved.final_normed.data(), out.mutable_data<float>(), batch * T);
  return out;
}

// A logit scale s (Cohere, Granite's 1 / logits_scaling) as the lm_head input times s: the loss
// kernels then see (s h) W = s (h W) (no lm_head bias, check_trainable()), rounded once more
// than the inference Model's logits times s.
void TrainModel::scale_for_logits(std::vector<float>& h) const {
  if (spec_.logit_scale != 1.0f)
    for (float& e : h) e *= spec_.logit_scale;
}

namespace {
void check_targets(const int32_t* targets, int64_t rows, int64_t vocab) {
  for (int64_t r = 0; r < rows; ++r)
    if (targets[r] != kIgnoreTarget && (targets[r] < 0 || targets[r] >= vocab))
      throw Error("training: target id " + std::to_string(targets[r]) +
                  " is outside the vocabulary of " + std::to_string(vocab));
}
}  // namespace

double TrainModel::loss(const int32_t* tokens, const int32_t* targets, int64_t batch, int64_t T,
                        int64_t chunk_rows, const int32_t* segments) const {
  check_targets(targets, batch * T, spec_.vocab_size);
  Activations saved;
  forward(tokens, batch, T, saved, false, segments, true);  // only the end is used
  scale_for_logits(saved.final_normed);
  if (lm_head_bias_ || spec_.final_logit_softcap > 0.0f)
    return lm_head_cross_entropy_capped(saved.final_normed.data(), lm_head_, lm_head_bias_, targets,
                                        nullptr, nullptr, nullptr, batch * T, spec_.hidden_size,
                                        spec_.vocab_size, spec_.final_logit_softcap, chunk_rows);
  return lm_head_cross_entropy(saved.final_normed.data(), lm_head_, targets, nullptr, nullptr,
                               batch * T, spec_.hidden_size, spec_.vocab_size, chunk_rows);
}

void TrainModel::attention_backward(size_t i, int64_t batch, int64_t T, const Activations& saved,
                                    const float* in, const LayerSaved& s, const float* d_out,
                                    float* d_in, Scratch& g) {
  const int64_t rows = batch * T, hidden = spec_.hidden_size;
  const AttentionSpec& a = spec_.layers[i].attention;
  const Layer& l = layers_[i];
  if (a.is_mla())
    return mla_backward(a, l.mla, in, s.mla, batch, T, hidden, saved.positions.data(),
                        saved.documents, d_out, d_in);
  const int64_t Hq = a.num_heads, Hkv = a.num_kv_heads, D = a.head_dim;
  std::fill_n(g.d_mixed.begin(), rows * Hq * D, 0.0f);
  std::fill_n(g.dq.begin(), rows * Hq * D, 0.0f);
  std::fill_n(g.dk.begin(), rows * Hkv * D, 0.0f);
  std::fill_n(g.dv.begin(), rows * Hkv * D, 0.0f);
  linear_backward(s.mixed.data(), l.out.w, d_out, g.d_mixed.data(), l.out.dw, l.out.db, rows,
                  Hq * D, hidden);
  if (adapter_)
    adapter_->backward(i, LinearSlot::kOut, s.mixed.data(), d_out, g.d_mixed.data(), rows);
  attention_by_document(saved.documents, attention_dims(a, batch, T), a.softcap, s.q.data(),
                        s.k.data(), s.v.data(), nullptr, g.d_mixed.data(), g.dq.data(), g.dk.data(),
                        g.dv.data(), l.sinks, l.d_sinks, a.chunk_size, nullptr,
                        s.softmax_stats.data());
  if (a.temperature_floor_scale > 0.0) {
    const std::vector<float> factor = temperatures(a, saved.positions);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < Hq * D; ++j) g.dq[r * Hq * D + j] *= factor[r];
  }
  if (a.qk_norm == QkNormKind::kL2) {  // back through the weightless norm, then RoPE
    const std::vector<float> ones(D, 1.0f);
    std::fill_n(g.dq_raw.begin(), rows * Hq * D, 0.0f);
    std::fill_n(g.dk_raw.begin(), rows * Hkv * D, 0.0f);
    rms_norm_backward(s.q_raw.data(), ones.data(), s.qn.inv.data(), g.dq.data(), g.dq_raw.data(),
                      nullptr, rows * Hq, D, false);
    rms_norm_backward(s.k_raw.data(), ones.data(), s.kn.inv.data(), g.dk.data(), g.dk_raw.data(),
                      nullptr, rows * Hkv, D, false);
    std::copy_n(g.dq_raw.begin(), rows * Hq * D, g.dq.begin());
    std::copy_n(g.dk_raw.begin(), rows * Hkv * D, g.dk.begin());
  }
  if (a.rope.type != RopeType::kNone) {
    const ops::RopeFrequencies rope = ops::rope_frequencies(a.rope, D, T);
    const int64_t rotary = a.rope.rotary_dim > 0 ? a.rope.rotary_dim : D;
    rope_backward(g.dq.data(), saved.positions.data(), rows, Hq, D, rotary, rope.inv_freq.data(),
                  rope.attention_scaling, a.rope.interleaved);
    rope_backward(g.dk.data(), saved.positions.data(), rows, Hkv, D, rotary, rope.inv_freq.data(),
                  rope.attention_scaling, a.rope.interleaved);
  }
  float* dq = g.dq.data();
  float* dk = g.dk.data();
  if (l.query_norm.dim > 0) {  // back through the QK norm
    std::fill_n(g.dq_raw.begin(), rows * Hq * D, 0.0f);
    std::fill_n(g.dk_raw.begin(), rows * Hkv * D, 0.0f);
    norm_backward(l.query_norm, s.q_raw.data(), s.qn, g.dq.data(), g.dq_raw.data(),
                  rows * Hq * D / l.query_norm.dim);
    norm_backward(l.key_norm, s.k_raw.data(), s.kn, g.dk.data(), g.dk_raw.data(),
                  rows * Hkv * D / l.key_norm.dim);
    dq = g.dq_raw.data();
    dk = g.dk_raw.data();
  }
  if (a.clip_qkv > 0.0f) {  // torch.clamp: the gradient passes only where nothing was clamped
    const uint8_t* mask = s.clipped.data();
    for (auto [d, n] : {std::pair{dq, rows * Hq * D}, std::pair{dk, rows * Hkv * D},
                        std::pair{g.dv.data(), rows * Hkv * D}})
      for (int64_t j = 0; j < n; ++j)
        if (*mask++) d[j] = 0.0f;
  }
  linear_backward(in, l.query.w, dq, d_in, l.query.dw, l.query.db, rows, hidden, Hq * D);
  linear_backward(in, l.key.w, dk, d_in, l.key.dw, l.key.db, rows, hidden, Hkv * D);
  linear_backward(in, l.value.w, g.dv.data(), d_in, l.value.dw, l.value.db, rows, hidden, Hkv * D);
  if (adapter_) {
    adapter_->backward(i, LinearSlot::kValue, in, g.dv.data(), d_in, rows);
    adapter_->backward(i, LinearSlot::kKey, in, dk, d_in, rows);
    adapter_->backward(i, LinearSlot::kQuery, in, dq, d_in, rows);
  }
}

void TrainModel::mlp_backward(size_t i, int64_t rows, const float* in, const LayerSaved& s,
                              const float* d_out, float* d_in, Scratch& g) {
  const int64_t hidden = spec_.hidden_size;
  const MlpSpec& mlp = spec_.layers[i].mlp;
  const Layer& l = layers_[i];
  if (spec_.layers[i].moe.enabled())
    return moe_backward(spec_.layers[i].moe, mlp.activation, l.moe, in, s.moe, d_out, d_in, rows,
                        hidden);
  const int64_t inner = mlp.intermediate;
  std::fill_n(g.d_act.begin(), rows * inner, 0.0f);
  std::fill_n(g.d_gate.begin(), rows * inner, 0.0f);
  std::fill_n(g.d_up.begin(), rows * inner, 0.0f);
  linear_backward(s.act.data(), l.down.w, d_out, g.d_act.data(), l.down.dw, l.down.db, rows, inner,
                  hidden);
  if (adapter_) adapter_->backward(i, LinearSlot::kDown, s.act.data(), d_out, g.d_act.data(), rows);
  if (mlp.gated)
    gated_backward(mlp.activation, s.gate.data(), s.up.data(), g.d_act.data(), g.d_gate.data(),
                   g.d_up.data(), rows * inner);
  else
    activation_backward(mlp.activation, s.up.data(), g.d_act.data(), g.d_up.data(), rows * inner);
  if (mlp.gated)
    linear_backward(in, l.gate.w, g.d_gate.data(), d_in, l.gate.dw, l.gate.db, rows, hidden, inner);
  linear_backward(in, l.up.w, g.d_up.data(), d_in, l.up.dw, l.up.db, rows, hidden, inner);
  if (adapter_) {
    adapter_->backward(i, LinearSlot::kUp, in, g.d_up.data(), d_in, rows);
    if (mlp.gated) adapter_->backward(i, LinearSlot::kGate, in, g.d_gate.data(), d_in, rows);
  }
}

void TrainModel::backward_layer(size_t i, int64_t batch, int64_t T, const Activations& saved,
                                const LayerSaved& s, std::vector<float>& dx, Scratch& g) {
  const int64_t rows = batch * T, n = rows * spec_.hidden_size;
  const LayerSpec& ls = spec_.layers[i];
  const Layer& l = layers_[i];
  const float* input = saved.layers[i].input.data();
  // The branches' output gradient: dx times the residual scale (Granite), or dx itself.
  std::vector<float> scaled;
  const auto branch_grad = [&]() -> const float* {
    if (ls.residual_scale == 1.0f) return dx.data();
    scaled.resize(n);
    for (int64_t j = 0; j < n; ++j) scaled[j] = dx[j] * ls.residual_scale;
    return scaled.data();
  };
  std::fill_n(g.d_normed1.begin(), n, 0.0f);
  if (ls.placement == NormPlacement::kParallel) {  // x + attn(n1(x)) + mlp(n2(x))
    // dx is both branches' output gradient and the residual path's.
    const bool own_norm = l.mlp_in.dim > 0;
    const float* d_out = branch_grad();
    std::fill_n(g.d_normed2.begin(), n, 0.0f);
    mlp_backward(i, rows, own_norm ? s.normed2.data() : s.normed1.data(), s, d_out,
                 own_norm ? g.d_normed2.data() : g.d_normed1.data(), g);
    attention_backward(i, batch, T, saved, s.normed1.data(), s, d_out, g.d_normed1.data(), g);
    if (own_norm) norm_backward(l.mlp_in, input, s.n2, g.d_normed2.data(), dx.data(), rows);
    norm_backward(l.attention_in, input, s.n1, g.d_normed1.data(), dx.data(), rows);
    return;
  }
  // MLP branch: out = middle + mlp_out(mlp(mlp_in(middle))).
  const float* d_branch = branch_grad();
  if (l.mlp_out.dim > 0) {
    std::fill_n(g.d_raw.begin(), n, 0.0f);
    norm_backward(l.mlp_out, s.mlp_raw.data(), s.n_mlp_out, d_branch, g.d_raw.data(), rows);
    d_branch = g.d_raw.data();
  }
  std::fill_n(g.d_normed2.begin(), n, 0.0f);
  mlp_backward(i, rows, s.normed2.data(), s, d_branch, g.d_normed2.data(), g);
  if (l.mlp_in.dim > 0)  // dx holds the residual path's gradient; the norm's adds to it
    norm_backward(l.mlp_in, s.middle.data(), s.n2, g.d_normed2.data(), dx.data(), rows);
  else
    for (int64_t j = 0; j < n; ++j) dx[j] += g.d_normed2[j];
  // Attention branch: middle = input + attention_out(attn(attention_in(input))).
  d_branch = branch_grad();
  if (l.attention_out.dim > 0) {
    std::fill_n(g.d_raw.begin(), n, 0.0f);
    norm_backward(l.attention_out, s.attn_raw.data(), s.n_attn_out, d_branch, g.d_raw.data(), rows);
    d_branch = g.d_raw.data();
  }
  attention_backward(i, batch, T, saved, s.normed1.data(), s, d_branch, g.d_normed1.data(), g);
  if (l.attention_in.dim > 0)
    norm_backward(l.attention_in, input, s.n1, g.d_normed1.data(), dx.data(), rows);
  else
    for (int64_t j = 0; j < n; ++j) dx[j] += g.d_normed1[j];
}

double TrainModel::forward_backward(const int32_t* tokens, const int32_t* targets, int64_t batch,
                                    int64_t T, int64_t chunk_rows, const int32_t* segments) {
  const int64_t rows = batch * T, hidden = spec_.hidden_size, vocab = spec_.vocab_size;
  check_targets(targets, rows, vocab);
  Activations saved;
  forward(tokens, batch, T, saved, true, segments, recompute_);
  scale_for_logits(saved.final_normed);

  std::vector<float> d_normed(rows * hidden);  // [rows, hidden]
  const double loss =
      lm_head_bias_ || spec_.final_logit_softcap > 0.0f
          ? lm_head_cross_entropy_capped(
                saved.final_normed.data(), lm_head_, lm_head_bias_, targets, d_normed.data(),
                grad(lm_head_name_), lm_head_bias_ ? grad(names::bias(names::lm_head())) : nullptr,
                rows, hidden, vocab, spec_.final_logit_softcap, chunk_rows)
          : lm_head_cross_entropy(saved.final_normed.data(), lm_head_, targets, d_normed.data(),
                                  grad(lm_head_name_), rows, hidden, vocab, chunk_rows);
  if (spec_.logit_scale != 1.0f)  // back through h * scale
    for (float& d : d_normed) d *= spec_.logit_scale;
  std::vector<float> dx(rows * hidden);  // [rows, hidden] gradient of the residual stream
  norm_backward(final_norm_, saved.last.data(), saved.final_stats, d_normed.data(), dx.data(),
                rows);

  // Gradient buffers, sized for the widest layer and reused by every layer.
  int64_t max_inner = 0, max_q = 0, max_kv = 0;
  for (const LayerSpec& ls : spec_.layers) {
    if (!ls.moe.enabled()) max_inner = std::max(max_inner, ls.mlp.intermediate);
    if (ls.attention.is_mla()) continue;  // latent attention keeps its own buffers
    max_q = std::max(max_q, ls.attention.num_heads * ls.attention.head_dim);
    max_kv = std::max(max_kv, ls.attention.num_kv_heads * ls.attention.head_dim);
  }
  Scratch g;
  for (auto* b : {&g.d_raw, &g.d_normed1, &g.d_normed2}) b->resize(rows * hidden);
  for (auto* b : {&g.d_act, &g.d_gate, &g.d_up}) b->resize(rows * max_inner);
  for (auto* b : {&g.d_mixed, &g.dq, &g.dq_raw}) b->resize(rows * max_q);
  for (auto* b : {&g.dk, &g.dv, &g.dk_raw}) b->resize(rows * max_kv);
  for (int64_t i = spec_.num_layers() - 1; i >= 0; --i) {
    if (recompute_) {  // this layer's forward again (adapters too), from its saved input
      std::vector<float> x = saved.layers[i].input;
      forward_layer(static_cast<size_t>(i), batch, T, saved, true, x, saved.work);
    }
    const LayerSaved& s = recompute_ ? saved.work : saved.layers[i];
    backward_layer(static_cast<size_t>(i), batch, T, saved, s, dx, g);
  }
  if (float* d_embedding = grad(names::embedding(names::token_embedder())))
    embedding_backward(tokens, dx.data(), d_embedding, rows, vocab, hidden, spec_.embedding_scale);
  if (positions_)
    if (float* d_positions = grad(names::embedding(names::position_embedder())))
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < hidden; ++j)
          d_positions[saved.positions[r] * hidden + j] += dx[r * hidden + j];
  return loss;
}

}  // namespace kiln::train
