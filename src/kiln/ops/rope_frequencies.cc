// RoPE frequencies of every scaling type. Arithmetic is float32 wherever transformers works
// on float32 tensors and double where it works on Python floats, in the same order.
#include "kiln/ops/rope_frequencies.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>

#include "kiln/core/error.h"
#include "kiln/models/capabilities.h"

namespace kiln::ops {

// The RoPE types computed here (`kiln analyze` reports them supported).
KILN_CAPABILITY("rope.type", "default");
KILN_CAPABILITY("rope.type", "linear");
KILN_CAPABILITY("rope.type", "dynamic");
KILN_CAPABILITY("rope.type", "yarn");
KILN_CAPABILITY("rope.type", "llama3");
KILN_CAPABILITY("rope.type", "longrope");

namespace {

// theta^(2k / dim) for each pair k, as transformers computes `base ** (arange(0, dim, 2) / dim)`.
std::vector<float> theta_powers(float theta, int64_t dim) {
  std::vector<float> powers(static_cast<size_t>(dim / 2));  // [dim / 2]
  for (int64_t k = 0; k < dim / 2; ++k) {
    const float exponent = static_cast<float>(2 * k) / static_cast<float>(dim);
    powers[k] = std::pow(theta, exponent);
  }
  return powers;
}

std::vector<float> reciprocals(std::vector<float> values) {
  for (float& v : values) v = 1.0f / v;
  return values;
}

void check_positive(double value, const char* what) {
  check(value > 0,
        std::string("rope: ") + what + " must be positive, got " + std::to_string(value));
}

// Dynamic NTK: theta grown for a sequence of n > max_position positions. transformers does
// this on a float32 tensor (the sequence length comes from the position ids).
float dynamic_theta(const RopeSpec& rope, int64_t dim, int64_t n) {
  float growth = static_cast<float>(rope.factor) * static_cast<float>(n);
  growth = growth / static_cast<float>(rope.max_position);
  growth = growth - static_cast<float>(rope.factor - 1.0);
  const float exponent =
      static_cast<float>(static_cast<double>(dim) / static_cast<double>(dim - 2));
  return static_cast<float>(rope.theta) * std::pow(growth, exponent);
}

// YaRN's multiplier 0.1 * mscale * ln(scale) + 1 (1 when the scale does not stretch).
double yarn_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

// The (fractional) pair index whose wavelength makes `rotations` turns over `context`.
double yarn_correction_dim(double rotations, int64_t dim, double theta, int64_t context) {
  return (static_cast<double>(dim) *
          std::log(static_cast<double>(context) / (rotations * 2.0 * std::numbers::pi))) /
         (2.0 * std::log(theta));
}

RopeFrequencies yarn(const RopeSpec& rope, int64_t dim) {
  check_positive(rope.factor, "yarn factor");
  check_positive(static_cast<double>(rope.original_max_position),
                 "yarn original_max_position_embeddings");
  const double beta_fast = rope.beta_fast != 0 ? rope.beta_fast : 32.0;
  const double beta_slow = rope.beta_slow != 0 ? rope.beta_slow : 1.0;
  double low = yarn_correction_dim(beta_fast, dim, rope.theta, rope.original_max_position);
  double high = yarn_correction_dim(beta_slow, dim, rope.theta, rope.original_max_position);
  if (rope.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // keeps the ramp finite

  const std::vector<float> powers = theta_powers(static_cast<float>(rope.theta), dim);
  const float factor = static_cast<float>(rope.factor);
  RopeFrequencies out;
  out.inv_freq.resize(powers.size());  // [dim / 2]
  for (size_t k = 0; k < powers.size(); ++k) {
    const float extrapolated = 1.0f / powers[k];
    const float interpolated = 1.0f / (factor * powers[k]);
    const float ramp = std::clamp(
        (static_cast<float>(k) - static_cast<float>(low)) / static_cast<float>(high - low), 0.0f,
        1.0f);
    const float keep = 1.0f - ramp;  // share of the unscaled (extrapolated) frequency
    out.inv_freq[k] = interpolated * (1.0f - keep) + extrapolated * keep;
  }
  double scaling = rope.attention_factor;
  if (scaling == 0) {
    scaling =
        rope.mscale != 0 && rope.mscale_all_dim != 0
            ? yarn_mscale(rope.factor, rope.mscale) / yarn_mscale(rope.factor, rope.mscale_all_dim)
            : yarn_mscale(rope.factor, 1.0);
  }
  out.attention_scaling = static_cast<float>(scaling);
  return out;
}

std::vector<float> llama3(const RopeSpec& rope, int64_t dim) {
  check_positive(rope.factor, "llama3 factor");
  check_positive(static_cast<double>(rope.original_max_position),
                 "llama3 original_max_position_embeddings");
  check(rope.high_freq_factor > rope.low_freq_factor,
        "rope: llama3 high_freq_factor must exceed low_freq_factor");
  const std::vector<float> inv_freq =
      reciprocals(theta_powers(static_cast<float>(rope.theta), dim));
  const float context = static_cast<float>(rope.original_max_position);
  const float low_freq_wavelength =
      static_cast<float>(rope.original_max_position / rope.low_freq_factor);
  const float high_freq_wavelength =
      static_cast<float>(rope.original_max_position / rope.high_freq_factor);
  const float factor = static_cast<float>(rope.factor);
  const float low = static_cast<float>(rope.low_freq_factor);
  const float span = static_cast<float>(rope.high_freq_factor - rope.low_freq_factor);
  const float two_pi = static_cast<float>(2.0 * std::numbers::pi);
  std::vector<float> out(inv_freq.size());  // [dim / 2]
  for (size_t k = 0; k < inv_freq.size(); ++k) {
    const float wavelength = (1.0f / inv_freq[k]) * two_pi;
    if (wavelength < high_freq_wavelength) {
      out[k] = inv_freq[k];
    } else if (wavelength > low_freq_wavelength) {
      out[k] = inv_freq[k] / factor;
    } else {
      const float smooth = ((1.0f / wavelength) * context - low) / span;
      out[k] = (1.0f - smooth) * inv_freq[k] / factor + smooth * inv_freq[k];
    }
  }
  return out;
}

RopeFrequencies longrope(const RopeSpec& rope, int64_t dim, int64_t sequence_length) {
  check_positive(static_cast<double>(rope.original_max_position),
                 "longrope original_max_position_embeddings");
  const bool long_sequence = sequence_length > rope.original_max_position;
  const std::vector<double>& factors = long_sequence ? rope.long_factor : rope.short_factor;
  check(static_cast<int64_t>(factors.size()) == dim / 2,
        std::string("rope: longrope ") + (long_sequence ? "long_factor" : "short_factor") +
            " has " + std::to_string(factors.size()) + " entries, the rotary dimension " +
            std::to_string(dim) + " needs " + std::to_string(dim / 2));
  const std::vector<float> powers = theta_powers(static_cast<float>(rope.theta), dim);
  RopeFrequencies out;
  out.inv_freq.resize(powers.size());  // [dim / 2]
  for (size_t k = 0; k < powers.size(); ++k)
    out.inv_freq[k] = 1.0f / (static_cast<float>(factors[k]) * powers[k]);
  // Explicit magnitudes (Phi-3.5-MoE) take the place of the derived factor.
  const double mscale = long_sequence ? rope.long_mscale : rope.short_mscale;
  double scaling = mscale > 0 ? mscale : rope.attention_factor;
  if (scaling == 0) {
    scaling = rope.factor <= 1.0
                  ? 1.0
                  : std::sqrt(1.0 + std::log(rope.factor) /
                                        std::log(static_cast<double>(rope.original_max_position)));
  }
  out.attention_scaling = static_cast<float>(scaling);
  return out;
}

}  // namespace

RopeFrequencies rope_frequencies(const RopeSpec& rope, int64_t head_dim, int64_t sequence_length) {
  const int64_t dim = rope.rotary_dim > 0 ? rope.rotary_dim : head_dim;
  check(dim > 0 && dim % 2 == 0 && dim <= head_dim,
        "rope: rotary dimension " + std::to_string(dim) + " must be even, positive and at most " +
            "the head dimension " + std::to_string(head_dim));
  check_positive(rope.theta, "theta");
  switch (rope.type) {
    case RopeType::kNone:
      throw Error("rope: frequencies requested for a layer without RoPE");
    case RopeType::kDefault:
      return {reciprocals(theta_powers(static_cast<float>(rope.theta), dim)), 1.0f};
    case RopeType::kLinear: {
      check_positive(rope.factor, "linear factor");
      std::vector<float> inv_freq = reciprocals(theta_powers(static_cast<float>(rope.theta), dim));
      for (float& f : inv_freq) f /= static_cast<float>(rope.factor);
      return {inv_freq, 1.0f};
    }
    case RopeType::kDynamic: {
      check_positive(rope.factor, "dynamic factor");
      check_positive(static_cast<double>(rope.max_position), "dynamic max_position_embeddings");
      const float theta = sequence_length > rope.max_position
                              ? dynamic_theta(rope, dim, sequence_length)
                              : static_cast<float>(rope.theta);
      return {reciprocals(theta_powers(theta, dim)), 1.0f};
    }
    case RopeType::kYarn:
      return yarn(rope, dim);
    case RopeType::kLlama3:
      return {llama3(rope, dim), 1.0f};
    case RopeType::kLongRope:
      return longrope(rope, dim, sequence_length);
  }
  throw Error("rope: unknown RoPE type");
}

int64_t rope_frequency_key(const RopeSpec& rope, int64_t sequence_length) {
  switch (rope.type) {
    case RopeType::kDynamic:
      return std::max(sequence_length, rope.max_position);
    case RopeType::kLongRope:
      return sequence_length > rope.original_max_position ? 1 : 0;
    default:
      return 0;
  }
}

}  // namespace kiln::ops
