#include "kiln/layers/norm.h"

#include <algorithm>

#include "kiln/models/capabilities.h"
#include "kiln/models/weight_names.h"
#include "kiln/ops/norm.h"

namespace kiln {

// The norm kinds the Norm layer computes (`kiln analyze` reports these supported).
KILN_CAPABILITY("norm.kind", "rms");
KILN_CAPABILITY("norm.kind", "rms_one_plus");
KILN_CAPABILITY("norm.kind", "layer_norm");
KILN_CAPABILITY("norm.kind", "layer_norm_no_bias");
KILN_CAPABILITY("norm.kind", "non_parametric");

Norm::Norm(const NormSpec& spec, const WeightMap& weights, const std::string& module, int64_t dim)
    : spec_(spec), dim_(dim) {
  if (spec.kind != NormKind::kNone && spec.kind != NormKind::kNonParametric)
    scale_ = require_f32(weights, names::scale(module), {dim});
  if (spec.kind == NormKind::kLayerNorm) bias_ = require_f32(weights, names::bias(module), {dim});
}

void Norm::forward(const float* x, int64_t rows, float* y) const {
  switch (spec_.kind) {
    case NormKind::kNone:
      if (x != y) std::copy(x, x + rows * dim_, y);
      return;
    case NormKind::kRms:
    case NormKind::kRmsOnePlus:
      ops::rms_norm(x, scale_.data(), y, rows, dim_, spec_.eps,
                    spec_.kind == NormKind::kRmsOnePlus);
      return;
    case NormKind::kLayerNorm:
    case NormKind::kLayerNormNoBias:
    case NormKind::kNonParametric:
      ops::layer_norm(x, scale_.empty() ? nullptr : scale_.data(),
                      bias_.empty() ? nullptr : bias_.data(), y, rows, dim_, spec_.eps);
      return;
  }
}

}  // namespace kiln
