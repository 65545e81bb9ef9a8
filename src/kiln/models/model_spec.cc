#include "kiln/models/model_spec.h"

#include "kiln/core/error.h"
#include "kiln/io/json.h"

namespace kiln {

int64_t ModelSpec::kv_cache_bytes_per_token(int64_t bytes_per_value) const {
  int64_t values = 0;
  for (const LayerSpec& layer : layers) {
    const AttentionSpec& a = layer.attention;
    const int64_t value_dim = a.value_head_dim > 0 ? a.value_head_dim : a.head_dim;
    values += a.is_mla() ? a.kv_lora_rank + a.qk_rope_head_dim
                         : a.num_kv_heads * (a.head_dim + value_dim);
  }
  return values * bytes_per_value;
}

const char* norm_kind_name(NormKind kind) {
  switch (kind) {
    case NormKind::kNone:
      return "none";
    case NormKind::kRms:
      return "rms";
    case NormKind::kRmsOnePlus:
      return "rms_one_plus";
    case NormKind::kLayerNorm:
      return "layer_norm";
    case NormKind::kLayerNormNoBias:
      return "layer_norm_no_bias";
    case NormKind::kNonParametric:
      return "non_parametric";
  }
  return "?";
}

const char* activation_name(Activation activation) {
  switch (activation) {
    case Activation::kSilu:
      return "silu";
    case Activation::kGeluExact:
      return "gelu";
    case Activation::kGeluTanh:
      return "gelu_tanh";
    case Activation::kRelu:
      return "relu";
    case Activation::kReluSquared:
      return "relu_squared";
  }
  return "?";
}

const char* rope_type_name(RopeType type) {
  switch (type) {
    case RopeType::kNone:
      return "none";
    case RopeType::kDefault:
      return "default";
    case RopeType::kLinear:
      return "linear";
    case RopeType::kDynamic:
      return "dynamic";
    case RopeType::kYarn:
      return "yarn";
    case RopeType::kLlama3:
      return "llama3";
    case RopeType::kLongRope:
      return "longrope";
  }
  return "?";
}

const char* router_name(RouterKind router) {
  switch (router) {
    case RouterKind::kSoftmaxTopK:
      return "softmax_top_k";
    case RouterKind::kTopKSoftmax:
      return "top_k_softmax";
    case RouterKind::kSigmoidGroup:
      return "sigmoid_group";
  }
  return "?";
}

const char* placement_name(NormPlacement placement) {
  switch (placement) {
    case NormPlacement::kPre:
      return "pre";
    case NormPlacement::kPost:
      return "post";
    case NormPlacement::kSandwich:
      return "sandwich";
    case NormPlacement::kParallel:
      return "parallel";
  }
  return "?";
}

const char* qk_norm_name(QkNormKind kind) {
  switch (kind) {
    case QkNormKind::kNone:
      return "none";
    case QkNormKind::kPerHead:
      return "per_head";
    case QkNormKind::kWholeProjection:
      return "whole_projection";
  }
  return "?";
}

namespace {
Json norm_json(const NormSpec& norm) {
  return {{"kind", norm_kind_name(norm.kind)}, {"eps", norm.eps}};
}

Json rope_json(const RopeSpec& r) {
  return {{"type", rope_type_name(r.type)},
          {"theta", r.theta},
          {"rotary_dim", r.rotary_dim},
          {"interleaved", r.interleaved},
          {"factor", r.factor},
          {"original_max_position", r.original_max_position},
          {"max_position", r.max_position},
          {"beta_fast", r.beta_fast},
          {"beta_slow", r.beta_slow},
          {"mscale", r.mscale},
          {"mscale_all_dim", r.mscale_all_dim},
          {"attention_factor", r.attention_factor},
          {"truncate", r.truncate},
          {"low_freq_factor", r.low_freq_factor},
          {"high_freq_factor", r.high_freq_factor},
          {"short_factor", r.short_factor},
          {"long_factor", r.long_factor}};
}

Json layer_json(const LayerSpec& layer) {
  const AttentionSpec& a = layer.attention;
  const MoeSpec& m = layer.moe;
  return {
      {"kind", layer.kind == LayerKind::kFullAttention ? "full_attention" : "sliding_attention"},
      {"attention",
       {{"num_heads", a.num_heads},
        {"num_kv_heads", a.num_kv_heads},
        {"head_dim", a.head_dim},
        {"value_head_dim", a.value_head_dim},
        {"q_bias", a.q_bias},
        {"k_bias", a.k_bias},
        {"v_bias", a.v_bias},
        {"o_bias", a.o_bias},
        {"qk_norm", qk_norm_name(a.qk_norm)},
        {"qk_norm_spec", norm_json(a.qk_norm_spec)},
        {"sliding_window", a.sliding_window},
        {"softcap", a.softcap},
        {"scale", a.scale},
        {"rope", rope_json(a.rope)},
        {"q_lora_rank", a.q_lora_rank},
        {"kv_lora_rank", a.kv_lora_rank},
        {"qk_nope_head_dim", a.qk_nope_head_dim},
        {"qk_rope_head_dim", a.qk_rope_head_dim},
        {"latent_norm", norm_json(a.latent_norm)},
        {"sinks", a.sinks}}},
      {"mlp",
       {{"intermediate", layer.mlp.intermediate},
        {"gated", layer.mlp.gated},
        {"activation", activation_name(layer.mlp.activation)},
        {"bias", layer.mlp.bias},
        {"swiglu_limit", layer.mlp.swiglu_limit},
        {"swiglu_alpha", layer.mlp.swiglu_alpha}}},
      {"moe",
       {{"num_experts", m.num_experts},
        {"top_k", m.top_k},
        {"expert_intermediate", m.expert_intermediate},
        {"router", router_name(m.router)},
        {"norm_topk_prob", m.norm_topk_prob},
        {"routed_scaling_factor", m.routed_scaling_factor},
        {"n_group", m.n_group},
        {"topk_group", m.topk_group},
        {"score_correction_bias", m.score_correction_bias},
        {"num_shared_experts", m.num_shared_experts},
        {"shared_intermediate", m.shared_intermediate},
        {"shared_expert_gate", m.shared_expert_gate},
        {"router_bias", m.router_bias},
        {"expert_bias", m.expert_bias},
        {"swiglu_limit", m.swiglu_limit},
        {"swiglu_alpha", m.swiglu_alpha}}},
      {"norm", norm_json(layer.norm)},
      {"placement", placement_name(layer.placement)},
      {"parallel_shared_norm", layer.parallel_shared_norm}};
}
}  // namespace

Json ModelSpec::to_json() const {
  Json layer_list = Json::array();
  for (const LayerSpec& layer : layers) layer_list.push_back(layer_json(layer));
  return {{"family", family},
          {"architecture", architecture},
          {"vocab_size", vocab_size},
          {"hidden_size", hidden_size},
          {"max_position_embeddings", max_position_embeddings},
          {"layers", layer_list},
          {"embedding_scale", embedding_scale},
          {"learned_positions", learned_positions},
          {"tie_word_embeddings", tie_word_embeddings},
          {"final_norm", norm_json(final_norm)},
          {"has_final_norm", has_final_norm},
          {"final_logit_softcap", final_logit_softcap},
          {"logit_scale", logit_scale},
          {"lm_head_bias", lm_head_bias},
          {"bos_token_ids", bos_token_ids},
          {"eos_token_ids", eos_token_ids}};
}

namespace {
// Reads a to_json() object back field by field; every key must be known.
class SpecReader {
 public:
  explicit SpecReader(std::string where) : where_(std::move(where)) {}

  template <typename T>
  void field(const Json& object, const std::string& path, const char* key, T& out) {
    const Json& value = object.at(key);
    try {
      out = value.get<T>();
    } catch (const std::exception&) {
      fail(path + key, "has the wrong type: " + value.dump());
    }
  }
  template <typename E>
  void enum_field(const Json& object, const std::string& path, const char* key, E& out,
                  const char* (*name)(E)) {
    // Enum values are numbered from 0; the name functions answer "?" past the last one.
    int count = 0;
    while (std::string(name(static_cast<E>(count))) != "?") ++count;
    const Json& value = object.at(key);
    if (value.is_string())
      for (int i = 0; i < count; ++i)
        if (value.get<std::string>() == name(static_cast<E>(i))) {
          out = static_cast<E>(i);
          return;
        }
    std::string known;
    for (int i = 0; i < count; ++i)
      known += std::string(known.empty() ? "" : ", ") + name(static_cast<E>(i));
    fail(path + key, "is " + value.dump() + "; known: " + known);
  }
  // Calls `read(key)` for each key of `object`, after checking it is an object.
  template <typename F>
  void each(const Json& object, const std::string& path, F read) {
    if (!object.is_object())
      fail(path.empty() ? "spec" : path.substr(0, path.size() - 1), "must be an object");
    for (auto it = object.begin(); it != object.end(); ++it)
      if (!read(it.key())) fail(path + it.key(), "is not a ModelSpec field");
  }
  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw Error(where_ + ": key '" + key + "' " + what);
  }

  void norm(const Json& json, const std::string& path, NormSpec& out) {
    each(json, path, [&](const std::string& k) {
      if (k == "kind")
        enum_field(json, path, "kind", out.kind, norm_kind_name);
      else if (k == "eps")
        field(json, path, "eps", out.eps);
      else
        return false;
      return true;
    });
  }

  void rope(const Json& json, const std::string& path, RopeSpec& r) {
    each(json, path, [&](const std::string& k) {
      if (k == "type") enum_field(json, path, "type", r.type, rope_type_name);
#define KILN_FIELD(name) else if (k == #name) field(json, path, #name, r.name);
      KILN_FIELD(theta)
      KILN_FIELD(rotary_dim) KILN_FIELD(interleaved) KILN_FIELD(factor)
          KILN_FIELD(original_max_position) KILN_FIELD(max_position) KILN_FIELD(beta_fast)
              KILN_FIELD(beta_slow) KILN_FIELD(mscale) KILN_FIELD(mscale_all_dim)
                  KILN_FIELD(attention_factor) KILN_FIELD(truncate) KILN_FIELD(low_freq_factor)
                      KILN_FIELD(high_freq_factor) KILN_FIELD(short_factor) KILN_FIELD(long_factor)
#undef KILN_FIELD
                          else return false;
      return true;
    });
  }

  void layer(const Json& json, const std::string& path, LayerSpec& layer) {
    each(json, path, [&](const std::string& k) {
      if (k == "kind") {
        const Json& kind = json.at("kind");
        if (kind == "full_attention")
          layer.kind = LayerKind::kFullAttention;
        else if (kind == "sliding_attention")
          layer.kind = LayerKind::kSlidingAttention;
        else
          fail(path + "kind", "is " + kind.dump() + "; known: full_attention, sliding_attention");
      } else if (k == "attention") {
        attention(json.at(k), path + "attention.", layer.attention);
      } else if (k == "mlp") {
        const Json& m = json.at(k);
        const std::string p = path + "mlp.";
        each(m, p, [&](const std::string& key) {
          if (key == "activation")
            enum_field(m, p, "activation", layer.mlp.activation, activation_name);
          else if (key == "intermediate")
            field(m, p, "intermediate", layer.mlp.intermediate);
          else if (key == "gated")
            field(m, p, "gated", layer.mlp.gated);
          else if (key == "bias")
            field(m, p, "bias", layer.mlp.bias);
          else
            return false;
          return true;
        });
      } else if (k == "moe") {
        moe(json.at(k), path + "moe.", layer.moe);
      } else if (k == "norm") {
        norm(json.at(k), path + "norm.", layer.norm);
      } else if (k == "placement") {
        enum_field(json, path, "placement", layer.placement, placement_name);
      } else if (k == "parallel_shared_norm") {
        field(json, path, "parallel_shared_norm", layer.parallel_shared_norm);
      } else {
        return false;
      }
      return true;
    });
  }

  void attention(const Json& json, const std::string& path, AttentionSpec& a) {
    each(json, path, [&](const std::string& k) {
      if (k == "qk_norm")
        enum_field(json, path, "qk_norm", a.qk_norm, qk_norm_name);
      else if (k == "qk_norm_spec")
        norm(json.at(k), path + "qk_norm_spec.", a.qk_norm_spec);
      else if (k == "latent_norm")
        norm(json.at(k), path + "latent_norm.", a.latent_norm);
      else if (k == "rope")
        rope(json.at(k), path + "rope.", a.rope);
#define KILN_FIELD(name) else if (k == #name) field(json, path, #name, a.name);
      KILN_FIELD(num_heads)
      KILN_FIELD(num_kv_heads) KILN_FIELD(head_dim) KILN_FIELD(value_head_dim) KILN_FIELD(q_bias)
          KILN_FIELD(k_bias) KILN_FIELD(v_bias) KILN_FIELD(o_bias) KILN_FIELD(sliding_window)
              KILN_FIELD(softcap) KILN_FIELD(scale) KILN_FIELD(q_lora_rank) KILN_FIELD(kv_lora_rank)
                  KILN_FIELD(qk_nope_head_dim) KILN_FIELD(qk_rope_head_dim)
#undef KILN_FIELD
                      else return false;
      return true;
    });
  }

  void moe(const Json& json, const std::string& path, MoeSpec& m) {
    each(json, path, [&](const std::string& k) {
      if (k == "router") enum_field(json, path, "router", m.router, router_name);
#define KILN_FIELD(name) else if (k == #name) field(json, path, #name, m.name);
      KILN_FIELD(num_experts)
      KILN_FIELD(top_k) KILN_FIELD(expert_intermediate) KILN_FIELD(norm_topk_prob)
          KILN_FIELD(routed_scaling_factor) KILN_FIELD(n_group) KILN_FIELD(topk_group)
              KILN_FIELD(score_correction_bias) KILN_FIELD(num_shared_experts)
                  KILN_FIELD(shared_intermediate) KILN_FIELD(shared_expert_gate)
#undef KILN_FIELD
                      else return false;
      return true;
    });
  }

  ModelSpec spec(const Json& json) {
    ModelSpec s;
    each(json, "", [&](const std::string& k) {
      if (k == "layers") {
        const Json& list = json.at(k);
        if (!list.is_array()) fail("layers", "must be an array");
        s.layers.resize(list.size());
        for (size_t i = 0; i < list.size(); ++i)
          layer(list[i], "layers[" + std::to_string(i) + "].", s.layers[i]);
      } else if (k == "final_norm") {
        norm(json.at(k), "final_norm.", s.final_norm);
      }
#define KILN_FIELD(name) else if (k == #name) field(json, "", #name, s.name);
      KILN_FIELD(family)
      KILN_FIELD(architecture) KILN_FIELD(vocab_size) KILN_FIELD(hidden_size)
          KILN_FIELD(max_position_embeddings) KILN_FIELD(embedding_scale)
              KILN_FIELD(learned_positions) KILN_FIELD(tie_word_embeddings)
                  KILN_FIELD(has_final_norm) KILN_FIELD(final_logit_softcap) KILN_FIELD(logit_scale)
                      KILN_FIELD(lm_head_bias) KILN_FIELD(bos_token_ids) KILN_FIELD(eos_token_ids)
#undef KILN_FIELD
                          else return false;
      return true;
    });
    return s;
  }

 private:
  std::string where_;
};
}  // namespace

ModelSpec ModelSpec::from_json(const Json& json, const std::string& where) {
  return SpecReader(where).spec(json);
}

}  // namespace kiln
