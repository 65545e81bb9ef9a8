// gpt-oss: like Llama (biased GQA attention, RMSNorm pre-norm blocks, YaRN RoPE), except
// that every attention has learned per-head sinks, layers alternate sliding-window and full
// attention (`layer_types`), and every feed-forward block is a mixture of
// `num_local_experts` experts of `intermediate_size`: a biased router whose top
// `num_experts_per_tok` logits are softmaxed, experts with biases and a clamped SwiGLU
// (`swiglu_limit`, alpha 1.702), stored stacked with gate and up interleaved.
#include "kiln/core/error.h"
#include "kiln/models/llama.h"
#include "kiln/models/moe_weights.h"
#include "kiln/models/weight_names.h"

namespace kiln {

class GptOssFamily : public LlamaFamily {
 public:
  std::string name() const override { return "gpt_oss"; }
  std::vector<std::string> architectures() const override { return {"GptOssForCausalLM"}; }
  std::vector<std::string> model_types() const override { return {"gpt_oss"}; }

  HfModuleNames hf_modules(const ModelSpec&) const override {
    HfModuleNames names;
    names.mlp_parts = {{"gate", "router"}};
    names.not_compared = {
        {"mlp.experts",
         "Kiln runs the experts inside the MoE block (grouped by expert), whose output is "
         "compared"}};
    return names;
  }

 protected:
  void apply_differences(const HfConfig& config, ModelSpec& spec) const override {
    const int64_t window = config.get_int("sliding_window", 0);
    const Json& layer_types = config.get("layer_types");
    if (!layer_types.is_null())
      check(layer_types.is_array() && static_cast<int64_t>(layer_types.size()) == spec.num_layers(),
            config.source() + ": key 'layer_types' must list one type per layer");
    const float limit = static_cast<float>(config.get_double("swiglu_limit", 7.0));
    check(limit > 0.0f, config.source() + ": key 'swiglu_limit' must be positive");
    // Hub checkpoints also write `experts_per_token`; transformers reads num_experts_per_tok.
    const int64_t top_k = config.has("num_experts_per_tok") ? config.get_int("num_experts_per_tok")
                                                            : config.get_int("experts_per_token");
    for (int64_t i = 0; i < spec.num_layers(); ++i) {
      LayerSpec& layer = spec.layers[i];
      // Without layer_types, transformers alternates: even layers slide, odd ones are full.
      bool sliding = i % 2 == 0;
      if (!layer_types.is_null()) {
        const Json& type = layer_types[i];
        check(type == "full_attention" || type == "sliding_attention",
              config.source() + ": key 'layer_types' has unknown type " + type.dump());
        sliding = type == "sliding_attention";
      }
      sliding = sliding && window > 0;
      layer.kind = sliding ? LayerKind::kSlidingAttention : LayerKind::kFullAttention;
      layer.attention.sliding_window = sliding ? window : 0;
      layer.attention.sinks = true;
      // The experts' activation, also stated on the (unused) dense MLP spec, which
      // describes the experts' activation in reports.
      layer.mlp.swiglu_limit = limit;
      MoeSpec& moe = layer.moe;
      moe.num_experts = config.get_int("num_local_experts");
      moe.top_k = top_k;
      moe.expert_intermediate = layer.mlp.intermediate;
      moe.router = RouterKind::kTopKSoftmax;
      moe.router_bias = true;
      moe.expert_bias = true;
      moe.swiglu_limit = limit;
      moe.swiglu_alpha = layer.mlp.swiglu_alpha;
    }
    config.mark_read({"router_aux_loss_coef", "output_router_logits", "experts_per_token",
                      "initial_context_length"});
  }

  void map_attention_weights(const ModelSpec& spec, int64_t i, const TensorSource& source,
                             std::vector<WeightMapping>& mappings) const override {
    LlamaFamily::map_attention_weights(spec, i, source, mappings);
    mappings.push_back({names::sinks(names::attention(i)),
                        {"model.layers." + std::to_string(i) + ".self_attn.sinks"},
                        {spec.layers[i].attention.num_heads},
                        {}});
  }

  void map_mlp_weights(const ModelSpec& spec, int64_t i, const TensorSource& source,
                       std::vector<WeightMapping>& mappings) const override {
    const std::string block = "model.layers." + std::to_string(i) + ".mlp";
    MoeHfNames hf{block + ".router", block + ".experts", "", "", "", ""};
    hf.interleaved_gate_up = true;
    map_moe_weights(spec.layers[i].moe, spec.hidden_size, i, hf, source, mappings);
  }
};

KILN_FAMILY(GptOssFamily);

}  // namespace kiln
