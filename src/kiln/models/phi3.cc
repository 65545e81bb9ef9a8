// Phi-3: like Llama, except that q/k/v come fused in one `qkv_proj` and gate/up in one
// `gate_up_proj` (split at load), RoPE is usually LongRoPE, and `sliding_window` (when set)
// applies to every layer.
#include "kiln/models/llama.h"
#include "kiln/models/weight_transforms.h"

namespace kiln {

class Phi3Family : public LlamaFamily {
 public:
  std::string name() const override { return "phi3"; }
  std::vector<std::string> architectures() const override { return {"Phi3ForCausalLM"}; }
  std::vector<std::string> model_types() const override { return {"phi3"}; }

  std::vector<WeightMapping> map_weights(const ModelSpec& spec,
                                         const TensorSource& source) const override {
    std::vector<WeightMapping> mappings = LlamaFamily::map_weights(spec, source);
    for (WeightMapping& m : mappings) {
      for (int64_t i = 0; i < spec.num_layers(); ++i) {
        const AttentionSpec& a = spec.layers[i].attention;
        const int64_t q = a.num_heads * a.head_dim, kv = a.num_kv_heads * a.head_dim;
        const int64_t inner = spec.layers[i].mlp.intermediate;
        const std::string layer = "model.layers." + std::to_string(i);
        const struct {
          const char* part;
          const char* fused;
          int64_t begin, end;
        } parts[] = {{".self_attn.q_proj.weight", ".self_attn.qkv_proj.weight", 0, q},
                     {".self_attn.k_proj.weight", ".self_attn.qkv_proj.weight", q, q + kv},
                     {".self_attn.v_proj.weight", ".self_attn.qkv_proj.weight", q + kv, q + 2 * kv},
                     {".mlp.gate_proj.weight", ".mlp.gate_up_proj.weight", 0, inner},
                     {".mlp.up_proj.weight", ".mlp.gate_up_proj.weight", inner, 2 * inner}};
        for (const auto& p : parts) {
          if (m.hf_names.at(0) != layer + p.part) continue;
          m.hf_names = {layer + p.fused};
          m.transform = take_rows(p.begin, p.end);
        }
      }
    }
    return mappings;
  }

  HfModuleNames hf_modules(const ModelSpec&) const override {
    HfModuleNames names;
    names.not_compared = {
        {"self_attn.qkv_proj",
         "fused QKV projection: Kiln splits it into query, key and value at load"},
        {"mlp.gate_up_proj", "fused gate and up projections: Kiln splits them at load"}};
    return names;
  }

 protected:
  void apply_differences(const HfConfig& config, ModelSpec& spec) const override {
    const int64_t window = config.get_int("sliding_window", 0);
    for (LayerSpec& layer : spec.layers) {
      layer.attention.sliding_window = window;
      layer.kind = window > 0 ? LayerKind::kSlidingAttention : LayerKind::kFullAttention;
    }
    config.mark_read({"original_max_position_embeddings", "embd_pdrop", "resid_pdrop"});
  }
};

KILN_FAMILY(Phi3Family);

}  // namespace kiln
