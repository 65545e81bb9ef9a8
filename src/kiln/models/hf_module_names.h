// How a HuggingFace architecture names its modules, so that Kiln's captured activations
// (models/weight_names.h) can be compared with a reference dump's `act.<module>.*` and each
// layer part can be fed its reference input in layer tests.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace kiln {

// HF module paths of one family, declared as data (Family::hf_modules()). Decoder layer i is
// `<layers>.<i>`; the per-layer entries are children of the layer, the `*_parts` children of
// `attention` / `mlp`. An empty entry means HF has no module whose output is Kiln's
// activation (GPT-2's fused c_attn has no separate query). The defaults are Llama's names.
struct HfModuleNames {
  std::string embedding = "model.embed_tokens";
  std::string layers = "model.layers";
  std::string input_norm = "input_layernorm";
  std::string attention = "self_attn";
  // Kiln's child activations of the attention (query, key, value, query_norm, key_norm, out;
  // with latent attention also wq_a, q_norm, wkv_a, kv_norm) -> HF children of `attention`.
  std::vector<std::pair<std::string, std::string>> attention_parts = {
      {"query", "q_proj"},      {"key", "k_proj"},      {"value", "v_proj"},
      {"query_norm", "q_norm"}, {"key_norm", "k_norm"}, {"out", "o_proj"}};
  // The norm before the MLP (pre and parallel placements; empty when attention and MLP share
  // the input norm) and, with sandwich norms, the one Kiln calls pre_ffw_norm.
  std::string post_attention_norm = "post_attention_layernorm";
  std::string pre_ffw_norm = "pre_feedforward_layernorm";
  std::string mlp = "mlp";
  // Kiln's child activations of the feed-forward block (wo: the dense MLP's down projection
  // before any post norm; gate: the router's logits; routing: the routing weights over all
  // experts, 0 for those not chosen) -> HF children of `mlp`.
  std::vector<std::pair<std::string, std::string>> mlp_parts = {{"wo", "down_proj"},
                                                                {"gate", "gate"}};
  // The layer child whose output is Kiln's attention (MLP) activation, when that is not
  // `attention` (`mlp`) itself: with a norm after the branch (Gemma 2's sandwich, OLMo 2)
  // Kiln reports the branch after that norm; `attention` (`mlp`) then matches Kiln's
  // `out` (`wo`) part.
  std::string attention_output;
  std::string mlp_output;
  // HF adds the attention output into the MLP's output tensor in place (Falcon), after the
  // reference captured it: the captured `mlp.out` is their sum.
  bool mlp_out_includes_attention = false;
  std::string final_norm = "model.norm";
  std::string lm_head = "lm_head";
  // Why a reference module has no Kiln counterpart: HF path relative to the layer
  // ("self_attn.query_key_value") or absolute ("transformer.wte") -> reason.
  std::vector<std::pair<std::string, std::string>> not_compared;
};

// `<layers>.<i>`: the HF path of decoder layer i.
std::string hf_layer_path(const HfModuleNames& names, int64_t i);

// The HF module paths whose output is the Kiln activation `kiln_activation`
// (names::token_embedder(), names::layer(i), names::mlp(i), ...), in execution order; empty
// when `names` has no counterpart for it.
std::vector<std::string> hf_modules_for(const HfModuleNames& names,
                                        const std::string& kiln_activation);

// Why the reference module `module` is not compared, given the HF modules that are: the
// family's note for it; a declared part the model did not report (a QK norm the spec
// lacks); "dropout" for dropouts; else the nearest compared ancestor.
std::string hf_not_compared_reason(const HfModuleNames& names, const std::string& module,
                                   const std::vector<std::string>& compared);

}  // namespace kiln
