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
    case RouterKind::kTopKSigmoid:
      return "top_k_sigmoid";
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
    case QkNormKind::kL2:
      return "l2";
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
        {"sinks", a.sinks},
        {"chunk_size", a.chunk_size},
        {"temperature_floor_scale", a.temperature_floor_scale},
        {"temperature_attn_scale", a.temperature_attn_scale}}},
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
        {"swiglu_alpha", m.swiglu_alpha},
        {"weight_expert_input", m.weight_expert_input}}},
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

  ModelSpec spec(const Json& json) {
    ModelSpec s;
    each(json, "", [&](const std::string& k, const std::string& p) {
      if (k == "layers") {
        const Json& list = json.at(k);
        if (!list.is_array()) fail("layers", "must be an array");
        s.layers.resize(list.size());
        for (size_t i = 0; i < list.size(); ++i)
          layer(list[i], "layers[" + std::to_string(i) + "].", s.layers[i]);
        return true;
      }
      return (k == "final_norm" && norm(json.at(k), p + "final_norm.", s.final_norm)) ||
             read(json, p, k, "family", s.family) ||
             read(json, p, k, "architecture", s.architecture) ||
             read(json, p, k, "vocab_size", s.vocab_size) ||
             read(json, p, k, "hidden_size", s.hidden_size) ||
             read(json, p, k, "max_position_embeddings", s.max_position_embeddings) ||
             read(json, p, k, "embedding_scale", s.embedding_scale) ||
             read(json, p, k, "learned_positions", s.learned_positions) ||
             read(json, p, k, "tie_word_embeddings", s.tie_word_embeddings) ||
             read(json, p, k, "has_final_norm", s.has_final_norm) ||
             read(json, p, k, "final_logit_softcap", s.final_logit_softcap) ||
             read(json, p, k, "logit_scale", s.logit_scale) ||
             read(json, p, k, "lm_head_bias", s.lm_head_bias) ||
             read(json, p, k, "bos_token_ids", s.bos_token_ids) ||
             read(json, p, k, "eos_token_ids", s.eos_token_ids);
    });
    return s;
  }

 private:
  // Calls `read(key, path)` for each key of `object` (an object); a key it does not take
  // (returns false) is an error.
  template <typename F>
  void each(const Json& object, const std::string& path, F read_key) {
    if (!object.is_object())
      fail(path.empty() ? "spec" : path.substr(0, path.size() - 1), "must be an object");
    for (auto it = object.begin(); it != object.end(); ++it)
      if (!read_key(it.key(), path)) fail(path + it.key(), "is not a ModelSpec field");
  }
  // Reads `object[key]` into `out` when `k` is `key`.
  template <typename T>
  bool read(const Json& object, const std::string& path, const std::string& k, const char* key,
            T& out) {
    if (k != key) return false;
    const Json& value = object.at(key);
    try {
      out = value.get<T>();
    } catch (const std::exception&) {
      fail(path + key, "has the wrong type: " + value.dump());
    }
    return true;
  }
  // Reads the enum named by `object[key]` (name(E) spells each value) when `k` is `key`.
  template <typename E>
  bool read_enum(const Json& object, const std::string& path, const std::string& k, const char* key,
                 E& out, const char* (*name)(E)) {
    if (k != key) return false;
    // Enum values are numbered from 0; the name functions answer "?" past the last one.
    int count = 0;
    while (std::string(name(static_cast<E>(count))) != "?") ++count;
    const Json& value = object.at(key);
    std::string known;
    for (int i = 0; i < count; ++i) {
      if (value.is_string() && value.get<std::string>() == name(static_cast<E>(i))) {
        out = static_cast<E>(i);
        return true;
      }
      known += std::string(known.empty() ? "" : ", ") + name(static_cast<E>(i));
    }
    fail(path + key, "is " + value.dump() + "; known: " + known);
  }
  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw Error(where_ + ": key '" + key + "' " + what);
  }

  bool norm(const Json& json, const std::string& path, NormSpec& out) {
    each(json, path, [&](const std::string& k, const std::string& p) {
      return read_enum(json, p, k, "kind", out.kind, norm_kind_name) ||
             read(json, p, k, "eps", out.eps);
    });
    return true;
  }

  bool rope(const Json& json, const std::string& path, RopeSpec& r) {
    each(json, path, [&](const std::string& k, const std::string& p) {
      return read_enum(json, p, k, "type", r.type, rope_type_name) ||
             read(json, p, k, "theta", r.theta) || read(json, p, k, "rotary_dim", r.rotary_dim) ||
             read(json, p, k, "interleaved", r.interleaved) ||
             read(json, p, k, "factor", r.factor) ||
             read(json, p, k, "original_max_position", r.original_max_position) ||
             read(json, p, k, "max_position", r.max_position) ||
             read(json, p, k, "beta_fast", r.beta_fast) ||
             read(json, p, k, "beta_slow", r.beta_slow) || read(json, p, k, "mscale", r.mscale) ||
             read(json, p, k, "mscale_all_dim", r.mscale_all_dim) ||
             read(json, p, k, "attention_factor", r.attention_factor) ||
             read(json, p, k, "truncate", r.truncate) ||
             read(json, p, k, "low_freq_factor", r.low_freq_factor) ||
             read(json, p, k, "high_freq_factor", r.high_freq_factor) ||
             read(json, p, k, "short_factor", r.short_factor) ||
             read(json, p, k, "long_factor", r.long_factor);
    });
    return true;
  }

  void layer(const Json& json, const std::string& path, LayerSpec& layer) {
    each(json, path, [&](const std::string& k, const std::string& p) {
      if (k == "kind") {
        const Json& kind = json.at("kind");
        if (kind != "full_attention" && kind != "sliding_attention")
          fail(p + "kind", "is " + kind.dump() + "; known: full_attention, sliding_attention");
        layer.kind =
            kind == "full_attention" ? LayerKind::kFullAttention : LayerKind::kSlidingAttention;
        return true;
      }
      return (k == "attention" && attention(json.at(k), p + "attention.", layer.attention)) ||
             (k == "mlp" && mlp(json.at(k), p + "mlp.", layer.mlp)) ||
             (k == "moe" && moe(json.at(k), p + "moe.", layer.moe)) ||
             (k == "norm" && norm(json.at(k), p + "norm.", layer.norm)) ||
             read_enum(json, p, k, "placement", layer.placement, placement_name) ||
             read(json, p, k, "parallel_shared_norm", layer.parallel_shared_norm);
    });
  }

  bool attention(const Json& json, const std::string& path, AttentionSpec& a) {
    each(json, path, [&](const std::string& k, const std::string& p) {
      return read_enum(json, p, k, "qk_norm", a.qk_norm, qk_norm_name) ||
             (k == "qk_norm_spec" && norm(json.at(k), p + k + ".", a.qk_norm_spec)) ||
             (k == "latent_norm" && norm(json.at(k), p + k + ".", a.latent_norm)) ||
             (k == "rope" && rope(json.at(k), p + k + ".", a.rope)) ||
             read(json, p, k, "num_heads", a.num_heads) ||
             read(json, p, k, "num_kv_heads", a.num_kv_heads) ||
             read(json, p, k, "head_dim", a.head_dim) ||
             read(json, p, k, "value_head_dim", a.value_head_dim) ||
             read(json, p, k, "q_bias", a.q_bias) || read(json, p, k, "k_bias", a.k_bias) ||
             read(json, p, k, "v_bias", a.v_bias) || read(json, p, k, "o_bias", a.o_bias) ||
             read(json, p, k, "sliding_window", a.sliding_window) ||
             read(json, p, k, "softcap", a.softcap) || read(json, p, k, "scale", a.scale) ||
             read(json, p, k, "q_lora_rank", a.q_lora_rank) ||
             read(json, p, k, "kv_lora_rank", a.kv_lora_rank) ||
             read(json, p, k, "qk_nope_head_dim", a.qk_nope_head_dim) ||
             read(json, p, k, "qk_rope_head_dim", a.qk_rope_head_dim) ||
             read(json, p, k, "sinks", a.sinks) || read(json, p, k, "chunk_size", a.chunk_size) ||
             read(json, p, k, "temperature_floor_scale", a.temperature_floor_scale) ||
             read(json, p, k, "temperature_attn_scale", a.temperature_attn_scale);
    });
    return true;
  }

  bool mlp(const Json& json, const std::string& path, MlpSpec& m) {
    each(json, path, [&](const std::string& k, const std::string& p) {
      return read_enum(json, p, k, "activation", m.activation, activation_name) ||
             read(json, p, k, "intermediate", m.intermediate) ||
             read(json, p, k, "gated", m.gated) || read(json, p, k, "bias", m.bias) ||
             read(json, p, k, "swiglu_limit", m.swiglu_limit) ||
             read(json, p, k, "swiglu_alpha", m.swiglu_alpha);
    });
    return true;
  }

  bool moe(const Json& json, const std::string& path, MoeSpec& m) {
    each(json, path, [&](const std::string& k, const std::string& p) {
      return read_enum(json, p, k, "router", m.router, router_name) ||
             read(json, p, k, "num_experts", m.num_experts) || read(json, p, k, "top_k", m.top_k) ||
             read(json, p, k, "expert_intermediate", m.expert_intermediate) ||
             read(json, p, k, "norm_topk_prob", m.norm_topk_prob) ||
             read(json, p, k, "routed_scaling_factor", m.routed_scaling_factor) ||
             read(json, p, k, "n_group", m.n_group) ||
             read(json, p, k, "topk_group", m.topk_group) ||
             read(json, p, k, "score_correction_bias", m.score_correction_bias) ||
             read(json, p, k, "num_shared_experts", m.num_shared_experts) ||
             read(json, p, k, "shared_intermediate", m.shared_intermediate) ||
             read(json, p, k, "shared_expert_gate", m.shared_expert_gate) ||
             read(json, p, k, "router_bias", m.router_bias) ||
             read(json, p, k, "expert_bias", m.expert_bias) ||
             read(json, p, k, "swiglu_limit", m.swiglu_limit) ||
             read(json, p, k, "swiglu_alpha", m.swiglu_alpha) ||
             read(json, p, k, "weight_expert_input", m.weight_expert_input);
    });
    return true;
  }

  std::string where_;
};
}  // namespace

ModelSpec ModelSpec::from_json(const Json& json, const std::string& where) {
  return SpecReader(where).spec(json);
}

}  // namespace kiln
