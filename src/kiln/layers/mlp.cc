#include "kiln/layers/mlp.h"

#include <utility>

#include "kiln/models/capabilities.h"
#include "kiln/models/weight_names.h"
#include "kiln/ops/activation.h"

namespace kiln {

// What the Mlp layer computes (`kiln analyze` reports these supported).
KILN_CAPABILITY("mlp.kind", "gated");
KILN_CAPABILITY("mlp.kind", "plain");
KILN_CAPABILITY("mlp.bias", "yes");

Mlp::Mlp(const MlpSpec& spec, int64_t hidden, const WeightMap& weights, const std::string& module)
    : spec_(spec) {
  const int64_t inner = spec.intermediate;
  if (spec.gated) gate_ = Linear(weights, names::child(module, "wi_0"), hidden, inner, spec.bias);
  up_ = Linear(weights, names::child(module, "wi_1"), hidden, inner, spec.bias);
  down_ = Linear(weights, names::child(module, "wo"), inner, hidden, spec.bias);
}

Mlp::Mlp(const MlpSpec& spec, Linear gate, Linear up, Linear down)
    : spec_(spec), gate_(std::move(gate)), up_(std::move(up)), down_(std::move(down)) {}

void Mlp::forward(const float* x, int64_t rows, float* y, Workspace& workspace) const {
  const int64_t inner = spec_.intermediate;
  Workspace::Scope scope(workspace);
  float* up = workspace.take<float>(rows * inner);  // [rows, inner]
  if (spec_.gated) {
    float* gate = workspace.take<float>(rows * inner);  // [rows, inner]
    Linear::forward_group(x, rows, {{&up_, up}, {&gate_, gate}});
    if (spec_.swiglu_limit > 0.0f)
      ops::clamped_swiglu(gate, up, up, rows * inner, spec_.swiglu_limit, spec_.swiglu_alpha);
    else
      ops::gated_activation(spec_.activation, gate, up, up, rows * inner);
  } else {
    up_.forward(x, rows, up);
    ops::apply_activation(spec_.activation, up, rows * inner);
  }
  down_.forward(up, rows, y);
}

}  // namespace kiln
