#include "kiln/models/detect_spec.h"

#include <cmath>
#include <initializer_list>
#include <set>

#include "kiln/core/error.h"
#include "kiln/models/config_to_spec.h"
#include "kiln/models/language_model.h"
#include "kiln/models/model_type.h"
#include "kiln/models/rope_config.h"

namespace kiln {
namespace {

class SpecDetector {
 public:
  explicit SpecDetector(const HfConfig& config)
      : c_(config), type_(config.model_type()), mt_(config.model_type()) {}

  ModelSpec run() {
    check(!c_.get_bool("alibi", false),
          c_.source() + ": key 'alibi': ALiBi position biases are not supported");
    check(!c_.get_bool("apply_residual_connection_post_layernorm", false),
          c_.source() +
              ": key 'apply_residual_connection_post_layernorm': residuals taken after the norm "
              "are not supported");
    check(!c_.get_bool("add_cross_attention", false),
          c_.source() + ": key 'add_cross_attention': cross-attention is not supported");
    ModelSpec spec;
    spec.architecture = c_.architecture();
    spec.vocab_size = c_.get_int("vocab_size");
    spec.hidden_size = required({"hidden_size", "n_embd", "d_model"});
    const int64_t layers = required({"num_hidden_layers", "n_layer", "num_layers"});
    const int64_t heads = required({"num_attention_heads", "n_head", "num_heads"});
    check(layers > 0 && heads > 0 && spec.hidden_size > 0 && spec.vocab_size > 0,
          c_.source() + ": vocab_size, hidden size, layer count and head count must be positive");
    const std::string max_key = first({"max_position_embeddings", "n_positions", "seq_length"});
    spec.max_position_embeddings = max_key.empty() ? 2048 : c_.get_int(max_key);
    spec.tie_word_embeddings = c_.get_bool("tie_word_embeddings", mt_.tied_by_default());
    spec.bos_token_ids = c_.get_int_list("bos_token_id");
    spec.eos_token_ids = c_.get_int_list("eos_token_id");
    spec.learned_positions = mt_.learned_positions();

    const NormSpec norm = layer_norm();
    spec.final_norm = norm;
    if (gemma()) spec.embedding_scale = static_cast<float>(std::sqrt(double(spec.hidden_size)));
    if (const std::string key = first({"embedding_multiplier", "scale_emb"}); !key.empty())
      spec.embedding_scale = static_cast<float>(c_.get_double(key));
    spec.final_logit_softcap = static_cast<float>(c_.get_double("final_logit_softcapping", 0.0));
    if (c_.has("logit_scale")) spec.logit_scale = static_cast<float>(c_.get_double("logit_scale"));
    if (c_.has("logits_scaling"))  // Granite divides the logits by it
      spec.logit_scale = static_cast<float>(1.0 / c_.get_double("logits_scaling"));
    spec.lm_head_bias = c_.get_bool("lm_head_bias", type_ == "phi");

    const std::vector<bool> use_rope = rope_layers(layers);
    const std::vector<std::string> types = layer_types(layers, use_rope);
    const std::vector<bool> moe = moe_layers(layers);
    for (int64_t i = 0; i < layers; ++i) {
      LayerSpec layer;
      layer.norm = norm;
      placement(layer);
      layer.residual_scale = static_cast<float>(c_.get_double("residual_multiplier", 1.0));
      attention(spec, heads, i, types[i], layer.attention);
      if (!use_rope[i]) no_rope(layer.attention);
      layer.kind = layer.attention.sliding_window > 0 ? LayerKind::kSlidingAttention
                                                      : LayerKind::kFullAttention;
      mlp(spec, layer.mlp);
      if (type_ == "gpt_oss") {  // clamped SwiGLU
        layer.mlp.swiglu_limit = static_cast<float>(c_.get_double("swiglu_limit", 7.0));
        check(layer.mlp.swiglu_limit > 0.0f, c_.source() + ": key 'swiglu_limit' must be positive");
      }
      if (moe[i]) mixture(layer);
      // Llama 4's MoE layers: intermediate_size is the experts' (and the shared expert's).
      if (moe[i] && c_.has("intermediate_size_mlp"))
        layer.mlp.intermediate = c_.get_int("intermediate_size", layer.mlp.intermediate);
      spec.layers.push_back(layer);
    }
    return spec;
  }

 private:
  bool is(std::initializer_list<const char*> types) const { return mt_.is(types); }
  bool gemma() const { return mt_.gemma(); }
  bool gemma3() const { return mt_.gemma3(); }
  bool falcon() const { return mt_.falcon(); }
  bool plain() const { return mt_.plain_mlp(); }
  bool mla() const { return c_.has("kv_lora_rank"); }
  bool llama4() const { return mt_.llama4(); }

  // Per layer: whether it applies RoPE (Llama 4's NoPE layers: `no_rope_layers` lists 1 for
  // RoPE layers and 0 for the others, else every `no_rope_layer_interval`-th layer).
  std::vector<bool> rope_layers(int64_t layers) const {
    std::vector<bool> use(layers, true);
    const std::vector<int64_t> listed = c_.get_int_list("no_rope_layers");
    if (!listed.empty()) {
      check(static_cast<int64_t>(listed.size()) >= layers,
            c_.source() + ": key 'no_rope_layers' must list one entry per layer");
      for (int64_t i = 0; i < layers; ++i) use[i] = listed[i] != 0;
    } else if (llama4() || c_.has("no_rope_layer_interval")) {
      const int64_t interval = c_.get_int("no_rope_layer_interval", 4);
      check(interval > 0, c_.source() + ": key 'no_rope_layer_interval' must be positive");
      for (int64_t i = 0; i < layers; ++i) use[i] = (i + 1) % interval != 0;
    }
    return use;
  }

  std::string first(std::initializer_list<const char*> keys) const {
    for (const char* k : keys)
      if (c_.has(k)) return k;
    return "";
  }
  int64_t required(std::initializer_list<const char*> keys) const {
    const std::string key = first(keys);
    check(!key.empty(), c_.source() + ": missing required key '" + *keys.begin() + "'");
    return c_.get_int(key);
  }

  NormSpec layer_norm() const {
    const NormConvention n = mt_.norm(c_);
    const double fallback = n.kind == NormKind::kLayerNorm ? 1e-5 : 1e-6;
    return {n.kind, static_cast<float>(n.eps_key.empty() ? fallback : c_.get_double(n.eps_key))};
  }

  void placement(LayerSpec& layer) const {
    if (is({"olmo2", "olmo3"})) {
      layer.placement = NormPlacement::kPost;
    } else if (gemma() && type_ != "gemma") {
      layer.placement = NormPlacement::kSandwich;
    } else if (type_ == "gpt_neox") {
      if (c_.get_bool("use_parallel_residual", true)) layer.placement = NormPlacement::kParallel;
    } else if (falcon()) {
      const bool parallel = c_.get_bool("parallel_attn", true);
      const bool new_architecture = c_.get_bool("new_decoder_architecture", false);
      check(parallel || !new_architecture,
            c_.source() + ": the new decoder architecture needs parallel_attn");
      const int64_t norms = c_.get_int("num_ln_in_parallel_attn", new_architecture ? 2 : 1);
      layer.placement = parallel ? NormPlacement::kParallel : NormPlacement::kPre;
      layer.parallel_shared_norm = parallel && !(new_architecture && norms == 2);
    } else if (is({"phi", "gptj", "codegen", "cohere"})) {
      layer.placement = NormPlacement::kParallel;
      layer.parallel_shared_norm = true;
    }
  }

  int64_t kv_heads(int64_t heads) const {
    if (mla()) return heads;
    if (c_.has("num_key_value_heads")) return c_.get_int("num_key_value_heads");
    if (falcon()) {
      if (c_.get_bool("new_decoder_architecture", false))
        return c_.has("num_kv_heads") ? c_.get_int("num_kv_heads") : c_.get_int("n_head_kv");
      return c_.get_bool("multi_query", true) ? 1 : heads;
    }
    if (c_.has("num_kv_heads")) return c_.get_int("num_kv_heads");
    return c_.get_bool("multi_query", false) ? 1 : heads;
  }

  // One of "full_attention" / "sliding_attention" / "chunked_attention" per layer.
  std::vector<std::string> layer_types(int64_t layers, const std::vector<bool>& use_rope) const {
    std::vector<std::string> types(layers, "full_attention");
    const Json& given = c_.get("layer_types");
    if (!given.is_null()) {
      check(given.is_array() && static_cast<int64_t>(given.size()) == layers,
            c_.source() + ": key 'layer_types' must list one type per layer");
      for (int64_t i = 0; i < layers; ++i) {
        const Json& t = given[i];
        check(t == "full_attention" || t == "sliding_attention" || t == "chunked_attention",
              c_.source() + ": key 'layer_types' has unknown type " + t.dump() +
                  " (Kiln computes full_attention, sliding_attention and chunked_attention)");
        types[i] = t.get<std::string>();
      }
      return types;
    }
    if (llama4()) {  // chunked attention on the RoPE layers
      for (int64_t i = 0; i < layers; ++i)
        if (use_rope[i]) types[i] = "chunked_attention";
      return types;
    }
    if (type_ == "gpt_oss") {  // sliding windows on even layers
      for (int64_t i = 0; i < layers; i += 2) types[i] = "sliding_attention";
      return types;
    }
    int64_t pattern = 0;
    if (const std::string key = first({"sliding_window_pattern", "_sliding_window_pattern"});
        !key.empty() && gemma()) {
      pattern = c_.get_int(key);
    } else if (type_ == "gemma2") {
      pattern = 2;
    } else if (gemma3()) {
      pattern = 6;
    }
    if (pattern > 0) {
      for (int64_t i = 0; i < layers; ++i)
        if ((i + 1) % pattern != 0) types[i] = "sliding_attention";
      return types;
    }
    if (c_.has("use_sliding_window")) {  // Qwen: layers from max_window_layers on
      if (!c_.get_bool("use_sliding_window")) return types;
      for (int64_t i = c_.get_int("max_window_layers", 0); i < layers; ++i)
        types[i] = "sliding_attention";
      return types;
    }
    if (c_.get_int("sliding_window", 0) > 0) types.assign(layers, "sliding_attention");
    return types;
  }

  int64_t window() const {
    if (c_.has("use_sliding_window") && !c_.get_bool("use_sliding_window")) return 0;
    return c_.get_int("sliding_window", gemma() ? 4096 : 0);
  }

  void attention(const ModelSpec& spec, int64_t heads, int64_t i, const std::string& type,
                 AttentionSpec& a) const {
    a.num_heads = heads;
    a.num_kv_heads = kv_heads(heads);
    check(a.num_kv_heads > 0 && heads % a.num_kv_heads == 0,
          c_.source() + ": the KV head count must divide num_attention_heads");
    a.head_dim = c_.get_int("head_dim", spec.hidden_size / heads);
    a.value_head_dim = a.head_dim;
    attention_biases(a);
    const NormKind kind = layer_norm().kind;
    a.qk_norm_spec = {kind == NormKind::kLayerNorm || gemma() ? kind : NormKind::kRms,
                      layer_norm().eps};
    if (is({"qwen3", "qwen3_moe"}) || gemma3() || c_.get_bool("qk_layernorm", false) ||
        c_.get_bool("use_qk_norm", false))
      a.qk_norm = QkNormKind::kPerHead;
    if (llama4() && c_.get_bool("use_qk_norm", true)) a.qk_norm = QkNormKind::kL2;
    if (is({"olmo2", "olmoe"})) a.qk_norm = QkNormKind::kWholeProjection;
    a.sliding_window = type == "sliding_attention" ? window() : 0;
    if (type == "chunked_attention") a.chunk_size = c_.get_int("attention_chunk_size", 8192);
    a.sinks = type_ == "gpt_oss";  // learned per-head sink logits
    a.softcap = static_cast<float>(c_.get_double("attn_logit_softcapping", 0.0));
    a.clip_qkv = static_cast<float>(c_.get_double("clip_qkv", 0.0));
    check(a.clip_qkv >= 0.0f, c_.source() + ": key 'clip_qkv' must not be negative");
    if (c_.has("query_pre_attn_scalar") || is({"gemma2"}) || gemma3())
      a.scale = static_cast<float>(
          std::pow(c_.get_double("query_pre_attn_scalar", static_cast<double>(a.head_dim)), -0.5));
    if (c_.has("attention_multiplier"))
      a.scale = static_cast<float>(c_.get_double("attention_multiplier"));
    if (is({"gpt2", "gpt_bigcode"})) {
      const double by_dim = c_.get_bool("scale_attn_weights", true)
                                ? 1.0 / std::sqrt(static_cast<double>(a.head_dim))
                                : 1.0;
      const double by_layer =
          c_.get_bool("scale_attn_by_inverse_layer_idx", false) ? static_cast<double>(i + 1) : 1.0;
      a.scale = static_cast<float>(by_dim / by_layer);
    }
    if (spec.learned_positions) {
      a.rope.type = RopeType::kNone;
    } else if (mla()) {
      latent_attention(a);
    } else {
      a.rope = rope(type, a.head_dim);
    }
  }

  void attention_biases(AttentionSpec& a) const {
    bool qkv = false, o = false;
    if (is({"qwen2", "qwen2_moe"})) {
      qkv = true;
    } else if (c_.has("attention_bias")) {
      qkv = o = c_.get_bool("attention_bias");
    } else if (c_.has("use_bias")) {
      qkv = o = c_.get_bool("use_bias");
    } else if (c_.has("qkv_bias")) {
      qkv = c_.get_bool("qkv_bias");
    } else if (falcon()) {
      qkv = o = c_.get_bool("bias", false);
    } else if (mt_.biased_projections()) {
      qkv = o = true;
    }
    a.q_bias = a.k_bias = a.v_bias = qkv;
    a.o_bias = o;
  }

  RopeSpec rope(const std::string& type, int64_t rotary_head_dim) const {
    const bool per_type = gemma3() || c_.has("rope_local_base_freq");
    RopeSpec r = rope_spec_from_config(c_, per_type ? type : "", rotary_head_dim);
    if (gemma3() && type == "sliding_attention" && !c_.has("rope_parameters") &&
        !c_.has("rope_local_base_freq")) {  // transformers' default local base
      r = RopeSpec{};
      r.rotary_dim = rotary_head_dim;
      r.theta = 10000.0;
    }
    r.interleaved = c_.get_bool("rope_interleave", mt_.interleaved_rope());
    if (llama4() && !c_.has("rope_theta") && !c_.has("rope_parameters") && !c_.has("rope_scaling"))
      r.theta = 500000.0;
    return r;
  }

  // A layer without RoPE (Llama 4's NoPE layers): full attention, no QK norm, and with
  // `attn_temperature_tuning` the query scaled by position.
  void no_rope(AttentionSpec& a) const {
    a.rope = rope_spec_from_config(c_, "", a.head_dim);  // unused, kept as read
    a.rope.type = RopeType::kNone;
    a.chunk_size = 0;
    if (a.qk_norm == QkNormKind::kL2) a.qk_norm = QkNormKind::kNone;
    if (c_.get_bool("attn_temperature_tuning", llama4())) {
      a.temperature_floor_scale = c_.get_double("floor_scale", 8192.0);
      a.temperature_attn_scale = c_.get_double("attn_scale", 0.1);
      check(a.temperature_floor_scale > 0.0, c_.source() + ": key 'floor_scale' must be positive");
    }
  }

  // DeepSeek's multi-head latent attention.
  void latent_attention(AttentionSpec& a) const {
    const int64_t nope = c_.get_int("qk_nope_head_dim");
    const int64_t rope_dim = c_.get_int("qk_rope_head_dim");
    a.rope = rope("", rope_dim);
    double scale = 1.0 / std::sqrt(static_cast<double>(nope + rope_dim));
    if (a.rope.type != RopeType::kDefault && a.rope.mscale_all_dim != 0 && a.rope.factor > 1.0) {
      const double mscale = 0.1 * a.rope.mscale_all_dim * std::log(a.rope.factor) + 1.0;
      scale *= mscale * mscale;
    }
    const bool bias = c_.get_bool("attention_bias", false);
    a.head_dim = nope + rope_dim;
    a.value_head_dim = c_.get_int("v_head_dim");
    a.q_lora_rank = c_.get_int("q_lora_rank", 0);
    a.kv_lora_rank = c_.get_int("kv_lora_rank");
    a.qk_nope_head_dim = nope;
    a.qk_rope_head_dim = rope_dim;
    a.latent_norm = {NormKind::kRms, 1e-6f};  // transformers builds these norms with eps 1e-6
    a.q_bias = bias && a.q_lora_rank > 0;
    a.k_bias = a.o_bias = bias;
    a.v_bias = false;
    a.scale = static_cast<float>(scale);
  }

  void mlp(const ModelSpec& spec, MlpSpec& m) const {
    m.gated = !plain();
    const std::string inner_key =
        first({"intermediate_size_mlp", "intermediate_size", "n_inner", "ffn_hidden_size"});
    m.intermediate = inner_key.empty() ? 4 * spec.hidden_size : c_.get_int(inner_key);
    if (gemma()) {
      m.activation = c_.has("hidden_activation") ? activation_from_config(c_, "hidden_activation")
                                                 : Activation::kGeluTanh;
    } else if (const std::string key = first({"hidden_act", "activation_function", "activation"});
               !key.empty()) {
      m.activation = activation_from_config(c_, key);
    } else {
      m.activation = type_ == "gpt2" ? Activation::kGeluTanh
                     : falcon()      ? Activation::kGeluExact
                                     : Activation::kSilu;
    }
    if (c_.has("mlp_bias")) {
      m.bias = c_.get_bool("mlp_bias");
    } else if (c_.has("use_bias")) {
      m.bias = c_.get_bool("use_bias");
    } else if (falcon()) {
      m.bias = c_.get_bool("bias", false);
    } else {
      m.bias = mt_.biased_mlp();
    }
  }

  int64_t experts() const {
    const std::string key =
        first({"num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"});
    return key.empty() ? 0 : c_.get_int(key);
  }

  // Which layers are mixtures of experts.
  std::vector<bool> moe_layers(int64_t layers) const {
    std::vector<bool> is_moe(layers, experts() > 0);
    if (experts() == 0) return is_moe;
    if (c_.has("first_k_dense_replace") || c_.has("moe_layer_freq")) {  // DeepSeek
      const int64_t first_moe = c_.get_int("first_k_dense_replace", 0);
      const int64_t frequency = std::max<int64_t>(1, c_.get_int("moe_layer_freq", 1));
      for (int64_t i = 0; i < layers; ++i) is_moe[i] = i >= first_moe && i % frequency == 0;
    } else if (c_.has("decoder_sparse_step") || c_.has("mlp_only_layers")) {  // Qwen MoE
      const int64_t step = std::max<int64_t>(1, c_.get_int("decoder_sparse_step", 1));
      const std::vector<int64_t> dense_list = c_.get_int_list("mlp_only_layers");
      const std::set<int64_t> dense(dense_list.begin(), dense_list.end());
      for (int64_t i = 0; i < layers; ++i) is_moe[i] = !dense.count(i) && (i + 1) % step == 0;
    } else if (c_.has("moe_layers")) {  // Llama 4
      std::fill(is_moe.begin(), is_moe.end(), false);
      for (int64_t i : c_.get_int_list("moe_layers"))
        if (i >= 0 && i < layers) is_moe[i] = true;
    } else if (c_.has("interleave_moe_layer_step")) {
      const int64_t step = std::max<int64_t>(1, c_.get_int("interleave_moe_layer_step"));
      for (int64_t i = 0; i < layers; ++i) is_moe[i] = (i + 1) % step == 0;
    }
    return is_moe;
  }

  void mixture(LayerSpec& layer) const {
    MoeSpec& m = layer.moe;
    m.num_experts = experts();
    const std::string top_k_key = first({"num_experts_per_tok", "experts_per_token", "moe_top_k"});
    m.top_k = c_.get_int(top_k_key.empty() ? "num_experts_per_tok" : top_k_key);
    m.expert_intermediate = c_.get_int("moe_intermediate_size",
                                       c_.get_int("intermediate_size", layer.mlp.intermediate));
    const std::string scoring = c_.get_string("scoring_func", "softmax");
    const std::string method = c_.get_string("topk_method", "");
    const bool deepseek = scoring == "sigmoid" || method == "noaux_tc" || type_ == "deepseek_v3";
    if (deepseek) {
      m.router = RouterKind::kSigmoidGroup;
      m.score_correction_bias = true;
    } else if (is({"mixtral", "gpt_oss"})) {
      m.router = RouterKind::kTopKSoftmax;
    } else if (llama4()) {  // sigmoid of the top-k logits, weighting the expert's input
      m.router = RouterKind::kTopKSigmoid;
      m.weight_expert_input = true;
      m.num_shared_experts = 1;
      m.shared_intermediate = m.expert_intermediate;
    } else if (type_ == "phimoe") {  // sparsemixer; its margin is router_jitter_noise
      m.router = RouterKind::kSparseMixer;
      m.sparsemixer_eps = static_cast<float>(c_.get_double("router_jitter_noise", 0.01));
    } else {
      check(method.empty() || method == "greedy" || method == "group_limited_greedy",
            c_.source() + ": key 'topk_method' is '" + method +
                "'; Kiln's routers: greedy, group_limited_greedy (softmax), noaux_tc (sigmoid)");
      m.router = RouterKind::kSoftmaxTopK;
    }
    if (type_ == "gpt_oss") {
      m.router_bias = m.expert_bias = true;
      m.swiglu_limit = layer.mlp.swiglu_limit;
      m.swiglu_alpha = layer.mlp.swiglu_alpha;
    }
    m.norm_topk_prob = c_.get_bool("norm_topk_prob", deepseek);
    m.routed_scaling_factor = c_.get_double("routed_scaling_factor", deepseek ? 2.5 : 1.0);
    // Groups limit the choice of the sigmoid router and of group_limited_greedy; plain greedy
    // routing ignores them.
    if (deepseek || method == "group_limited_greedy") {
      m.n_group = c_.get_int("n_group", 1);
      m.topk_group = c_.get_int("topk_group", 1);
    }
    if (c_.get_int("n_shared_experts", 0) > 0) {
      m.num_shared_experts = c_.get_int("n_shared_experts");
      m.shared_intermediate = m.num_shared_experts * m.expert_intermediate;
    } else if (c_.get_int("shared_expert_intermediate_size", 0) > 0) {
      m.num_shared_experts = 1;
      m.shared_intermediate = c_.get_int("shared_expert_intermediate_size");
      m.shared_expert_gate = true;
    }
  }

  const HfConfig& c_;
  std::string type_;
  ModelType mt_;
};

}  // namespace

ModelSpec detect_spec(const HfConfig& config) {
  // A multimodal wrapper (Llama 4, Gemma 3, ...): its language model, from text_config with the
  // wrapper's token ids. The vision tower is not run.
  if (const std::optional<HfConfig> text_config = language_model_config(config)) {
    ModelSpec spec = SpecDetector(*text_config).run();
    spec.architecture = config.architecture();
    return spec;
  }
  return SpecDetector(config).run();
}

}  // namespace kiln
