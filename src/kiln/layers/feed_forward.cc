#include "kiln/layers/feed_forward.h"

namespace kiln {

FeedForward::FeedForward(const LayerSpec& spec, int64_t hidden, const WeightMap& weights,
                         const std::string& module)
    : is_moe_(spec.moe.enabled()) {
  if (is_moe_)
    moe_ = Moe(spec.moe, spec.mlp.activation, hidden, weights, module);
  else
    mlp_ = Mlp(spec.mlp, hidden, weights, module);
}

void FeedForward::forward(const float* x, int64_t rows, float* y, Workspace& workspace) const {
  if (is_moe_)
    moe_.forward(x, rows, y, workspace);
  else
    mlp_.forward(x, rows, y, workspace);
}

}  // namespace kiln
