// Qwen3: per-head QK norms and Qwen's sliding-window settings.
#include "kiln/models/qwen3.h"

namespace kiln {

void Qwen3Family::apply_differences(const HfConfig& config, ModelSpec& spec) const {
  for (LayerSpec& layer : spec.layers) layer.attention.qk_norm = QkNormKind::kPerHead;
  apply_qwen_sliding_window(config, spec);
}

KILN_FAMILY(Qwen3Family);

}  // namespace kiln
