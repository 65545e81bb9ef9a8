// Choices config.json does not state, settled against a reference: RoPE pairing, a norm's
// w vs 1 + w, the GELU flavour, a fused QKV layout, a stacked-experts layout. Each choice's
// candidates are tried in turn (the others held at their best so far), and the one whose
// logits and modules match the reference best is kept, with every candidate's errors as
// evidence. Used by `kiln bringup` on the generic route.
#pragma once

#include <string>
#include <vector>

#include "kiln/io/json.h"
#include "kiln/models/auto_family.h"

namespace kiln {

struct CandidateResult {
  std::string value;
  bool ran = false;  // false: the candidate could not be built (error says why)
  bool passed = false;
  double logits_max_abs_err = 0.0;
  size_t modules_matching = 0;  // modules within tolerance
  std::string first_divergent;
  std::string error;
};

struct Decision {
  std::string choice;  // "rope.pairing", "norm.weight", "mlp.gelu", "qkv.layout", ...
  std::string value;   // the kept candidate
  bool verified = false;
  std::vector<CandidateResult> evidence;  // one per candidate tried (empty when unverified)
  std::vector<std::string> candidates;
  Json to_json() const;
};

// The choices `spec` and `names` leave open, each with its candidates and the value the
// generic route took (unverified).
std::vector<Decision> open_choices(const ModelSpec& spec, const HfTensorNames& names);

// Settles every open choice against the reference dump `reference` (tools/dump_reference.py
// format): updates `spec` and `names` to the best candidates and returns the decisions with
// their evidence.
std::vector<Decision> settle_choices(ModelSpec& spec, HfTensorNames& names,
                                     const TensorSource& source, const std::string& model_type,
                                     const std::string& reference, double tolerance);

}  // namespace kiln
