// StarCoder2: like Llama, except LayerNorms with bias, biases on every projection
// (`use_bias`), an ungated MLP (c_fc -> GELU -> c_proj) and `sliding_window` on every layer.
#include "kiln/models/config_to_spec.h"
#include "kiln/models/llama.h"

namespace kiln {

class Starcoder2Family : public LlamaFamily {
 public:
  std::string name() const override { return "starcoder2"; }
  std::vector<std::string> architectures() const override { return {"Starcoder2ForCausalLM"}; }
  std::vector<std::string> model_types() const override { return {"starcoder2"}; }

  HfModuleNames hf_modules(const ModelSpec&) const override {
    HfModuleNames names;
    names.mlp_parts = {{"wo", "c_proj"}};
    return names;
  }

 protected:
  std::string hf_name(const std::string& llama_name) const override {
    return replace_parts(llama_name,
                         {{".mlp.up_proj.", ".mlp.c_fc."}, {".mlp.down_proj.", ".mlp.c_proj."}});
  }
  void apply_differences(const HfConfig& config, ModelSpec& spec) const override {
    const NormSpec norm{NormKind::kLayerNorm,
                        static_cast<float>(config.get_double("norm_epsilon", 1e-5))};
    const bool bias = config.get_bool("use_bias", true);
    const int64_t window = config.get_int("sliding_window", 0);
    for (LayerSpec& layer : spec.layers) {
      layer.norm = norm;
      AttentionSpec& a = layer.attention;
      a.q_bias = a.k_bias = a.v_bias = a.o_bias = bias;
      a.sliding_window = window;
      layer.kind = window > 0 ? LayerKind::kSlidingAttention : LayerKind::kFullAttention;
      layer.mlp.gated = false;
      layer.mlp.bias = bias;
      layer.mlp.activation = activation_from_config(config, "hidden_act");
    }
    spec.final_norm = norm;
    spec.tie_word_embeddings = config.get_bool("tie_word_embeddings", true);  // HF's default
    config.mark_read({"embedding_dropout", "residual_dropout"});
  }
};

KILN_FAMILY(Starcoder2Family);

}  // namespace kiln
