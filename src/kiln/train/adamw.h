// AdamW (Loshchilov & Hutter) with decoupled weight decay and bias correction, as PyTorch's
// torch.optim.AdamW computes it (single-tensor path, f32 state), and optional global-norm
// gradient clipping (torch.nn.utils.clip_grad_norm_).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "kiln/train/train_model.h"

namespace kiln::train {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // applied only to the parameters decays() accepts
  double clip_norm = 0.0;     // > 0: scale the gradients so their global L2 norm is at most this
};

// The default no-decay rule: matrices (2-D and more) decay; norms and biases (1-D) and
// embedding tables (names ending in "/embedding") do not.
bool decays(const std::string& name, const Tensor& parameter);

class AdamW {
 public:
  explicit AdamW(AdamWOptions options) : options_(options) {}

  // One step over every parameter of `parameters`, each with the gradient of the same name in
  // `gradients` (Error when one is missing or misshapen):
  //   g = gradient * clip, clip = min(1, clip_norm / (global_norm + 1e-6)) when clip_norm > 0
  //   p *= 1 - lr * weight_decay                      (when decays(name, p))
  //   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
  //   p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
  // Returns the global L2 norm of the gradients before clipping.
  double step(ParameterMap& parameters, const ParameterMap& gradients);
  int64_t steps() const { return steps_; }
  // The learning rate of the next steps (schedules set it before each step).
  void set_lr(double lr) { options_.lr = lr; }
  const AdamWOptions& options() const { return options_; }

  // The optimizer's state (for checkpoints): steps taken and the moments per parameter.
  struct State {
    int64_t steps = 0;
    std::map<std::string, std::vector<float>> m, v;
  };
  State state() const { return {steps_, m_, v_}; }
  void set_state(State state) {
    steps_ = state.steps;
    m_ = std::move(state.m);
    v_ = std::move(state.v);
  }

 private:
  AdamWOptions options_;
  int64_t steps_ = 0;
  std::map<std::string, std::vector<float>> m_, v_;  // first and second moments per parameter
};

// sqrt(sum of every gradient element squared), accumulated in double.
double global_norm(const ParameterMap& gradients);

// The factor clip_grad_norm_ scales gradients of global norm `norm` by:
// min(1, clip_norm / (norm + 1e-6)) when clip_norm > 0 and norm > 0, else 1.
float clip_factor(double clip_norm, double norm);

// AdamW::step's update of n elements of one parameter: step `t` (1-based) of the optimizer,
// gradients g scaled by `clip`, weight decay when `decay`; w, m and v are updated in place.
// Element-wise (the result of an element does not depend on n or on the thread count), so a
// parameter may be updated in pieces (data_parallel.h updates the shard of each rank).
void adamw_update(const AdamWOptions& options, int64_t t, float clip, bool decay, float* w,
                  const float* g, float* m, float* v, int64_t n);

}  // namespace kiln::train
