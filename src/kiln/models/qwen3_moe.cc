// Qwen3-MoE: like Qwen3, except that the feed-forward blocks are mixtures of `num_experts`
// SwiGLU experts of `moe_intermediate_size` (softmax over all experts, then the top
// `num_experts_per_tok`, renormalized when `norm_topk_prob`), on every
// `decoder_sparse_step`-th layer not listed in `mlp_only_layers`; the other layers keep a
// dense MLP of `intermediate_size`.
#include <set>

#include "kiln/models/moe_weights.h"
#include "kiln/models/qwen3.h"

namespace kiln {

class Qwen3MoeFamily : public Qwen3Family {
 public:
  std::string name() const override { return "qwen3_moe"; }
  std::vector<std::string> architectures() const override { return {"Qwen3MoeForCausalLM"}; }
  std::vector<std::string> model_types() const override { return {"qwen3_moe"}; }

 protected:
  void apply_differences(const HfConfig& config, ModelSpec& spec) const override {
    Qwen3Family::apply_differences(config, spec);
    // transformers 5 writes `num_local_experts`, hub checkpoints `num_experts`.
    const int64_t experts = config.has("num_experts") ? config.get_int("num_experts")
                                                      : config.get_int("num_local_experts", 0);
    const int64_t step = config.get_int("decoder_sparse_step", 1);
    const std::vector<int64_t> dense_list = config.get_int_list("mlp_only_layers");
    const std::set<int64_t> dense(dense_list.begin(), dense_list.end());
    for (int64_t i = 0; i < spec.num_layers(); ++i) {
      if (experts == 0 || dense.count(i) || (step > 0 && (i + 1) % step != 0)) continue;
      MoeSpec& moe = spec.layers[i].moe;
      moe.num_experts = experts;
      moe.top_k = config.get_int("num_experts_per_tok");
      moe.expert_intermediate = config.get_int("moe_intermediate_size");
      moe.router = RouterKind::kSoftmaxTopK;
      moe.norm_topk_prob = config.get_bool("norm_topk_prob", false);
    }
    config.mark_read({"router_aux_loss_coef", "output_router_logits"});
  }

  void map_mlp_weights(const ModelSpec& spec, int64_t i, const TensorSource& source,
                       std::vector<WeightMapping>& mappings) const override {
    if (!spec.layers[i].moe.enabled())
      return Qwen3Family::map_mlp_weights(spec, i, source, mappings);
    const std::string block = "model.layers." + std::to_string(i) + ".mlp";
    const MoeHfNames hf{block + ".gate", block + ".experts", "gate_proj",
                        "up_proj",       "down_proj",        ""};
    map_moe_weights(spec.layers[i].moe, spec.hidden_size, i, hf, source, mappings);
  }
};

KILN_FAMILY(Qwen3MoeFamily);

}  // namespace kiln
