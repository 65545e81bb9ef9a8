// Mlp: the feed-forward block, gated (act(gate x) * up x, then down; or gpt-oss's clamped
// SwiGLU when spec.swiglu_limit > 0) or plain (act(up x), then down), with optional biases.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/layers/linear.h"
#include "kiln/layers/weights.h"
#include "kiln/layers/workspace.h"
#include "kiln/models/model_spec.h"

namespace kiln {

class Mlp {
 public:
  Mlp() = default;
  // Reads `<module>/wi_0` (gate, when gated), `<module>/wi_1` (up) and `<module>/wo` (down).
  Mlp(const MlpSpec& spec, int64_t hidden, const WeightMap& weights, const std::string& module);
  // From its projections (`gate` unused when not gated), e.g. views of stacked experts.
  Mlp(const MlpSpec& spec, Linear gate, Linear up, Linear down);

  // Intermediates come from `workspace`.
  //   x: [rows, hidden] f32;  y: [rows, hidden] f32
  void forward(const float* x, int64_t rows, float* y, Workspace& workspace) const;

 private:
  MlpSpec spec_;
  Linear gate_, up_, down_;
};

}  // namespace kiln
