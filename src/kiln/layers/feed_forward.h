// FeedForward: the feed-forward sublayer of a block: a dense Mlp, or a mixture of experts
// (Moe) in layers whose MoeSpec is enabled.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/layers/mlp.h"
#include "kiln/layers/moe.h"
#include "kiln/layers/weights.h"
#include "kiln/layers/workspace.h"
#include "kiln/models/model_spec.h"

namespace kiln {

class FeedForward {
 public:
  FeedForward() = default;
  // An Mlp (spec.mlp) or, when spec.moe is enabled, a Moe whose experts use
  // spec.mlp.activation; weights under `module` (names::mlp(i)).
  FeedForward(const LayerSpec& spec, int64_t hidden, const WeightMap& weights,
              const std::string& module);

  // Intermediates come from `workspace`.
  //   x: [rows, hidden] f32;  y: [rows, hidden] f32 (must not alias x)
  void forward(const float* x, int64_t rows, float* y, Workspace& workspace) const;

  bool is_moe() const { return is_moe_; }
  // The mixture of experts (is_moe()) or the dense MLP (otherwise).
  const Moe& moe() const { return moe_; }
  const Mlp& mlp() const { return mlp_; }

 private:
  bool is_moe_ = false;
  Mlp mlp_;
  Moe moe_;
};

}  // namespace kiln
