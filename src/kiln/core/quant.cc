#include "kiln/core/quant.h"

#include <cmath>
#include <cstddef>
#include <cstring>
#include <string>

#include "kiln/core/error.h"
#include "kiln/core/kquant.h"

namespace kiln {
namespace {

// Rounds of least-squares refinement after the min/max start (below).
constexpr int kRefinements = 3;

// Q8_0: q = round(x / d) from d = max|x| / 127, then up to kRefinements rounds of the
// least-squares scale for those q (d = Σ x q / Σ q q, rounded to f16) and requantizing,
// keeping the candidate with the smallest squared error.
void quantize_q8_0(const float* x, BlockQ8_0& b) {
  float amax = 0.0f;
  for (int i = 0; i < 32; ++i) amax = std::fmax(amax, std::fabs(x[i]));
  uint16_t d_bits = f32_to_f16(amax / 127.0f);
  int8_t q[32];
  double best_error = -1.0;
  for (int round = 0; round <= kRefinements; ++round) {
    const float d = f16_to_f32(d_bits);
    const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
    double error = 0.0, xq = 0.0, qq = 0.0;
    for (int i = 0; i < 32; ++i) {
      const float level = std::fmax(-127.0f, std::fmin(127.0f, std::nearbyint(x[i] * inverse)));
      q[i] = static_cast<int8_t>(level);
      const double e = x[i] - d * level;
      error += e * e;
      xq += static_cast<double>(x[i]) * level;
      qq += static_cast<double>(level) * level;
    }
    if (best_error < 0.0 || error < best_error) {
      best_error = error;
      b.d = d_bits;
      std::memcpy(b.q, q, sizeof(q));
    }
    if (qq == 0.0) break;
    const uint16_t next = f32_to_f16(static_cast<float>(xq / qq));
    if (next == d_bits) break;
    d_bits = next;
  }
}

// One Q4_1-style group of n = 32 or 128 values: d, m, then n / 32 nibble sets of 16 bytes.
// Starts from m = min(x), d = (max(x) - m) / 15, then up to kRefinements rounds of the
// least-squares d and m for the current levels (a line fit of x on q, rounded to f16) and
// requantizing, keeping the candidate with the smallest squared error.
void quantize_q4_1(const float* x, int n, uint16_t& d_bits, uint16_t& m_bits, uint8_t* qs) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; ++i) {
    lo = std::fmin(lo, x[i]);
    hi = std::fmax(hi, x[i]);
  }
  uint16_t m_try = f32_to_f16(lo);
  uint16_t d_try = f32_to_f16((hi - f16_to_f32(m_try)) / 15.0f);
  uint8_t levels[128], best[128];
  double best_error = -1.0;
  for (int round = 0; round <= kRefinements; ++round) {
    const float d = f16_to_f32(d_try), m = f16_to_f32(m_try);
    const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
    double error = 0.0, sq = 0.0, sx = 0.0, sqq = 0.0, sqx = 0.0;
    for (int i = 0; i < n; ++i) {
      const float level = std::fmax(0.0f, std::fmin(15.0f, std::nearbyint((x[i] - m) * inverse)));
      levels[i] = static_cast<uint8_t>(level);
      const double e = x[i] - (d * level + m);
      error += e * e;
      sq += level;
      sx += x[i];
      sqq += static_cast<double>(level) * level;
      sqx += static_cast<double>(level) * x[i];
    }
    if (best_error < 0.0 || error < best_error) {
      best_error = error;
      d_bits = d_try;
      m_bits = m_try;
      std::memcpy(best, levels, static_cast<size_t>(n));
    }
    const double variance = n * sqq - sq * sq;
    if (variance <= 0.0) break;
    const double fit_d = (n * sqx - sq * sx) / variance;
    const double fit_m = (sx - fit_d * sq) / n;
    if (fit_d <= 0.0) break;
    const uint16_t next_d = f32_to_f16(static_cast<float>(fit_d));
    const uint16_t next_m = f32_to_f16(static_cast<float>(fit_m));
    if (next_d == d_try && next_m == m_try) break;
    d_try = next_d;
    m_try = next_m;
  }
  for (int s = 0; s < n / 32; ++s)
    for (int j = 0; j < 16; ++j)
      qs[16 * s + j] = static_cast<uint8_t>(best[32 * s + j] | best[32 * s + j + 16] << 4);
}

void dequantize_q4_1(uint16_t d_bits, uint16_t m_bits, const uint8_t* qs, int n, float* y) {
  const float d = f16_to_f32(d_bits), m = f16_to_f32(m_bits);
  for (int s = 0; s < n / 32; ++s)
    for (int j = 0; j < 16; ++j) {
      y[32 * s + j] = d * static_cast<float>(qs[16 * s + j] & 15) + m;
      y[32 * s + j + 16] = d * static_cast<float>(qs[16 * s + j] >> 4) + m;
    }
}

void check_blocks(DType dtype, int64_t count, const char* what) {
  check(is_quantized(dtype),
        std::string(what) + ": " + std::string(dtype_name(dtype)) + " is not a quantized dtype");
  dtype_nbytes(dtype, count);  // throws for partial blocks
}

}  // namespace

void quantize_row(DType dtype, const float* x, void* dst, int64_t count) {
  check_blocks(dtype, count, "quantize");
  check(dtype == DType::Q8_0 || dtype == DType::Q4_1 || dtype == DType::Q4_1_128,
        "quantize: Kiln does not quantize into " + std::string(dtype_name(dtype)) +
            " (Q4_0 and K-quant weights are read from GGUF files)");
  const int64_t blocks = count / dtype_block(dtype);
  for (int64_t b = 0; b < blocks; ++b) {
    if (dtype == DType::Q8_0) {
      quantize_q8_0(x + 32 * b, static_cast<BlockQ8_0*>(dst)[b]);
    } else if (dtype == DType::Q4_1) {
      BlockQ4_1& block = static_cast<BlockQ4_1*>(dst)[b];
      quantize_q4_1(x + 32 * b, 32, block.d, block.m, block.qs);
    } else {
      BlockQ4_1_128& block = static_cast<BlockQ4_1_128*>(dst)[b];
      quantize_q4_1(x + 128 * b, 128, block.d, block.m, block.qs);
    }
  }
}

void dequantize_row(DType dtype, const void* src, float* y, int64_t count) {
  check_blocks(dtype, count, "dequantize");
  const int64_t blocks = count / dtype_block(dtype);
  if (dtype == DType::Q4_K || dtype == DType::Q5_K || dtype == DType::Q6_K) {
    // (copies: rows of a mapped file need not be aligned for the block structs)
    const auto* bytes = static_cast<const std::byte*>(src);
    const size_t size = dtype_block_bytes(dtype);
    for (int64_t b = 0; b < blocks; ++b) {
      const std::byte* block = bytes + b * size;
      if (dtype == DType::Q4_K) {
        BlockQ4_K k;
        std::memcpy(&k, block, sizeof(k));
        dequantize_q4_k(k, y + 256 * b);
      } else if (dtype == DType::Q5_K) {
        BlockQ5_K k;
        std::memcpy(&k, block, sizeof(k));
        dequantize_q5_k(k, y + 256 * b);
      } else {
        BlockQ6_K k;
        std::memcpy(&k, block, sizeof(k));
        dequantize_q6_k(k, y + 256 * b);
      }
    }
    return;
  }
  if (dtype == DType::Q4_0) {
    // (copies: `src` may start at any byte, and 18-byte blocks are not 4-byte aligned)
    const auto* bytes = static_cast<const std::byte*>(src);
    for (int64_t b = 0; b < blocks; ++b) {
      BlockQ4_0 block;
      std::memcpy(&block, bytes + b * sizeof(BlockQ4_0), sizeof(block));
      const float d = f16_to_f32(block.d);
      for (int j = 0; j < 16; ++j) {
        // as ggml: the level minus 8 as an integer, then times d (d * 0 is +0 for d >= 0)
        y[32 * b + j] = static_cast<float>((block.qs[j] & 15) - 8) * d;
        y[32 * b + j + 16] = static_cast<float>((block.qs[j] >> 4) - 8) * d;
      }
    }
    return;
  }
  for (int64_t b = 0; b < blocks; ++b) {
    if (dtype == DType::Q8_0) {
      const BlockQ8_0& block = static_cast<const BlockQ8_0*>(src)[b];
      const float d = f16_to_f32(block.d);
      for (int i = 0; i < 32; ++i) y[32 * b + i] = d * static_cast<float>(block.q[i]);
    } else if (dtype == DType::Q4_1) {
      const BlockQ4_1& block = static_cast<const BlockQ4_1*>(src)[b];
      dequantize_q4_1(block.d, block.m, block.qs, 32, y + 32 * b);
    } else {
      const BlockQ4_1_128& block = static_cast<const BlockQ4_1_128*>(src)[b];
      dequantize_q4_1(block.d, block.m, block.qs, 128, y + 128 * b);
    }
  }
}

void quantize_activations(const float* x, int64_t count, int8_t* q, float* d, float* sum) {
  for (int64_t b = 0; b < count / 32; ++b) {
    const float* xb = x + 32 * b;
    float amax = 0.0f;
    for (int i = 0; i < 32; ++i) amax = std::fmax(amax, std::fabs(xb[i]));
    const float scale = amax / 127.0f;
    const float inverse = scale != 0.0f ? 1.0f / scale : 0.0f;
    int total = 0;
    for (int i = 0; i < 32; ++i) {
      const int v = static_cast<int>(std::nearbyint(xb[i] * inverse));
      q[32 * b + i] = static_cast<int8_t>(v);
      total += v;
    }
    d[b] = scale;
    sum[b] = scale * static_cast<float>(total);
  }
}

void round_activations(float* x, int64_t count) {
  int8_t q[32];
  float d, sum;
  for (int64_t b = 0; b < count / 32; ++b) {
    quantize_activations(x + 32 * b, 32, q, &d, &sum);
    for (int i = 0; i < 32; ++i) x[32 * b + i] = d * static_cast<float>(q[i]);
  }
}

}  // namespace kiln
