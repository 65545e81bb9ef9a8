// Elementwise activations and the gated (GLU) product of an MLP.
#pragma once

#include <cstdint>

#include "kiln/models/model_spec.h"

namespace kiln::ops {

// One activation value: silu(x) = x sigmoid(x), gelu (erf or tanh form), relu, relu^2.
float activate(Activation activation, float x);

// x[i] = act(x[i]).   x: [count] f32
void apply_activation(Activation activation, float* x, int64_t count);

// y[i] = act(gate[i]) * up[i] (SwiGLU, GeGLU).   gate, up, y: [count] f32 (y may alias either)
// SiLU runs the active kernel set (ops/kernels.h).
void gated_activation(Activation activation, const float* gate, const float* up, float* y,
                      int64_t count);

// Clamped SwiGLU (gpt-oss): with g = min(gate[i], limit) and u = clamp(up[i], -limit, limit),
// y[i] = (u + 1) * g * sigmoid(alpha * g).   gate, up, y: [count] f32 (y may alias either)
void clamped_swiglu(const float* gate, const float* up, float* y, int64_t count, float limit,
                    float alpha);

// The reference kernel of gated_activation with SiLU.
void silu_gated_reference(const float* gate, const float* up, float* y, int64_t count);

// The backward of y = silu(gate) * up (training): with s = sigmoid(gate[i]),
//   dgate[i] += dy[i] * up[i] * s * (1 + gate[i] * (1 - s)),   dup[i] += dy[i] * gate[i] * s.
// gate, up, dy, dgate, dup: [count] f32; dgate or dup may be null (not computed). Runs the
// active kernel set (ops/kernels.h).
void silu_gated_backward(const float* gate, const float* up, const float* dy, float* dgate,
                         float* dup, int64_t count);
// Its reference kernel.
void silu_gated_backward_reference(const float* gate, const float* up, const float* dy,
                                   float* dgate, float* dup, int64_t count);

}  // namespace kiln::ops
