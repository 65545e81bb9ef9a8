#include "kiln/models/model_spec.h"

#include <set>

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
    case RouterKind::kSparseMixer:
      return "sparsemixer";
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

const char* layer_kind_name(LayerKind kind) {
  switch (kind) {
    case LayerKind::kFullAttention:
      return "full_attention";
    case LayerKind::kSlidingAttention:
      return "sliding_attention";
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
// Every ModelSpec field, once: `visit(spec, v)` calls v(key, field) for plain fields,
// v.enumeration(key, field, name) for enums and v.object(key, field) for nested specs. The
// writer (to_json) and the reader (from_json) below are its two visitors, so a new field is one
// line here.
template <typename Norm, typename V>
void visit_norm(Norm& n, V& v) {
  v.enumeration("kind", n.kind, norm_kind_name);
  v("eps", n.eps);
}

template <typename Rope, typename V>
void visit_rope(Rope& r, V& v) {
  v.enumeration("type", r.type, rope_type_name);
  v("theta", r.theta);
  v("rotary_dim", r.rotary_dim);
  v("interleaved", r.interleaved);
  v("factor", r.factor);
  v("original_max_position", r.original_max_position);
  v("max_position", r.max_position);
  v("beta_fast", r.beta_fast);
  v("beta_slow", r.beta_slow);
  v("mscale", r.mscale);
  v("mscale_all_dim", r.mscale_all_dim);
  v("attention_factor", r.attention_factor);
  v("truncate", r.truncate);
  v("low_freq_factor", r.low_freq_factor);
  v("high_freq_factor", r.high_freq_factor);
  v("short_factor", r.short_factor);
  v("long_factor", r.long_factor);
  v("short_mscale", r.short_mscale);
  v("long_mscale", r.long_mscale);
}

template <typename Attention, typename V>
void visit_attention(Attention& a, V& v) {
  v("num_heads", a.num_heads);
  v("num_kv_heads", a.num_kv_heads);
  v("head_dim", a.head_dim);
  v("value_head_dim", a.value_head_dim);
  v("q_bias", a.q_bias);
  v("k_bias", a.k_bias);
  v("v_bias", a.v_bias);
  v("o_bias", a.o_bias);
  v.enumeration("qk_norm", a.qk_norm, qk_norm_name);
  v.object("qk_norm_spec", a.qk_norm_spec, [](auto& n, auto& w) { visit_norm(n, w); });
  v("sliding_window", a.sliding_window);
  v("softcap", a.softcap);
  v("scale", a.scale);
  v("clip_qkv", a.clip_qkv);
  v.object("rope", a.rope, [](auto& r, auto& w) { visit_rope(r, w); });
  v("q_lora_rank", a.q_lora_rank);
  v("kv_lora_rank", a.kv_lora_rank);
  v("qk_nope_head_dim", a.qk_nope_head_dim);
  v("qk_rope_head_dim", a.qk_rope_head_dim);
  v.object("latent_norm", a.latent_norm, [](auto& n, auto& w) { visit_norm(n, w); });
  v("sinks", a.sinks);
  v("chunk_size", a.chunk_size);
  v("temperature_floor_scale", a.temperature_floor_scale);
  v("temperature_attn_scale", a.temperature_attn_scale);
}

template <typename Mlp, typename V>
void visit_mlp(Mlp& m, V& v) {
  v("intermediate", m.intermediate);
  v("gated", m.gated);
  v.enumeration("activation", m.activation, activation_name);
  v("bias", m.bias);
  v("swiglu_limit", m.swiglu_limit);
  v("swiglu_alpha", m.swiglu_alpha);
}

template <typename Moe, typename V>
void visit_moe(Moe& m, V& v) {
  v("num_experts", m.num_experts);
  v("top_k", m.top_k);
  v("expert_intermediate", m.expert_intermediate);
  v.enumeration("router", m.router, router_name);
  v("norm_topk_prob", m.norm_topk_prob);
  v("routed_scaling_factor", m.routed_scaling_factor);
  v("n_group", m.n_group);
  v("topk_group", m.topk_group);
  v("score_correction_bias", m.score_correction_bias);
  v("sparsemixer_eps", m.sparsemixer_eps);
  v("num_shared_experts", m.num_shared_experts);
  v("shared_intermediate", m.shared_intermediate);
  v("shared_expert_gate", m.shared_expert_gate);
  v("router_bias", m.router_bias);
  v("expert_bias", m.expert_bias);
  v("swiglu_limit", m.swiglu_limit);
  v("swiglu_alpha", m.swiglu_alpha);
  v("weight_expert_input", m.weight_expert_input);
}

template <typename Layer, typename V>
void visit_layer(Layer& l, V& v) {
  v.enumeration("kind", l.kind, layer_kind_name);
  v.object("attention", l.attention, [](auto& a, auto& w) { visit_attention(a, w); });
  v.object("mlp", l.mlp, [](auto& m, auto& w) { visit_mlp(m, w); });
  v.object("moe", l.moe, [](auto& m, auto& w) { visit_moe(m, w); });
  v.object("norm", l.norm, [](auto& n, auto& w) { visit_norm(n, w); });
  v.enumeration("placement", l.placement, placement_name);
  v("parallel_shared_norm", l.parallel_shared_norm);
  v("residual_scale", l.residual_scale);
}

template <typename Spec, typename V>
void visit_spec(Spec& s, V& v) {
  v("family", s.family);
  v("architecture", s.architecture);
  v("vocab_size", s.vocab_size);
  v("hidden_size", s.hidden_size);
  v("max_position_embeddings", s.max_position_embeddings);
  v.list("layers", s.layers, [](auto& l, auto& w) { visit_layer(l, w); });
  v("embedding_scale", s.embedding_scale);
  v("learned_positions", s.learned_positions);
  v("tie_word_embeddings", s.tie_word_embeddings);
  v.object("final_norm", s.final_norm, [](auto& n, auto& w) { visit_norm(n, w); });
  v("has_final_norm", s.has_final_norm);
  v("final_logit_softcap", s.final_logit_softcap);
  v("logit_scale", s.logit_scale);
  v("lm_head_bias", s.lm_head_bias);
  v("bos_token_ids", s.bos_token_ids);
  v("eos_token_ids", s.eos_token_ids);
}

// to_json(): each field under its key.
struct Writer {
  Json& out;
  template <typename T>
  void operator()(const char* key, const T& value) {
    out[key] = value;
  }
  template <typename E>
  void enumeration(const char* key, const E& value, const char* (*name)(E)) {
    out[key] = name(value);
  }
  template <typename T, typename F>
  void object(const char* key, const T& value, F visit) {
    Json inner = Json::object();
    Writer writer{inner};
    visit(value, writer);
    out[key] = std::move(inner);
  }
  template <typename T, typename F>
  void list(const char* key, const std::vector<T>& values, F visit) {
    Json items = Json::array();
    for (const T& value : values) {
      Json inner = Json::object();
      Writer writer{inner};
      visit(value, writer);
      items.push_back(std::move(inner));
    }
    out[key] = std::move(items);
  }
};

// from_json(): fields absent from the object keep their defaults; an unknown key, a value of
// the wrong type or an unknown enum name throws, naming the key path.
class Reader {
 public:
  Reader(const Json& in, std::string path, const std::string& where)
      : in_(in), path_(std::move(path)), where_(where) {
    if (!in_.is_object())
      fail(path_.empty() ? "spec" : path_.substr(0, path_.size() - 1), "must be an object");
  }
  template <typename T>
  void operator()(const char* key, T& out) {
    if (const Json* value = take(key)) {
      try {
        out = value->get<T>();
      } catch (const std::exception&) {
        fail(path_ + key, "has the wrong type: " + value->dump());
      }
    }
  }
  template <typename E>
  void enumeration(const char* key, E& out, const char* (*name)(E)) {
    const Json* value = take(key);
    if (!value) return;
    // Enum values are numbered from 0; the name functions answer "?" past the last one.
    std::string known;
    for (int i = 0; std::string(name(static_cast<E>(i))) != "?"; ++i) {
      if (value->is_string() && value->get<std::string>() == name(static_cast<E>(i))) {
        out = static_cast<E>(i);
        return;
      }
      known += std::string(known.empty() ? "" : ", ") + name(static_cast<E>(i));
    }
    fail(path_ + key, "is " + value->dump() + "; known: " + known);
  }
  template <typename T, typename F>
  void object(const char* key, T& out, F visit) {
    if (const Json* value = take(key)) {
      Reader reader(*value, path_ + key + ".", where_);
      visit(out, reader);
      reader.finish();
    }
  }
  template <typename T, typename F>
  void list(const char* key, std::vector<T>& out, F visit) {
    const Json* value = take(key);
    if (!value) return;
    if (!value->is_array()) fail(path_ + key, "must be an array");
    out.assign(value->size(), T{});
    for (size_t i = 0; i < value->size(); ++i) {
      Reader reader((*value)[i], path_ + key + "[" + std::to_string(i) + "].", where_);
      visit(out[i], reader);
      reader.finish();
    }
  }
  // Every key of the object must have been a field.
  void finish() const {
    for (auto it = in_.begin(); it != in_.end(); ++it)
      if (!taken_.count(it.key())) fail(path_ + it.key(), "is not a ModelSpec field");
  }

 private:
  const Json* take(const char* key) {
    auto it = in_.find(key);
    if (it == in_.end()) return nullptr;
    taken_.insert(key);
    return &*it;
  }
  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw Error(where_ + ": key '" + key + "' " + what);
  }

  const Json& in_;
  std::string path_;
  const std::string& where_;
  std::set<std::string> taken_;
};
}  // namespace

Json ModelSpec::to_json() const {
  Json out = Json::object();
  Writer writer{out};
  visit_spec(*this, writer);
  return out;
}

ModelSpec ModelSpec::from_json(const Json& json, const std::string& where) {
  ModelSpec spec;
  Reader reader(json, "", where);
  visit_spec(spec, reader);
  reader.finish();
  return spec;
}

}  // namespace kiln
