// OLMo-2: like Llama, except that the norms follow attention and MLP instead of preceding
// them, and the queries and keys get an RMSNorm over the whole projection (all heads).
#include "kiln/models/llama.h"

namespace kiln {

class Olmo2Family : public LlamaFamily {
 public:
  std::string name() const override { return "olmo2"; }
  std::vector<std::string> architectures() const override { return {"Olmo2ForCausalLM"}; }
  std::vector<std::string> model_types() const override { return {"olmo2"}; }
  // Kiln reports each branch after its norm.
  HfModuleNames hf_modules(const ModelSpec&) const override {
    HfModuleNames names;
    names.attention_output = "post_attention_layernorm";
    names.mlp_output = "post_feedforward_layernorm";
    return names;
  }

 protected:
  void apply_differences(const HfConfig&, ModelSpec& spec) const override {
    for (LayerSpec& layer : spec.layers) {
      layer.placement = NormPlacement::kPost;
      layer.attention.qk_norm = QkNormKind::kWholeProjection;
    }
  }
};

KILN_FAMILY(Olmo2Family);

}  // namespace kiln
