#include "kiln/layers/decoder_layer.h"

#include "kiln/core/error.h"
#include "kiln/models/capabilities.h"
#include "kiln/models/weight_names.h"

namespace kiln {

// The block layouts DecoderLayer computes (`kiln analyze` reports these supported).
KILN_CAPABILITY("norm.placement", "pre");

DecoderLayer::DecoderLayer(const LayerSpec& spec, int64_t index, int64_t hidden,
                           const WeightMap& weights)
    : index_(index), hidden_(hidden) {
  check(spec.placement == NormPlacement::kPre,
        names::layer(index) + ": only pre-norm blocks are implemented yet");
  check(!spec.moe.enabled(), names::layer(index) + ": mixture-of-experts is not implemented yet");
  input_norm_ = Norm(spec.norm, weights, names::input_norm(index), hidden);
  attention_ = Attention(spec.attention, hidden, weights, names::attention(index));
  post_attention_norm_ = Norm(spec.norm, weights, names::post_attention_norm(index), hidden);
  mlp_ = Mlp(spec.mlp, hidden, weights, names::mlp(index));
}

void DecoderLayer::forward(float* x, int64_t batch, int64_t tokens, int64_t start,
                           LayerKvCache& cache, const ActivationObserver* observer) const {
  const int64_t rows = batch * tokens;
  Tensor normed = Tensor::zeros(DType::F32, {batch, tokens, hidden_});  // [B, T, hidden]
  Tensor branch = Tensor::zeros(DType::F32, {batch, tokens, hidden_});  // [B, T, hidden]
  float* normed_data = normed.mutable_data<float>();
  float* branch_data = branch.mutable_data<float>();

  input_norm_.forward(x, rows, normed_data);
  if (observer) (*observer)(names::input_norm(index_), normed);
  attention_.forward(normed_data, batch, tokens, start, cache, branch_data, observer);
  if (observer) (*observer)(names::attention(index_), branch);
  for (int64_t i = 0; i < rows * hidden_; ++i) x[i] += branch_data[i];

  post_attention_norm_.forward(x, rows, normed_data);
  if (observer) (*observer)(names::post_attention_norm(index_), normed);
  mlp_.forward(normed_data, rows, branch_data);
  if (observer) (*observer)(names::mlp(index_), branch);
  for (int64_t i = 0; i < rows * hidden_; ++i) x[i] += branch_data[i];
}

}  // namespace kiln
