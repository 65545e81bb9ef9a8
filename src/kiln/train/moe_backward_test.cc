// The MoE training pieces (train/moe_backward.h) against central finite differences of float64
// forwards written here from the formulas: the router's backward for every router kind, and a
// whole MoE block (router, experts with biases, shared experts; output- and input-weighted).
// The choice of experts is fixed at the unperturbed point, as autograd treats top-k. Error =
// max |analytic - numeric| / max |numeric| per tensor, printed for each.
#include "kiln/train/moe_backward.h"
#include "kiln/train/gradient_check.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <iostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/ops/router.h"

namespace kiln::train {
namespace {

using gradient_check::f32;
using gradient_check::random_vec;
using gradient_check::Vec;

Vec numeric_gradient(const std::function<double(const Vec&)>& f, Vec x, double h = 1e-6) {
  return gradient_check::numeric_gradient(f, std::move(x), h);
}

double expect_close(const std::string& what, const std::vector<float>& analytic, const Vec& numeric,
                    double tolerance = 1e-4) {
  return gradient_check::expect_close(what, analytic, numeric, tolerance);
}

// The weights of the chosen experts from the logits (f64), as route_tokens defines them.
Vec route_weights(const MoeSpec& spec, const Vec& logits, const std::vector<int64_t>& experts,
                  int64_t rows) {
  const int64_t E = spec.num_experts, k = spec.top_k;
  Vec w(rows * k);
  for (int64_t r = 0; r < rows; ++r) {
    const double* l = logits.data() + r * E;
    const int64_t* c = experts.data() + r * k;
    double* out = w.data() + r * k;
    switch (spec.router) {
      case RouterKind::kTopKSoftmax: {
        double sum = 0.0;
        for (int64_t j = 0; j < k; ++j) sum += out[j] = std::exp(l[c[j]]);
        for (int64_t j = 0; j < k; ++j) out[j] /= sum;
        break;
      }
      case RouterKind::kTopKSigmoid:
        for (int64_t j = 0; j < k; ++j) out[j] = 1.0 / (1.0 + std::exp(-l[c[j]]));
        break;
      case RouterKind::kSoftmaxTopK: {
        double z = 0.0;
        for (int64_t e = 0; e < E; ++e) z += std::exp(l[e]);
        double sum = 0.0;
        for (int64_t j = 0; j < k; ++j) sum += out[j] = std::exp(l[c[j]]) / z;
        if (spec.norm_topk_prob)
          for (int64_t j = 0; j < k; ++j) out[j] /= sum;
        break;
      }
      case RouterKind::kSigmoidGroup: {
        double sum = 1e-20;
        for (int64_t j = 0; j < k; ++j) sum += out[j] = 1.0 / (1.0 + std::exp(-l[c[j]]));
        if (spec.norm_topk_prob)
          for (int64_t j = 0; j < k; ++j) out[j] /= sum;
        break;
      }
      case RouterKind::kSparseMixer:
        ADD_FAILURE() << "no backward";
    }
    for (int64_t j = 0; j < k; ++j) out[j] *= spec.routed_scaling_factor;
  }
  return w;
}

MoeSpec router_spec(RouterKind router, bool norm, double scaling) {
  MoeSpec s;
  s.num_experts = 8;
  s.top_k = 3;
  s.expert_intermediate = 5;
  s.router = router;
  s.norm_topk_prob = norm;
  s.routed_scaling_factor = scaling;
  if (router == RouterKind::kSigmoidGroup) {
    s.n_group = 4;
    s.topk_group = 2;
  }
  return s;
}

void check_router(const MoeSpec& spec, const std::string& name) {
  std::mt19937 rng(21);
  const int64_t rows = 5, E = spec.num_experts, k = spec.top_k;
  const Vec logits = random_vec(rows * E, rng, 2.0), r = random_vec(rows * k, rng);
  const std::vector<float> l32 = f32(logits);
  std::vector<int64_t> experts(rows * k);
  std::vector<float> weights(rows * k);
  ops::route_tokens(spec, l32.data(), nullptr, rows, experts.data(), weights.data());
  // The f64 weights agree with the inference router's at the same point.
  const Vec w = route_weights(spec, logits, experts, rows);
  for (int64_t i = 0; i < rows * k; ++i) EXPECT_NEAR(weights[i], w[i], 1e-5) << name;
  auto loss = [&](const Vec& l) {
    const Vec v = route_weights(spec, l, experts, rows);
    double s = 0.0;
    for (int64_t i = 0; i < rows * k; ++i) s += v[i] * r[i];
    return s;
  };
  std::vector<float> d_logits(rows * E, 0.0f);
  router_backward(spec, l32.data(), experts.data(), f32(r).data(), d_logits.data(), rows);
  expect_close("router " + name + " dlogits", d_logits, numeric_gradient(loss, logits));
}

TEST(MoeBackward, RouterTopKSoftmax) {
  check_router(router_spec(RouterKind::kTopKSoftmax, false, 1.0), "top_k_softmax");
}
TEST(MoeBackward, RouterTopKSigmoid) {
  check_router(router_spec(RouterKind::kTopKSigmoid, false, 1.0), "top_k_sigmoid");
}
TEST(MoeBackward, RouterSoftmaxTopKNormalizedAndNot) {
  check_router(router_spec(RouterKind::kSoftmaxTopK, true, 1.0), "softmax_top_k (norm)");
  check_router(router_spec(RouterKind::kSoftmaxTopK, false, 1.0), "softmax_top_k");
}
TEST(MoeBackward, RouterSigmoidGroupWithRoutedScaling) {
  check_router(router_spec(RouterKind::kSigmoidGroup, true, 2.5), "sigmoid_group (norm, 2.5)");
  check_router(router_spec(RouterKind::kSigmoidGroup, false, 1.5), "sigmoid_group (1.5)");
}
TEST(MoeBackward, SparseMixerHasNoBackward) {
  MoeSpec spec = router_spec(RouterKind::kSparseMixer, false, 1.0);
  spec.top_k = 2;
  EXPECT_THROW(check_moe_trainable(spec, Activation::kSilu, "layer 0"), Error);
  float l[8] = {}, d[8] = {}, g[2] = {};
  int64_t e[2] = {0, 1};
  EXPECT_THROW(router_backward(spec, l, e, g, d, 1), Error);
}

// A whole MoE block: the f64 forward below with the choice of experts fixed.
struct Block {
  MoeSpec spec;
  int64_t rows = 6, H = 7;
  Vec x, router, router_bias, gate, up, down, gate_b, up_b, down_b, sg, su, sd, seg, r;
};

double silu(double v) {
  return v / (1.0 + std::exp(-v));
}

// sum(y * r) for y = moe(x) with the experts `chosen`.
double block_loss(const Block& b, const std::vector<int64_t>& chosen, const Vec& x,
                  const Vec& router, const Vec& rbias, const Vec& gate, const Vec& up,
                  const Vec& down, const Vec& gb, const Vec& ub, const Vec& db, const Vec& sg,
                  const Vec& su, const Vec& sd, const Vec& seg) {
  const MoeSpec& s = b.spec;
  const int64_t E = s.num_experts, k = s.top_k, I = s.expert_intermediate, H = b.H;
  Vec logits(b.rows * E);
  for (int64_t n = 0; n < b.rows; ++n)
    for (int64_t e = 0; e < E; ++e) {
      double v = rbias.empty() ? 0.0 : rbias[e];
      for (int64_t c = 0; c < H; ++c) v += x[n * H + c] * router[e * H + c];
      logits[n * E + e] = v;
    }
  const Vec w = route_weights(s, logits, chosen, b.rows);
  // A gated SiLU MLP on `in` [H] with weights at the given offsets.
  auto mlp = [&](const double* in, const double* g, const double* u, const double* d,
                 const double* gbias, const double* ubias, const double* dbias, int64_t inner,
                 double* out, bool clamped) {
    std::vector<double> h(inner);
    for (int64_t i = 0; i < inner; ++i) {
      double gv = gbias ? gbias[i] : 0.0, uv = ubias ? ubias[i] : 0.0;
      for (int64_t c = 0; c < H; ++c) gv += in[c] * g[i * H + c], uv += in[c] * u[i * H + c];
      if (clamped) {  // gpt-oss: (u + 1) g sigmoid(alpha g), g and u clamped
        const double limit = s.swiglu_limit;
        gv = std::min(gv, limit);
        uv = std::clamp(uv, -limit, limit);
        h[i] = (uv + 1.0) * gv / (1.0 + std::exp(-s.swiglu_alpha * gv));
      } else {
        h[i] = silu(gv) * uv;
      }
    }
    for (int64_t c = 0; c < H; ++c) {
      double v = dbias ? dbias[c] : 0.0;
      for (int64_t i = 0; i < inner; ++i) v += h[i] * d[c * inner + i];
      out[c] = v;
    }
  };
  double loss = 0.0;
  std::vector<double> in(H), out(H);
  for (int64_t n = 0; n < b.rows; ++n) {
    std::vector<double> y(H, 0.0);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = chosen[n * k + j];
      const double wj = w[n * k + j];
      for (int64_t c = 0; c < H; ++c) in[c] = x[n * H + c] * (s.weight_expert_input ? wj : 1.0);
      const bool bias = s.expert_bias;
      mlp(in.data(), gate.data() + e * I * H, up.data() + e * I * H, down.data() + e * H * I,
          bias ? gb.data() + e * I : nullptr, bias ? ub.data() + e * I : nullptr,
          bias ? db.data() + e * H : nullptr, I, out.data(), s.swiglu_limit > 0.0f);
      for (int64_t c = 0; c < H; ++c) y[c] += out[c] * (s.weight_expert_input ? 1.0 : wj);
    }
    if (s.num_shared_experts > 0) {
      mlp(x.data() + n * H, sg.data(), su.data(), sd.data(), nullptr, nullptr, nullptr,
          s.shared_intermediate, out.data(), false);
      double g = 1.0;  // Qwen2-MoE's shared-expert gate sigmoid(x . w)
      if (s.shared_expert_gate) {
        double dot = 0.0;
        for (int64_t c = 0; c < H; ++c) dot += x[n * H + c] * seg[c];
        g = 1.0 / (1.0 + std::exp(-dot));
      }
      for (int64_t c = 0; c < H; ++c) y[c] += out[c] * g;
    }
    for (int64_t c = 0; c < H; ++c) loss += y[c] * b.r[n * H + c];
  }
  return loss;
}

void check_block(const MoeSpec& spec, const std::string& name) {
  std::mt19937 rng(33);
  Block b;
  b.spec = spec;
  const int64_t E = spec.num_experts, I = spec.expert_intermediate, H = b.H,
                S = spec.shared_intermediate;
  b.x = random_vec(b.rows * H, rng);
  b.router = random_vec(E * H, rng, 0.7);
  if (spec.router_bias) b.router_bias = random_vec(E, rng, 0.3);
  b.gate = random_vec(E * I * H, rng, 0.5);
  b.up = random_vec(E * I * H, rng, 0.5);
  b.down = random_vec(E * H * I, rng, 0.5);
  if (spec.expert_bias) {
    b.gate_b = random_vec(E * I, rng, 0.2);
    b.up_b = random_vec(E * I, rng, 0.2);
    b.down_b = random_vec(E * H, rng, 0.2);
  }
  if (S > 0) {
    b.sg = random_vec(S * H, rng, 0.5);
    b.su = random_vec(S * H, rng, 0.5);
    b.sd = random_vec(H * S, rng, 0.5);
  }
  if (spec.shared_expert_gate) b.seg = random_vec(H, rng, 0.7);
  b.r = random_vec(b.rows * H, rng);
  // f32 copies the kernels read, and their gradients.
  struct Param {
    const Vec* value;
    std::vector<float> v32, grad;
  };
  std::vector<Param> params;
  auto make = [&](const Vec& v) {
    Param p{&v, f32(v), std::vector<float>(v.size(), 0.0f)};
    return p;
  };
  Param x = make(b.x), router = make(b.router), rbias = make(b.router_bias), gate = make(b.gate),
        up = make(b.up), down = make(b.down), gb = make(b.gate_b), ub = make(b.up_b),
        db = make(b.down_b), sg = make(b.sg), su = make(b.su), sd = make(b.sd), seg = make(b.seg);
  auto lin = [](Param& w, Param& bias) {
    return LinearRef{w.v32.data(), bias.v32.empty() ? nullptr : bias.v32.data(), w.grad.data(),
                     bias.v32.empty() ? nullptr : bias.grad.data()};
  };
  Param none = make(Vec{});
  MoeParams p;
  p.router = lin(router, rbias);
  p.gate = lin(gate, gb);
  p.up = lin(up, ub);
  p.down = lin(down, db);
  if (S > 0) {
    p.shared_gate = lin(sg, none);
    p.shared_up = lin(su, none);
    p.shared_down = lin(sd, none);
  }
  if (spec.shared_expert_gate) p.shared_expert_gate = lin(seg, none);
  MoeSaved saved;
  std::vector<float> y(b.rows * H);
  moe_forward(spec, Activation::kSilu, p, x.v32.data(), b.rows, H, y.data(), saved);
  const std::vector<int64_t> chosen = saved.experts;
  if (spec.swiglu_limit > 0.0f) {  // the clamps are exercised (both sides of each)
    int64_t gates = 0, ups = 0;
    for (size_t i = 0; i < saved.gate.size(); ++i) {
      gates += saved.gate[i] > spec.swiglu_limit;
      ups += std::abs(saved.up[i]) > spec.swiglu_limit;
    }
    std::cout << name << ": " << gates << " gates and " << ups << " ups of " << saved.gate.size()
              << " clamped" << std::endl;
    EXPECT_GT(gates, 0);
    EXPECT_GT(ups, 0);
    EXPECT_LT(gates, static_cast<int64_t>(saved.gate.size()));
  }
  // The forward against the f64 one: loss = sum(y * r).
  double f32_loss = 0.0;
  for (int64_t i = 0; i < b.rows * H; ++i) f32_loss += y[i] * b.r[i];
  auto loss = [&](const Vec* which, const Vec& value) {
    auto pick = [&](const Vec& v) -> const Vec& { return &v == which ? value : v; };
    return block_loss(b, chosen, pick(b.x), pick(b.router), pick(b.router_bias), pick(b.gate),
                      pick(b.up), pick(b.down), pick(b.gate_b), pick(b.up_b), pick(b.down_b),
                      pick(b.sg), pick(b.su), pick(b.sd), pick(b.seg));
  };
  EXPECT_NEAR(f32_loss, loss(nullptr, {}), 1e-4) << name;
  moe_backward(spec, Activation::kSilu, p, x.v32.data(), saved, f32(b.r).data(), x.grad.data(),
               b.rows, H);
  // Every expert was chosen at least once (else its gradients are zero and say nothing).
  for (int64_t e = 0; e < E; ++e) EXPECT_GT(saved.first[e + 1], saved.first[e]) << name << " " << e;
  const std::pair<const char*, Param*> all[] = {{"x", &x},
                                                {"router", &router},
                                                {"router bias", &rbias},
                                                {"gate", &gate},
                                                {"up", &up},
                                                {"down", &down},
                                                {"gate bias", &gb},
                                                {"up bias", &ub},
                                                {"down bias", &db},
                                                {"shared gate", &sg},
                                                {"shared up", &su},
                                                {"shared down", &sd},
                                                {"shared-expert gate", &seg}};
  for (const auto& [part, param] : all) {
    if (param->value->empty()) continue;
    expect_close(
        name + " d" + part, param->grad,
        numeric_gradient([&](const Vec& v) { return loss(param->value, v); }, *param->value));
  }
}

TEST(MoeBackward, BlockTopKSoftmaxWithBiasesAndSharedExperts) {
  MoeSpec s = router_spec(RouterKind::kTopKSoftmax, false, 1.0);
  s.num_experts = 4;
  s.top_k = 2;
  s.router_bias = true;
  s.expert_bias = true;
  s.num_shared_experts = 1;
  s.shared_intermediate = 6;
  check_block(s, "moe top_k_softmax + biases + shared");
}
// Qwen2-MoE: softmax over all experts then top-k (not renormalized), a shared expert whose
// output is scaled by sigmoid(x . w).
TEST(MoeBackward, BlockSharedExpertGate) {
  MoeSpec s = router_spec(RouterKind::kSoftmaxTopK, false, 1.0);
  s.num_experts = 4;
  s.top_k = 2;
  s.num_shared_experts = 1;
  s.shared_intermediate = 5;
  s.shared_expert_gate = true;
  check_block(s, "moe softmax_top_k + gated shared expert");
}
// gpt-oss's experts: a biased router, expert biases, clamped SwiGLU with a limit that clamps
// some of the gates and ups (the count is checked).
TEST(MoeBackward, BlockClampedSwiGluExperts) {
  MoeSpec s = router_spec(RouterKind::kTopKSoftmax, false, 1.0);
  s.num_experts = 4;
  s.top_k = 2;
  s.router_bias = true;
  s.expert_bias = true;
  s.swiglu_limit = 0.9f;
  s.swiglu_alpha = 1.702f;
  check_block(s, "moe clamped SwiGLU (limit 0.9)");
}

TEST(MoeBackward, BlockSigmoidGroupWithScaling) {
  MoeSpec s = router_spec(RouterKind::kSigmoidGroup, true, 2.5);
  s.num_experts = 4;
  s.top_k = 2;
  s.n_group = 2;
  s.topk_group = 2;
  s.num_shared_experts = 1;
  s.shared_intermediate = 5;
  check_block(s, "moe sigmoid_group");
}
TEST(MoeBackward, BlockSoftmaxTopKNormalized) {
  MoeSpec s = router_spec(RouterKind::kSoftmaxTopK, true, 1.0);
  s.num_experts = 4;
  s.top_k = 2;
  check_block(s, "moe softmax_top_k");
}
TEST(MoeBackward, BlockTopKSigmoidWeighingTheInput) {
  MoeSpec s = router_spec(RouterKind::kTopKSigmoid, false, 1.0);
  s.num_experts = 3;
  s.top_k = 1;
  s.weight_expert_input = true;
  s.num_shared_experts = 1;
  s.shared_intermediate = 4;
  check_block(s, "moe top_k_sigmoid (input-weighted)");
}

}  // namespace
}  // namespace kiln::train
