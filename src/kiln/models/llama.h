// The Llama family, and the base of the families that read as "like Llama, except ..."
// (Mistral, Qwen2, Qwen3, Phi, ...): they override name(), the architecture lists and
// apply_differences(), and map_weights() where their HF tensor names differ.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kiln/models/family.h"

namespace kiln {

class LlamaFamily : public Family {
 public:
  std::string name() const override { return "llama"; }
  std::vector<std::string> architectures() const override { return {"LlamaForCausalLM"}; }
  std::vector<std::string> model_types() const override { return {"llama"}; }
  // Llama's reading of config.json, then apply_differences().
  ModelSpec build_spec(const HfConfig& config) const override;
  // HF `model.*` / `lm_head` names (through hf_name()) -> Kiln names: embeddings, norms
  // (biases of LayerNorms, placement), lm_head and its bias as the spec says, and per layer
  // map_attention_weights() and map_mlp_weights().
  std::vector<WeightMapping> map_weights(const ModelSpec& spec,
                                         const TensorSource& source) const override;

 protected:
  // The checkpoint's name of the tensor Llama calls `llama_name`
  // ("model.layers.0.mlp.up_proj.weight", "model.norm.bias", ...): families with other module names
  // rename here.
  virtual std::string hf_name(const std::string& llama_name) const { return llama_name; }
  // `name` with the first occurrence of each `from` replaced by its `to`, in order: the
  // shorthand of hf_name() overrides that rename parts of Llama's names.
  static std::string replace_parts(
      std::string name,
      std::initializer_list<std::pair<std::string_view, std::string_view>> renames);
  // What a derived family changes in the spec Llama's reading produced.
  virtual void apply_differences(const HfConfig& config, ModelSpec& spec) const;
  // Appends the mappings of layer `layer`'s attention: Llama's q/k/v/o projections, their
  // biases and QK norms as the spec says, all plain renames (through hf_name()).
  virtual void map_attention_weights(const ModelSpec& spec, int64_t layer,
                                     const TensorSource& source,
                                     std::vector<WeightMapping>& mappings) const;
  // Appends the mappings of layer `layer`'s feed-forward block: Llama's gate (when gated),
  // up and down projections (and biases), plain renames (through hf_name()).
  virtual void map_mlp_weights(const ModelSpec& spec, int64_t layer, const TensorSource& source,
                               std::vector<WeightMapping>& mappings) const;
  // Qwen-style sliding windows: `sliding_window` counts only when `use_sliding_window` is
  // true, and applies to layers whose `layer_types` entry is "sliding_attention" (without
  // `layer_types`: layers from `max_window_layers` on).
  static void apply_qwen_sliding_window(const HfConfig& config, ModelSpec& spec);
};

}  // namespace kiln
