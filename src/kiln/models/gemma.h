// The Gemma family and the base of Gemma 2 and Gemma 3, which read as "like Gemma, except".
#pragma once

#include <string>
#include <vector>

#include "kiln/models/llama.h"

namespace kiln {

// Gemma: like Llama, except RMSNorm with (1 + w), GeGLU with the tanh GELU
// (`hidden_activation`), embeddings multiplied by sqrt(hidden_size) and tied embeddings by
// default.
class GemmaFamily : public LlamaFamily {
 public:
  std::string name() const override { return "gemma"; }
  std::vector<std::string> architectures() const override { return {"GemmaForCausalLM"}; }
  std::vector<std::string> model_types() const override { return {"gemma"}; }
  HfModuleNames hf_modules(const ModelSpec& spec) const override;

 protected:
  void apply_differences(const HfConfig& config, ModelSpec& spec) const override;
  // Gemma 2/3 alternation: `layer_types` when given, else every `pattern`-th layer full and
  // the others sliding. Returns one "sliding_attention" / "full_attention" per layer.
  static std::vector<std::string> layer_types(const HfConfig& config, int64_t layers,
                                              int64_t pattern);
};

// Gemma 2: like Gemma, except sandwich norms, attention logit soft-capping, final logit
// soft-capping, a softmax scale of query_pre_attn_scalar^-0.5, and sliding-window attention
// on alternate layers.
class Gemma2Family : public GemmaFamily {
 public:
  std::string name() const override { return "gemma2"; }
  std::vector<std::string> architectures() const override { return {"Gemma2ForCausalLM"}; }
  std::vector<std::string> model_types() const override { return {"gemma2"}; }
  HfModuleNames hf_modules(const ModelSpec& spec) const override;

 protected:
  void apply_differences(const HfConfig& config, ModelSpec& spec) const override;
  // Layers alternate sliding/full every `pattern` layers unless `layer_types` says otherwise.
  virtual int64_t default_sliding_pattern(const HfConfig&) const { return 2; }
};

}  // namespace kiln
