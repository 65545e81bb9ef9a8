// Reference RoPE: the angle of each (position, pair) in f32, as HF computes it.
#include "kiln/ops/rope.h"

#include <cmath>
#include <vector>

#include "kiln/models/capabilities.h"

namespace kiln::ops {

// What apply_rope computes (`kiln analyze` reports these supported).
KILN_CAPABILITY("embedding.positions", "rope");
KILN_CAPABILITY("rope.fraction", "full");
KILN_CAPABILITY("rope.fraction", "partial");
KILN_CAPABILITY("rope.pairing", "half_split");
KILN_CAPABILITY("rope.pairing", "interleaved");

void apply_rope(float* x, const int64_t* positions, int64_t tokens, int64_t heads, int64_t head_dim,
                int64_t rotary_dim, const float* inv_freq, float attention_scaling,
                bool interleaved) {
  const int64_t pairs = rotary_dim / 2;
  std::vector<float> cos_table(pairs), sin_table(pairs);  // [pairs]
  for (int64_t t = 0; t < tokens; ++t) {
    const float position = static_cast<float>(positions[t]);
    for (int64_t k = 0; k < pairs; ++k) {
      const float angle = position * inv_freq[k];
      cos_table[k] = std::cos(angle) * attention_scaling;
      sin_table[k] = std::sin(angle) * attention_scaling;
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
