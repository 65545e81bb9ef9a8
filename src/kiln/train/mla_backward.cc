#include "kiln/train/mla_backward.h"

#include <algorithm>
#include <cmath>

#include "kiln/core/error.h"
#include "kiln/ops/norm.h"
#include "kiln/ops/rope.h"
#include "kiln/ops/rope_frequencies.h"
#include "kiln/train/backward.h"
#include "kiln/train/sink_attention.h"

namespace kiln::train {

namespace {

void refuse(const std::string& where, const std::string& feature) {
  throw Error("training: " + where + ": " + feature + " is not supported yet");
}

struct Shape {
  int64_t H, nope, P, V, R, Rq, D, Dp;
  float scale;
};

Shape shape_of(const AttentionSpec& a) {
  Shape s{};
  s.H = a.num_heads;
  s.nope = a.qk_nope_head_dim;
  s.P = a.qk_rope_head_dim;
  s.V = a.value_head_dim;
  s.R = a.kv_lora_rank;
  s.Rq = a.q_lora_rank;
  s.D = s.nope + s.P;
  s.Dp = std::max(s.D, s.V);
  s.scale = a.scale > 0.0f ? a.scale : static_cast<float>(1.0 / std::sqrt(double(s.D)));
  return s;
}

AttentionDims dims_of(const Shape& s, int64_t batch, int64_t tokens) {
  return AttentionDims{batch, tokens, s.H, s.H, s.Dp, s.scale, 0};
}

}  // namespace

void check_mla_trainable(const AttentionSpec& a, const std::string& where) {
  if (a.num_heads <= 0 || a.qk_nope_head_dim <= 0 || a.qk_rope_head_dim <= 0 ||
      a.value_head_dim <= 0 || a.qk_rope_head_dim % 2 != 0 || a.q_lora_rank < 0)
    throw Error("training: " + where + ": MLA heads, head dims and ranks must be positive");
  if (a.sliding_window > 0) refuse(where, "a sliding window with latent attention");
  if (a.rope.type == RopeType::kNone) refuse(where, "latent attention without RoPE");
  if (a.latent_norm.kind != NormKind::kRms)
    refuse(where, std::string("latent norm kind '") + norm_kind_name(a.latent_norm.kind) + "'");
}

void mla_forward(const AttentionSpec& a, const MlaParams& p, const float* x, int64_t batch,
                 int64_t T, int64_t hidden, const int64_t* positions,
                 const std::vector<std::pair<int64_t, int64_t>>& documents, float* out,
                 MlaSaved& s) {
  const Shape z = shape_of(a);
  const int64_t rows = batch * T;
  const float eps = a.latent_norm.eps;
  std::vector<float> q(rows * z.H * z.D);  // [rows, H, D]
  if (z.Rq > 0) {
    s.q_latent_raw.resize(rows * z.Rq);
    s.q_latent.resize(rows * z.Rq);
    s.q_inv_rms.resize(rows);
    linear_forward(x, p.query_down.w, p.query_down.b, s.q_latent_raw.data(), rows, hidden, z.Rq);
    ops::rms_norm(s.q_latent_raw.data(), p.query_norm, s.q_latent.data(), rows, z.Rq, eps, false,
                  s.q_inv_rms.data());
    linear_forward(s.q_latent.data(), p.query_up.w, nullptr, q.data(), rows, z.Rq, z.H * z.D);
  } else {
    linear_forward(x, p.query.w, nullptr, q.data(), rows, hidden, z.H * z.D);
  }
  std::vector<float> kv(rows * (z.R + z.P));  // [rows, R + P]: latent, then the rotary key
  linear_forward(x, p.kv_down.w, p.kv_down.b, kv.data(), rows, hidden, z.R + z.P);
  s.latent_raw.resize(rows * z.R);
  s.latent.resize(rows * z.R);
  s.kv_inv_rms.resize(rows);
  std::vector<float> rotary(rows * z.P);  // [rows, P]
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(kv.data() + r * (z.R + z.P), z.R, s.latent_raw.data() + r * z.R);
    std::copy_n(kv.data() + r * (z.R + z.P) + z.R, z.P, rotary.data() + r * z.P);
  }
  ops::rms_norm(s.latent_raw.data(), p.kv_norm, s.latent.data(), rows, z.R, eps, false,
                s.kv_inv_rms.data());
  std::vector<float> up(rows * z.H * (z.nope + z.V));  // [rows, H, nope + V]
  linear_forward(s.latent.data(), p.kv_up.w, nullptr, up.data(), rows, z.R, z.H * (z.nope + z.V));

  // RoPE on the rotary part of each query head (features [nope, D)) and on the rotary key.
  const ops::RopeFrequencies rope = ops::rope_frequencies(a.rope, z.P, T);
  ops::apply_rope(q.data() + z.nope, positions, rows, z.H, z.D, z.P, rope.inv_freq.data(),
                  rope.attention_scaling, a.rope.interleaved);
  ops::apply_rope(rotary.data(), positions, rows, 1, z.P, z.P, rope.inv_freq.data(),
                  rope.attention_scaling, a.rope.interleaved);

  s.q.assign(rows * z.H * z.Dp, 0.0f);
  s.k.assign(rows * z.H * z.Dp, 0.0f);
  s.v.assign(rows * z.H * z.Dp, 0.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < z.H; ++h) {
      const int64_t i = (r * z.H + h) * z.Dp;
      const float* u = up.data() + (r * z.H + h) * (z.nope + z.V);
      std::copy_n(q.data() + (r * z.H + h) * z.D, z.D, s.q.data() + i);
      std::copy_n(u, z.nope, s.k.data() + i);
      std::copy_n(rotary.data() + r * z.P, z.P, s.k.data() + i + z.nope);
      std::copy_n(u + z.nope, z.V, s.v.data() + i);
    }
  std::vector<float> mixed(rows * z.H * z.Dp);  // [rows, H, Dp]
  s.softmax_stats.resize(rows * z.H * 2);
  attention_by_document(documents, dims_of(z, batch, T), 0.0f, s.q.data(), s.k.data(), s.v.data(),
                        mixed.data(), nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0,
                        s.softmax_stats.data(), nullptr);
  s.mixed.resize(rows * z.H * z.V);
  for (int64_t i = 0; i < rows * z.H; ++i)
    std::copy_n(mixed.data() + i * z.Dp, z.V, s.mixed.data() + i * z.V);
  linear_forward(s.mixed.data(), p.out.w, p.out.b, out, rows, z.H * z.V, hidden);
}

void mla_backward(const AttentionSpec& a, const MlaParams& p, const float* x, const MlaSaved& s,
                  int64_t batch, int64_t T, int64_t hidden, const int64_t* positions,
                  const std::vector<std::pair<int64_t, int64_t>>& documents, const float* d_out,
                  float* dx) {
  const Shape z = shape_of(a);
  const int64_t rows = batch * T;
  std::vector<float> d_mixed(rows * z.H * z.V, 0.0f);  // [rows, H * V]
  linear_backward(s.mixed.data(), p.out.w, d_out, d_mixed.data(), p.out.dw, p.out.db, rows,
                  z.H * z.V, hidden);
  std::vector<float> d_padded(rows * z.H * z.Dp, 0.0f);  // [rows, H, Dp]
  for (int64_t i = 0; i < rows * z.H; ++i)
    std::copy_n(d_mixed.data() + i * z.V, z.V, d_padded.data() + i * z.Dp);
  std::vector<float> dq(rows * z.H * z.Dp, 0.0f), dk(rows * z.H * z.Dp, 0.0f),
      dv(rows * z.H * z.Dp, 0.0f);
  attention_by_document(documents, dims_of(z, batch, T), 0.0f, s.q.data(), s.k.data(), s.v.data(),
                        nullptr, d_padded.data(), dq.data(), dk.data(), dv.data(), nullptr, nullptr,
                        0, nullptr, s.softmax_stats.data());

  // Back to the projections: the query [rows, H, D], the expanded keys and values
  // [rows, H, nope + V] and the rotary key shared by the heads [rows, P].
  std::vector<float> d_q(rows * z.H * z.D), d_up(rows * z.H * (z.nope + z.V));
  std::vector<float> d_rotary(rows * z.P, 0.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < z.H; ++h) {
      const int64_t i = (r * z.H + h) * z.Dp;
      float* u = d_up.data() + (r * z.H + h) * (z.nope + z.V);
      std::copy_n(dq.data() + i, z.D, d_q.data() + (r * z.H + h) * z.D);
      std::copy_n(dk.data() + i, z.nope, u);
      std::copy_n(dv.data() + i, z.V, u + z.nope);
      for (int64_t c = 0; c < z.P; ++c) d_rotary[r * z.P + c] += dk[i + z.nope + c];
    }
  const ops::RopeFrequencies rope = ops::rope_frequencies(a.rope, z.P, T);
  rope_backward(d_q.data() + z.nope, positions, rows, z.H, z.D, z.P, rope.inv_freq.data(),
                rope.attention_scaling, a.rope.interleaved);
  rope_backward(d_rotary.data(), positions, rows, 1, z.P, z.P, rope.inv_freq.data(),
                rope.attention_scaling, a.rope.interleaved);

  // KV: latent -> norm -> up-projection; the down-projection gives latent and rotary key.
  std::vector<float> d_latent(rows * z.R, 0.0f), d_latent_raw(rows * z.R, 0.0f);
  linear_backward(s.latent.data(), p.kv_up.w, d_up.data(), d_latent.data(), p.kv_up.dw, nullptr,
                  rows, z.R, z.H * (z.nope + z.V));
  rms_norm_backward(s.latent_raw.data(), p.kv_norm, s.kv_inv_rms.data(), d_latent.data(),
                    d_latent_raw.data(), p.d_kv_norm, rows, z.R, false);
  std::vector<float> d_kv(rows * (z.R + z.P));  // [rows, R + P]
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(d_latent_raw.data() + r * z.R, z.R, d_kv.data() + r * (z.R + z.P));
    std::copy_n(d_rotary.data() + r * z.P, z.P, d_kv.data() + r * (z.R + z.P) + z.R);
  }
  linear_backward(x, p.kv_down.w, d_kv.data(), dx, p.kv_down.dw, p.kv_down.db, rows, hidden,
                  z.R + z.P);

  // Query: down-projection -> norm -> up-projection, or one projection.
  if (z.Rq > 0) {
    std::vector<float> d_ql(rows * z.Rq, 0.0f), d_ql_raw(rows * z.Rq, 0.0f);
    linear_backward(s.q_latent.data(), p.query_up.w, d_q.data(), d_ql.data(), p.query_up.dw,
                    nullptr, rows, z.Rq, z.H * z.D);
    rms_norm_backward(s.q_latent_raw.data(), p.query_norm, s.q_inv_rms.data(), d_ql.data(),
                      d_ql_raw.data(), p.d_query_norm, rows, z.Rq, false);
    linear_backward(x, p.query_down.w, d_ql_raw.data(), dx, p.query_down.dw, p.query_down.db, rows,
                    hidden, z.Rq);
  } else {
    linear_backward(x, p.query.w, d_q.data(), dx, p.query.dw, nullptr, rows, hidden, z.H * z.D);
  }
}

}  // namespace kiln::train
