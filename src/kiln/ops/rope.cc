// Reference RoPE: frequencies in f32 as HF computes them, angles per position and pair.
#include "kiln/ops/rope.h"

#include <cmath>

#include "kiln/core/error.h"

namespace kiln::ops {

std::vector<float> rope_inv_freq(const RopeSpec& rope, int64_t head_dim) {
  const int64_t rotary_dim = rope.rotary_dim > 0 ? rope.rotary_dim : head_dim;
  check(rotary_dim % 2 == 0 && rotary_dim <= head_dim,
        "rope: rotary dimension " + std::to_string(rotary_dim) + " must be even and at most " +
            "head_dim " + std::to_string(head_dim));
  check(rope.type == RopeType::kDefault,
        "rope: this RoPE scaling type is not implemented yet (only the default type is)");
  std::vector<float> inv_freq(rotary_dim / 2);  // [rotary_dim / 2]
  for (int64_t k = 0; k < rotary_dim / 2; ++k) {
    const float exponent = static_cast<float>(2 * k) / static_cast<float>(rotary_dim);
    inv_freq[k] = static_cast<float>(1.0 / std::pow(rope.theta, static_cast<double>(exponent)));
  }
  return inv_freq;
}

void apply_rope(float* x, const int64_t* positions, int64_t tokens, int64_t heads, int64_t head_dim,
                int64_t rotary_dim, const float* inv_freq, bool interleaved) {
  const int64_t pairs = rotary_dim / 2;
  std::vector<float> cos_table(pairs), sin_table(pairs);  // [pairs]
  for (int64_t t = 0; t < tokens; ++t) {
    const float position = static_cast<float>(positions[t]);
    for (int64_t k = 0; k < pairs; ++k) {
      const float angle = position * inv_freq[k];
      cos_table[k] = std::cos(angle);
      sin_table[k] = std::sin(angle);
    }
    for (int64_t h = 0; h < heads; ++h) {
      float* head = x + (t * heads + h) * head_dim;  // [head_dim]
      for (int64_t k = 0; k < pairs; ++k) {
        const int64_t i0 = interleaved ? 2 * k : k;
        const int64_t i1 = interleaved ? 2 * k + 1 : k + pairs;
        const float a = head[i0], b = head[i1];
        head[i0] = a * cos_table[k] - b * sin_table[k];
        head[i1] = b * cos_table[k] + a * sin_table[k];
      }
    }
  }
}

}  // namespace kiln::ops
