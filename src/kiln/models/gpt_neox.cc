// GPT-NeoX (Pythia): like Llama, except a parallel block (attention and MLP read their own
// LayerNorms of the same input) unless `use_parallel_residual` is false, partial rotary
// (`rotary_pct`), biases everywhere, an ungated GELU MLP, and q/k/v fused in one
// `query_key_value` whose rows are grouped per head as [q, k, v].
#include "kiln/models/config_to_spec.h"
#include "kiln/models/llama.h"
#include "kiln/models/weight_transforms.h"

namespace kiln {

class GptNeoxFamily : public LlamaFamily {
 public:
  std::string name() const override { return "gpt_neox"; }
  std::vector<std::string> architectures() const override { return {"GPTNeoXForCausalLM"}; }
  std::vector<std::string> model_types() const override { return {"gpt_neox"}; }

  std::vector<WeightMapping> map_weights(const ModelSpec& spec,
                                         const TensorSource& source) const override {
    std::vector<WeightMapping> mappings = LlamaFamily::map_weights(spec, source);
    const char* parts[] = {".self_attn.q_proj.", ".self_attn.k_proj.", ".self_attn.v_proj."};
    for (WeightMapping& m : mappings) {
      std::string& hf = m.hf_names.at(0);
      for (int64_t part = 0; part < 3; ++part) {
        const size_t at = hf.find(parts[part]);
        if (at == std::string::npos) continue;
        const AttentionSpec& a =
            spec.layers[std::stoll(hf.substr(hf.find("layers.") + 7))].attention;
        hf.replace(at, std::string(parts[part]).size(), ".attention.query_key_value.");
        m.transform = take_per_head_part(a.num_heads, 3, a.head_dim, part);
      }
    }
    return mappings;
  }

  HfModuleNames hf_modules(const ModelSpec&) const override {
    HfModuleNames names;
    names.embedding = "gpt_neox.embed_in";
    names.layers = "gpt_neox.layers";
    names.attention = "attention";
    names.attention_parts = {{"out", "dense"}};
    names.mlp_parts = {{"wo", "dense_4h_to_h"}};
    names.final_norm = "gpt_neox.final_layer_norm";
    names.not_compared = {
        {"attention.query_key_value",
         "fused QKV projection: Kiln splits it into query, key and value at load"}};
    return names;
  }

 protected:
  std::string hf_name(const std::string& llama_name) const override {
    return replace_parts(llama_name, {{"model.embed_tokens.", "gpt_neox.embed_in."},
                                      {"model.layers.", "gpt_neox.layers."},
                                      {".self_attn.o_proj.", ".attention.dense."},
                                      {".mlp.up_proj.", ".mlp.dense_h_to_4h."},
                                      {".mlp.down_proj.", ".mlp.dense_4h_to_h."},
                                      {"model.norm.", "gpt_neox.final_layer_norm."},
                                      {"lm_head.", "embed_out."}});
  }
  void apply_differences(const HfConfig& config, ModelSpec& spec) const override {
    const NormSpec norm{NormKind::kLayerNorm,
                        static_cast<float>(config.get_double("layer_norm_eps", 1e-5))};
    const bool parallel = config.get_bool("use_parallel_residual", true);
    const bool bias = config.get_bool("attention_bias", true);
    for (LayerSpec& layer : spec.layers) {
      layer.norm = norm;
      layer.placement = parallel ? NormPlacement::kParallel : NormPlacement::kPre;
      AttentionSpec& a = layer.attention;
      a.q_bias = a.k_bias = a.v_bias = a.o_bias = bias;
      layer.mlp.gated = false;
      layer.mlp.bias = true;
      layer.mlp.activation = activation_from_config(config, "hidden_act");
    }
    spec.final_norm = norm;
    config.mark_read({"classifier_dropout", "hidden_dropout", "is_decoder", "rotary_emb_base"});
  }
};

KILN_FAMILY(GptNeoxFamily);

}  // namespace kiln
