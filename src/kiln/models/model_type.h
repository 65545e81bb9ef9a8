// The conventions HuggingFace architectures follow without stating them in config.json, by
// model_type: one table for the spec detector (models/detect_spec.h) and the feature report
// (analyze/detect.h), so that the two cannot disagree.
#pragma once

#include <initializer_list>
#include <string>

#include "kiln/io/hf_config.h"
#include "kiln/models/model_spec.h"

namespace kiln {

// The norm a config implies: its kind, the key its eps comes from ("" when none), and whether
// `norm_type` decided the kind.
struct NormConvention {
  NormKind kind = NormKind::kRms;
  std::string eps_key;
  bool by_norm_type = false;
};

class ModelType {
 public:
  explicit ModelType(std::string type) : type_(std::move(type)) {}
  const std::string& name() const { return type_; }
  bool is(std::initializer_list<const char*> types) const {
    for (const char* t : types)
      if (type_ == t) return true;
    return false;
  }
  bool gemma() const { return type_.rfind("gemma", 0) == 0; }
  bool gemma3() const { return is({"gemma3", "gemma3_text"}); }
  bool llama4() const { return is({"llama4", "llama4_text"}); }
  bool falcon() const { return is({"falcon", "RefinedWeb", "RefinedWebModel"}); }
  // MLP up -> act -> down (no gate), LayerNorms.
  bool plain_mlp() const {
    return falcon() || is({"gpt2", "gpt_neox", "phi", "starcoder2", "gptj", "gpt_bigcode", "opt",
                           "bloom", "codegen", "gpt_neo", "persimmon"});
  }
  // Biases on every projection unless the config says otherwise.
  bool biased_projections() const {
    return is({"gpt2", "gpt_neox", "phi", "gpt_bigcode", "opt", "bloom", "starcoder2"});
  }
  // Biases on the MLP unless the config says otherwise.
  bool biased_mlp() const {
    return is({"gpt2", "gpt_neox", "phi", "gptj", "gpt_bigcode", "opt", "bloom", "persimmon",
               "codegen", "starcoder2"});
  }
  // The config class defaults tie_word_embeddings to true.
  bool tied_by_default() const { return gemma() || falcon() || is({"gpt2", "starcoder2"}); }
  // Learned absolute positions instead of RoPE.
  bool learned_positions() const { return is({"gpt2", "gpt_neo", "gpt_bigcode", "opt"}); }
  // RoPE on pairs (2i, 2i + 1) unless `rope_interleave` says otherwise.
  bool interleaved_rope() const {
    return llama4() || is({"deepseek_v2", "deepseek_v3", "gptj", "codegen", "glm", "chatglm"});
  }
  // Stacked experts [E, hidden, 2 I] with gate and up columns alternating (gpt-oss), not halves.
  bool interleaved_stacked_experts() const { return is({"gpt_oss"}); }
  // transformers adds the attention output into the MLP's output tensor in place (parallel
  // Falcon blocks): a captured `mlp` output is their sum.
  bool mlp_output_includes_attention() const { return falcon(); }
  // The module transformers names for a weightless QK norm (it has no tensor to find it by):
  // Llama 4's L2 norm is one `qk_norm` module called on the queries, then the keys.
  std::string weightless_qk_norm_module() const { return llama4() ? "qk_norm" : ""; }
  // The norm `config` implies for this model_type.
  NormConvention norm(const HfConfig& config) const;

 private:
  std::string type_;
};

// The module path transformers (>= 5) gives the module a checkpoint names `module` after it
// renames at load time (Mixtral's block_sparse_moe is its mlp, GPT-NeoX's embed_out its
// lm_head), or `module` itself.
std::string transformers_module_path(const std::string& module);

}  // namespace kiln
