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

DecoderLayer::DecoderLayer(const LayerSpec& spec, int64_t index, int64_t hidden,
                           const WeightMap& weights)
    : index_(index),
      hidden_(hidden),
      placement_(spec.placement),
      shared_norm_(spec.parallel_shared_norm) {
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

bool DecoderLayer::apply_norm(const Norm& norm, const std::string& name, const float* x, Tensor& y,
                              int64_t rows, const ActivationObserver* observer) const {
  if (norm.dim() == 0) return false;
  norm.forward(x, rows, y.mutable_data<float>());
  if (observer) (*observer)(name, y);
  return true;
}

void DecoderLayer::feed_forward(const float* x, int64_t batch, int64_t tokens, Tensor& y,
                                const ActivationObserver* observer) const {
  const int64_t rows = batch * tokens;
  if (observer && mlp_.is_moe()) {
    const int64_t experts = mlp_.moe().spec().num_experts;
    Tensor logits = Tensor::zeros(DType::F32, {batch, tokens, experts});  // [B, T, E]
    mlp_.moe().router_logits(x, rows, logits.mutable_data<float>());
    (*observer)(names::child(names::mlp(index_), "gate"), logits);
  }
  mlp_.forward(x, rows, y.mutable_data<float>());
  if (observer && !mlp_.is_moe()) (*observer)(names::child(names::mlp(index_), "wo"), y);
}

void DecoderLayer::forward(float* x, int64_t batch, int64_t tokens, int64_t start,
                           LayerKvCache& cache, const ActivationObserver* observer) const {
  const int64_t rows = batch * tokens, n = rows * hidden_;
  Tensor normed = Tensor::zeros(DType::F32, {batch, tokens, hidden_});    // [B, T, hidden]
  Tensor attended = Tensor::zeros(DType::F32, {batch, tokens, hidden_});  // [B, T, hidden]
  Tensor mlp_out = Tensor::zeros(DType::F32, {batch, tokens, hidden_});   // [B, T, hidden]
  float* normed_data = normed.mutable_data<float>();
  float* attended_data = attended.mutable_data<float>();
  float* mlp_data = mlp_out.mutable_data<float>();

  const bool attention_normed =
      apply_norm(attention_in_, names::input_norm(index_), x, normed, rows, observer);
  attention_.forward(attention_normed ? normed_data : x, batch, tokens, start, cache, attended_data,
                     observer);
  if (observer) (*observer)(names::child(names::attention(index_), "out"), attended);
  if (placement_ == NormPlacement::kParallel) {
    if (!shared_norm_)
      apply_norm(mlp_in_, names::post_attention_norm(index_), x, normed, rows, observer);
    if (observer) (*observer)(names::attention(index_), attended);
    feed_forward(normed_data, batch, tokens, mlp_out, observer);
    if (observer) (*observer)(names::mlp(index_), mlp_out);
    for (int64_t i = 0; i < n; ++i) x[i] += attended_data[i] + mlp_data[i];
    return;
  }
  apply_norm(attention_out_, names::post_attention_norm(index_), attended_data, attended, rows,
             nullptr);
  if (observer) (*observer)(names::attention(index_), attended);
  for (int64_t i = 0; i < n; ++i) x[i] += attended_data[i];

  const std::string mlp_in_name = placement_ == NormPlacement::kSandwich
                                      ? names::pre_ffw_norm(index_)
                                      : names::post_attention_norm(index_);
  const bool mlp_normed = apply_norm(mlp_in_, mlp_in_name, x, normed, rows, observer);
  feed_forward(mlp_normed ? normed_data : x, batch, tokens, mlp_out, observer);
  apply_norm(mlp_out_, names::post_ffw_norm(index_), mlp_data, mlp_out, rows, nullptr);
  if (observer) (*observer)(names::mlp(index_), mlp_out);
  for (int64_t i = 0; i < n; ++i) x[i] += mlp_data[i];
}

}  // namespace kiln
