// DeepSeek-V3: like Llama, except for multi-head latent attention (query LoRA, one
// compressed KV latent and rotary key per token, decoupled rotary dimensions with
// DeepSeek's interleaved pairs, YaRN's mscale squared on the softmax scale) and
// mixture-of-experts blocks from layer `first_k_dense_replace` on (sigmoid router with
// score correction and group-limited selection, routed scaling, shared experts).
#include <cmath>

#include "kiln/core/error.h"
#include "kiln/models/llama.h"
#include "kiln/models/moe_weights.h"
#include "kiln/models/rope_config.h"
#include "kiln/models/weight_names.h"

namespace kiln {

namespace {
// YaRN's attention multiplier 0.1 mscale ln(factor) + 1 (1 when factor <= 1).
double yarn_mscale(double factor, double mscale) {
  return factor <= 1.0 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0;
}

void expect_value(const HfConfig& config, const std::string& key, const std::string& supported) {
  if (!config.has(key)) return;
  const std::string value = config.get_string(key);
  check(value == supported, config.source() + ": key '" + key + "' is '" + value +
                                "'; Kiln's DeepSeek-V3 router supports '" + supported + "'");
}
}  // namespace

class DeepseekV3Family : public LlamaFamily {
 public:
  std::string name() const override { return "deepseek_v3"; }
  std::vector<std::string> architectures() const override { return {"DeepseekV3ForCausalLM"}; }
  std::vector<std::string> model_types() const override { return {"deepseek_v3"}; }

  HfModuleNames hf_modules(const ModelSpec& spec) const override {
    const bool query_lora = spec.layers.at(0).attention.q_lora_rank > 0;
    HfModuleNames names;
    names.attention_parts = {{"wq_a", "q_a_proj"},
                             {"q_norm", "q_a_layernorm"},
                             {"query", query_lora ? "q_b_proj" : "q_proj"},
                             {"wkv_a", "kv_a_proj_with_mqa"},
                             {"kv_norm", "kv_a_layernorm"},
                             {"out", "o_proj"}};
    names.not_compared = {
        {"self_attn.kv_b_proj",
         "Kiln applies wkv_b to the cached latents inside the attention (absorbed into the "
         "query and output when decoding)"},
        {"mlp.shared_experts",
         "Kiln adds the shared experts inside the MoE block, whose output is compared"}};
    return names;
  }

 protected:
  void apply_differences(const HfConfig& config, ModelSpec& spec) const override {
    const int64_t nope = config.get_int("qk_nope_head_dim");
    const int64_t rope_dim = config.get_int("qk_rope_head_dim");
    RopeSpec rope = rope_spec_from_config(config, "", rope_dim);
    rope.interleaved = config.get_bool("rope_interleave", true);
    double scale = 1.0 / std::sqrt(static_cast<double>(nope + rope_dim));
    if (rope.type != RopeType::kDefault && rope.mscale_all_dim != 0) {
      const double mscale = yarn_mscale(rope.factor, rope.mscale_all_dim);
      scale *= mscale * mscale;
    }
    const bool attention_bias = config.get_bool("attention_bias", false);
    const int64_t q_rank = config.get_int("q_lora_rank", 0);
    for (LayerSpec& layer : spec.layers) {
      AttentionSpec& a = layer.attention;
      a.num_kv_heads = a.num_heads;
      a.head_dim = nope + rope_dim;
      a.value_head_dim = config.get_int("v_head_dim");
      a.q_lora_rank = q_rank;
      a.kv_lora_rank = config.get_int("kv_lora_rank");
      a.qk_nope_head_dim = nope;
      a.qk_rope_head_dim = rope_dim;
      a.latent_norm = {NormKind::kRms, 1e-6f};  // transformers builds these norms with eps 1e-6
      a.q_bias = attention_bias && q_rank > 0;
      a.k_bias = a.o_bias = attention_bias;
      a.v_bias = false;
      a.rope = rope;
      a.scale = static_cast<float>(scale);
    }

    expect_value(config, "scoring_func", "sigmoid");
    expect_value(config, "topk_method", "noaux_tc");
    const int64_t experts = config.get_int("n_routed_experts", 0);
    const int64_t first_moe = config.get_int("first_k_dense_replace", 0);
    const int64_t frequency = config.get_int("moe_layer_freq", 1);
    for (int64_t i = 0; i < spec.num_layers(); ++i) {
      if (experts == 0 || i < first_moe || (frequency > 0 && i % frequency != 0)) continue;
      MoeSpec& moe = spec.layers[i].moe;
      moe.num_experts = experts;
      moe.top_k = config.get_int("num_experts_per_tok");
      moe.expert_intermediate = config.get_int("moe_intermediate_size");
      moe.router = RouterKind::kSigmoidGroup;
      moe.norm_topk_prob = config.get_bool("norm_topk_prob", true);
      moe.routed_scaling_factor = config.get_double("routed_scaling_factor", 2.5);
      moe.n_group = config.get_int("n_group", 1);
      moe.topk_group = config.get_int("topk_group", 1);
      moe.score_correction_bias = true;
      moe.num_shared_experts = config.get_int("n_shared_experts", 0);
      moe.shared_intermediate = moe.num_shared_experts * moe.expert_intermediate;
    }
    // qk_head_dim repeats nope + rope; the rest only matter for training or multi-token
    // prediction, which transformers ignores at inference as well.
    config.mark_read(
        {"qk_head_dim", "num_nextn_predict_layers", "ep_size", "aux_loss_alpha", "seq_aux"});
  }

  void map_attention_weights(const ModelSpec& spec, int64_t i, const TensorSource&,
                             std::vector<WeightMapping>& mappings) const override {
    const AttentionSpec& a = spec.layers[i].attention;
    const int64_t hidden = spec.hidden_size, H = a.num_heads, P = a.qk_rope_head_dim;
    const int64_t q_width = H * (a.qk_nope_head_dim + P), R = a.kv_lora_rank;
    const std::string hf = "model.layers." + std::to_string(i) + ".self_attn.";
    const std::string attention = names::attention(i);
    auto rename = [&](const std::string& kiln, const std::string& hf_name, Shape shape) {
      mappings.push_back({kiln, {hf + hf_name}, std::move(shape), {}});
    };
    auto linear = [&](const std::string& kiln, const std::string& hf_name, int64_t out, int64_t in,
                      bool bias) {
      rename(names::kernel(names::child(attention, kiln)), hf_name + ".weight", {out, in});
      if (bias) rename(names::bias(names::child(attention, kiln)), hf_name + ".bias", {out});
    };
    if (a.q_lora_rank > 0) {
      linear("wq_a", "q_a_proj", a.q_lora_rank, hidden, a.q_bias);
      rename(names::scale(names::child(attention, "q_norm")), "q_a_layernorm.weight",
             {a.q_lora_rank});
      linear("wq_b", "q_b_proj", q_width, a.q_lora_rank, false);
    } else {
      linear("query", "q_proj", q_width, hidden, false);
    }
    linear("wkv_a", "kv_a_proj_with_mqa", R + P, hidden, a.k_bias);
    rename(names::scale(names::child(attention, "kv_norm")), "kv_a_layernorm.weight", {R});
    linear("wkv_b", "kv_b_proj", H * (a.qk_nope_head_dim + a.value_head_dim), R, false);
    linear("out", "o_proj", hidden, H * a.value_head_dim, a.o_bias);
  }

  void map_mlp_weights(const ModelSpec& spec, int64_t i, const TensorSource& source,
                       std::vector<WeightMapping>& mappings) const override {
    if (!spec.layers[i].moe.enabled())
      return LlamaFamily::map_mlp_weights(spec, i, source, mappings);
    const std::string block = "model.layers." + std::to_string(i) + ".mlp";
    const MoeHfNames hf{block + ".gate", block + ".experts", "gate_proj",
                        "up_proj",       "down_proj",        block + ".shared_experts"};
    map_moe_weights(spec.layers[i].moe, spec.hidden_size, i, hf, source, mappings);
  }
};

KILN_FAMILY(DeepseekV3Family);

}  // namespace kiln
