#include "kiln/layers/moe.h"

#include <algorithm>
#include <cmath>

#include "kiln/core/error.h"
#include "kiln/models/capabilities.h"
#include "kiln/models/weight_names.h"
#include "kiln/ops/router.h"

namespace kiln {

KILN_CAPABILITY("moe", "yes");
KILN_CAPABILITY("moe.shared_experts", "yes");
KILN_CAPABILITY("moe.dense_layers", "yes");
KILN_CAPABILITY("moe.router_bias", "yes");
KILN_CAPABILITY("moe.expert_bias", "yes");
KILN_CAPABILITY("moe.shared_expert_gate", "yes");

Moe::Moe(const MoeSpec& spec, Activation activation, int64_t hidden, const WeightMap& weights,
         const std::string& module)
    : spec_(spec), hidden_(hidden) {
  check(!spec.shared_expert_gate || spec.num_shared_experts > 0,
        module + ": a shared-expert gate needs shared experts");
  check(spec.num_experts > 0 && spec.expert_intermediate > 0,
        module + ": experts and their intermediate size must be positive");
  const int64_t E = spec.num_experts, inner = spec.expert_intermediate;
  const std::string router = names::child(module, "gate");
  router_ = Linear(weights, router, hidden, E, spec.router_bias);
  if (spec.score_correction_bias)
    correction_bias_ = require_f32(weights, names::score_correction_bias(router), {E});
  const Tensor& gates =
      require_weight(weights, names::kernel(names::child(module, "wi_0")), {E, inner, hidden});
  const Tensor& ups =
      require_weight(weights, names::kernel(names::child(module, "wi_1")), {E, inner, hidden});
  const Tensor& downs =
      require_weight(weights, names::kernel(names::child(module, "wo")), {E, hidden, inner});
  MlpSpec expert{inner, true, activation, spec.expert_bias};
  expert.swiglu_limit = spec.swiglu_limit;
  expert.swiglu_alpha = spec.swiglu_alpha;
  // Expert biases (gpt-oss): [E, I] for gate and up, [E, hidden] for down; one row each.
  std::vector<float> gate_bias, up_bias, down_bias;
  if (spec.expert_bias) {
    gate_bias = require_f32(weights, names::bias(names::child(module, "wi_0")), {E, inner});
    up_bias = require_f32(weights, names::bias(names::child(module, "wi_1")), {E, inner});
    down_bias = require_f32(weights, names::bias(names::child(module, "wo")), {E, hidden});
  }
  auto row = [](const std::vector<float>& all, int64_t e, int64_t width) {
    if (all.empty()) return std::vector<float>();
    return std::vector<float>(all.begin() + e * width, all.begin() + (e + 1) * width);
  };
  for (int64_t e = 0; e < E; ++e)
    experts_.emplace_back(expert, Linear(gates.select(0, e), row(gate_bias, e, inner)),
                          Linear(ups.select(0, e), row(up_bias, e, inner)),
                          Linear(downs.select(0, e), row(down_bias, e, hidden)));
  if (spec.num_shared_experts > 0)
    shared_ = Mlp(MlpSpec{spec.shared_intermediate, true, activation, false}, hidden, weights,
                  names::child(module, "shared_experts"));
  if (spec.shared_expert_gate)
    shared_gate_ = Linear(weights, names::child(module, "shared_expert_gate"), hidden, 1, false);
}

void Moe::router_logits(const float* x, int64_t rows, float* logits) const {
  router_.forward(x, rows, logits);
}

void Moe::route(const float* logits, int64_t rows, int64_t* experts, float* weights) const {
  ops::route_tokens(spec_, logits, correction_bias_.empty() ? nullptr : correction_bias_.data(),
                    rows, experts, weights);
}

void Moe::forward(const float* x, int64_t rows, float* y, Workspace& workspace) const {
  const int64_t E = spec_.num_experts, k = spec_.top_k, H = hidden_, picks = rows * k;
  Workspace::Scope scope(workspace);
  float* logits = workspace.take<float>(rows * E);     // [rows, E]
  int64_t* experts = workspace.take<int64_t>(picks);   // [rows, k]
  float* pick_weights = workspace.take<float>(picks);  // [rows, k]
  router_logits(x, rows, logits);
  route(logits, rows, experts, pick_weights);
  // The pick's weight scales the expert's output, or its input (weight_expert_input).
  const bool weigh_input = spec_.weight_expert_input;

  // The picks (indices into [rows, k]) grouped by expert, in token order: expert e's are
  // by_expert[first[e], first[e + 1]).
  int64_t* first = workspace.take<int64_t>(E + 1);      // [E + 1]
  int64_t* filled = workspace.take<int64_t>(E);         // [E]
  int64_t* by_expert = workspace.take<int64_t>(picks);  // [rows * k]
  std::fill(first, first + E + 1, 0);
  for (int64_t p = 0; p < picks; ++p) ++first[experts[p] + 1];
  for (int64_t e = 0; e < E; ++e) first[e + 1] += first[e];
  std::copy_n(first, E, filled);
  for (int64_t p = 0; p < picks; ++p) by_expert[filled[experts[p]]++] = p;

  std::fill(y, y + rows * H, 0.0f);
  float* gathered = workspace.take<float>(rows * H);    // [n, H]: an expert's tokens (n <= rows)
  float* expert_out = workspace.take<float>(rows * H);  // [n, H]
  for (int64_t e = 0; e < E; ++e) {
    const int64_t* mine = by_expert + first[e];  // [n]
    const int64_t n = first[e + 1] - first[e];
    if (n == 0) continue;
    for (int64_t i = 0; i < n; ++i) {
      const float* from = x + mine[i] / k * H;  // [H]
      if (!weigh_input) {
        std::copy_n(from, H, gathered + i * H);
        continue;
      }
      const float w = pick_weights[mine[i]];
      for (int64_t c = 0; c < H; ++c) gathered[i * H + c] = from[c] * w;
    }
    experts_[e].forward(gathered, n, expert_out, workspace);
    for (int64_t i = 0; i < n; ++i) {
      float* row = y + mine[i] / k * H;  // [H]
      const float w = weigh_input ? 1.0f : pick_weights[mine[i]];
      for (int64_t c = 0; c < H; ++c) row[c] += expert_out[i * H + c] * w;
    }
  }
  if (spec_.num_shared_experts > 0) {
    float* shared = workspace.take<float>(rows * H);  // [rows, H]
    shared_.forward(x, rows, shared, workspace);
    if (spec_.shared_expert_gate) {               // Qwen2-MoE: shared * sigmoid(x . w)
      float* gate = workspace.take<float>(rows);  // [rows, 1]
      shared_gate_.forward(x, rows, gate);
      for (int64_t r = 0; r < rows; ++r) {
        const float g = 1.0f / (1.0f + std::exp(-gate[r]));
        for (int64_t c = 0; c < H; ++c) shared[r * H + c] *= g;
      }
    }
    for (int64_t i = 0; i < rows * H; ++i) y[i] += shared[i];
  }
}

}  // namespace kiln
