// Mistral: like Llama, except that every layer attends within `sliding_window` when the
// config sets one, and attention has no biases.
#include "kiln/models/llama.h"

namespace kiln {

class MistralFamily : public LlamaFamily {
 public:
  std::string name() const override { return "mistral"; }
  std::vector<std::string> architectures() const override { return {"MistralForCausalLM"}; }
  std::vector<std::string> model_types() const override { return {"mistral"}; }

 protected:
  void apply_differences(const HfConfig& config, ModelSpec& spec) const override {
    const int64_t window = config.get_int("sliding_window", 0);
    for (LayerSpec& layer : spec.layers) {
      AttentionSpec& a = layer.attention;
      a.q_bias = a.k_bias = a.v_bias = a.o_bias = false;
      a.sliding_window = window;
      layer.kind = window > 0 ? LayerKind::kSlidingAttention : LayerKind::kFullAttention;
    }
  }
};

KILN_FAMILY(MistralFamily);

}  // namespace kiln
