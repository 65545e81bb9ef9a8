// The attention front (checks, then the active kernel set) and its reference kernel:
// scores, softmax and the weighted sum per (row, head, query).
#include "kiln/ops/attention.h"

#include <algorithm>
#include <cmath>

#include "kiln/core/error.h"
#include "kiln/models/capabilities.h"
#include "kiln/ops/cpu/scratch.h"
#include "kiln/ops/kernels.h"
#include "kiln/ops/softmax.h"

namespace kiln::ops {

// What causal_attention computes (`kiln analyze` reports these supported).
KILN_CAPABILITY("attention.sliding_window", "yes");
KILN_CAPABILITY("attention.softcap", "yes");
KILN_CAPABILITY("attention.sinks", "yes");
KILN_CAPABILITY("attention.chunked", "yes");

namespace {
void check_shape(const AttentionShape& s) {
  check(s.kv_heads > 0 && s.heads % s.kv_heads == 0,
        "attention: query heads must be a multiple of KV heads");
  check(s.start + s.tokens <= s.cache_len && s.cache_len <= s.cache_max,
        "attention: queries reach past the filled cache");
  check(s.window >= 0 && s.chunk >= 0, "attention: window and chunk must not be negative");
}
}  // namespace

void causal_attention(const float* q, const float* k_cache, const float* v_cache, float* out,
                      const AttentionShape& s) {
  check_shape(s);
  active_kernels().attention(q, k_cache, v_cache, out, s);
}

void causal_attention_reference(const float* q, const float* k_cache, const float* v_cache,
                                float* out, const AttentionShape& s) {
  check_shape(s);
  const int64_t group = s.heads / s.kv_heads;
  // Threads pay off only when there are enough scores to amortize waking them.
  const bool parallel =
      s.batch * s.tokens * s.heads * s.cache_len * s.head_dim >= (int64_t{1} << 18);
#pragma omp parallel if (parallel)
  {
    auto* scores = static_cast<float*>(cpu::thread_scratch(
        cpu::ScratchSlot::kAttentionScores, sizeof(float) * (s.cache_len + 1)));  // [S + 1]
#pragma omp for collapse(3) schedule(static)
    for (int64_t b = 0; b < s.batch; ++b) {
      for (int64_t t = 0; t < s.tokens; ++t) {
        for (int64_t h = 0; h < s.heads; ++h) {
          const int64_t position = s.start + t;
          const int64_t first = first_visible_key(s, position);
          const int64_t count = position + 1 - first;
          const int64_t kv_head = h / group;
          const float* query = q + ((b * s.tokens + t) * s.heads + h) * s.head_dim;  // [D]
          for (int64_t j = 0; j < count; ++j) {
            const float* key =
                k_cache + ((b * s.cache_max + first + j) * s.kv_heads + kv_head) * s.head_dim;
            float dot = 0.0f;
            for (int64_t d = 0; d < s.head_dim; ++d) dot += query[d] * key[d];
            float score = dot * s.scale;
            if (s.softcap > 0.0f) score = s.softcap * std::tanh(score / s.softcap);
            scores[j] = score;
          }
          // A sink is one more logit in the softmax, dropped afterwards (its value is zero).
          if (s.sinks) scores[count] = s.sinks[h];
          softmax(scores, scores, 1, s.sinks ? count + 1 : count);
          float* o = out + ((b * s.tokens + t) * s.heads + h) * s.value_dim;  // [Dv]
          std::fill(o, o + s.value_dim, 0.0f);
          for (int64_t j = 0; j < count; ++j) {
            const float* value =
                v_cache + ((b * s.cache_max + first + j) * s.kv_heads + kv_head) * s.value_dim;
            for (int64_t d = 0; d < s.value_dim; ++d) o[d] += scores[j] * value[d];
          }
        }
      }
    }
  }
}

}  // namespace kiln::ops
