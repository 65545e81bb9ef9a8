#include "kiln/layers/model.h"

#include <cmath>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/models/capabilities.h"
#include "kiln/models/weight_names.h"
#include "kiln/ops/embedding.h"
#include "kiln/ops/rope_frequencies.h"

namespace kiln {

// What the model's embedding and output compute (`kiln analyze` reports these supported).
KILN_CAPABILITY("embedding.scale", "yes");
KILN_CAPABILITY("embedding.positions", "learned");
KILN_CAPABILITY("logits.softcap", "yes");
KILN_CAPABILITY("logits.bias", "yes");

namespace {
// Rejects model-level features the forward pass does not implement yet.
void check_implemented(const ModelSpec& spec) {
  const std::string who = "model '" + spec.architecture + "'";
  check(spec.logit_scale == 1.0f, who + ": logit scaling is not implemented yet");
  check(spec.vocab_size > 0 && spec.hidden_size > 0 && spec.num_layers() > 0,
        who + ": vocab_size, hidden_size and the layer count must be positive");
}
}  // namespace

Model::Model(ModelSpec spec, const WeightMap& weights) : spec_(std::move(spec)) {
  check_implemented(spec_);
  const int64_t hidden = spec_.hidden_size, vocab = spec_.vocab_size;
  embedding_ = require_weight(weights, names::embedding(names::token_embedder()), {vocab, hidden})
                   .contiguous();
  if (spec_.learned_positions)
    positions_ = require_weight(weights, names::embedding(names::position_embedder()),
                                {spec_.max_position_embeddings, hidden})
                     .contiguous();
  for (int64_t i = 0; i < spec_.num_layers(); ++i)
    layers_.emplace_back(spec_.layers[i], i, hidden, weights);
  final_norm_ = Norm(spec_.has_final_norm ? spec_.final_norm : NormSpec{NormKind::kNone, 0.0f},
                     weights, names::final_norm(), hidden);
  lm_head_ = spec_.tie_word_embeddings
                 ? Linear(embedding_)
                 : Linear(weights, names::lm_head(), hidden, vocab, spec_.lm_head_bias);
}

Tensor Model::forward(const int32_t* tokens, int64_t batch, int64_t tokens_per_row, KvCache& cache,
                      const ForwardOptions& options) const {
  const int64_t T = tokens_per_row, hidden = spec_.hidden_size, vocab = spec_.vocab_size;
  check(batch == cache.batch(), "forward: " + std::to_string(batch) +
                                    " rows but the KV cache holds " +
                                    std::to_string(cache.batch()));
  check(T > 0, "forward: no tokens");
  const int64_t start = cache.length();
  check(start + T <= cache.capacity(), "forward: " + std::to_string(start + T) +
                                           " positions exceed the KV cache capacity of " +
                                           std::to_string(cache.capacity()));
  if (start > 0 && rope_changes(start, start + T)) return recompute(tokens, T, cache, options);
  const ActivationObserver* observer = options.observer;
  cache.remember_tokens(tokens, T);

  Tensor x = Tensor::zeros(DType::F32, {batch, T, hidden});  // [B, T, hidden] residual stream
  float* x_data = x.mutable_data<float>();
  ops::embedding_lookup(embedding_.raw(), embedding_.dtype(), vocab, hidden, tokens, batch * T,
                        spec_.embedding_scale, x_data);
  if (positions_.defined()) {
    std::vector<int32_t> position_ids(batch * T);  // [B, T]
    for (int64_t r = 0; r < batch * T; ++r) position_ids[r] = static_cast<int32_t>(start + r % T);
    std::vector<float> position_rows(batch * T * hidden);  // [B, T, hidden]
    ops::embedding_lookup(positions_.raw(), positions_.dtype(), spec_.max_position_embeddings,
                          hidden, position_ids.data(), batch * T, 1.0f, position_rows.data());
    for (int64_t i = 0; i < batch * T * hidden; ++i) x_data[i] += position_rows[i];
  }
  if (observer) (*observer)(names::token_embedder(), x);
  for (int64_t i = 0; i < spec_.num_layers(); ++i) {
    layers_[i].forward(x_data, batch, T, start, cache.layer(i), observer);
    if (observer) (*observer)(names::layer(i), x);
  }
  final_norm_.forward(x_data, batch * T, x_data);
  if (observer) (*observer)(names::final_norm(), x);
  cache.advance(T);

  const int64_t out_T = options.last_position_only ? 1 : T;
  Tensor logits = Tensor::zeros(DType::F32, {batch, out_T, vocab});  // [B, out_T, V]
  if (options.last_position_only) {
    std::vector<float> last(batch * hidden);  // [B, hidden]
    for (int64_t b = 0; b < batch; ++b)
      std::memcpy(last.data() + b * hidden, x_data + ((b + 1) * T - 1) * hidden,
                  sizeof(float) * hidden);
    lm_head_.forward(last.data(), batch, logits.mutable_data<float>());
  } else {
    lm_head_.forward(x_data, batch * T, logits.mutable_data<float>());
  }
  if (spec_.final_logit_softcap > 0.0f) {
    const float cap = spec_.final_logit_softcap;
    float* l = logits.mutable_data<float>();
    for (int64_t i = 0; i < logits.numel(); ++i) l[i] = std::tanh(l[i] / cap) * cap;
  }
  if (observer) (*observer)(names::lm_head(), logits);
  return logits;
}

bool Model::rope_changes(int64_t cached_length, int64_t new_length) const {
  for (const LayerSpec& layer : spec_.layers) {
    const RopeSpec& rope = layer.attention.rope;
    if (rope.type != RopeType::kNone &&
        ops::rope_frequency_key(rope, cached_length) != ops::rope_frequency_key(rope, new_length))
      return true;
  }
  return false;
}

Tensor Model::recompute(const int32_t* tokens, int64_t tokens_per_row, KvCache& cache,
                        const ForwardOptions& options) const {
  const int64_t batch = cache.batch(), T = tokens_per_row, vocab = spec_.vocab_size;
  const int64_t length = cache.length() + T;
  const std::vector<int32_t> all = cache.tokens_with(tokens, T);  // [B, length]
  cache.clear();
  const Tensor logits = forward(all.data(), batch, length, cache, options);
  if (options.last_position_only) return logits;              // [B, 1, V]
  Tensor out = Tensor::zeros(DType::F32, {batch, T, vocab});  // [B, T, V]: the new positions
  for (int64_t b = 0; b < batch; ++b)
    std::memcpy(out.mutable_data<float>() + b * T * vocab,
                logits.data<float>() + (b * length + length - T) * vocab,
                sizeof(float) * T * vocab);
  return out;
}

}  // namespace kiln
