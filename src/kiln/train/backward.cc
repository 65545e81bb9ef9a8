// Backward kernels (see backward.h): the reference kernels first, then the fast ones. Sums
// that span a row accumulate in double unless said otherwise.
#include "kiln/train/backward.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "kiln/core/dtype.h"
#include "kiln/core/error.h"
#include "kiln/ops/activation.h"
#include "kiln/ops/attention.h"
#include "kiln/ops/gemm_bf16.h"
#include "kiln/ops/linear.h"
#include "kiln/ops/rope.h"
#include "kiln/ops/softmax.h"

// OpenBLAS's thread count (not in every cblas.h).
extern "C" void openblas_set_num_threads(int num_threads);
extern "C" int openblas_get_num_threads(void);

namespace kiln::train {

namespace {
std::atomic<DType> matmul_dtype{DType::F32};
}  // namespace

void set_compute_dtype(DType dtype) {
  check(dtype == DType::F32 || dtype == DType::BF16,
        "training compute dtype must be f32 or bf16, not " + std::string(dtype_name(dtype)));
  matmul_dtype.store(dtype);
}

DType compute_dtype() {
  return matmul_dtype.load();
}

// y's rows set to the bias (zeros without one): the start of a product added into y.
static void fill_rows_with_bias(const float* bias, float* y, int64_t rows, int64_t out) {
  for (int64_t n = 0; n < rows; ++n) {
    float* y_row = y + n * out;  // [out]
    if (bias)
      std::copy(bias, bias + out, y_row);
    else
      std::fill(y_row, y_row + out, 0.0f);
  }
}

void linear_forward(const float* x, const float* weight, const float* bias, float* y, int64_t rows,
                    int64_t in, int64_t out) {
  if (compute_dtype() == DType::BF16) {
    // Without a bias the product overwrites y (no pass that zeroes it first).
    if (bias) fill_rows_with_bias(bias, y, rows, out);
    return ops::gemm_bf16(x, false, weight, false, y, rows, in, out, bias != nullptr);
  }
  if (rows <= ops::kGemvMaxRows)  // the GEMV
    return ops::linear(x, weight, DType::F32, bias, y, rows, in, out);
  // ops::gemm_f32 added to the bias: bitwise what ops::linear's GEMM computes (b + first depth
  // pass, then the later passes), with one synchronization of the threads per call.
  fill_rows_with_bias(bias, y, rows, out);
  ops::gemm_f32(x, false, weight, false, y, rows, in, out, true);
}

void linear_backward_reference(const float* x, const float* weight, const float* dy, float* dx,
                               float* dw, float* db, int64_t rows, int64_t in, int64_t out) {
  if (dx) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < rows; ++n) {
      const float* g = dy + n * out;  // [out]
      float* d = dx + n * in;         // [in]
      for (int64_t o = 0; o < out; ++o) {
        const float go = g[o];
        const float* w = weight + o * in;  // [in]
        for (int64_t i = 0; i < in; ++i) d[i] += go * w[i];
      }
    }
  }
  if (dw) {
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < out; ++o) {
      float* d = dw + o * in;  // [in]
      for (int64_t n = 0; n < rows; ++n) {
        const float go = dy[n * out + o];
        const float* xr = x + n * in;  // [in]
        for (int64_t i = 0; i < in; ++i) d[i] += go * xr[i];
      }
    }
  }
  if (db) {
    for (int64_t o = 0; o < out; ++o) {
      double sum = 0.0;
      for (int64_t n = 0; n < rows; ++n) sum += dy[n * out + o];
      db[o] += static_cast<float>(sum);
    }
  }
}

void embedding_backward(const int32_t* tokens, const float* dy, float* dtable, int64_t n,
                        int64_t vocab, int64_t dim, float scale) {
  for (int64_t r = 0; r < n; ++r) {
    check(tokens[r] >= 0 && tokens[r] < vocab, "embedding_backward: token id out of range");
    float* d = dtable + static_cast<int64_t>(tokens[r]) * dim;  // [dim]
    const float* g = dy + r * dim;                              // [dim]
    for (int64_t i = 0; i < dim; ++i) d[i] += g[i] * scale;
  }
}

void rms_norm_backward(const float* x, const float* weight, const float* inv_rms, const float* dy,
                       float* dx, float* dweight, int64_t rows, int64_t dim, bool one_plus) {
  if (dx) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * dim;   // [dim]
      const float* gr = dy + r * dim;  // [dim]
      float* dr = dx + r * dim;        // [dim]
      const double inv = inv_rms[r];
      double dot = 0.0;  // sum_i g_i x_i, g = dy * w
      for (int64_t i = 0; i < dim; ++i) {
        const double w = one_plus ? 1.0 + weight[i] : weight[i];
        dot += gr[i] * w * xr[i];
      }
      const double c = inv * inv * dot / static_cast<double>(dim);
      for (int64_t i = 0; i < dim; ++i) {
        const double w = one_plus ? 1.0 + weight[i] : weight[i];
        dr[i] += static_cast<float>(inv * (gr[i] * w - xr[i] * c));
      }
    }
  }
  if (dweight) {
    // Columns in fixed blocks, each summed over the rows in order (thread-count invariant).
    constexpr int64_t kColumns = 64;
    const int64_t blocks = (dim + kColumns - 1) / kColumns;
#pragma omp parallel for schedule(static) if (rows * dim >= (int64_t{1} << 16))
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t i0 = blk * kColumns, i1 = std::min(dim, i0 + kColumns);
      double sum[kColumns] = {};
      for (int64_t r = 0; r < rows; ++r) {
        const double inv = inv_rms[r];
        const float* xr = x + r * dim;
        const float* gr = dy + r * dim;
        for (int64_t i = i0; i < i1; ++i) sum[i - i0] += static_cast<double>(gr[i]) * xr[i] * inv;
      }
      for (int64_t i = i0; i < i1; ++i) dweight[i] += static_cast<float>(sum[i - i0]);
    }
  }
}

void rope_backward(float* d, const int64_t* positions, int64_t tokens, int64_t heads,
                   int64_t head_dim, int64_t rotary_dim, const float* inv_freq,
                   float attention_scaling, bool interleaved) {
  // The transpose of a rotation by angle p * f (scaled) is the rotation by -p * f (scaled):
  // the forward kernel at negated positions (cos is even and sin odd, also in f32).
  std::vector<int64_t> negated(positions, positions + tokens);
  for (int64_t& p : negated) p = -p;
  ops::apply_rope(d, negated.data(), tokens, heads, head_dim, rotary_dim, inv_freq,
                  attention_scaling, interleaved);
}

namespace {
ops::AttentionShape attention_shape(const AttentionDims& s) {
  ops::AttentionShape shape;
  shape.batch = s.batch;
  shape.tokens = s.tokens;
  shape.start = 0;
  shape.cache_len = s.tokens;
  shape.cache_max = s.tokens;
  shape.heads = s.heads;
  shape.kv_heads = s.kv_heads;
  shape.head_dim = s.head_dim;
  shape.value_dim = s.head_dim;
  shape.scale = s.scale;
  shape.window = s.window;
  return shape;
}
}  // namespace

void attention_forward(const float* q, const float* k, const float* v, float* out,
                       const AttentionDims& dims, float cap) {
  ops::AttentionShape shape = attention_shape(dims);
  shape.softcap = cap;
  ops::causal_attention(q, k, v, out, shape);
}

void attention_backward_reference(const float* q, const float* k, const float* v, const float* dout,
                                  float* dq, float* dk, float* dv, const AttentionDims& s,
                                  float cap) {
  check(s.heads > 0 && s.kv_heads > 0 && s.heads % s.kv_heads == 0,
        "attention_backward: query heads must be a multiple of KV heads");
  const int64_t T = s.tokens, D = s.head_dim, group = s.heads / s.kv_heads;
  ops::AttentionShape shape = attention_shape(s);
  shape.softcap = cap;
#pragma omp parallel
  {
    // One query's capped logits, probabilities and probability gradients over its keys.
    std::vector<float> c(T), p(T), dp(T);
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.batch; ++b) {
      for (int64_t kv = 0; kv < s.kv_heads; ++kv) {
        for (int64_t h = kv * group; h < (kv + 1) * group; ++h) {
          for (int64_t t = 0; t < T; ++t) {
            const int64_t first = ops::first_visible_key(shape, t), count = t + 1 - first;
            const float* query = q + ((b * T + t) * s.heads + h) * D;  // [D]
            const float* g = dout + ((b * T + t) * s.heads + h) * D;   // [D]
            auto key = [&](int64_t j) { return k + ((b * T + j) * s.kv_heads + kv) * D; };
            auto value = [&](int64_t j) { return v + ((b * T + j) * s.kv_heads + kv) * D; };
            float max_logit = -INFINITY;
            for (int64_t j = 0; j < count; ++j) {
              const float* kj = key(first + j);
              float dot = 0.0f;
              for (int64_t d = 0; d < D; ++d) dot += query[d] * kj[d];
              c[j] = dot * s.scale;
              if (cap > 0.0f) c[j] = std::tanh(c[j] / cap) * cap;
              max_logit = std::max(max_logit, c[j]);
            }
            double sum = 0.0;
            for (int64_t j = 0; j < count; ++j) {
              p[j] = std::exp(c[j] - max_logit);
              sum += p[j];
            }
            double weighted = 0.0;  // sum_j p_j dp_j
            for (int64_t j = 0; j < count; ++j) {
              p[j] = static_cast<float>(p[j] / sum);
              const float* vj = value(first + j);
              float dot = 0.0f;
              for (int64_t d = 0; d < D; ++d) dot += g[d] * vj[d];
              dp[j] = dot;
              weighted += static_cast<double>(p[j]) * dot;
            }
            float* dqh = dq ? dq + ((b * T + t) * s.heads + h) * D : nullptr;  // [D]
            for (int64_t j = 0; j < count; ++j) {
              const int64_t pos = first + j;
              if (dv) {
                float* dvj = dv + ((b * T + pos) * s.kv_heads + kv) * D;
                for (int64_t d = 0; d < D; ++d) dvj[d] += p[j] * g[d];
              }
              float ds = static_cast<float>(p[j] * (dp[j] - weighted));
              if (cap > 0.0f) {
                const float th = c[j] / cap;
                ds *= 1.0f - th * th;
              }
              ds *= s.scale;
              if (dqh) {
                const float* kj = key(pos);
                for (int64_t d = 0; d < D; ++d) dqh[d] += ds * kj[d];
              }
              if (dk) {
                float* dkj = dk + ((b * T + pos) * s.kv_heads + kv) * D;
                for (int64_t d = 0; d < D; ++d) dkj[d] += ds * query[d];
              }
            }
          }
        }
      }
    }
  }
}

// ---- Fast kernels ----

namespace {

// Grow-only f32 buffers of the calling thread, one per use, so that a training step allocates
// only while shapes grow (its first step).
enum class Scratch { kScores, kScoreGrads, kCount };
float* scratch(Scratch slot, int64_t n) {
  thread_local std::vector<float> buffers[static_cast<int>(Scratch::kCount)];
  std::vector<float>& b = buffers[static_cast<int>(slot)];
  if (static_cast<int64_t>(b.size()) < n) b.resize(n);
  return b.data();
}

// Single-threaded OpenBLAS for the calls made inside this file's parallel regions; restores
// the caller's setting when it goes out of scope.
class OneBlasThread {
 public:
  OneBlasThread() : saved_(openblas_get_num_threads()) { openblas_set_num_threads(1); }
  ~OneBlasThread() { openblas_set_num_threads(saved_); }
  OneBlasThread(const OneBlasThread&) = delete;
  OneBlasThread& operator=(const OneBlasThread&) = delete;

 private:
  int saved_;
};

}  // namespace

void linear_backward(const float* x, const float* weight, const float* dy, float* dx, float* dw,
                     float* db, int64_t rows, int64_t in, int64_t out) {
  // Both products on ops::gemm_f32 (the active kernel set's packed GEMM), which sums every
  // output element in an order fixed by the shapes, reads W, x and dy in place (any of them
  // transposed) and adds into dx and dw.
  using Gemm =
      void (*)(const float*, bool, const float*, bool, float*, int64_t, int64_t, int64_t, bool);
  const Gemm gemm = compute_dtype() == DType::BF16 ? Gemm{&ops::gemm_bf16} : Gemm{&ops::gemm_f32};
  if (dx)  // dx[n, i] += sum_o dy[n, o] W[o, i]: W read as [depth = out, in]
    gemm(dy, false, weight, true, dx, rows, out, in, true);
  if (dw)  // dw[o, i] += sum_n dy[n, o] x[n, i]: dy as [depth = rows, out], x as [rows, in]
    gemm(dy, true, x, true, dw, out, rows, in, true);
  if (db) {
    std::vector<double> sum(out, 0.0);  // rows in order, for every thread count
    for (int64_t n = 0; n < rows; ++n)
      for (int64_t o = 0; o < out; ++o) sum[o] += dy[n * out + o];
    for (int64_t o = 0; o < out; ++o) db[o] += static_cast<float>(sum[o]);
  }
}

namespace {
constexpr int64_t kAttentionBlock = 64;  // queries per block of the training attention

// The visible key columns [begin[i], end[i]) of the queries t0 .. t0 + m - 1, relative to k0.
void visible_columns(const ops::AttentionShape& shape, int64_t t0, int64_t m, int64_t k0,
                     int64_t* begin, int64_t* end) {
  for (int64_t i = 0; i < m; ++i) {
    begin[i] = ops::first_visible_key(shape, t0 + i) - k0;
    end[i] = t0 + i + 1 - k0;
  }
}
}  // namespace

void attention_forward_train(const float* q, const float* k, const float* v, float* out,
                             float* stats, const AttentionDims& s) {
  check(s.heads > 0 && s.kv_heads > 0 && s.heads % s.kv_heads == 0,
        "attention_forward: query heads must be a multiple of KV heads");
  const int64_t T = s.tokens, D = s.head_dim, group = s.heads / s.kv_heads;
  const int64_t q_stride = s.heads * D, kv_stride = s.kv_heads * D;  // between tokens
  const ops::AttentionShape shape = attention_shape(s);
  const int64_t blocks = (T + kAttentionBlock - 1) / kAttentionBlock;
  const int64_t items = s.batch * s.heads * blocks;
  const int kD = static_cast<int>(D), kQs = static_cast<int>(q_stride),
            kKvs = static_cast<int>(kv_stride);
  const OneBlasThread one_thread;
  // One (row, query head, block of queries) per work item, the longest blocks first; each
  // output element is summed by one thread, the same way for any thread count.
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t block = blocks - 1 - item % blocks, h = (item / blocks) % s.heads;
    const int64_t b = item / blocks / s.heads, kv = h / group;
    const int64_t t0 = block * kAttentionBlock, m = std::min(kAttentionBlock, T - t0);
    const int64_t k0 = ops::first_visible_key(shape, t0), n = t0 + m - k0;
    float* scores = scratch(Scratch::kScores, kAttentionBlock * T);  // [m, n]
    int64_t begin[kAttentionBlock], end[kAttentionBlock];
    float block_stats[2 * kAttentionBlock];
    visible_columns(shape, t0, m, k0, begin, end);
    const float* qh = q + (b * T + t0) * q_stride + h * D;    // [m, D] at stride q_stride
    const float* kh = k + (b * T + k0) * kv_stride + kv * D;  // [n, D] at stride kv_stride
    const float* vh = v + (b * T + k0) * kv_stride + kv * D;
    const int im = static_cast<int>(m), in = static_cast<int>(n);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, im, in, kD, s.scale, qh, kQs, kh, kKvs,
                0.0f, scores, in);
    ops::attention_probs(scores, m, n, begin, end, block_stats);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, im, kD, in, 1.0f, scores, in, vh, kKvs,
                0.0f, out + (b * T + t0) * q_stride + h * D, kQs);
    if (stats)
      for (int64_t i = 0; i < m; ++i)
        for (int64_t c = 0; c < 2; ++c)
          stats[((b * T + t0 + i) * s.heads + h) * 2 + c] = block_stats[2 * i + c];
  }
}

void attention_backward(const float* q, const float* k, const float* v, const float* dout,
                        float* dq, float* dk, float* dv, const AttentionDims& s,
                        const float* stats) {
  check(s.heads > 0 && s.kv_heads > 0 && s.heads % s.kv_heads == 0,
        "attention_backward: query heads must be a multiple of KV heads");
  const int64_t T = s.tokens, D = s.head_dim, group = s.heads / s.kv_heads;
  if (!stats) {  // the forward's statistics first
    std::vector<float> o(s.batch * T * s.heads * D), l(s.batch * T * s.heads * 2);
    attention_forward_train(q, k, v, o.data(), l.data(), s);
    return attention_backward(q, k, v, dout, dq, dk, dv, s, l.data());
  }
  const int64_t q_stride = s.heads * D, kv_stride = s.kv_heads * D;  // between tokens
  const ops::AttentionShape shape = attention_shape(s);
  const int kD = static_cast<int>(D), kQs = static_cast<int>(q_stride),
            kKvs = static_cast<int>(kv_stride);
  const OneBlasThread one_thread;
  // One (row, KV head) per work item: the item's gradients of K and V, and its query heads'
  // gradients of Q, are summed by one thread, the same way for any count (items are handed
  // out as threads come free).
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t kv = 0; kv < s.kv_heads; ++kv) {
      float* scores = scratch(Scratch::kScores, kAttentionBlock * T);     // [block, keys] p
      float* grads = scratch(Scratch::kScoreGrads, kAttentionBlock * T);  // [block, keys] dp, ds
      const float* kh = k + b * T * kv_stride + kv * D;  // [T, D] at stride kv_stride
      const float* vh = v + b * T * kv_stride + kv * D;
      float* dkh = dk ? dk + b * T * kv_stride + kv * D : nullptr;
      float* dvh = dv ? dv + b * T * kv_stride + kv * D : nullptr;
      for (int64_t h = kv * group; h < (kv + 1) * group; ++h) {
        for (int64_t t0 = 0; t0 < T; t0 += kAttentionBlock) {
          const int64_t m = std::min(kAttentionBlock, T - t0);
          // Keys any query of the block sees: [k0, t0 + m).
          const int64_t k0 = ops::first_visible_key(shape, t0), n = t0 + m - k0;
          const int im = static_cast<int>(m), in = static_cast<int>(n);
          const float* qh = q + (b * T + t0) * q_stride + h * D;  // [m, D] at stride q_stride
          const float* gh = dout + (b * T + t0) * q_stride + h * D;
          int64_t begin[kAttentionBlock], end[kAttentionBlock];
          float block_stats[2 * kAttentionBlock];
          visible_columns(shape, t0, m, k0, begin, end);
          for (int64_t i = 0; i < m; ++i)
            for (int64_t c = 0; c < 2; ++c)
              block_stats[2 * i + c] = stats[((b * T + t0 + i) * s.heads + h) * 2 + c];
          // scores = scale q k^T, dp = dout v^T: [m, n]
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, im, in, kD, s.scale, qh, kQs,
                      kh + k0 * kv_stride, kKvs, 0.0f, scores, in);
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, im, in, kD, 1.0f, gh, kQs,
                      vh + k0 * kv_stride, kKvs, 0.0f, grads, in);
          // p = e^(scores - max) / sum, ds = p (dp - sum_j p_j dp_j) scale
          ops::attention_probs_backward(scores, grads, m, n, begin, end, block_stats, s.scale);
          if (dq)  // dq += ds k
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, im, kD, in, 1.0f, grads, in,
                        kh + k0 * kv_stride, kKvs, 1.0f, dq + (b * T + t0) * q_stride + h * D, kQs);
          if (dkh)  // dk += ds^T q
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, in, kD, im, 1.0f, grads, in, qh,
                        kQs, 1.0f, dkh + k0 * kv_stride, kKvs);
          if (dvh)  // dv += p^T dout
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, in, kD, im, 1.0f, scores, in, gh,
                        kQs, 1.0f, dvh + k0 * kv_stride, kKvs);
        }
      }
    }
  }
}

void gated_forward(Activation activation, const float* gate, const float* up, float* h,
                   int64_t count) {
  ops::gated_activation(activation, gate, up, h, count);
}

void gated_backward(Activation activation, const float* gate, const float* up, const float* dh,
                    float* dgate, float* dup, int64_t count) {
  check(activation == Activation::kSilu || activation == Activation::kGeluTanh,
        std::string("gated_backward: activation '") + activation_name(activation) +
            "' has no backward yet (silu and gelu_tanh do)");
  if (activation == Activation::kSilu)  // the active kernel set's vector kernel
    return ops::silu_gated_backward(gate, up, dh, dgate, dup, count);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    const float x = gate[i];
    float act, derivative;
    if (activation == Activation::kSilu) {
      const float sig = 1.0f / (1.0f + std::exp(-x));
      act = x * sig;
      derivative = sig * (1.0f + x * (1.0f - sig));
    } else {  // 0.5 x (1 + tanh(c (x + 0.044715 x^3)))
      const float c = static_cast<float>(std::sqrt(2.0 / M_PI));
      const float th = std::tanh(c * (x + 0.044715f * x * x * x));
      act = 0.5f * x * (1.0f + th);
      derivative =
          0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * c * (1.0f + 3.0f * 0.044715f * x * x);
    }
    if (dgate) dgate[i] += dh[i] * up[i] * derivative;
    if (dup) dup[i] += dh[i] * act;
  }
}

void add_backward(const float* dy, float* da, float* db, int64_t count) {
  if (da)
    for (int64_t i = 0; i < count; ++i) da[i] += dy[i];
  if (db)
    for (int64_t i = 0; i < count; ++i) db[i] += dy[i];
}

std::vector<int32_t> next_token_targets(const int32_t* tokens, const uint8_t* loss_mask,
                                        int64_t batch, int64_t tokens_per_row) {
  const int64_t T = tokens_per_row;
  std::vector<int32_t> targets(batch * T, kIgnoreTarget);  // [B, T]
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t + 1 < T; ++t)
      if (!loss_mask || loss_mask[b * T + t + 1]) targets[b * T + t] = tokens[b * T + t + 1];
  return targets;
}

int64_t count_targets(const int32_t* targets, int64_t n) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) count += targets[i] != kIgnoreTarget;
  return count;
}

double cross_entropy_rows(const float* logits, const int32_t* targets, float* dlogits, int64_t rows,
                          int64_t vocab, double weight) {
  for (int64_t r = 0; r < rows; ++r)
    check(targets[r] == kIgnoreTarget || (targets[r] >= 0 && targets[r] < vocab),
          "cross_entropy: target id out of range");
  // Each row's loss on its own, summed in row order afterwards: the same total for any
  // number of threads.
  std::vector<double> row_loss(rows, 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* z = logits + r * vocab;                  // [vocab]
    float* dz = dlogits ? dlogits + r * vocab : nullptr;  // [vocab]
    const int32_t target = targets[r];
    if (target == kIgnoreTarget) {
      if (dz) std::fill(dz, dz + vocab, 0.0f);
      continue;
    }
    const float z_target = z[target];
    if (dz) {  // the softmax by the active kernel set's vector kernel, in place in dz
      if (dz != z) std::copy(z, z + vocab, dz);
      const int64_t begin = 0, end = vocab;
      float stats[2];  // max z, 1 / sum e^(z - max)
      ops::attention_probs(dz, 1, vocab, &begin, &end, stats);
      row_loss[r] = static_cast<double>(stats[0]) - std::log(static_cast<double>(stats[1])) -
                    static_cast<double>(z_target);
      const auto w = static_cast<float>(weight);
      for (int64_t i = 0; i < vocab; ++i) dz[i] *= w;
      dz[target] -= w;
      continue;
    }
    float max_z = z[0];
    for (int64_t i = 1; i < vocab; ++i) max_z = std::max(max_z, z[i]);
    // e^(z - max) in f32, summed in double.
    double sum = 0.0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(z[i] - max_z);
    row_loss[r] = std::log(sum) + max_z - z_target;
  }
  double total = 0.0;
  for (int64_t r = 0; r < rows; ++r) total += row_loss[r];
  return total;
}

double lm_head_cross_entropy(const float* h, const float* weight, const int32_t* targets, float* dh,
                             float* dw, int64_t rows, int64_t hidden, int64_t vocab,
                             int64_t chunk_rows) {
  check(chunk_rows > 0, "lm_head_cross_entropy: chunk_rows must be positive");
  const int64_t count = count_targets(targets, rows);
  if (count == 0) return 0.0;
  const double weight_per_target = 1.0 / static_cast<double>(count);
  std::vector<float> logits(std::min(chunk_rows, rows) * vocab);  // [chunk, vocab]
  // Compute dtype bf16: the weight rounded and packed once for every chunk, as [vocab, hidden]
  // for the logits and as [hidden, vocab] for dh (the same products as linear_forward and
  // linear_backward, bitwise, without packing the whole table again per chunk).
  std::optional<ops::Bf16Weight> packed, packed_transposed;
  if (compute_dtype() == DType::BF16) {
    packed.emplace(weight, false, vocab, hidden);
    if (dh) packed_transposed.emplace(weight, true, hidden, vocab);
  }
  double total = 0.0;
  for (int64_t start = 0; start < rows; start += chunk_rows) {
    const int64_t n = std::min(chunk_rows, rows - start);
    const float* hc = h + start * hidden;  // [n, hidden]
    if (packed) {
      ops::gemm_bf16(hc, false, *packed, logits.data(), n, false);
    } else {
      linear_forward(hc, weight, nullptr, logits.data(), n, hidden, vocab);
    }
    total += cross_entropy_rows(logits.data(), targets + start, logits.data(), n, vocab,
                                weight_per_target);
    if (packed) {
      if (dh)
        ops::gemm_bf16(logits.data(), false, *packed_transposed, dh + start * hidden, n, true);
      if (dw) ops::gemm_bf16(logits.data(), true, hc, true, dw, vocab, n, hidden, true);
    } else {
      linear_backward(hc, weight, logits.data(), dh ? dh + start * hidden : nullptr, dw, nullptr, n,
                      hidden, vocab);
    }
  }
  return total / static_cast<double>(count);
}

}  // namespace kiln::train
