// How a HuggingFace architecture names its modules, so that Kiln's captured activations
// (models/weight_names.h) can be compared with a reference dump's `act.<module>.*`.
#pragma once

#include <string>

namespace kiln {

// HF module paths of one family, declared as data. `layer` holds "{i}" for the layer index;
// the per-layer entries are children of the layer, `query`..`key_norm` children of
// `attention`. An empty entry means HF has no module that matches Kiln's activation (GPT-2's
// fused c_attn has no separate query). The defaults are the llama-style names.
struct HfModuleNames {
  std::string embedding = "model.embed_tokens";
  std::string layer = "model.layers.{i}";
  std::string input_norm = "input_layernorm";
  std::string attention = "self_attn";
  std::string query = "q_proj";
  std::string key = "k_proj";
  std::string value = "v_proj";
  std::string query_norm = "q_norm";
  std::string key_norm = "k_norm";
  std::string post_attention_norm = "post_attention_layernorm";  // the norm before the MLP
  std::string pre_ffw_norm = "pre_feedforward_layernorm";        // sandwich placement
  std::string mlp = "mlp";
  // The layer child whose output is Kiln's attention (MLP) activation, when that is not
  // `attention` (`mlp`) itself: with a norm after the branch (Gemma 2's sandwich, OLMo 2)
  // Kiln reports the branch after that norm.
  std::string attention_output;
  std::string mlp_output;
  std::string final_norm = "model.norm";
  std::string lm_head = "lm_head";
};

// The HF module path for a Kiln activation name (names::token_embedder(), names::layer(i),
// names::mlp(i), ...), or "" when `names` has no counterpart for it.
std::string hf_module_for(const HfModuleNames& names, const std::string& kiln_activation);

}  // namespace kiln
