#include "kiln/train/moe_backward.h"

#include <algorithm>
#include <cmath>

#include "kiln/core/error.h"
#include "kiln/ops/router.h"
#include "kiln/train/backward.h"

namespace kiln::train {

namespace {

void refuse(const std::string& where, const std::string& feature) {
  throw Error("training: " + where + ": " + feature + " is not supported yet");
}

// Expert e's slice of a stacked tensor of `per_expert` floats per expert (null stays null).
const float* slice(const float* stacked, int64_t e, int64_t per_expert) {
  return stacked ? stacked + e * per_expert : nullptr;
}
float* slice(float* stacked, int64_t e, int64_t per_expert) {
  return stacked ? stacked + e * per_expert : nullptr;
}

// x's rows of expert e's picks, times the pick's weight when `weigh`: [n, H].
void gather_inputs(const float* x, const MoeSaved& s, int64_t e, int64_t k, int64_t H, bool weigh,
                   float* gathered) {
  const int64_t begin = s.first[e], n = s.first[e + 1] - begin;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t pick = s.by_expert[begin + i];
    const float* from = x + pick / k * H;  // [H]
    const float w = weigh ? s.weights[pick] : 1.0f;
    for (int64_t c = 0; c < H; ++c) gathered[i * H + c] = weigh ? from[c] * w : from[c];
  }
}

// The experts' activation h = act(gate) * up, or gpt-oss's clamped SwiGLU when
// spec.swiglu_limit > 0: h = (u + 1) g sigmoid(alpha g), g = min(gate, limit),
// u = clamp(up, -limit, limit).   gate, up, h [n]
void expert_forward(const MoeSpec& spec, Activation activation, const float* gate, const float* up,
                    float* h, int64_t n) {
  if (spec.swiglu_limit <= 0.0f) return gated_forward(activation, gate, up, h, n);
  const float limit = spec.swiglu_limit, alpha = spec.swiglu_alpha;
  for (int64_t i = 0; i < n; ++i) {
    const float g = std::min(gate[i], limit), u = std::clamp(up[i], -limit, limit);
    h[i] = (u + 1.0f) * (g / (1.0f + std::exp(-alpha * g)));
  }
}

// Its backward; the clamps pass the gradient where the input is within them (bounds included,
// as torch.clamp's backward does).
void expert_backward(const MoeSpec& spec, Activation activation, const float* gate, const float* up,
                     const float* dh, float* dgate, float* dup, int64_t n) {
  if (spec.swiglu_limit <= 0.0f) return gated_backward(activation, gate, up, dh, dgate, dup, n);
  const float limit = spec.swiglu_limit, alpha = spec.swiglu_alpha;
  for (int64_t i = 0; i < n; ++i) {
    const float g = std::min(gate[i], limit), u = std::clamp(up[i], -limit, limit);
    const float sig = 1.0f / (1.0f + std::exp(-alpha * g));
    if (gate[i] <= limit) dgate[i] += dh[i] * (u + 1.0f) * (sig + alpha * g * sig * (1.0f - sig));
    if (up[i] >= -limit && up[i] <= limit) dup[i] += dh[i] * g * sig;
  }
}

}  // namespace

void check_moe_trainable(const MoeSpec& spec, Activation activation, const std::string& where) {
  if (spec.router == RouterKind::kSparseMixer)
    refuse(where, std::string("MoE router '") + router_name(spec.router) + "'");
  if (spec.shared_expert_gate && spec.num_shared_experts <= 0)
    throw Error("training: " + where + ": a shared-expert gate without shared experts");
  if (activation != Activation::kSilu && activation != Activation::kGeluTanh)
    refuse(where, std::string("expert activation '") + activation_name(activation) + "'");
  if (spec.top_k < 1 || spec.top_k > spec.num_experts || spec.expert_intermediate <= 0)
    throw Error("training: " + where + ": top_k must be in [1, experts] and the expert size > 0");
}

void moe_forward(const MoeSpec& spec, Activation activation, const MoeParams& p, const float* x,
                 int64_t rows, int64_t H, float* y, MoeSaved& s) {
  const int64_t E = spec.num_experts, k = spec.top_k, I = spec.expert_intermediate;
  const int64_t picks = rows * k;
  s.logits.resize(rows * E);
  s.experts.resize(picks);
  s.weights.resize(picks);
  linear_forward(x, p.router.w, p.router.b, s.logits.data(), rows, H, E);
  ops::route_tokens(spec, s.logits.data(), p.correction_bias, rows, s.experts.data(),
                    s.weights.data());
  // Picks grouped by expert, in token order.
  s.first.assign(E + 1, 0);
  for (int64_t q = 0; q < picks; ++q) ++s.first[s.experts[q] + 1];
  for (int64_t e = 0; e < E; ++e) s.first[e + 1] += s.first[e];
  std::vector<int64_t> filled(s.first.begin(), s.first.end() - 1);
  s.by_expert.resize(picks);
  for (int64_t q = 0; q < picks; ++q) s.by_expert[filled[s.experts[q]]++] = q;

  s.gate.resize(picks * I);
  s.up.resize(picks * I);
  s.act.resize(picks * I);
  s.out.resize(picks * H);
  std::fill(y, y + rows * H, 0.0f);
  const bool weigh_input = spec.weight_expert_input;
  std::vector<float> gathered(rows * H);  // [n, H] (an expert's picks, n <= rows)
  for (int64_t e = 0; e < E; ++e) {
    const int64_t begin = s.first[e], n = s.first[e + 1] - begin;
    if (n == 0) continue;
    gather_inputs(x, s, e, k, H, weigh_input, gathered.data());
    float* gate = s.gate.data() + begin * I;  // [n, I]
    float* up = s.up.data() + begin * I;
    float* act = s.act.data() + begin * I;
    float* out = s.out.data() + begin * H;  // [n, H]
    linear_forward(gathered.data(), slice(p.gate.w, e, I * H), slice(p.gate.b, e, I), gate, n, H,
                   I);
    linear_forward(gathered.data(), slice(p.up.w, e, I * H), slice(p.up.b, e, I), up, n, H, I);
    expert_forward(spec, activation, gate, up, act, n * I);
    linear_forward(act, slice(p.down.w, e, H * I), slice(p.down.b, e, H), out, n, I, H);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t pick = s.by_expert[begin + i];
      float* row = y + pick / k * H;  // [H]
      const float w = weigh_input ? 1.0f : s.weights[pick];
      for (int64_t c = 0; c < H; ++c) row[c] += out[i * H + c] * w;
    }
  }
  if (spec.num_shared_experts > 0) {
    const int64_t S = spec.shared_intermediate;
    s.shared_gate.resize(rows * S);
    s.shared_up.resize(rows * S);
    s.shared_act.resize(rows * S);
    std::vector<float> shared(rows * H);
    linear_forward(x, p.shared_gate.w, p.shared_gate.b, s.shared_gate.data(), rows, H, S);
    linear_forward(x, p.shared_up.w, p.shared_up.b, s.shared_up.data(), rows, H, S);
    gated_forward(activation, s.shared_gate.data(), s.shared_up.data(), s.shared_act.data(),
                  rows * S);
    linear_forward(s.shared_act.data(), p.shared_down.w, p.shared_down.b, shared.data(), rows, S,
                   H);
    if (spec.shared_expert_gate) {  // Qwen2-MoE: shared * sigmoid(x . w), as the inference Moe
      s.shared_out = shared;
      s.shared_sigmoid.resize(rows);
      linear_forward(x, p.shared_expert_gate.w, nullptr, s.shared_sigmoid.data(), rows, H, 1);
      for (int64_t r = 0; r < rows; ++r) {
        const float g = 1.0f / (1.0f + std::exp(-s.shared_sigmoid[r]));
        s.shared_sigmoid[r] = g;
        for (int64_t c = 0; c < H; ++c) shared[r * H + c] *= g;
      }
    }
    for (int64_t j = 0; j < rows * H; ++j) y[j] += shared[j];
  }
}

void moe_backward(const MoeSpec& spec, Activation activation, const MoeParams& p, const float* x,
                  const MoeSaved& s, const float* dy, float* dx, int64_t rows, int64_t H) {
  const int64_t E = spec.num_experts, k = spec.top_k, I = spec.expert_intermediate;
  const int64_t picks = rows * k;
  if (spec.num_shared_experts > 0) {
    const int64_t S = spec.shared_intermediate;
    std::vector<float> d_act(rows * S), d_gate(rows * S), d_up(rows * S);
    const float* d_shared = dy;  // the shared experts' output gradient
    std::vector<float> gated;
    if (spec.shared_expert_gate) {  // y += shared * g, g = sigmoid(x . w)
      gated.resize(rows * H);
      std::vector<float> d_logit(rows);
      for (int64_t r = 0; r < rows; ++r) {
        const float g = s.shared_sigmoid[r];
        double dg = 0.0;
        for (int64_t c = 0; c < H; ++c) {
          dg += static_cast<double>(dy[r * H + c]) * s.shared_out[r * H + c];
          gated[r * H + c] = dy[r * H + c] * g;
        }
        d_logit[r] = static_cast<float>(dg * g * (1.0f - g));
      }
      linear_backward(x, p.shared_expert_gate.w, d_logit.data(), dx, p.shared_expert_gate.dw,
                      nullptr, rows, H, 1);
      d_shared = gated.data();
    }
    linear_backward(s.shared_act.data(), p.shared_down.w, d_shared, d_act.data(), p.shared_down.dw,
                    p.shared_down.db, rows, S, H);
    gated_backward(activation, s.shared_gate.data(), s.shared_up.data(), d_act.data(),
                   d_gate.data(), d_up.data(), rows * S);
    linear_backward(x, p.shared_gate.w, d_gate.data(), dx, p.shared_gate.dw, p.shared_gate.db, rows,
                    H, S);
    linear_backward(x, p.shared_up.w, d_up.data(), dx, p.shared_up.dw, p.shared_up.db, rows, H, S);
  }
  const bool weigh_input = spec.weight_expert_input;
  std::vector<float> d_weights(picks, 0.0f);                               // [rows, k]
  std::vector<float> gathered(rows * H), d_out(rows * H), d_in(rows * H);  // [n, H]
  std::vector<float> d_act(rows * I), d_gate(rows * I), d_up(rows * I);    // [n, I]
  for (int64_t e = 0; e < E; ++e) {
    const int64_t begin = s.first[e], n = s.first[e + 1] - begin;
    if (n == 0) continue;
    const float* out = s.out.data() + begin * H;  // [n, H]
    for (int64_t i = 0; i < n; ++i) {
      const int64_t pick = s.by_expert[begin + i];
      const float* g = dy + pick / k * H;  // [H]
      const float w = weigh_input ? 1.0f : s.weights[pick];
      double dw = 0.0;
      for (int64_t c = 0; c < H; ++c) {
        d_out[i * H + c] = g[c] * w;
        dw += static_cast<double>(g[c]) * out[i * H + c];
      }
      if (!weigh_input) d_weights[pick] = static_cast<float>(dw);
    }
    std::fill_n(d_act.begin(), n * I, 0.0f);
    std::fill_n(d_gate.begin(), n * I, 0.0f);
    std::fill_n(d_up.begin(), n * I, 0.0f);
    std::fill_n(d_in.begin(), n * H, 0.0f);
    const float* gate = s.gate.data() + begin * I;
    const float* up = s.up.data() + begin * I;
    const float* act = s.act.data() + begin * I;
    linear_backward(act, slice(p.down.w, e, H * I), d_out.data(), d_act.data(),
                    slice(p.down.dw, e, H * I), slice(p.down.db, e, H), n, I, H);
    expert_backward(spec, activation, gate, up, d_act.data(), d_gate.data(), d_up.data(), n * I);
    gather_inputs(x, s, e, k, H, weigh_input, gathered.data());
    linear_backward(gathered.data(), slice(p.gate.w, e, I * H), d_gate.data(), d_in.data(),
                    slice(p.gate.dw, e, I * H), slice(p.gate.db, e, I), n, H, I);
    linear_backward(gathered.data(), slice(p.up.w, e, I * H), d_up.data(), d_in.data(),
                    slice(p.up.dw, e, I * H), slice(p.up.db, e, I), n, H, I);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t pick = s.by_expert[begin + i];
      const float* from = x + pick / k * H;  // [H]
      float* to = dx + pick / k * H;
      const float w = weigh_input ? s.weights[pick] : 1.0f;
      double dw = 0.0;
      for (int64_t c = 0; c < H; ++c) {
        to[c] += d_in[i * H + c] * w;
        dw += static_cast<double>(d_in[i * H + c]) * from[c];
      }
      if (weigh_input) d_weights[pick] = static_cast<float>(dw);
    }
  }
  std::vector<float> d_logits(rows * E, 0.0f);
  router_backward(spec, s.logits.data(), s.experts.data(), d_weights.data(), d_logits.data(), rows);
  linear_backward(x, p.router.w, d_logits.data(), dx, p.router.dw, p.router.db, rows, H, E);
}

void router_backward(const MoeSpec& spec, const float* logits, const int64_t* experts,
                     const float* d_weights, float* d_logits, int64_t rows) {
  const int64_t E = spec.num_experts, k = spec.top_k;
  const double scaling = spec.routed_scaling_factor;
  if (spec.router == RouterKind::kSparseMixer)
    throw Error("training: the sparsemixer router has no backward");
  std::vector<double> value(k), d_value(k), probs(E), d_probs(E);
  for (int64_t r = 0; r < rows; ++r) {
    const float* l = logits + r * E;          // [E]
    const int64_t* chosen = experts + r * k;  // [k]
    float* dl = d_logits + r * E;             // [E]
    // g: the gradient of the weights before the routed scaling.
    for (int64_t j = 0; j < k; ++j) d_value[j] = d_weights[r * k + j] * scaling;
    switch (spec.router) {
      case RouterKind::kTopKSoftmax: {  // w = softmax over the chosen logits
        double top = l[chosen[0]];
        for (int64_t j = 1; j < k; ++j) top = std::max(top, static_cast<double>(l[chosen[j]]));
        double sum = 0.0;
        for (int64_t j = 0; j < k; ++j) sum += value[j] = std::exp(l[chosen[j]] - top);
        double dot = 0.0;
        for (int64_t j = 0; j < k; ++j) dot += (value[j] /= sum) * d_value[j];
        for (int64_t j = 0; j < k; ++j)
          dl[chosen[j]] += static_cast<float>(value[j] * (d_value[j] - dot));
        break;
      }
      case RouterKind::kTopKSigmoid: {
        for (int64_t j = 0; j < k; ++j) {
          const double g = 1.0 / (1.0 + std::exp(-static_cast<double>(l[chosen[j]])));
          dl[chosen[j]] += static_cast<float>(d_value[j] * g * (1.0 - g));
        }
        break;
      }
      case RouterKind::kSoftmaxTopK:
      case RouterKind::kSigmoidGroup: {
        const bool softmax = spec.router == RouterKind::kSoftmaxTopK;
        if (softmax) {
          double top = l[0];
          for (int64_t e = 1; e < E; ++e) top = std::max(top, static_cast<double>(l[e]));
          double sum = 0.0;
          for (int64_t e = 0; e < E; ++e) sum += probs[e] = std::exp(l[e] - top);
          for (int64_t e = 0; e < E; ++e) probs[e] /= sum;
        } else {
          for (int64_t e = 0; e < E; ++e)
            probs[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(l[e])));
        }
        // value_j = probs[chosen_j]; w_j = value_j / S (S = their sum, + 1e-20 for sigmoid).
        std::fill(d_probs.begin(), d_probs.end(), 0.0);
        if (spec.norm_topk_prob) {
          double sum = softmax ? 0.0 : 1e-20, dot = 0.0;
          for (int64_t j = 0; j < k; ++j) sum += probs[chosen[j]];
          for (int64_t j = 0; j < k; ++j) dot += d_value[j] * probs[chosen[j]];
          for (int64_t j = 0; j < k; ++j)
            d_probs[chosen[j]] += d_value[j] / sum - dot / (sum * sum);
        } else {
          for (int64_t j = 0; j < k; ++j) d_probs[chosen[j]] += d_value[j];
        }
        if (softmax) {
          double dot = 0.0;
          for (int64_t e = 0; e < E; ++e) dot += probs[e] * d_probs[e];
          for (int64_t e = 0; e < E; ++e)
            dl[e] += static_cast<float>(probs[e] * (d_probs[e] - dot));
        } else {
          for (int64_t e = 0; e < E; ++e)
            dl[e] += static_cast<float>(d_probs[e] * probs[e] * (1.0 - probs[e]));
        }
        break;
      }
      case RouterKind::kSparseMixer:
        break;
    }
  }
}

}  // namespace kiln::train
