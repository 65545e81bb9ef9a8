// GPT-2: like Llama, except for learned absolute positions instead of RoPE, LayerNorm with
// biases, biases on every projection, an ungated MLP (gelu_new), tied embeddings, and
// weights stored by Conv1D as [in, out] with Q, K and V fused in one `c_attn`.
#include <cmath>

#include "kiln/core/error.h"
#include "kiln/models/config_to_spec.h"
#include "kiln/models/family.h"
#include "kiln/models/weight_mappings.h"
#include "kiln/models/weight_names.h"

namespace kiln {

class Gpt2Family : public Family {
 public:
  std::string name() const override { return "gpt2"; }
  std::vector<std::string> architectures() const override { return {"GPT2LMHeadModel"}; }
  std::vector<std::string> model_types() const override { return {"gpt2"}; }

  ModelSpec build_spec(const HfConfig& config) const override {
    ModelSpec spec;
    spec.architecture = config.architecture();
    spec.vocab_size = config.get_int("vocab_size");
    spec.hidden_size = config.get_int("n_embd");
    spec.max_position_embeddings = config.get_int("n_positions");
    spec.learned_positions = true;
    spec.tie_word_embeddings = config.get_bool("tie_word_embeddings", true);
    spec.bos_token_ids = config.get_int_list("bos_token_id");
    spec.eos_token_ids = config.get_int_list("eos_token_id");
    const int64_t layers = config.get_int("n_layer");
    const int64_t heads = config.get_int("n_head");
    check(layers > 0 && heads > 0 && spec.hidden_size % heads == 0,
          config.source() + ": n_layer and n_head must be positive and divide n_embd");
    check(!config.get_bool("add_cross_attention", false),
          config.source() + ": key 'add_cross_attention': cross-attention is not supported");
    const NormSpec norm{NormKind::kLayerNorm,
                        static_cast<float>(config.get_double("layer_norm_epsilon", 1e-5))};
    const bool scale_by_head_dim = config.get_bool("scale_attn_weights", true);
    const bool scale_by_layer = config.get_bool("scale_attn_by_inverse_layer_idx", false);
    config.get("n_ctx");  // the same context as n_positions in old configs

    LayerSpec layer;
    layer.norm = norm;
    AttentionSpec& a = layer.attention;
    a.num_heads = a.num_kv_heads = heads;
    a.head_dim = a.value_head_dim = spec.hidden_size / heads;
    a.q_bias = a.k_bias = a.v_bias = a.o_bias = true;
    a.rope.type = RopeType::kNone;
    layer.mlp.intermediate = config.get_int("n_inner", 4 * spec.hidden_size);
    layer.mlp.gated = false;
    layer.mlp.activation = activation_from_config(config, "activation_function");
    layer.mlp.bias = true;
    for (int64_t i = 0; i < layers; ++i) {
      // 1/sqrt(head_dim) (or 1), divided by the layer's 1-based index when asked.
      const double scale =
          (scale_by_head_dim ? 1.0 / std::sqrt(static_cast<double>(a.head_dim)) : 1.0) /
          (scale_by_layer ? static_cast<double>(i + 1) : 1.0);
      a.scale = static_cast<float>(scale);
      spec.layers.push_back(layer);
    }
    spec.final_norm = norm;
    return spec;
  }

  std::vector<WeightMapping> map_weights(const ModelSpec& spec,
                                         const TensorSource& source) const override {
    // Checkpoints of GPT2LMHeadModel prefix the body with "transformer."; those saved from
    // GPT2Model (the original hub ones) do not.
    const std::string body = source.contains("transformer.wte.weight") ? "transformer." : "";
    const int64_t hidden = spec.hidden_size;
    WeightMappingList list;
    list.rename(names::embedding(names::token_embedder()), body + "wte.weight",
                {spec.vocab_size, hidden});
    list.rename(names::embedding(names::position_embedder()), body + "wpe.weight",
                {spec.max_position_embeddings, hidden});
    for (int64_t i = 0; i < spec.num_layers(); ++i) {
      const LayerSpec& layer = spec.layers[i];
      const std::string hf = body + "h." + std::to_string(i) + ".";
      const std::string attention = names::attention(i);
      list.norm(names::input_norm(i), hf + "ln_1", layer.norm, hidden);
      const char* parts[] = {"query", "key", "value"};
      for (int64_t p = 0; p < 3; ++p) {
        const std::string module = names::child(attention, parts[p]);
        list.derive(names::kernel(module), hf + "attn.c_attn.weight", {hidden, hidden},
                    [=](const Tensor& t) { return fused_rows(transposed(t), p * hidden, hidden); });
        list.derive(names::bias(module), hf + "attn.c_attn.bias", {hidden},
                    [=](const Tensor& t) { return fused_rows(t, p * hidden, hidden); });
      }
      conv1d(list, names::child(attention, "out"), hf + "attn.c_proj", hidden, hidden);
      list.norm(names::post_attention_norm(i), hf + "ln_2", layer.norm, hidden);
      conv1d(list, names::mlp_up(i), hf + "mlp.c_fc", layer.mlp.intermediate, hidden);
      conv1d(list, names::mlp_down(i), hf + "mlp.c_proj", hidden, layer.mlp.intermediate);
    }
    list.norm(names::final_norm(), body + "ln_f", spec.final_norm, hidden);
    if (!spec.tie_word_embeddings)
      list.rename(names::kernel(names::lm_head()), "lm_head.weight", {spec.vocab_size, hidden});
    return list.take();
  }

  HfModuleNames hf_modules(const ModelSpec&) const override {
    HfModuleNames names;
    names.embedding = "";  // Kiln reports wte + wpe: compared as hidden_states.0
    names.layers = "transformer.h";
    names.input_norm = "ln_1";
    names.attention = "attn";
    names.attention_parts = {{"out", "c_proj"}};
    names.post_attention_norm = "ln_2";
    names.mlp_parts = {{"wo", "c_proj"}};
    names.final_norm = "transformer.ln_f";
    const std::string sum =
        "Kiln reports the sum of token and position embeddings (compared "
        "as hidden_states.0)";
    names.not_compared = {
        {"transformer.wte", sum},
        {"transformer.wpe", sum},
        {"attn.c_attn", "fused QKV projection: Kiln splits it into query, key and value at load"}};
    return names;
  }

 private:
  // A Conv1D (weight [in, out], bias [out]) as a Kiln linear module ([out, in] kernel).
  static void conv1d(WeightMappingList& list, const std::string& module, const std::string& hf,
                     int64_t out, int64_t in) {
    list.derive(names::kernel(module), hf + ".weight", {out, in}, transposed);
    list.rename(names::bias(module), hf + ".bias", {out});
  }
};

KILN_FAMILY(Gpt2Family);

}  // namespace kiln
