// Gemma 3 (text): like Gemma 2, except per-head QK norms (RMSNorm with 1 + w), a RoPE of its
// own for sliding layers (local base, no scaling), sliding layers five out of six by
// default, and no soft-capping unless the config asks for it.
#include "kiln/core/error.h"
#include "kiln/models/gemma.h"
#include "kiln/models/language_model.h"
#include "kiln/models/rope_config.h"

namespace kiln {

class Gemma3TextFamily : public Gemma2Family {
 public:
  std::string name() const override { return "gemma3_text"; }
  std::vector<std::string> architectures() const override { return {"Gemma3ForCausalLM"}; }
  std::vector<std::string> model_types() const override { return {"gemma3_text"}; }
  HfModuleNames hf_modules(const ModelSpec& spec) const override {
    HfModuleNames names = Gemma2Family::hf_modules(spec);
    names.embedding = "model.embed_tokens";  // Gemma 3's embedding module scales itself
    std::erase_if(names.not_compared,
                  [&](const auto& note) { return note.first == names.embedding; });
    return names;
  }

 protected:
  int64_t default_sliding_pattern(const HfConfig& config) const override {
    return config.get_int("sliding_window_pattern", 6);
  }
  void apply_differences(const HfConfig& config, ModelSpec& spec) const override {
    Gemma2Family::apply_differences(config, spec);
    const bool local_base_given =
        config.has("rope_parameters") || config.has("rope_local_base_freq");
    for (LayerSpec& layer : spec.layers) {
      AttentionSpec& a = layer.attention;
      a.qk_norm = QkNormKind::kPerHead;
      const bool sliding = layer.kind == LayerKind::kSlidingAttention;
      a.rope = rope_spec_from_config(config, sliding ? "sliding_attention" : "full_attention",
                                     a.head_dim);
      if (sliding && !local_base_given) {  // transformers' default local base
        a.rope = RopeSpec{};
        a.rope.rotary_dim = a.head_dim;
        a.rope.theta = 10000.0;
      }
    }
    config.mark_read({"_sliding_window_pattern"});
  }
};

KILN_FAMILY(Gemma3TextFamily);

// Gemma3ForConditionalGeneration (model_type gemma3): its language model, from `text_config`
// with Gemma3TextConfig's defaults and the tensors under the wrapper's language_model read by a
// LanguageModelSource (Kiln runs the text model; the SigLIP tower is set aside).
class Gemma3Family : public Gemma3TextFamily {
 public:
  std::string name() const override { return "gemma3"; }
  std::vector<std::string> architectures() const override {
    return {"Gemma3ForConditionalGeneration"};
  }
  std::vector<std::string> model_types() const override { return {"gemma3"}; }
  ModelSpec build_spec(const HfConfig& config) const override {
    const std::optional<HfConfig> text_config = language_model_config(config);
    check(text_config.has_value(),
          config.source() + ": key 'text_config' must be an object holding the language model");
    ModelSpec spec = Gemma3TextFamily::build_spec(*text_config);
    spec.architecture = config.architecture();
    return spec;
  }
  HfModuleNames hf_modules(const ModelSpec& spec) const override {
    HfModuleNames names = Gemma3TextFamily::hf_modules(spec);
    for (std::string* name : {&names.embedding, &names.layers, &names.final_norm})
      *name = "model.language_model." + name->substr(std::string("model.").size());
    return names;
  }
};

KILN_FAMILY(Gemma3Family);

}  // namespace kiln
