// RoPE frequencies: the inverse frequency of every rotary pair and the attention scaling
// (the factor on cos and sin) for each RoPE type of HF transformers, in float32 and in the
// order of operations transformers uses, so that angles match the reference bit for bit.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/models/model_spec.h"

namespace kiln::ops {

struct RopeFrequencies {
  // Pair k of a token at position p turns by the angle p * inv_freq[k].
  std::vector<float> inv_freq;     // [rotary_dim / 2]
  float attention_scaling = 1.0f;  // multiplies cos and sin (YaRN, LongRoPE); 1 otherwise
};

// The frequencies of `rope` for heads of `head_dim` when the sequence holds
// `sequence_length` positions (the largest position + 1). The rotary dimension is
// rope.rotary_dim, or head_dim when that is 0; it must be even and at most head_dim.
// Types:
//   default   theta^(-2k / rotary_dim)
//   linear    default / factor
//   dynamic   default with theta grown to theta * (factor * n / max - (factor - 1))^(d / (d - 2))
//             once n = sequence_length exceeds max_position (HF's NTK-aware scaling)
//   yarn      per pair a ramp between default (fast pairs) and default / factor (slow pairs),
//             bounded by beta_fast / beta_slow rotations over original_max_position;
//             scaling = attention_factor, or mscale ratio (DeepSeek), or 0.1 ln(factor) + 1
//   llama3    default / factor for wavelengths above original_max / low_freq_factor,
//             unchanged below original_max / high_freq_factor, smoothly blended between
//   longrope  default / short_factor[k], or / long_factor[k] once sequence_length exceeds
//             original_max_position; scaling = attention_factor or
//             sqrt(1 + ln(factor) / ln(original_max_position))
// Throws Error on settings it cannot use (type kNone, odd rotary dimension, factor lists of
// the wrong length, non-positive factors or lengths).
RopeFrequencies rope_frequencies(const RopeSpec& rope, int64_t head_dim, int64_t sequence_length);

// True when rope_frequencies() changes with sequence_length (dynamic NTK, LongRoPE): keys
// rotated for a shorter sequence are then rotated differently from what a full
// recomputation of the longer sequence gives.
bool rope_depends_on_length(const RopeSpec& rope);

}  // namespace kiln::ops
