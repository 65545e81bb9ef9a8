#include "kiln/layers/decoder_layer.h"

#include <algorithm>

#include "kiln/core/error.h"
#include "kiln/models/capabilities.h"
#include "kiln/models/weight_names.h"

namespace kiln {

// The block layouts DecoderLayer computes (`kiln analyze` reports these supported).
KILN_CAPABILITY("norm.placement", "pre");
KILN_CAPABILITY("norm.placement", "post");
KILN_CAPABILITY("norm.placement", "sandwich");
KILN_CAPABILITY("norm.placement", "parallel");
KILN_CAPABILITY("norm.placement", "parallel_shared_norm");
KILN_CAPABILITY("residual.scale", "yes");

DecoderLayer::DecoderLayer(const LayerSpec& spec, int64_t index, int64_t hidden,
                           const WeightMap& weights)
    : index_(index),
      hidden_(hidden),
      placement_(spec.placement),
      shared_norm_(spec.parallel_shared_norm),
      residual_scale_(spec.residual_scale) {
  const NormPlacement p = spec.placement;
  auto norm_if = [&](bool present, const std::string& module) {
    return present ? Norm(spec.norm, weights, module, hidden) : Norm();
  };
  attention_in_ = norm_if(p != NormPlacement::kPost, names::input_norm(index));
  attention_out_ = norm_if(p == NormPlacement::kPost || p == NormPlacement::kSandwich,
                           names::post_attention_norm(index));
  mlp_in_ = p == NormPlacement::kSandwich
                ? norm_if(true, names::pre_ffw_norm(index))
                : norm_if(p == NormPlacement::kPre ||
                              (p == NormPlacement::kParallel && !spec.parallel_shared_norm),
                          names::post_attention_norm(index));
  mlp_out_ = norm_if(p == NormPlacement::kPost || p == NormPlacement::kSandwich,
                     names::post_ffw_norm(index));
  attention_ = Attention(spec.attention, hidden, weights, names::attention(index));
  mlp_ = FeedForward(spec, hidden, weights, names::mlp(index));
}

void DecoderLayer::report(const ActivationObserver* observer, PartName name, const float* data,
                          int64_t batch, int64_t tokens, const Workspace& workspace) const {
  if (observer) (*observer)(name(index_), workspace.view(data, {batch, tokens, hidden_}));
}

bool DecoderLayer::apply_norm(const Norm& norm, PartName name, const float* x, float* y,
                              int64_t batch, int64_t tokens, const Workspace& workspace,
                              const ActivationObserver* observer) const {
  if (norm.dim() == 0) return false;
  norm.forward(x, batch * tokens, y);
  report(observer, name, y, batch, tokens, workspace);
  return true;
}

void DecoderLayer::feed_forward(const float* x, int64_t batch, int64_t tokens, float* y,
                                Workspace& workspace, const ActivationObserver* observer) const {
  const int64_t rows = batch * tokens;
  if (observer && mlp_.is_moe()) {
    Workspace::Scope scope(workspace);
    const int64_t experts = mlp_.moe().spec().num_experts;
    float* logits = workspace.take<float>(rows * experts);  // [B, T, E]
    mlp_.moe().router_logits(x, rows, logits);
    (*observer)(names::child(names::mlp(index_), "gate"),
                workspace.view(logits, {batch, tokens, experts}));
    // Each token's routing weights over all experts, 0 for those not chosen.
    const int64_t k = mlp_.moe().spec().top_k;
    int64_t* chosen = workspace.take<int64_t>(rows * k);  // [B * T, k]
    float* weights = workspace.take<float>(rows * k);     // [B * T, k]
    mlp_.moe().route(logits, rows, chosen, weights);
    std::fill(logits, logits + rows * experts, 0.0f);
    for (int64_t p = 0; p < rows * k; ++p) logits[p / k * experts + chosen[p]] = weights[p];
    (*observer)(names::child(names::mlp(index_), "routing"),
                workspace.view(logits, {batch, tokens, experts}));
  }
  mlp_.forward(x, rows, y, workspace);
  if (observer && !mlp_.is_moe())
    (*observer)(names::child(names::mlp(index_), "wo"),
                workspace.view(y, {batch, tokens, hidden_}));
}

void DecoderLayer::forward(float* x, int64_t batch, int64_t tokens, int64_t start,
                           LayerKvCache& cache, Workspace& workspace,
                           const ActivationObserver* observer) const {
  const int64_t rows = batch * tokens, n = rows * hidden_;
  Workspace::Scope scope(workspace);
  float* normed = workspace.take<float>(n);    // [B, T, hidden]
  float* attended = workspace.take<float>(n);  // [B, T, hidden]
  float* mlp_out = workspace.take<float>(n);   // [B, T, hidden]
  auto norm = [&](const Norm& which, PartName name, const float* in, float* out,
                  const ActivationObserver* to) {
    return apply_norm(which, name, in, out, batch, tokens, workspace, to);
  };

  const bool attention_normed = norm(attention_in_, names::input_norm, x, normed, observer);
  attention_.forward(attention_normed ? normed : x, batch, tokens, start, cache, attended,
                     workspace, observer);
  if (observer)
    (*observer)(names::child(names::attention(index_), "out"),
                workspace.view(attended, {batch, tokens, hidden_}));
  if (placement_ == NormPlacement::kParallel) {
    if (!shared_norm_) norm(mlp_in_, names::post_attention_norm, x, normed, observer);
    report(observer, names::attention, attended, batch, tokens, workspace);
    feed_forward(normed, batch, tokens, mlp_out, workspace, observer);
    report(observer, names::mlp, mlp_out, batch, tokens, workspace);
    add_residual(x, attended, mlp_out, n);
    return;
  }
  norm(attention_out_, names::post_attention_norm, attended, attended, nullptr);
  report(observer, names::attention, attended, batch, tokens, workspace);
  add_residual(x, attended, nullptr, n);

  const PartName mlp_in_name =
      placement_ == NormPlacement::kSandwich ? names::pre_ffw_norm : names::post_attention_norm;
  const bool mlp_normed = norm(mlp_in_, mlp_in_name, x, normed, observer);
  feed_forward(mlp_normed ? normed : x, batch, tokens, mlp_out, workspace, observer);
  norm(mlp_out_, names::post_ffw_norm, mlp_out, mlp_out, nullptr);
  report(observer, names::mlp, mlp_out, batch, tokens, workspace);
  add_residual(x, mlp_out, nullptr, n);
}

void DecoderLayer::forward_rows(float* x, int64_t rows, const int64_t* starts,
                                LayerKvCache* const* caches, Workspace& workspace) const {
  const int64_t n = rows * hidden_;
  Workspace::Scope scope(workspace);
  float* normed = workspace.take<float>(n);    // [rows, hidden]
  float* attended = workspace.take<float>(n);  // [rows, hidden]
  float* mlp_out = workspace.take<float>(n);   // [rows, hidden]
  auto norm = [&](const Norm& which, const float* in, float* out) {
    if (which.dim() == 0) return false;
    which.forward(in, rows, out);
    return true;
  };
  const bool attention_normed = norm(attention_in_, x, normed);
  attention_.forward_rows(attention_normed ? normed : x, rows, starts, caches, attended, workspace);
  if (placement_ == NormPlacement::kParallel) {
    if (!shared_norm_) norm(mlp_in_, x, normed);
    mlp_.forward(normed, rows, mlp_out, workspace);
    add_residual(x, attended, mlp_out, n);
    return;
  }
  norm(attention_out_, attended, attended);
  add_residual(x, attended, nullptr, n);
  const bool mlp_normed = norm(mlp_in_, x, normed);
  mlp_.forward(mlp_normed ? normed : x, rows, mlp_out, workspace);
  norm(mlp_out_, mlp_out, mlp_out);
  add_residual(x, mlp_out, nullptr, n);
}

void DecoderLayer::add_residual(float* x, const float* branch, const float* other,
                                int64_t n) const {
  const float s = residual_scale_;
  if (other && s == 1.0f) {
    for (int64_t i = 0; i < n; ++i) x[i] += branch[i] + other[i];
  } else if (other) {
    for (int64_t i = 0; i < n; ++i) x[i] += branch[i] * s + other[i] * s;
  } else if (s == 1.0f) {
    for (int64_t i = 0; i < n; ++i) x[i] += branch[i];
  } else {
    for (int64_t i = 0; i < n; ++i) x[i] += branch[i] * s;
  }
}

}  // namespace kiln
