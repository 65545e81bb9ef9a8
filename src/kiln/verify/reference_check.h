// Checking a model against a reference dump (fixture schema: input_ids, logits,
// hidden_states.i, greedy_ids): batched prefill logits and hidden states, and the greedy
// continuation decoded with the KV cache.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/layers/model.h"

namespace kiln {

struct TensorComparison {
  std::string name;  // reference tensor name ("logits", "hidden_states.3")
  std::string kiln;  // the Kiln activation compared with it
  double max_abs_err = 0.0;
  bool passed = false;
};

struct ReferenceReport {
  double tolerance = 0.0;
  std::vector<TensorComparison> comparisons;  // logits first, then hidden_states.0..L
  double logits_max_abs_err = 0.0;
  double hidden_max_abs_err = 0.0;       // over every hidden state
  std::vector<int64_t> expected_greedy;  // reference greedy_ids: prompt + continuation
  std::vector<int64_t> actual_greedy;    // the same prompt + Kiln's greedy continuation
  bool greedy_match = false;
  bool passed = false;  // every comparison within tolerance and greedy ids identical
};

// Runs the reference's input_ids [B, T] as one batched prefill and compares logits and
// every hidden state (HF's hidden_states: the embedding output, each layer's output, and
// for the last one the final norm's output) with `tolerance` on the max absolute error;
// then prefills row 0 alone and decodes greedily, one token per step with the KV cache, as
// many tokens as greedy_ids continues it. Throws Error naming the file and tensor when the
// reference lacks a tensor or a shape does not fit the model.
ReferenceReport check_against_reference(const Model& model, const std::string& reference_path,
                                        double tolerance);

}  // namespace kiln
