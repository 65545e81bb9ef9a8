// Mixtral: like Mistral, except that every feed-forward block is a mixture of
// `num_local_experts` SwiGLU experts of `intermediate_size`, `num_experts_per_tok` of them
// per token, weighted by a softmax over the chosen experts' router logits.
#include "kiln/models/mistral.h"
#include "kiln/models/moe_weights.h"

namespace kiln {

class MixtralFamily : public MistralFamily {
 public:
  std::string name() const override { return "mixtral"; }
  std::vector<std::string> architectures() const override { return {"MixtralForCausalLM"}; }
  std::vector<std::string> model_types() const override { return {"mixtral"}; }

 protected:
  void apply_differences(const HfConfig& config, ModelSpec& spec) const override {
    MistralFamily::apply_differences(config, spec);
    for (LayerSpec& layer : spec.layers) {
      MoeSpec& moe = layer.moe;
      moe.num_experts = config.get_int("num_local_experts");
      moe.top_k = config.get_int("num_experts_per_tok");
      moe.expert_intermediate = layer.mlp.intermediate;
      moe.router = RouterKind::kTopKSoftmax;
    }
    config.mark_read({"router_aux_loss_coef", "output_router_logits", "router_jitter_noise"});
  }

  // Hub checkpoints keep the experts under `block_sparse_moe` (w1 gate, w3 up, w2 down);
  // transformers 5 names the block `mlp` and stacks the experts.
  void map_mlp_weights(const ModelSpec& spec, int64_t i, const TensorSource& source,
                       std::vector<WeightMapping>& mappings) const override {
    const std::string layer = "model.layers." + std::to_string(i);
    const std::string block = source.contains(layer + ".block_sparse_moe.gate.weight")
                                  ? layer + ".block_sparse_moe"
                                  : layer + ".mlp";
    const MoeHfNames hf{block + ".gate", block + ".experts", "w1", "w3", "w2", ""};
    map_moe_weights(spec.layers[i].moe, spec.hidden_size, i, hf, source, mappings);
  }
};

KILN_FAMILY(MixtralFamily);

}  // namespace kiln
