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
  if (layer.placement != NormPlacement::kPre)
    refuse(where, std::string("norm placement '") + placement_name(layer.placement) + "'");
  if (!is_rms(layer.norm.kind))
    refuse(where, std::string("norm kind '") + norm_kind_name(layer.norm.kind) + "'");
  if (layer.residual_scale != 1.0f) refuse(where, "a residual scale");
  if (layer.moe.enabled()) check_moe_trainable(layer.moe, layer.mlp.activation, where);
  if (a.qk_norm == QkNormKind::kWholeProjection)
    refuse(where, std::string("QK norm '") + qk_norm_name(a.qk_norm) + "'");
  if (a.qk_norm == QkNormKind::kPerHead && !is_rms(a.qk_norm_spec.kind))
    refuse(where, std::string("QK norm kind '") + norm_kind_name(a.qk_norm_spec.kind) + "'");
  if (a.softcap > 0.0f) refuse(where, "attention logit soft-capping");
  if (a.clip_qkv > 0.0f) refuse(where, "clip_qkv");
  if (a.sinks && a.is_mla()) refuse(where, "attention sinks with latent attention");
  if (a.is_mla() && (a.chunk_size > 0 || a.temperature_floor_scale > 0.0))
    refuse(where, "chunked attention or temperature tuning with latent attention");
  if (a.is_mla()) {
    if (a.qk_norm != QkNormKind::kNone) refuse(where, "QK norm with latent attention");
    check_mla_trainable(a, where);
  } else {
    if (a.value_head_dim > 0 && a.value_head_dim != a.head_dim)
      refuse(where, "a value head size different from head_dim");
    if (a.num_heads <= 0 || a.num_kv_heads <= 0 || a.head_dim <= 0 ||
        a.num_heads % a.num_kv_heads != 0)
      throw Error("training: " + where + ": query heads must be a positive multiple of KV heads");
  }
  if (layer.moe.enabled()) return;  // the MoE block replaces the MLP
  if (!layer.mlp.gated) refuse(where, "a non-gated MLP");
  if (layer.mlp.swiglu_limit > 0.0f) refuse(where, "clamped SwiGLU");
  if (layer.mlp.activation != Activation::kSilu && layer.mlp.activation != Activation::kGeluTanh)
    refuse(where, std::string("MLP activation '") + activation_name(layer.mlp.activation) + "'");
}

}  // namespace

void check_trainable(const ModelSpec& spec) {
  const std::string model = "model '" + spec.architecture + "'";
  if (spec.vocab_size <= 0 || spec.hidden_size <= 0 || spec.num_layers() <= 0)
    throw Error("training: " + model +
                ": vocab_size, hidden_size and the layer count must be "
                "positive");
  if (spec.learned_positions) refuse(model, "a learned position embedding table");
  if (!spec.has_final_norm) refuse(model, "a model without a final norm");
  if (!is_rms(spec.final_norm.kind))
    refuse(model, std::string("final norm kind '") + norm_kind_name(spec.final_norm.kind) + "'");
  if (spec.final_logit_softcap > 0.0f) refuse(model, "final logit soft-capping");
  if (spec.logit_scale != 1.0f) refuse(model, "a logit scale");
  if (spec.lm_head_bias) refuse(model, "an lm_head bias");
  for (int64_t i = 0; i < spec.num_layers(); ++i)
    check_layer(spec.layers[i], model + " layer " + std::to_string(i));
}

// What the forward keeps of one layer; rows = B * T.
struct TrainModel::LayerSaved {
  std::vector<float> input;          // [rows, hidden] the residual stream entering the layer
  std::vector<float> inv_rms1;       // [rows]
  std::vector<float> normed1;        // [rows, hidden] attention input
  std::vector<float> q, k, v;        // [rows, Hq * D], [rows, Hkv * D] x 2 (after RoPE)
  std::vector<float> mixed;          // [rows, Hq * D] attention output before `out`
  std::vector<float> middle;         // [rows, hidden] the residual after attention
  std::vector<float> inv_rms2;       // [rows]
  std::vector<float> normed2;        // [rows, hidden] MLP input
  std::vector<float> gate, up, act;  // [rows, intermediate]
  // Per-head QK norm: q and k before it, 1 / rms per head.
  std::vector<float> q_raw, k_raw, q_inv_rms, k_inv_rms;  // [rows * H * D] x 2, [rows * H] x 2
  MoeSaved moe;                                           // MoE layers (gate, up, act unused)
  MlaSaved mla;  // latent attention layers (q, k, v, mixed unused)
};

// What the forward keeps, per layer and at the end. With recomputation, only each layer's
// `input` is kept; the rest of a layer is made again (into `work`) before its backward.
struct TrainModel::Activations {
  std::vector<LayerSaved> layers;
  LayerSaved work;                  // recomputation: the layer being differentiated
  std::vector<float> last;          // [rows, hidden] the residual after the last layer
  std::vector<float> inv_rms_f;     // [rows]
  std::vector<float> final_normed;  // [rows, hidden] the lm_head's input
  std::vector<int64_t> positions;   // [rows]
  // Packed rows: the documents as (first flattened row, length); empty when not packed.
  std::vector<std::pair<int64_t, int64_t>> documents;
};

namespace {
// Attention over each packed document on its own (a document is a contiguous block of rows
// of q, k, v and out), or over the whole batch when not packed.
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

// With `sinks` [Hq] (gpt-oss), the attention with sinks (train/sink_attention.h), whose
// gradient adds to d_sinks.
void attention_by_document(const std::vector<std::pair<int64_t, int64_t>>& documents,
                           AttentionDims dims, const float* q, const float* k, const float* v,
                           float* out, const float* dout, float* dq, float* dk, float* dv,
                           const float* sinks = nullptr, float* d_sinks = nullptr,
                           int64_t chunk = 0) {
  const auto run = [&](const AttentionDims& d, int64_t row) {
    const int64_t qo = row * d.heads * d.head_dim, ko = row * d.kv_heads * d.head_dim;
    if ((sinks || chunk > 0) && dout)
      sink_attention_backward(q + qo, k + ko, v + ko, sinks, dout + qo, dq + qo, dk + ko, dv + ko,
                              d_sinks, d, chunk);
    else if (sinks || chunk > 0)
      sink_attention_forward(q + qo, k + ko, v + ko, sinks, out + qo, d, chunk);
    else if (dout)
      attention_backward(q + qo, k + ko, v + ko, dout + qo, dq + qo, dk + ko, dv + ko, d);
    else
      attention_forward(q + qo, k + ko, v + ko, out + qo, d);
  };
  if (documents.empty()) return run(dims, 0);
  for (const auto& [row, length] : documents) {
    AttentionDims d = dims;
    d.batch = 1;
    d.tokens = length;
    run(d, row);
  }
}
}  // namespace

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
  for (int64_t i = 0; i < spec_.num_layers(); ++i) {
    const LayerSpec& ls = spec_.layers[i];
    const AttentionSpec& a = ls.attention;
    const int64_t q_width = a.num_heads * a.head_dim, kv_width = a.num_kv_heads * a.head_dim;
    const int64_t inner = ls.mlp.intermediate;
    const std::string attention = names::attention(i);
    Layer l;
    l.attention_norm = add_parameter(weights, names::scale(names::input_norm(i)), {hidden});
    l.d_attention_norm = grad(names::scale(names::input_norm(i)));
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
    if (a.qk_norm == QkNormKind::kPerHead) {
      const std::string qn = names::scale(names::child(attention, "query_norm"));
      const std::string kn = names::scale(names::child(attention, "key_norm"));
      l.query_norm = add_parameter(weights, qn, {a.head_dim});
      l.d_query_norm = grad(qn);
      l.key_norm = add_parameter(weights, kn, {a.head_dim});
      l.d_key_norm = grad(kn);
    }
    l.mlp_norm = add_parameter(weights, names::scale(names::post_attention_norm(i)), {hidden});
    l.d_mlp_norm = grad(names::scale(names::post_attention_norm(i)));
    if (ls.moe.enabled()) {
      l.moe = add_moe(weights, i);
    } else {
      l.gate = add_linear(weights, names::mlp_gate(i), hidden, inner, ls.mlp.bias);
      l.up = add_linear(weights, names::mlp_up(i), hidden, inner, ls.mlp.bias);
      l.down = add_linear(weights, names::mlp_down(i), inner, hidden, ls.mlp.bias);
    }
    layers_.push_back(l);
  }
  final_norm_ = add_parameter(weights, names::scale(names::final_norm()), {hidden});
  lm_head_name_ = spec_.tie_word_embeddings ? embedding : names::kernel(names::lm_head());
  lm_head_ = spec_.tie_word_embeddings ? embedding_
                                       : add_parameter(weights, lm_head_name_, {vocab, hidden});
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
  saved.layers.assign(layers_.size(), {});
  for (size_t i = 0; i < layers_.size(); ++i) {
    saved.layers[i].input = x;
    forward_layer(i, batch, T, saved, training, x, keep_inputs_only ? saved.work : saved.layers[i]);
  }
  saved.last = std::move(x);
  saved.inv_rms_f.resize(rows);
  saved.final_normed.resize(rows * hidden);
  ops::rms_norm(saved.last.data(), final_norm_, saved.final_normed.data(), rows, hidden,
                spec_.final_norm.eps, spec_.final_norm.kind == NormKind::kRmsOnePlus,
                saved.inv_rms_f.data());
}

void TrainModel::forward_layer(size_t i, int64_t batch, int64_t T, const Activations& saved,
                               bool training, std::vector<float>& x, LayerSaved& s) const {
  const int64_t rows = batch * T, hidden = spec_.hidden_size;
  const LayerSpec& ls = spec_.layers[i];
  const AttentionSpec& a = ls.attention;
  const Layer& l = layers_[i];
  const bool one_plus = ls.norm.kind == NormKind::kRmsOnePlus;
  s.inv_rms1.resize(rows);
  s.normed1.resize(rows * hidden);
  ops::rms_norm(x.data(), l.attention_norm, s.normed1.data(), rows, hidden, ls.norm.eps, one_plus,
                s.inv_rms1.data());
  std::vector<float> branch(rows * hidden);  // [rows, hidden]
  if (a.is_mla())
    mla_forward(a, l.mla, s.normed1.data(), batch, T, hidden, saved.positions.data(),
                saved.documents, branch.data(), s.mla);
  else
    attention_forward_layer(i, batch, T, saved, training, s, branch.data());
  for (int64_t j = 0; j < rows * hidden; ++j) x[j] += branch[j];
  s.middle = x;
  s.inv_rms2.resize(rows);
  s.normed2.resize(rows * hidden);
  ops::rms_norm(x.data(), l.mlp_norm, s.normed2.data(), rows, hidden, ls.norm.eps, one_plus,
                s.inv_rms2.data());
  if (ls.moe.enabled()) {
    moe_forward(ls.moe, ls.mlp.activation, l.moe, s.normed2.data(), rows, hidden, branch.data(),
                s.moe);
    for (int64_t j = 0; j < rows * hidden; ++j) x[j] += branch[j];
    return;
  }
  const int64_t inner = ls.mlp.intermediate;
  s.gate.resize(rows * inner);
  s.up.resize(rows * inner);
  s.act.resize(rows * inner);
  linear_forward(s.normed2.data(), l.gate.w, l.gate.b, s.gate.data(), rows, hidden, inner);
  linear_forward(s.normed2.data(), l.up.w, l.up.b, s.up.data(), rows, hidden, inner);
  if (adapter_) {
    adapter_->forward(i, LinearSlot::kGate, s.normed2.data(), s.gate.data(), rows, training);
    adapter_->forward(i, LinearSlot::kUp, s.normed2.data(), s.up.data(), rows, training);
  }
  gated_forward(ls.mlp.activation, s.gate.data(), s.up.data(), s.act.data(), rows * inner);
  linear_forward(s.act.data(), l.down.w, l.down.b, branch.data(), rows, inner, hidden);
  if (adapter_)
    adapter_->forward(i, LinearSlot::kDown, s.act.data(), branch.data(), rows, training);
  for (int64_t j = 0; j < rows * hidden; ++j) x[j] += branch[j];
}

void TrainModel::attention_forward_layer(size_t i, int64_t batch, int64_t T,
                                         const Activations& saved, bool training, LayerSaved& s,
                                         float* branch) const {
  const int64_t rows = batch * T, hidden = spec_.hidden_size;
  const AttentionSpec& a = spec_.layers[i].attention;
  const Layer& l = layers_[i];
  const int64_t Hq = a.num_heads, Hkv = a.num_kv_heads, D = a.head_dim;
  s.q.resize(rows * Hq * D);
  s.k.resize(rows * Hkv * D);
  s.v.resize(rows * Hkv * D);
  linear_forward(s.normed1.data(), l.query.w, l.query.b, s.q.data(), rows, hidden, Hq * D);
  linear_forward(s.normed1.data(), l.key.w, l.key.b, s.k.data(), rows, hidden, Hkv * D);
  linear_forward(s.normed1.data(), l.value.w, l.value.b, s.v.data(), rows, hidden, Hkv * D);
  if (adapter_) {
    adapter_->forward(i, LinearSlot::kQuery, s.normed1.data(), s.q.data(), rows, training);
    adapter_->forward(i, LinearSlot::kKey, s.normed1.data(), s.k.data(), rows, training);
    adapter_->forward(i, LinearSlot::kValue, s.normed1.data(), s.v.data(), rows, training);
  }
  if (l.query_norm) {  // per-head RMSNorm before RoPE (Qwen3-MoE)
    const float eps = a.qk_norm_spec.eps;
    const bool plus = a.qk_norm_spec.kind == NormKind::kRmsOnePlus;
    s.q_raw = s.q;
    s.k_raw = s.k;
    s.q_inv_rms.resize(rows * Hq);
    s.k_inv_rms.resize(rows * Hkv);
    ops::rms_norm(s.q_raw.data(), l.query_norm, s.q.data(), rows * Hq, D, eps, plus,
                  s.q_inv_rms.data());
    ops::rms_norm(s.k_raw.data(), l.key_norm, s.k.data(), rows * Hkv, D, eps, plus,
                  s.k_inv_rms.data());
  }
  if (a.rope.type != RopeType::kNone) {
    const ops::RopeFrequencies rope = ops::rope_frequencies(a.rope, D, T);
    const int64_t rotary = a.rope.rotary_dim > 0 ? a.rope.rotary_dim : D;
    ops::apply_rope(s.q.data(), saved.positions.data(), rows, Hq, D, rotary, rope.inv_freq.data(),
                    rope.attention_scaling, a.rope.interleaved);
    ops::apply_rope(s.k.data(), saved.positions.data(), rows, Hkv, D, rotary, rope.inv_freq.data(),
                    rope.attention_scaling, a.rope.interleaved);
  }
  if (a.qk_norm == QkNormKind::kL2) {  // Llama 4: x / rms(x) per head, after RoPE
    s.q_raw = s.q;
    s.k_raw = s.k;
    s.q_inv_rms.resize(rows * Hq);
    s.k_inv_rms.resize(rows * Hkv);
    ops::rms_norm(s.q_raw.data(), nullptr, s.q.data(), rows * Hq, D, a.qk_norm_spec.eps, false,
                  s.q_inv_rms.data());
    ops::rms_norm(s.k_raw.data(), nullptr, s.k.data(), rows * Hkv, D, a.qk_norm_spec.eps, false,
                  s.k_inv_rms.data());
  }
  if (a.temperature_floor_scale > 0.0) {
    const std::vector<float> factor = temperatures(a, saved.positions);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < Hq * D; ++j) s.q[r * Hq * D + j] *= factor[r];
  }
  AttentionDims dims{batch,
                     T,
                     Hq,
                     Hkv,
                     D,
                     a.scale > 0.0f ? a.scale : static_cast<float>(1.0 / std::sqrt(double(D))),
                     a.sliding_window};
  s.mixed.resize(rows * Hq * D);
  attention_by_document(saved.documents, dims, s.q.data(), s.k.data(), s.v.data(), s.mixed.data(),
                        nullptr, nullptr, nullptr, nullptr, l.sinks, nullptr, a.chunk_size);
  linear_forward(s.mixed.data(), l.out.w, l.out.b, branch, rows, Hq * D, hidden);
  if (adapter_) adapter_->forward(i, LinearSlot::kOut, s.mixed.data(), branch, rows, training);
}

Tensor TrainModel::logits(const int32_t* tokens, int64_t batch, int64_t T,
                          const int32_t* segments) const {
  Activations saved;
  forward(tokens, batch, T, saved, false, segments, true);               // only the end is used
  Tensor out = Tensor::zeros(DType::F32, {batch, T, spec_.vocab_size});  // [B, T, V]
  linear_forward(saved.final_normed.data(), lm_head_, nullptr, out.mutable_data<float>(), batch * T,
                 spec_.hidden_size, spec_.vocab_size);
  return out;
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
  return lm_head_cross_entropy(saved.final_normed.data(), lm_head_, targets, nullptr, nullptr,
                               batch * T, spec_.hidden_size, spec_.vocab_size, chunk_rows);
}

void TrainModel::attention_backward_layer(size_t i, int64_t batch, int64_t T,
                                          const Activations& saved, const LayerSaved& s,
                                          const float* d_branch, float* d_normed) {
  const int64_t rows = batch * T, hidden = spec_.hidden_size;
  const AttentionSpec& a = spec_.layers[i].attention;
  const Layer& l = layers_[i];
  const int64_t Hq = a.num_heads, Hkv = a.num_kv_heads, D = a.head_dim;
  std::vector<float> d_mixed(rows * Hq * D), dq(rows * Hq * D), dk(rows * Hkv * D),
      dv(rows * Hkv * D);
  linear_backward(s.mixed.data(), l.out.w, d_branch, d_mixed.data(), l.out.dw, l.out.db, rows,
                  Hq * D, hidden);
  if (adapter_)
    adapter_->backward(i, LinearSlot::kOut, s.mixed.data(), d_branch, d_mixed.data(), rows);
  AttentionDims dims{batch,
                     T,
                     Hq,
                     Hkv,
                     D,
                     a.scale > 0.0f ? a.scale : static_cast<float>(1.0 / std::sqrt(double(D))),
                     a.sliding_window};
  attention_by_document(saved.documents, dims, s.q.data(), s.k.data(), s.v.data(), nullptr,
                        d_mixed.data(), dq.data(), dk.data(), dv.data(), l.sinks, l.d_sinks,
                        a.chunk_size);
  if (a.temperature_floor_scale > 0.0) {
    const std::vector<float> factor = temperatures(a, saved.positions);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < Hq * D; ++j) dq[r * Hq * D + j] *= factor[r];
  }
  if (a.qk_norm == QkNormKind::kL2) {
    const std::vector<float> ones(D, 1.0f);
    std::vector<float> dq_raw(dq.size(), 0.0f), dk_raw(dk.size(), 0.0f);
    rms_norm_backward(s.q_raw.data(), ones.data(), s.q_inv_rms.data(), dq.data(), dq_raw.data(),
                      nullptr, rows * Hq, D, false);
    rms_norm_backward(s.k_raw.data(), ones.data(), s.k_inv_rms.data(), dk.data(), dk_raw.data(),
                      nullptr, rows * Hkv, D, false);
    dq.swap(dq_raw);
    dk.swap(dk_raw);
  }
  if (a.rope.type != RopeType::kNone) {
    const ops::RopeFrequencies rope = ops::rope_frequencies(a.rope, D, T);
    const int64_t rotary = a.rope.rotary_dim > 0 ? a.rope.rotary_dim : D;
    rope_backward(dq.data(), saved.positions.data(), rows, Hq, D, rotary, rope.inv_freq.data(),
                  rope.attention_scaling, a.rope.interleaved);
    rope_backward(dk.data(), saved.positions.data(), rows, Hkv, D, rotary, rope.inv_freq.data(),
                  rope.attention_scaling, a.rope.interleaved);
  }
  if (l.query_norm) {  // per-head QK norm (before RoPE): back to the projections' outputs
    const bool plus = a.qk_norm_spec.kind == NormKind::kRmsOnePlus;
    std::vector<float> dq_raw(dq.size(), 0.0f), dk_raw(dk.size(), 0.0f);
    rms_norm_backward(s.q_raw.data(), l.query_norm, s.q_inv_rms.data(), dq.data(), dq_raw.data(),
                      l.d_query_norm, rows * Hq, D, plus);
    rms_norm_backward(s.k_raw.data(), l.key_norm, s.k_inv_rms.data(), dk.data(), dk_raw.data(),
                      l.d_key_norm, rows * Hkv, D, plus);
    dq.swap(dq_raw);
    dk.swap(dk_raw);
  }
  linear_backward(s.normed1.data(), l.query.w, dq.data(), d_normed, l.query.dw, l.query.db, rows,
                  hidden, Hq * D);
  linear_backward(s.normed1.data(), l.key.w, dk.data(), d_normed, l.key.dw, l.key.db, rows, hidden,
                  Hkv * D);
  linear_backward(s.normed1.data(), l.value.w, dv.data(), d_normed, l.value.dw, l.value.db, rows,
                  hidden, Hkv * D);
  if (adapter_) {
    adapter_->backward(i, LinearSlot::kValue, s.normed1.data(), dv.data(), d_normed, rows);
    adapter_->backward(i, LinearSlot::kKey, s.normed1.data(), dk.data(), d_normed, rows);
    adapter_->backward(i, LinearSlot::kQuery, s.normed1.data(), dq.data(), d_normed, rows);
  }
}

double TrainModel::forward_backward(const int32_t* tokens, const int32_t* targets, int64_t batch,
                                    int64_t T, int64_t chunk_rows, const int32_t* segments) {
  const int64_t rows = batch * T, hidden = spec_.hidden_size, vocab = spec_.vocab_size;
  check_targets(targets, rows, vocab);
  Activations saved;
  forward(tokens, batch, T, saved, true, segments, recompute_);

  std::vector<float> d_normed(rows * hidden);  // [rows, hidden]
  const double loss =
      lm_head_cross_entropy(saved.final_normed.data(), lm_head_, targets, d_normed.data(),
                            grad(lm_head_name_), rows, hidden, vocab, chunk_rows);
  std::vector<float> dx(rows * hidden);  // [rows, hidden] gradient of the residual stream
  rms_norm_backward(saved.last.data(), final_norm_, saved.inv_rms_f.data(), d_normed.data(),
                    dx.data(), grad(names::scale(names::final_norm())), rows, hidden,
                    spec_.final_norm.kind == NormKind::kRmsOnePlus);

  // Gradient buffers of the dense MLPs, sized for the widest layer and reused by every layer.
  int64_t max_inner = 0;
  for (const LayerSpec& ls : spec_.layers)
    if (!ls.moe.enabled()) max_inner = std::max(max_inner, ls.mlp.intermediate);
  std::vector<float> d_act(rows * max_inner), d_gate(rows * max_inner), d_up(rows * max_inner);
  for (int64_t i = spec_.num_layers() - 1; i >= 0; --i) {
    const LayerSpec& ls = spec_.layers[i];
    const AttentionSpec& a = ls.attention;
    const Layer& l = layers_[i];
    if (recompute_) {  // this layer's forward again (adapters too), from its saved input
      std::vector<float> x = saved.layers[i].input;
      forward_layer(static_cast<size_t>(i), batch, T, saved, true, x, saved.work);
    }
    const LayerSaved& s = recompute_ ? saved.work : saved.layers[i];
    const int64_t inner = ls.mlp.intermediate;
    const bool one_plus = ls.norm.kind == NormKind::kRmsOnePlus;

    // MLP branch: x_out = middle + down(act(gate(n2)) * up(n2)), n2 = norm(middle).
    std::fill(d_normed.begin(), d_normed.end(), 0.0f);
    if (ls.moe.enabled()) {
      moe_backward(ls.moe, ls.mlp.activation, l.moe, s.normed2.data(), s.moe, dx.data(),
                   d_normed.data(), rows, hidden);
    } else {
      std::fill_n(d_act.begin(), rows * inner, 0.0f);
      std::fill_n(d_gate.begin(), rows * inner, 0.0f);
      std::fill_n(d_up.begin(), rows * inner, 0.0f);
      linear_backward(s.act.data(), l.down.w, dx.data(), d_act.data(), l.down.dw, l.down.db, rows,
                      inner, hidden);
      if (adapter_)
        adapter_->backward(i, LinearSlot::kDown, s.act.data(), dx.data(), d_act.data(), rows);
      gated_backward(ls.mlp.activation, s.gate.data(), s.up.data(), d_act.data(), d_gate.data(),
                     d_up.data(), rows * inner);
      linear_backward(s.normed2.data(), l.gate.w, d_gate.data(), d_normed.data(), l.gate.dw,
                      l.gate.db, rows, hidden, inner);
      linear_backward(s.normed2.data(), l.up.w, d_up.data(), d_normed.data(), l.up.dw, l.up.db,
                      rows, hidden, inner);
      if (adapter_) {
        adapter_->backward(i, LinearSlot::kUp, s.normed2.data(), d_up.data(), d_normed.data(),
                           rows);
        adapter_->backward(i, LinearSlot::kGate, s.normed2.data(), d_gate.data(), d_normed.data(),
                           rows);
      }
    }
    // dx holds the residual path's gradient; the norm's adds to it.
    rms_norm_backward(s.middle.data(), l.mlp_norm, s.inv_rms2.data(), d_normed.data(), dx.data(),
                      l.d_mlp_norm, rows, hidden, one_plus);

    // Attention branch: middle = input + attention(n1), n1 = norm(input).
    std::fill(d_normed.begin(), d_normed.end(), 0.0f);
    if (a.is_mla())
      mla_backward(a, l.mla, s.normed1.data(), s.mla, batch, T, hidden, saved.positions.data(),
                   saved.documents, dx.data(), d_normed.data());
    else
      attention_backward_layer(static_cast<size_t>(i), batch, T, saved, s, dx.data(),
                               d_normed.data());
    rms_norm_backward(saved.layers[i].input.data(), l.attention_norm, s.inv_rms1.data(),
                      d_normed.data(), dx.data(), l.d_attention_norm, rows, hidden, one_plus);
  }
  if (float* d_embedding = grad(names::embedding(names::token_embedder())))
    embedding_backward(tokens, dx.data(), d_embedding, rows, vocab, hidden, spec_.embedding_scale);
  return loss;
}

}  // namespace kiln::train
