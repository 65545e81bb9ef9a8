// Reference absorbed multi-head latent attention. The up-projection is read one row at a
// time, converted to f32 on the fly, whatever its stored dtype.
#include "kiln/ops/latent_attention.h"

#include <algorithm>

#include "kiln/core/error.h"
#include "kiln/core/tensor.h"
#include "kiln/ops/cpu/scratch.h"
#include "kiln/ops/softmax.h"

namespace kiln::ops {

namespace {
// Per-thread room for one weight row.   [latent_dim]
float* weight_row_buffer(const KvUpProjection& w) {
  return static_cast<float*>(
      cpu::thread_scratch(cpu::ScratchSlot::kWeightRow, sizeof(float) * w.latent_dim));
}

// Row `row` of the up-projection as f32.   out: [latent_dim]
void weight_row(const KvUpProjection& w, int64_t row, float* out) {
  const auto* bytes = static_cast<const std::byte*>(w.weight);
  convert_to_f32(bytes + row * w.latent_dim * dtype_size(w.dtype), w.dtype, out,
                 static_cast<size_t>(w.latent_dim));
}
}  // namespace

void absorb_query(const float* q_nope, const KvUpProjection& w, float* q_latent, int64_t rows) {
  const int64_t R = w.latent_dim, per_head = w.nope + w.value_dim;
  std::fill(q_latent, q_latent + rows * w.heads * R, 0.0f);
#pragma omp parallel
  {
    float* row = weight_row_buffer(w);  // [R]
#pragma omp for schedule(static)
    for (int64_t h = 0; h < w.heads; ++h) {
      for (int64_t i = 0; i < w.nope; ++i) {
        weight_row(w, h * per_head + i, row);
        for (int64_t r = 0; r < rows; ++r) {
          const float q = q_nope[(r * w.heads + h) * w.nope + i];
          float* out = q_latent + (r * w.heads + h) * R;  // [R]
          for (int64_t c = 0; c < R; ++c) out[c] += q * row[c];
        }
      }
    }
  }
}

void expand_values(const float* attended, const KvUpProjection& w, float* out, int64_t rows) {
  const int64_t R = w.latent_dim, per_head = w.nope + w.value_dim;
#pragma omp parallel
  {
    float* row = weight_row_buffer(w);  // [R]
#pragma omp for schedule(static)
    for (int64_t h = 0; h < w.heads; ++h) {
      for (int64_t j = 0; j < w.value_dim; ++j) {
        weight_row(w, h * per_head + w.nope + j, row);
        for (int64_t r = 0; r < rows; ++r) {
          const float* a = attended + (r * w.heads + h) * R;  // [R]
          float dot = 0.0f;
          for (int64_t c = 0; c < R; ++c) dot += row[c] * a[c];
          out[(r * w.heads + h) * w.value_dim + j] = dot;
        }
      }
    }
  }
}

void latent_attention(const float* q_latent, const float* q_rope, const float* latent,
                      const float* rotary_keys, float* attended, const LatentAttentionShape& s) {
  check(s.start + s.tokens <= s.cache_len && s.cache_len <= s.cache_max,
        "latent attention: queries reach past the filled cache");
  const int64_t R = s.latent_dim, P = s.rope_dim;
#pragma omp parallel
  {
    auto* scores = static_cast<float*>(cpu::thread_scratch(cpu::ScratchSlot::kAttentionScores,
                                                           sizeof(float) * s.cache_len));  // [S]
#pragma omp for collapse(3) schedule(static)
    for (int64_t b = 0; b < s.batch; ++b) {
      for (int64_t t = 0; t < s.tokens; ++t) {
        for (int64_t h = 0; h < s.heads; ++h) {
          const int64_t count = s.start + t + 1;
          const int64_t query = (b * s.tokens + t) * s.heads + h;
          const float* ql = q_latent + query * R;  // [R]
          const float* qr = q_rope + query * P;    // [P]
          for (int64_t j = 0; j < count; ++j) {
            const float* c = latent + (b * s.cache_max + j) * R;       // [R]
            const float* k = rotary_keys + (b * s.cache_max + j) * P;  // [P]
            float dot = 0.0f;
            for (int64_t d = 0; d < R; ++d) dot += ql[d] * c[d];
            for (int64_t d = 0; d < P; ++d) dot += qr[d] * k[d];
            scores[j] = dot * s.scale;
          }
          softmax(scores, scores, 1, count);
          float* o = attended + query * R;  // [R]
          std::fill(o, o + R, 0.0f);
          for (int64_t j = 0; j < count; ++j) {
            const float* c = latent + (b * s.cache_max + j) * R;  // [R]
            for (int64_t d = 0; d < R; ++d) o[d] += scores[j] * c[d];
          }
        }
      }
    }
  }
}

}  // namespace kiln::ops
