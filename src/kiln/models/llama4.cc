// Llama 4 (text): like Llama, except
//   - RoPE pairs interleaved features (transformers' complex rotation), and layers whose
//     `no_rope_layers` entry is 0 use no RoPE at all (default: every
//     `no_rope_layer_interval`-th layer);
//   - the RoPE layers attend within chunks of `attention_chunk_size` (`layer_types`
//     "chunked_attention"), the NoPE layers to the whole context;
//   - `use_qk_norm`: a weightless L2 (RMS) norm of each query and key head after RoPE, on the
//     RoPE layers only;
//   - `attn_temperature_tuning`: NoPE layers scale the query of position p by
//     log(floor((p + 1) / floor_scale) + 1) * attn_scale + 1;
//   - `moe_layers` (default every `interleave_moe_layer_step`-th layer) are mixtures of
//     `num_local_experts` SwiGLU experts of `intermediate_size`: the top `num_experts_per_tok`
//     router logits, each through a sigmoid, weigh the chosen experts' *inputs*; one shared
//     expert of `intermediate_size` adds its output. Dense layers use `intermediate_size_mlp`.
//   - the feed-forward block is named `feed_forward`, its router `router`, its stacked experts
//     `experts.gate_up_proj` [E, hidden, 2 I] and `experts.down_proj` [E, I, hidden].
// Llama4ForConditionalGeneration (model_type llama4): its language model, from `text_config`
// and the tensors under `language_model.` read by a LanguageModelSource (Kiln runs the text
// model only).
#include <set>

#include "kiln/core/error.h"
#include "kiln/models/language_model.h"
#include "kiln/models/llama.h"
#include "kiln/models/moe_weights.h"

namespace kiln {

class Llama4TextFamily : public LlamaFamily {
 public:
  std::string name() const override { return "llama4_text"; }
  std::vector<std::string> architectures() const override { return {"Llama4ForCausalLM"}; }
  std::vector<std::string> model_types() const override { return {"llama4_text"}; }

  HfModuleNames hf_modules(const ModelSpec&) const override {
    HfModuleNames names;
    // One weightless qk_norm module normalizes queries, then keys; the reference keeps its
    // first call (the queries, after RoPE).
    names.attention_parts = {{"query", "q_proj"},
                             {"key", "k_proj"},
                             {"value", "v_proj"},
                             {"query_norm", "qk_norm"},
                             {"out", "o_proj"}};
    names.mlp = "feed_forward";
    names.mlp_parts = {{"wo", "down_proj"}, {"routing", "router"}};
    names.not_compared = {
        {"feed_forward.shared_expert",
         "Kiln adds the shared expert inside the MoE block, whose output is compared"}};
    return names;
  }

 protected:
  std::string hf_name(const std::string& llama_name) const override {
    return replace_parts(llama_name, {{".mlp.", ".feed_forward."}});
  }

  void apply_differences(const HfConfig& config, ModelSpec& spec) const override {
    const int64_t layers = spec.num_layers();
    const std::string& source = config.source();

    // Which layers use RoPE: `no_rope_layers` (1 = RoPE, 0 = NoPE), or every interval-th
    // layer without (transformers also falls back when the list is empty).
    std::vector<bool> use_rope(layers, true);
    const std::vector<int64_t> rope_list = config.get_int_list("no_rope_layers");
    const int64_t interval = config.get_int("no_rope_layer_interval", 4);
    if (!rope_list.empty()) {
      check(static_cast<int64_t>(rope_list.size()) >= layers,
            source + ": key 'no_rope_layers' must list one entry per layer");
      for (int64_t i = 0; i < layers; ++i) use_rope[i] = rope_list[i] != 0;
    } else {
      check(interval > 0, source + ": key 'no_rope_layer_interval' must be positive");
      for (int64_t i = 0; i < layers; ++i) use_rope[i] = (i + 1) % interval != 0;
    }

    // Chunked layers: `layer_types`, by default the RoPE layers.
    const int64_t chunk = config.get_int("attention_chunk_size", 8192);
    const Json& layer_types = config.get("layer_types");
    if (!layer_types.is_null())
      check(layer_types.is_array() && static_cast<int64_t>(layer_types.size()) == layers,
            source + ": key 'layer_types' must list one type per layer");
    const bool qk_norm = config.get_bool("use_qk_norm", true);
    const bool tuning = config.get_bool("attn_temperature_tuning", true);
    const double floor_scale = config.get_double("floor_scale", 8192.0);
    const double attn_scale = config.get_double("attn_scale", 0.1);
    check(!tuning || floor_scale > 0.0, source + ": key 'floor_scale' must be positive");

    for (int64_t i = 0; i < layers; ++i) {
      AttentionSpec& a = spec.layers[i].attention;
      bool chunked = use_rope[i];
      if (!layer_types.is_null()) {
        const Json& type = layer_types[i];
        check(type == "full_attention" || type == "chunked_attention",
              source + ": key 'layer_types' has unknown type " + type.dump());
        chunked = type == "chunked_attention";
      }
      a.chunk_size = chunked ? chunk : 0;
      if (use_rope[i]) {
        a.rope.interleaved = true;
        // transformers' default base for Llama 4 when the config names none.
        if (!config.has("rope_theta") && !config.has("rope_parameters") &&
            !config.has("rope_scaling"))
          a.rope.theta = 500000.0;
        if (qk_norm) a.qk_norm = QkNormKind::kL2;
      } else {
        a.rope.type = RopeType::kNone;
        if (tuning) {
          a.temperature_floor_scale = floor_scale;
          a.temperature_attn_scale = attn_scale;
        }
      }
    }

    // MoE layers: `moe_layers`, else every interleave_moe_layer_step-th layer.
    std::set<int64_t> moe_layers;
    if (config.has("moe_layers")) {
      for (int64_t i : config.get_int_list("moe_layers")) moe_layers.insert(i);
      config.mark_read({"interleave_moe_layer_step"});  // what moe_layers overrides
    } else {
      const int64_t step = config.get_int("interleave_moe_layer_step", 1);
      check(step > 0, source + ": key 'interleave_moe_layer_step' must be positive");
      for (int64_t i = step - 1; i < layers; i += step) moe_layers.insert(i);
    }
    const int64_t dense_intermediate = config.get_int("intermediate_size_mlp", 16384);
    for (int64_t i = 0; i < layers; ++i) {
      LayerSpec& layer = spec.layers[i];
      if (!moe_layers.count(i)) {
        layer.mlp.intermediate = dense_intermediate;
        continue;
      }
      MoeSpec& moe = layer.moe;
      moe.num_experts = config.get_int("num_local_experts", 16);
      moe.top_k = config.get_int("num_experts_per_tok", 1);
      moe.expert_intermediate = layer.mlp.intermediate;  // intermediate_size
      moe.router = RouterKind::kTopKSigmoid;
      moe.weight_expert_input = true;
      moe.num_shared_experts = 1;
      moe.shared_intermediate = layer.mlp.intermediate;
    }
    config.mark_read({"router_aux_loss_coef", "output_router_logits", "router_jitter_noise"});
  }

  void map_mlp_weights(const ModelSpec& spec, int64_t i, const TensorSource& source,
                       std::vector<WeightMapping>& mappings) const override {
    if (!spec.layers[i].moe.enabled())
      return LlamaFamily::map_mlp_weights(spec, i, source, mappings);
    const std::string block = "model.layers." + std::to_string(i) + ".feed_forward";
    MoeHfNames hf{block + ".router", block + ".experts", "gate_proj",
                  "up_proj",         "down_proj",        block + ".shared_expert"};
    hf.stacked_input_major = true;
    map_moe_weights(spec.layers[i].moe, spec.hidden_size, i, hf, source, mappings);
  }
};

KILN_FAMILY(Llama4TextFamily);

class Llama4Family : public Llama4TextFamily {
 public:
  std::string name() const override { return "llama4"; }
  std::vector<std::string> architectures() const override {
    return {"Llama4ForConditionalGeneration"};
  }
  std::vector<std::string> model_types() const override { return {"llama4"}; }
  // The text model's spec from `text_config`, which takes the token ids and embedding tying
  // from the wrapper when it lacks them.
  ModelSpec build_spec(const HfConfig& config) const override {
    const std::optional<HfConfig> text_config = language_model_config(config);
    check(text_config.has_value(),
          config.source() + ": key 'text_config' must be an object holding the language model");
    ModelSpec spec = Llama4TextFamily::build_spec(*text_config);
    spec.architecture = config.architecture();
    return spec;
  }
  // The reference's modules sit under the wrapper's language_model (the tensors are read
  // through a LanguageModelSource, in text-only names).
  HfModuleNames hf_modules(const ModelSpec& spec) const override {
    HfModuleNames names = Llama4TextFamily::hf_modules(spec);
    for (std::string* name : {&names.embedding, &names.layers, &names.final_norm, &names.lm_head})
      *name = "language_model." + *name;
    return names;
  }
};

KILN_FAMILY(Llama4Family);

}  // namespace kiln
