// Checking a model against a reference dump (fixture schema, docs/reference_format.md):
// batched prefill logits and hidden states, every captured module against act.<module>.out,
// logit statistics (KL, top-1), and the greedy continuation decoded with the KV cache.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/layers/model.h"
#include "kiln/models/family.h"

namespace kiln {

struct TensorComparison {
  std::string name;  // reference tensor name ("logits", "hidden_states.3")
  std::string kiln;  // the Kiln activation compared with it
  double max_abs_err = 0.0;
  bool passed = false;
};

// One module of batch row 0 against the reference's act.<module>.out, in execution order.
struct ModuleComparison {
  std::string module;  // HF module path ("model.layers.1.mlp")
  std::string kiln;    // Kiln activation ("decoder/layers_1/mlp")
  double max_abs_err = 0.0;
  double max_rel_err = 0.0;  // max_abs_err / max |reference|
  bool passed = false;       // max_abs_err <= tolerance * max(1, max |reference|)
};

// A reference module (act.<module>.*) that no Kiln activation corresponds to, and why.
struct NotComparedModule {
  std::string module;
  std::string reason;
};

struct ReferenceReport {
  double tolerance = 0.0;
  std::vector<TensorComparison> comparisons;  // logits first, then hidden_states.0..L
  double logits_max_abs_err = 0.0;
  double hidden_max_abs_err = 0.0;              // over every hidden state
  std::vector<ModuleComparison> modules;        // execution order: embedding, layers, norm, head
  std::string first_divergent;                  // HF path of the first failing module, "" if none
  std::vector<NotComparedModule> not_compared;  // sorted by module path
  double kl_mean = 0.0;                  // KL(reference || Kiln) of next-token distributions, per
  double kl_max = 0.0;                   // position over every row and position
  double top1_agreement = 0.0;           // fraction of positions with the same argmax
  std::vector<int64_t> expected_greedy;  // reference greedy_ids: prompt + continuation
  std::vector<int64_t> actual_greedy;    // the same prompt + Kiln's greedy continuation
  bool greedy_match = false;
  // Every comparison and module within tolerance and greedy ids identical.
  bool passed = false;
};

// Runs the reference's input_ids [B, T] as one batched prefill and compares logits and
// every hidden state (HF's hidden_states: the embedding output, each layer's output, and
// for the last one the final norm's output) with `tolerance` on the max absolute error;
// compares every activation the model reports through its observer (row 0) with the
// reference's act.<module>.out, named by `family`'s hf_modules(spec) (the registered family
// named spec.family when null); then prefills row 0 alone
// and decodes greedily, one token per step with the KV cache, as many tokens as greedy_ids
// continues it. Throws Error naming the file and tensor when the reference lacks a tensor or a
// shape does not fit the model.
ReferenceReport check_against_reference(const Model& model, const std::string& reference_path,
                                        double tolerance, const Family* family = nullptr);

// `reference` when given, else the model's own `MODEL/reference.safetensors`.
std::string reference_or_default(const std::string& model_dir, const std::string& reference);

}  // namespace kiln
