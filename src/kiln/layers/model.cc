#include "kiln/layers/model.h"

#include <optional>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>

#include "kiln/core/error.h"
#include "kiln/models/capabilities.h"
#include "kiln/models/weight_names.h"
#include "kiln/ops/embedding.h"
#include "kiln/ops/linear.h"
#include "kiln/ops/rope_frequencies.h"

namespace kiln {

// What the model's embedding and output compute (`kiln analyze` reports these supported).
KILN_CAPABILITY("embedding.scale", "yes");
KILN_CAPABILITY("embedding.positions", "learned");
KILN_CAPABILITY("logits.softcap", "yes");
KILN_CAPABILITY("logits.bias", "yes");
KILN_CAPABILITY("logits.scale", "yes");

namespace {
// Rejects model-level features the forward pass does not implement yet.
void check_implemented(const ModelSpec& spec) {
  const std::string who = "model '" + spec.architecture + "'";
  check(std::isfinite(spec.logit_scale) && spec.logit_scale != 0.0f,
        who + ": logit_scale must be finite and non-zero");
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
  // A tied embedding is the output matrix, unless the checkpoint also holds a quantized copy
  // of it as the head (`kiln convert --dtype int8|int4`: the lookup reads the table, the
  // head the copy).
  const bool head_copy = weights.count(names::kernel(names::lm_head())) != 0;
  lm_head_ = spec_.tie_word_embeddings && !head_copy
                 ? Linear(embedding_)
                 : Linear(weights, names::lm_head(), hidden, vocab,
                          spec_.lm_head_bias && !spec_.tie_word_embeddings);
  // A quantized copy of an unquantized tied table: the table refines each row's top logits
  // (the copy's rounding of weights and activations alone flips tinycoder's int8 top token
  // at 0.5-0.9% of positions, docs/performance.md).
  refine_head_ = spec_.tie_word_embeddings && head_copy &&
                 is_quantized(weights.at(names::kernel(names::lm_head())).dtype()) &&
                 !is_quantized(embedding_.dtype());
}

Tensor Model::forward(const int32_t* tokens, int64_t batch, int64_t tokens_per_row, KvCache& cache,
                      const ForwardOptions& options) const {
  Workspace workspace;
  const float* logits = forward(tokens, batch, tokens_per_row, cache, workspace, options);
  const int64_t out_T = options.last_position_only ? 1 : tokens_per_row;
  Tensor out = Tensor::zeros(DType::F32, {batch, out_T, spec_.vocab_size});  // [B, out_T, V]
  std::memcpy(out.mutable_raw(), logits, out.nbytes());
  return out;
}

const float* Model::forward(const int32_t* tokens, int64_t batch, int64_t tokens_per_row,
                            KvCache& cache, Workspace& workspace,
                            const ForwardOptions& options) const {
  const int64_t T = tokens_per_row, hidden = spec_.hidden_size, vocab = spec_.vocab_size;
  if (batch != cache.batch())
    throw Error("forward: " + std::to_string(batch) + " rows but the KV cache holds " +
                std::to_string(cache.batch()));
  check(T > 0, "forward: no tokens");
  const int64_t start = cache.length();
  if (start + T > cache.capacity())
    throw Error("forward: " + std::to_string(start + T) +
                " positions exceed the KV cache capacity of " + std::to_string(cache.capacity()));
  if (start > 0 && rope_changes(start, start + T))
    return recompute(tokens, T, cache, workspace, options);
  const ActivationObserver* observer = options.observer;
  cache.remember_tokens(tokens, T);
  workspace.reset();
  auto report = [&](const std::string& name, const float* data, int64_t rows, int64_t width) {
    (*observer)(name, workspace.view(data, {batch, rows, width}));
  };

  float* x = workspace.take<float>(batch * T * hidden);  // [B, T, hidden] residual stream
  ops::embedding_lookup(embedding_.raw(), embedding_.dtype(), vocab, hidden, tokens, batch * T,
                        spec_.embedding_scale, x);
  if (positions_.defined()) {
    Workspace::Scope scope(workspace);
    float* position_row = workspace.take<float>(hidden);  // [hidden]
    for (int64_t r = 0; r < batch * T; ++r) {
      const int32_t position = static_cast<int32_t>(start + r % T);
      ops::embedding_lookup(positions_.raw(), positions_.dtype(), spec_.max_position_embeddings,
                            hidden, &position, 1, 1.0f, position_row);
      for (int64_t i = 0; i < hidden; ++i) x[r * hidden + i] += position_row[i];
    }
  }
  if (observer) report(names::token_embedder(), x, T, hidden);
  for (int64_t i = 0; i < spec_.num_layers(); ++i) {
    layers_[i].forward(x, batch, T, start, cache.layer(i), workspace, observer);
    if (observer) report(names::layer(i), x, T, hidden);
  }
  final_norm_.forward(x, batch * T, x);
  if (observer) report(names::final_norm(), x, T, hidden);
  cache.advance(T);

  const int64_t out_T = options.last_position_only ? 1 : T;
  const float* head_input = x;  // [B, out_T, hidden]
  if (options.last_position_only && T > 1) {
    float* last = workspace.take<float>(batch * hidden);  // [B, hidden]
    for (int64_t b = 0; b < batch; ++b)
      std::memcpy(last + b * hidden, x + ((b + 1) * T - 1) * hidden, sizeof(float) * hidden);
    head_input = last;
  }
  float* logits = workspace.take<float>(batch * out_T * vocab);  // [B, out_T, V]
  head(head_input, batch * out_T, logits);
  finish_logits(logits, batch * out_T);
  if (observer) report(names::lm_head(), logits, out_T, vocab);
  return logits;
}

const float* Model::step_rows(const int32_t* tokens, int64_t rows, KvCache* const* caches,
                              const bool* want, Workspace& workspace) const {
  check(rows > 0 && rows <= kMaxDecodeRows, "step_rows: " + std::to_string(rows) + " rows; 1 to " +
                                                std::to_string(kMaxDecodeRows) + " share a step");
  return rows_pass(tokens, rows, caches, want, workspace, false);
}

const float* Model::prefill_rows(const int32_t* tokens, int64_t rows, KvCache* const* caches,
                                 const bool* want, Workspace& workspace) const {
  check(rows > 0, "prefill_rows: no rows");
  return rows_pass(tokens, rows, caches, want, workspace, true);
}

const float* Model::rows_pass(const int32_t* tokens, int64_t rows, KvCache* const* caches,
                              const bool* want, Workspace& workspace, bool gemm) const {
  const int64_t hidden = spec_.hidden_size, vocab = spec_.vocab_size;
  workspace.reset();
  // The per-row bookkeeping comes from the workspace: a step allocates nothing.
  int64_t* positions = workspace.take<int64_t>(rows);
  int64_t* out_row = workspace.take<int64_t>(rows);
  bool* alone = workspace.take<bool>(rows);
  int64_t wanted = 0;
  for (int64_t r = 0; r < rows; ++r) {
    KvCache& cache = *caches[r];
    check(cache.batch() == 1, "step_rows: each sequence needs a cache of batch 1");
    int64_t earlier = 0;  // rows of the same sequence before this one
    for (int64_t q = 0; q < r; ++q) earlier += caches[q] == caches[r];
    positions[r] = cache.length() + earlier;
    check(positions[r] + 1 <= cache.capacity(), "step_rows: " + std::to_string(positions[r] + 1) +
                                                    " positions exceed the KV cache capacity of " +
                                                    std::to_string(cache.capacity()));
    out_row[r] = !want || want[r] ? wanted++ : -1;
    alone[r] = false;
  }
  float* logits = workspace.take<float>(std::max<int64_t>(wanted, 1) * vocab);  // [wanted, V]
  // A sequence whose RoPE frequencies change at one of its positions runs its rows alone, one
  // token at a time (forward() recomputes its cache; rare).
  for (int64_t r = 0; r < rows; ++r)
    if (positions[r] > 0 && rope_changes(positions[r], positions[r] + 1))
      for (int64_t q = 0; q < rows; ++q) alone[q] = alone[q] || caches[q] == caches[r];
  int64_t* batched = workspace.take<int64_t>(rows);
  int64_t* starts = workspace.take<int64_t>(rows);
  int32_t* ids = workspace.take<int32_t>(rows);
  LayerKvCache** layer_caches = workspace.take<LayerKvCache*>(rows);
  // A prompt pass runs every product through the GEMM (ops::GemmRowsScope): a row's result
  // is then the same whatever rows share the pass (the layers' other work is per row).
  std::optional<ops::GemmRowsScope> gemm_rows;
  if (gemm) gemm_rows.emplace();
  int64_t m = 0, m_wanted = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (alone[r]) {
      Workspace own;
      ForwardOptions options;
      options.last_position_only = true;
      const float* row = forward(tokens + r, 1, 1, *caches[r], own, options);
      if (out_row[r] >= 0) std::memcpy(logits + out_row[r] * vocab, row, sizeof(float) * vocab);
      continue;
    }
    batched[m] = r;
    ids[m] = tokens[r];
    starts[m++] = positions[r];
    m_wanted += out_row[r] >= 0;
  }
  if (m == 0) return logits;
  float* x = workspace.take<float>(m * hidden);  // [m, hidden]
  ops::embedding_lookup(embedding_.raw(), embedding_.dtype(), vocab, hidden, ids, m,
                        spec_.embedding_scale, x);
  if (positions_.defined()) {
    float* position_row = workspace.take<float>(hidden);  // [hidden]
    for (int64_t j = 0; j < m; ++j) {
      const auto position = static_cast<int32_t>(starts[j]);
      ops::embedding_lookup(positions_.raw(), positions_.dtype(), spec_.max_position_embeddings,
                            hidden, &position, 1, 1.0f, position_row);
      for (int64_t i = 0; i < hidden; ++i) x[j * hidden + i] += position_row[i];
    }
  }
  for (int64_t i = 0; i < spec_.num_layers(); ++i) {
    for (int64_t j = 0; j < m; ++j) layer_caches[j] = &caches[batched[j]]->layer(i);
    layers_[i].forward_rows(x, m, starts, layer_caches, workspace);
  }
  // The final norm and lm_head over the wanted rows only (a prompt's rows but its last need
  // no logits), through the GEMV in groups of up to kMaxDecodeRows rows also in a prompt pass
  // (as one-row decoding computes them: one pass's prompt ends take no GEMM of the whole head).
  gemm_rows.reset();
  float* head_input = x;  // [m_wanted, hidden]
  if (m_wanted < m) {
    head_input = workspace.take<float>(std::max<int64_t>(m_wanted, 1) * hidden);
    for (int64_t j = 0, k = 0; j < m; ++j)
      if (out_row[batched[j]] >= 0)
        std::memcpy(head_input + k++ * hidden, x + j * hidden, sizeof(float) * hidden);
  }
  if (m_wanted > 0) {
    final_norm_.forward(head_input, m_wanted, head_input);
    float* batch_logits = workspace.take<float>(m_wanted * vocab);  // [m_wanted, V]
    for (int64_t k = 0; k < m_wanted; k += kMaxDecodeRows)
      head(head_input + k * hidden, std::min(kMaxDecodeRows, m_wanted - k),
           batch_logits + k * vocab);
    finish_logits(batch_logits, m_wanted);
    for (int64_t j = 0, k = 0; j < m; ++j)
      if (out_row[batched[j]] >= 0)
        std::memcpy(logits + out_row[batched[j]] * vocab, batch_logits + k++ * vocab,
                    sizeof(float) * vocab);
  }
  for (int64_t j = 0; j < m; ++j) {  // row order: a sequence's positions in order
    KvCache& cache = *caches[batched[j]];
    cache.remember_tokens(&ids[j], 1);
    cache.advance(1);
  }
  return logits;
}

void Model::head(const float* x, int64_t rows, float* logits) const {
  lm_head_.forward(x, rows, logits);
  if (refine_head_)
    ops::linear_refine_top(x, ops::weight_view(embedding_), logits, rows, spec_.hidden_size,
                           spec_.vocab_size, kHeadRefined);
}

void Model::finish_logits(float* logits, int64_t rows) const {
  const int64_t n = rows * spec_.vocab_size;
  if (spec_.logit_scale != 1.0f) {  // Cohere multiplies by logit_scale, Granite divides
    const float scale = spec_.logit_scale;
    for (int64_t i = 0; i < n; ++i) logits[i] *= scale;
  }
  if (spec_.final_logit_softcap > 0.0f) {
    const float cap = spec_.final_logit_softcap;
    for (int64_t i = 0; i < n; ++i) logits[i] = std::tanh(logits[i] / cap) * cap;
  }
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

const float* Model::recompute(const int32_t* tokens, int64_t tokens_per_row, KvCache& cache,
                              Workspace& workspace, const ForwardOptions& options) const {
  const int64_t batch = cache.batch(), T = tokens_per_row, vocab = spec_.vocab_size;
  const int64_t length = cache.length() + T;
  const std::vector<int32_t> all = cache.tokens_with(tokens, T);  // [B, length]
  cache.clear();
  const float* logits = forward(all.data(), batch, length, cache, workspace, options);
  if (options.last_position_only) return logits;          // [B, 1, V]
  float* out = workspace.take<float>(batch * T * vocab);  // [B, T, V]: the new positions
  for (int64_t b = 0; b < batch; ++b)
    std::memcpy(out + b * T * vocab, logits + (b * length + length - T) * vocab,
                sizeof(float) * T * vocab);
  return out;
}

}  // namespace kiln
