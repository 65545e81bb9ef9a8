// Qwen2: like Llama, except that q/k/v projections always have biases (o has none) and
// sliding windows follow Qwen's layer_types / use_sliding_window / max_window_layers.
#include "kiln/models/llama.h"

namespace kiln {

class Qwen2Family : public LlamaFamily {
 public:
  std::string name() const override { return "qwen2"; }
  std::vector<std::string> architectures() const override { return {"Qwen2ForCausalLM"}; }
  std::vector<std::string> model_types() const override { return {"qwen2"}; }

 protected:
  void apply_differences(const HfConfig& config, ModelSpec& spec) const override {
    for (LayerSpec& layer : spec.layers) {
      AttentionSpec& a = layer.attention;
      a.q_bias = a.k_bias = a.v_bias = true;
      a.o_bias = false;
    }
    apply_qwen_sliding_window(config, spec);
  }
};

KILN_FAMILY(Qwen2Family);

}  // namespace kiln
