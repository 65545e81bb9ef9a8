#include "kiln/layers/moe.h"

#include <algorithm>

#include "kiln/core/error.h"
#include "kiln/models/capabilities.h"
#include "kiln/models/weight_names.h"
#include "kiln/ops/router.h"

namespace kiln {

KILN_CAPABILITY("moe", "yes");
KILN_CAPABILITY("moe.shared_experts", "yes");
KILN_CAPABILITY("moe.dense_layers", "yes");

Moe::Moe(const MoeSpec& spec, Activation activation, int64_t hidden, const WeightMap& weights,
         const std::string& module)
    : spec_(spec), hidden_(hidden) {
  check(!spec.shared_expert_gate, module + ": a gate on the shared experts is not implemented yet");
  check(spec.num_experts > 0 && spec.expert_intermediate > 0,
        module + ": experts and their intermediate size must be positive");
  const int64_t E = spec.num_experts, inner = spec.expert_intermediate;
  const std::string router = names::child(module, "gate");
  router_ = Linear(weights, router, hidden, E, false);
  if (spec.score_correction_bias)
    correction_bias_ = require_f32(weights, names::score_correction_bias(router), {E});
  const Tensor& gates =
      require_weight(weights, names::kernel(names::child(module, "wi_0")), {E, inner, hidden});
  const Tensor& ups =
      require_weight(weights, names::kernel(names::child(module, "wi_1")), {E, inner, hidden});
  const Tensor& downs =
      require_weight(weights, names::kernel(names::child(module, "wo")), {E, hidden, inner});
  const MlpSpec expert{inner, true, activation, false};
  for (int64_t e = 0; e < E; ++e)
    experts_.emplace_back(expert, Linear(gates.select(0, e)), Linear(ups.select(0, e)),
                          Linear(downs.select(0, e)));
  if (spec.num_shared_experts > 0)
    shared_ = Mlp(MlpSpec{spec.shared_intermediate, true, activation, false}, hidden, weights,
                  names::child(module, "shared_experts"));
}

void Moe::router_logits(const float* x, int64_t rows, float* logits) const {
  router_.forward(x, rows, logits);
}

void Moe::route(const float* logits, int64_t rows, int64_t* experts, float* weights) const {
  ops::route_tokens(spec_, logits, correction_bias_.empty() ? nullptr : correction_bias_.data(),
                    rows, experts, weights);
}

void Moe::forward(const float* x, int64_t rows, float* y) const {
  const int64_t E = spec_.num_experts, k = spec_.top_k, H = hidden_;
  std::vector<float> logits(rows * E);  // [rows, E]
  router_logits(x, rows, logits.data());
  std::vector<int64_t> picks(rows * k);       // [rows, k]
  std::vector<float> pick_weights(rows * k);  // [rows, k]
  route(logits.data(), rows, picks.data(), pick_weights.data());

  // The tokens of each expert, in token order, with their weights.
  std::vector<std::vector<int64_t>> tokens(E);
  std::vector<std::vector<float>> token_weights(E);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < k; ++j) {
      tokens[picks[r * k + j]].push_back(r);
      token_weights[picks[r * k + j]].push_back(pick_weights[r * k + j]);
    }

  std::fill(y, y + rows * H, 0.0f);
  std::vector<float> gathered, expert_out;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = static_cast<int64_t>(tokens[e].size());
    if (n == 0) continue;
    gathered.resize(n * H);  // [n, H]
    for (int64_t i = 0; i < n; ++i) std::copy_n(x + tokens[e][i] * H, H, gathered.data() + i * H);
    expert_out.resize(n * H);  // [n, H]
    experts_[e].forward(gathered.data(), n, expert_out.data());
    for (int64_t i = 0; i < n; ++i) {
      float* row = y + tokens[e][i] * H;
      const float w = token_weights[e][i];
      for (int64_t c = 0; c < H; ++c) row[c] += expert_out[i * H + c] * w;
    }
  }
  if (spec_.num_shared_experts > 0) {
    std::vector<float> shared(rows * H);  // [rows, H]
    shared_.forward(x, rows, shared.data());
    for (int64_t i = 0; i < rows * H; ++i) y[i] += shared[i];
  }
}

}  // namespace kiln
