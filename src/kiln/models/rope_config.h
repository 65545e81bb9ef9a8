// config.json -> RopeSpec: the RoPE type, theta, rotary fraction and every scaling
// parameter of one layer type, resolved with transformers' defaults.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/io/hf_config.h"
#include "kiln/models/model_spec.h"

namespace kiln {

// The RoPE of layers of `layer_type` ("" = the only/global one; "sliding_attention" picks
// Gemma's local base) for heads of `head_dim`. Reads HfConfig::rope() (both the
// `rope_parameters` and the legacy `rope_scaling` + `rope_theta` forms) and:
//  - the rotary dimension: int(head_dim * fraction) with the fraction from
//    `partial_rotary_factor` (in the RoPE set or top level) or `rotary_pct` (GPT-NeoX), or
//    an absolute `rotary_dim` (GPT-J); head_dim otherwise. The legacy `rotary_emb_base`
//    (GPT-NeoX) is the theta when no other is given;
//  - max_position from `max_position_embeddings`; original_max_position (llama3, yarn,
//    longrope) from the top-level `original_max_position_embeddings` (Phi-3), else the RoPE
//    set's, else max_position;
//  - factor: required for linear, dynamic and llama3; for yarn and longrope it defaults to
//    max_position / original_max_position;
//  - yarn beta_fast / beta_slow / mscale / mscale_all_dim / attention_factor / truncate,
//    llama3 low_freq_factor / high_freq_factor (required), longrope short_factor /
//    long_factor (required, rotary_dim / 2 numbers each) and attention_factor.
// `interleaved` is left false: pairing is a property of the family, which sets it.
// Throws Error naming the config file and key for unknown RoPE types, missing required
// parameters and values of the wrong type or range.
RopeSpec rope_spec_from_config(const HfConfig& config, const std::string& layer_type,
                               int64_t head_dim);

}  // namespace kiln
