// Phi (1, 1.5, 2): like Llama, except a parallel block (attention and MLP both read one
// LayerNorm's output), partial rotary, biases everywhere including lm_head, an ungated GELU
// MLP (fc1 -> gelu_new -> fc2), and the out projection named `dense`.
#include "kiln/models/config_to_spec.h"
#include "kiln/models/llama.h"

namespace kiln {

class PhiFamily : public LlamaFamily {
 public:
  std::string name() const override { return "phi"; }
  std::vector<std::string> architectures() const override { return {"PhiForCausalLM"}; }
  std::vector<std::string> model_types() const override { return {"phi"}; }

  HfModuleNames hf_modules(const ModelSpec&) const override {
    HfModuleNames names;
    names.attention_parts = {{"query", "q_proj"},         {"key", "k_proj"},
                             {"value", "v_proj"},         {"query_norm", "q_layernorm"},
                             {"key_norm", "k_layernorm"}, {"out", "dense"}};
    names.post_attention_norm = "";  // attention and MLP share input_layernorm
    names.mlp_parts = {{"wo", "fc2"}};
    names.final_norm = "model.final_layernorm";
    return names;
  }

 protected:
  std::string hf_name(const std::string& llama_name) const override {
    return replace_parts(llama_name, {{".self_attn.o_proj.", ".self_attn.dense."},
                                      {".self_attn.q_norm.", ".self_attn.q_layernorm."},
                                      {".self_attn.k_norm.", ".self_attn.k_layernorm."},
                                      {".mlp.up_proj.", ".mlp.fc1."},
                                      {".mlp.down_proj.", ".mlp.fc2."},
                                      {"model.norm.", "model.final_layernorm."}});
  }
  void apply_differences(const HfConfig& config, ModelSpec& spec) const override {
    const NormSpec norm{NormKind::kLayerNorm,
                        static_cast<float>(config.get_double("layer_norm_eps", 1e-5))};
    for (LayerSpec& layer : spec.layers) {
      layer.norm = norm;
      layer.placement = NormPlacement::kParallel;
      layer.parallel_shared_norm = true;
      AttentionSpec& a = layer.attention;
      a.q_bias = a.k_bias = a.v_bias = a.o_bias = true;
      if (config.get_bool("qk_layernorm", false)) {
        a.qk_norm = QkNormKind::kPerHead;
        a.qk_norm_spec = norm;
      }
      layer.mlp.gated = false;
      layer.mlp.bias = true;
      layer.mlp.activation = activation_from_config(config, "hidden_act");
    }
    spec.final_norm = norm;
    spec.lm_head_bias = true;
    config.mark_read({"embd_pdrop", "resid_pdrop"});
  }
};

KILN_FAMILY(PhiFamily);

}  // namespace kiln
