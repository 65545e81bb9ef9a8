// Mistral: sliding-window attention on every layer, no attention biases.
#include "kiln/models/mistral.h"

namespace kiln {

void MistralFamily::apply_differences(const HfConfig& config, ModelSpec& spec) const {
  const int64_t window = config.get_int("sliding_window", 0);
  for (LayerSpec& layer : spec.layers) {
    AttentionSpec& a = layer.attention;
    a.q_bias = a.k_bias = a.v_bias = a.o_bias = false;
    a.sliding_window = window;
    layer.kind = window > 0 ? LayerKind::kSlidingAttention : LayerKind::kFullAttention;
  }
}

KILN_FAMILY(MistralFamily);

}  // namespace kiln
