// Reference RoPE: the angle of each (position, pair) in f32, as HF computes it.
#include "kiln/ops/rope.h"

#include <cmath>

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
  for (int64_t t = 0; t < tokens; ++t) {
    const float position = static_cast<float>(positions[t]);
    float* token = x + t * heads * head_dim;  // [heads, head_dim]
    for (int64_t k = 0; k < pairs; ++k) {
      const float angle = position * inv_freq[k];
      const float cos_k = std::cos(angle) * attention_scaling;
      const float sin_k = std::sin(angle) * attention_scaling;
      const int64_t i0 = interleaved ? 2 * k : k;
      const int64_t i1 = interleaved ? 2 * k + 1 : k + pairs;
      for (int64_t h = 0; h < heads; ++h) {
        float* head = token + h * head_dim;  // [head_dim]
        const float a = head[i0], b = head[i1];
        head[i0] = a * cos_k - b * sin_k;
        head[i1] = b * cos_k + a * sin_k;
      }
    }
  }
}

}  // namespace kiln::ops
