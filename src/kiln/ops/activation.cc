// Reference activations in f32, in the forms PyTorch computes.
#include "kiln/ops/activation.h"

#include <cmath>

#include "kiln/models/capabilities.h"
#include "kiln/ops/kernels.h"

namespace kiln::ops {

// The activations computed here (`kiln analyze` reports these supported).
KILN_CAPABILITY("mlp.activation", "silu");
KILN_CAPABILITY("mlp.activation", "gelu");
KILN_CAPABILITY("mlp.activation", "gelu_tanh");
KILN_CAPABILITY("mlp.activation", "relu");
KILN_CAPABILITY("mlp.activation", "relu_squared");
KILN_CAPABILITY("mlp.activation", "clamped_swiglu");

float activate(Activation activation, float x) {
  switch (activation) {
    case Activation::kSilu:
      return x / (1.0f + std::exp(-x));
    case Activation::kGeluExact:
      return 0.5f * x * (1.0f + std::erf(x * static_cast<float>(M_SQRT1_2)));
    case Activation::kGeluTanh: {
      const float inner = static_cast<float>(std::sqrt(2.0 / M_PI)) * (x + 0.044715f * x * x * x);
      return 0.5f * x * (1.0f + std::tanh(inner));
    }
    case Activation::kRelu:
      return x > 0.0f ? x : 0.0f;
    case Activation::kReluSquared:
      return x > 0.0f ? x * x : 0.0f;
  }
  return x;
}

void apply_activation(Activation activation, float* x, int64_t count) {
  for (int64_t i = 0; i < count; ++i) x[i] = activate(activation, x[i]);
}

void gated_activation(Activation activation, const float* gate, const float* up, float* y,
                      int64_t count) {
  if (activation == Activation::kSilu) return active_kernels().silu_gated(gate, up, y, count);
  for (int64_t i = 0; i < count; ++i) y[i] = activate(activation, gate[i]) * up[i];
}

void clamped_swiglu(const float* gate, const float* up, float* y, int64_t count, float limit,
                    float alpha) {
  for (int64_t i = 0; i < count; ++i) {
    const float g = std::fmin(gate[i], limit);
    const float u = std::fmax(std::fmin(up[i], limit), -limit);
    y[i] = (u + 1.0f) * (g / (1.0f + std::exp(-alpha * g)));
  }
}

void silu_gated_reference(const float* gate, const float* up, float* y, int64_t count) {
  for (int64_t i = 0; i < count; ++i) y[i] = activate(Activation::kSilu, gate[i]) * up[i];
}

void silu_gated_backward(const float* gate, const float* up, const float* dy, float* dgate,
                         float* dup, int64_t count) {
  active_kernels().silu_gated_backward(gate, up, dy, dgate, dup, count);
}

void silu_gated_backward_reference(const float* gate, const float* up, const float* dy,
                                   float* dgate, float* dup, int64_t count) {
#pragma omp parallel for schedule(static) if (count >= (int64_t{1} << 16))
  for (int64_t i = 0; i < count; ++i) {
    const float x = gate[i];
    const float s = 1.0f / (1.0f + std::exp(-x));
    if (dgate) dgate[i] += dy[i] * up[i] * (s * (1.0f + x * (1.0f - s)));
    if (dup) dup[i] += dy[i] * (x * s);
  }
}

}  // namespace kiln::ops
