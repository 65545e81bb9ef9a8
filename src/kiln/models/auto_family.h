// The generic route: a model brought up without a family written for it. The spec comes
// from detect_spec() (models/detect_spec.h) refined by what the checkpoint's tensors show
// (biases, QK norms, norm placement, gating, tying), and the weights are placed by
// HfTensorNames, the checkpoint's module names discovered from tensor names and shapes.
// The same HfTensorNames and a list of spec overrides make a family file
// (models/family_file.h), which loads like a built-in family.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/io/json.h"
#include "kiln/models/family.h"

namespace kiln {

// How a checkpoint names its modules: decoder layer i is `<layers>.<i>`, the per-layer
// entries are relative to it; "" where the checkpoint has no such module.
struct HfTensorNames {
  std::string embedding, positions, final_norm, lm_head;  // absolute module paths
  std::string layers;
  std::string input_norm, post_attention_norm, pre_ffw_norm, post_ffw_norm;
  std::string attention;  // module of the attention: self_attn, attention, attn, ...
  std::string query, key, value, out, query_norm, key_norm, sinks;  // children of attention
  std::string qkv;         // a fused QKV projection (child of attention), "" when separate
  std::string qkv_layout;  // "contiguous" ([q; k; v] rows) or "grouped" (per KV head)
  bool conv1d = false;     // 2-D weights stored [in, out] (GPT-2's Conv1D)
  // Latent attention (children of attention).
  std::string q_a, q_a_norm, q_b, kv_a, kv_a_norm, kv_b;
  std::string mlp;                      // dense feed-forward module
  std::string gate, up, down, gate_up;  // children of mlp
  std::string moe;                      // mixture-of-experts module
  std::string router, experts, expert_gate, expert_up, expert_down, shared, shared_gate;
  // Stacked experts stored [E, hidden, 2 I]: "input_major" (gate columns, then up: Llama 4)
  // or "input_major_interleaved" (gate and up alternate: gpt-oss); "" for per-expert tensors
  // or transformers' [E, 2 I, hidden].
  std::string expert_layout;

  Json to_json() const;
  // Throws Error naming `where` and the key for unknown keys or values of the wrong type.
  static HfTensorNames from_json(const Json& json, const std::string& where);
};

// The HF module names of every tensor in `source`, found by name and shape for `spec`.
// Throws Error when the layers or a required module cannot be found.
// `model_type` settles what shapes cannot (gpt-oss interleaves its stacked gate/up columns).
HfTensorNames discover_tensor_names(const ModelSpec& spec, const TensorSource& source,
                                    const std::string& model_type);

// What the tensors say that config.json may not: attention and MLP biases, QK norms (per
// head or whole projection), norm placement (pre, post, sandwich, parallel with one shared
// norm), gated or plain MLP, LayerNorm bias, tied embeddings, lm_head bias, learned
// positions, final norm, attention sinks, shared experts and their gate, router bias and
// correction bias, expert biases.
void refine_spec_from_tensors(ModelSpec& spec, const HfTensorNames& names,
                              const TensorSource& source);

// Every Kiln tensor of `spec` from the checkpoint's tensors named by `names`. With
// `require_all_placed`, a tensor of `source` that no mapping reads is an error listing
// every such name (buffers such as rotary inv_freq and GPT-2's attention masks excepted).
std::vector<WeightMapping> map_weights_by_names(const ModelSpec& spec, const HfTensorNames& names,
                                                const TensorSource& source,
                                                bool require_all_placed);

// The HF module paths verify compares Kiln's activations with, from the tensor names.
HfModuleNames module_names_from(const ModelSpec& spec, const HfTensorNames& names,
                                const std::string& model_type);

// The generic family (`--family auto`): detect_spec(), refined from the tensors, mapped by
// the discovered names. One instance per model (it keeps the names it found).
class AutoFamily : public Family {
 public:
  std::string name() const override { return "auto"; }
  std::vector<std::string> architectures() const override { return {}; }
  std::vector<std::string> model_types() const override { return {}; }
  ModelSpec build_spec(const HfConfig& config) const override;
  void refine_spec(ModelSpec& spec, const TensorSource& source) const override;
  std::vector<WeightMapping> map_weights(const ModelSpec& spec,
                                         const TensorSource& source) const override;
  HfModuleNames hf_modules(const ModelSpec& spec) const override;
  // The names found by the last refine_spec() / map_weights().
  const HfTensorNames& tensor_names() const { return names_; }
  // Uses `names` (of a checkpoint of `model_type`) instead of discovering them.
  void set_names(const HfTensorNames& names, const std::string& model_type) {
    names_ = names;
    model_type_ = model_type;
  }

 private:
  mutable HfTensorNames names_;
  mutable std::string model_type_;
};

}  // namespace kiln
