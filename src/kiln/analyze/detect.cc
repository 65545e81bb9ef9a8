#include "kiln/analyze/detect.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <map>
#include <set>

#include "kiln/core/error.h"
#include "kiln/models/model_type.h"

namespace kiln::analyze {
namespace {

using Keys = std::vector<std::string>;

std::string activation_name(const std::string& hf_name) {
  static const std::map<std::string, std::string> names = {{"silu", "silu"},
                                                           {"swish", "silu"},
                                                           {"gelu", "gelu"},
                                                           {"gelu_new", "gelu_tanh"},
                                                           {"gelu_pytorch_tanh", "gelu_tanh"},
                                                           {"gelu_fast", "gelu_tanh"},
                                                           {"gelu_python_tanh", "gelu_tanh"},
                                                           {"gelu_tanh", "gelu_tanh"},
                                                           {"relu", "relu"},
                                                           {"relu2", "relu_squared"}};
  auto it = names.find(hf_name);
  return it == names.end() ? hf_name : it->second;
}

std::string json_value(const Json& value) {
  if (value.is_number()) return format_number(value.get<double>());
  if (value.is_string()) return value.get<std::string>();
  return value.dump();
}

class Detector {
 public:
  explicit Detector(const HfConfig& config)
      : c_(config), type_(config.model_type()), arch_(config.architecture()), mt_(type_) {}

  std::vector<Feature> run() {
    read_sizes();
    detect_embeddings();
    detect_attention();
    detect_rope();
    detect_norms();
    detect_mlp();
    detect_moe();
    detect_output();
    detect_other();
    return std::move(features_);
  }

 private:
  bool type_is(std::initializer_list<const char*> types) const { return mt_.is(types); }
  bool gemma() const { return mt_.gemma(); }
  bool gemma3() const { return mt_.gemma3(); }
  bool llama4() const { return mt_.llama4(); }
  bool falcon() const { return mt_.falcon(); }

  // The first of `keys` present (and not null) in the config, or "".
  std::string first_key(std::initializer_list<const char*> keys) const {
    for (const char* k : keys)
      if (c_.has(k)) return k;
    return "";
  }
  int64_t required_int(std::initializer_list<const char*> keys, std::string* found) const {
    *found = first_key(keys);
    if (found->empty()) throw Error(c_.source() + ": missing required key '" + *keys.begin() + "'");
    return c_.get_int(*found);
  }
  void add(std::string id, std::string value, FeatureKind kind, Keys keys, bool checkable = true) {
    Keys present;
    for (auto& k : keys)
      if (!k.empty()) present.push_back(std::move(k));
    features_.push_back({std::move(id), std::move(value), kind, std::move(present), checkable});
  }

  void read_sizes() {
    hidden_ = required_int({"hidden_size", "n_embd", "d_model"}, &hidden_key_);
    layers_ = required_int({"num_hidden_layers", "n_layer", "num_layers"}, &layers_key_);
    heads_ = required_int({"num_attention_heads", "n_head", "num_heads"}, &heads_key_);
    check(heads_ > 0 && layers_ > 0 && hidden_ > 0,
          c_.source() + ": hidden size, layers and heads must be positive");
    if (c_.has("num_key_value_heads")) {
      kv_key_ = "num_key_value_heads";
      kv_heads_ = c_.get_int(kv_key_);
    } else if (falcon() && !c_.get_bool("new_decoder_architecture", false)) {
      kv_key_ = "multi_query";
      kv_heads_ = c_.get_bool("multi_query", true) ? 1 : heads_;
      c_.mark_read({"num_kv_heads"});
    } else if (c_.has("num_kv_heads")) {
      kv_key_ = "num_kv_heads";
      kv_heads_ = c_.get_int(kv_key_);
    } else if (c_.get_bool("multi_query", false)) {
      kv_key_ = "multi_query";
      kv_heads_ = 1;
    } else {
      kv_heads_ = heads_;
    }
    mla_ = c_.has("kv_lora_rank");
    if (mla_) {
      head_dim_ = c_.get_int("qk_nope_head_dim") + c_.get_int("qk_rope_head_dim");
      c_.mark_read({"head_dim", "qk_head_dim"});
    } else {
      head_dim_ = c_.has("head_dim") ? c_.get_int("head_dim") : hidden_ / heads_;
    }
    max_pos_key_ = first_key({"max_position_embeddings", "n_positions", "seq_length"});
    max_pos_ = max_pos_key_.empty() ? 0 : c_.get_int(max_pos_key_);
    c_.mark_read({"n_ctx"});  // GPT-2's duplicate of n_positions
    add("context", max_pos_ ? std::to_string(max_pos_) + " positions" : "unspecified",
        FeatureKind::kInfo, {max_pos_key_}, max_pos_ > 0);
    add("vocabulary",
        c_.has("vocab_size") ? std::to_string(c_.get_int("vocab_size")) : "unspecified",
        FeatureKind::kInfo, {"vocab_size"}, c_.has("vocab_size"));
  }

  void detect_embeddings() {
    std::string scale_key = first_key({"embedding_multiplier", "scale_emb"});
    if (gemma()) {
      add("embedding.scale", "sqrt(hidden_size)", FeatureKind::kSwitch, {});
    } else if (!scale_key.empty()) {
      add("embedding.scale", format_number(c_.get_double(scale_key)), FeatureKind::kSwitch,
          {scale_key});
    } else {
      add("embedding.scale", "none", FeatureKind::kSwitch, {});
    }

    if (c_.get_bool("alibi", false) || type_is({"bloom", "mpt"})) {
      positions_ = "alibi";
      add("embedding.positions", "alibi", FeatureKind::kChoice, {"alibi"});
    } else if (type_is({"gpt2", "gpt_neo", "gpt_bigcode", "opt", "biogpt"})) {
      positions_ = "learned";
      add("embedding.positions", "learned (" + std::to_string(max_pos_) + " positions)",
          FeatureKind::kChoice, {max_pos_key_});
    } else {
      positions_ = "rope";
      add("embedding.positions", "rope", FeatureKind::kChoice, {});
    }

    if (c_.has("tie_word_embeddings")) {
      add("embedding.tied", c_.get_bool("tie_word_embeddings") ? "true" : "false",
          FeatureKind::kInfo, {"tie_word_embeddings"});
    } else {
      // transformers' PretrainedConfig default; many model classes override it.
      add("embedding.tied", "unspecified (transformers' default: true)", FeatureKind::kInfo, {},
          false);
    }
  }

  void detect_attention() {
    add("attention.kind", attention_kind_value(heads_, kv_heads_, mla_), FeatureKind::kChoice,
        {heads_key_, kv_key_, mla_ ? "kv_lora_rank" : ""});
    if (mla_) {
      add("attention.heads", std::to_string(heads_) + " heads", FeatureKind::kInfo, {heads_key_});
      int64_t q_rank = c_.get_int("q_lora_rank", 0);
      add("attention.mla",
          "q_lora_rank " + (q_rank ? std::to_string(q_rank) : std::string("none")) +
              ", kv_lora_rank " + std::to_string(c_.get_int("kv_lora_rank")) +
              ", qk_nope_head_dim " + std::to_string(c_.get_int("qk_nope_head_dim")) +
              ", qk_rope_head_dim " + std::to_string(c_.get_int("qk_rope_head_dim")) +
              ", v_head_dim " + std::to_string(c_.get_int("v_head_dim", head_dim_)),
          FeatureKind::kInfo,
          {"q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"});
    } else {
      add("attention.heads", heads_value(heads_, kv_heads_, head_dim_), FeatureKind::kInfo,
          {heads_key_, kv_key_, c_.has("head_dim") ? "head_dim" : ""});
    }
    detect_attention_bias();
    detect_qk_norm();
    detect_layer_kinds();
    detect_window_and_chunks();

    if (c_.has("attn_logit_softcapping")) {
      add("attention.softcap", format_number(c_.get_double("attn_logit_softcapping")),
          FeatureKind::kSwitch, {"attn_logit_softcapping"});
    } else {
      add("attention.softcap", "none", FeatureKind::kSwitch, {"attn_logit_softcapping"});
    }

    if (c_.has("query_pre_attn_scalar")) {
      add("attention.scale",
          attention_scale_value(1.0 / std::sqrt(c_.get_double("query_pre_attn_scalar")), head_dim_),
          FeatureKind::kSwitch, {"query_pre_attn_scalar"});
    } else if (c_.has("attention_multiplier")) {
      add("attention.scale",
          attention_scale_value(c_.get_double("attention_multiplier"), head_dim_),
          FeatureKind::kSwitch, {"attention_multiplier"});
    } else if (c_.get_bool("scale_attn_by_inverse_layer_idx", false)) {
      add("attention.scale", "1/sqrt(head_dim) / (layer index + 1)", FeatureKind::kSwitch,
          {"scale_attn_by_inverse_layer_idx"});
    } else if (!c_.get_bool("scale_attn_weights", true)) {
      add("attention.scale", "1", FeatureKind::kSwitch, {"scale_attn_weights"});
    } else if (double mscale = mla_yarn_mscale(); mscale != 1.0) {
      // DeepSeek multiplies 1/sqrt(head_dim) by YaRN's mscale(factor, mscale_all_dim)^2.
      add("attention.scale",
          attention_scale_value(mscale * mscale / std::sqrt(static_cast<double>(head_dim_)),
                                head_dim_),
          FeatureKind::kSwitch, {c_.has("rope_parameters") ? "rope_parameters" : "rope_scaling"});
    } else {
      // Gemma 3 defaults query_pre_attn_scalar to 256.
      add("attention.scale", gemma3() ? attention_scale_value(1.0 / 16.0, head_dim_) : "none",
          FeatureKind::kSwitch, {}, !gemma3());
    }

    if (c_.has("clip_qkv"))  // OLMo, DBRX
      add("attention.clip_qkv", format_number(c_.get_double("clip_qkv")), FeatureKind::kSwitch,
          {"clip_qkv"});
    if (c_.has("residual_multiplier"))  // Granite
      add("residual.scale", format_number(c_.get_double("residual_multiplier")),
          FeatureKind::kSwitch, {"residual_multiplier"});
    if (c_.get_bool("use_bidirectional_attention", false))
      add("attention.bidirectional", "yes", FeatureKind::kSwitch, {"use_bidirectional_attention"});
    add("attention.sinks", type_ == "gpt_oss" ? "learned per-head sink logits" : "none",
        FeatureKind::kSwitch, {});
    if (llama4()) {
      bool tuning = c_.get_bool("attn_temperature_tuning", true);
      add("attention.temperature_tuning",
          tuning
              ? "on NoPE layers (floor_scale " + format_number(c_.get_double("floor_scale", 8192)) +
                    ", attn_scale " + format_number(c_.get_double("attn_scale", 0.1)) + ")"
              : "none",
          FeatureKind::kSwitch, {"attn_temperature_tuning", "floor_scale", "attn_scale"});
    }
  }

  // MLA with YaRN: 0.1 mscale_all_dim ln(factor) + 1 (1 otherwise, or when factor <= 1).
  double mla_yarn_mscale() const {
    if (!mla_) return 1.0;
    const RopeParameters rope = c_.rope();
    auto number = [&](const char* key) {
      auto it = rope.params.find(key);
      return it != rope.params.end() && it->is_number() ? it->get<double>() : 0.0;
    };
    const double factor = number("factor"), all_dim = number("mscale_all_dim");
    if (rope.type == "default" || all_dim == 0 || factor <= 1.0) return 1.0;
    return 0.1 * all_dim * std::log(factor) + 1.0;
  }

  void detect_attention_bias() {
    std::string value = "none";
    Keys keys;
    if (type_is({"qwen2", "qwen2_moe"})) {
      value = "q,k,v";
    } else if (std::string key = first_key({"attention_bias", "use_bias", "qkv_bias"});
               !key.empty()) {
      keys = {key};
      if (c_.get_bool(key)) value = key == "qkv_bias" ? "q,k,v" : "q,k,v,o";
    } else if (falcon()) {
      keys = {"bias"};
      if (c_.get_bool("bias", false)) value = "q,k,v,o";
    } else if (type_is({"gpt2", "gpt_neox", "phi", "gpt_bigcode", "opt", "bloom"})) {
      value = "q,k,v,o";
    }
    add("attention.bias", value, FeatureKind::kSwitch, keys);
  }

  void detect_qk_norm() {
    if (type_is({"qwen3", "qwen3_moe", "gemma3", "gemma3_text"})) {
      add("attention.qk_norm", "per_head", FeatureKind::kChoice, {});
    } else if (type_is({"olmo2", "olmoe"})) {
      add("attention.qk_norm", "whole_projection", FeatureKind::kChoice, {});
    } else if (c_.get_bool("qk_layernorm", false)) {
      add("attention.qk_norm", "per_head", FeatureKind::kChoice, {"qk_layernorm"});
    } else if (c_.get_bool("use_qk_norm", false)) {
      add("attention.qk_norm", llama4() ? "l2 (no weights, on RoPE layers)" : "per_head",
          FeatureKind::kChoice, {"use_qk_norm"});
    } else {
      add("attention.qk_norm", "none", FeatureKind::kChoice, {"qk_layernorm", "use_qk_norm"});
    }
  }

  // layer_types_: "full_attention", "sliding_attention", "chunked_attention" or another
  // kind per layer, from `layer_types` or the older pattern keys.
  void detect_layer_kinds() {
    c_.mark_read({"use_sliding_window", "max_window_layers", "sliding_window_pattern"});
    window_key_ = first_key({"sliding_window", "sliding_window_size"});
    c_.mark_read({"sliding_window_size"});
    window_ = window_key_.empty() ? 0 : c_.get_int(window_key_);
    layer_types_.assign(layers_, "full_attention");
    const Json& types = c_.get("layer_types");
    if (!types.is_null()) {
      kinds_keys_ = {"layer_types"};
      if (!types.is_array() || static_cast<int64_t>(types.size()) != layers_)
        throw Error(c_.source() + ": key 'layer_types' must list one type per layer (" +
                    std::to_string(layers_) + ")");
      for (int64_t i = 0; i < layers_; ++i) {
        if (!types[i].is_string())
          throw Error(c_.source() + ": key 'layer_types' must be a list of strings");
        layer_types_[i] = types[i].get<std::string>();
      }
      c_.mark_read({"sliding_window_pattern", "_sliding_window_pattern", "max_window_layers",
                    "use_sliding_window"});
      return;
    }
    if (window_ <= 0) return;
    std::string pattern_key = first_key({"sliding_window_pattern", "_sliding_window_pattern"});
    int64_t pattern = 0;
    if (!pattern_key.empty()) {
      pattern = c_.get_int(pattern_key);
      kinds_keys_ = {window_key_, pattern_key};
    } else if (type_ == "gemma2") {
      pattern = 2;
      kinds_keys_ = {window_key_};
    } else if (gemma3()) {
      pattern = 6;  // Gemma 3's default sliding_window_pattern
      kinds_checkable_ = false;
      kinds_keys_ = {window_key_};
    }
    if (pattern > 0) {
      for (int64_t i = 0; i < layers_; ++i)
        if ((i + 1) % pattern != 0) layer_types_[i] = "sliding_attention";
      return;
    }
    if (c_.has("use_sliding_window")) {  // Qwen: only layers from max_window_layers on
      kinds_keys_ = {window_key_, "use_sliding_window", "max_window_layers"};
      if (!c_.get_bool("use_sliding_window")) return;
      int64_t first = c_.get_int("max_window_layers", 0);
      for (int64_t i = first; i < layers_; ++i) layer_types_[i] = "sliding_attention";
      return;
    }
    kinds_keys_ = {window_key_};
    c_.mark_read({"max_window_layers"});
    std::fill(layer_types_.begin(), layer_types_.end(), "sliding_attention");
  }

  void detect_window_and_chunks() {
    // A window as long as the context has no effect (Phi-3-128k: 262144 > 131072).
    bool effective = window_ > 0 && (max_pos_ == 0 || window_ < max_pos_);
    std::vector<int64_t> windows(layers_, 0);
    std::map<std::string, int64_t> other_kinds;
    int64_t chunked = 0;
    for (int64_t i = 0; i < layers_; ++i) {
      const std::string& kind = layer_types_[i];
      if (kind == "sliding_attention") {
        if (effective) windows[i] = window_;
      } else if (kind == "chunked_attention") {
        ++chunked;
      } else if (kind != "full_attention") {
        ++other_kinds[kind];
      }
    }
    Keys keys = kinds_keys_;
    if (std::find(keys.begin(), keys.end(), window_key_) == keys.end()) keys.push_back(window_key_);
    add("attention.sliding_window", windows_value(windows), FeatureKind::kSwitch, keys,
        kinds_checkable_);
    for (const auto& [kind, count] : other_kinds) {
      add("attention.layer_type",
          kind + " on " + std::to_string(count) + " of " + std::to_string(layers_) + " layers",
          FeatureKind::kChoice, {"layer_types"});
    }

    // Llama 4: chunked attention on the RoPE layers, full attention on the NoPE layers.
    no_rope_ = no_rope_layers();
    if (c_.has("attention_chunk_size")) {
      int64_t chunk = c_.get_int("attention_chunk_size");
      if (chunked == 0)
        for (bool nope : no_rope_) chunked += nope ? 0 : 1;
      add("attention.chunked",
          "chunks of " + std::to_string(chunk) + " on " + std::to_string(chunked) + " of " +
              std::to_string(layers_) + " layers",
          FeatureKind::kSwitch, {"attention_chunk_size"});
    } else {
      add("attention.chunked", "none", FeatureKind::kSwitch, {});
    }
  }

  // Per layer: true when the layer uses no RoPE (Llama 4's NoPE layers).
  std::vector<bool> no_rope_layers() const {
    std::vector<bool> nope(layers_, false);
    const Json& list = c_.get("no_rope_layers");
    if (list.is_array() && !list.empty()) {
      // Llama 4 writes 1 for layers that use RoPE and 0 for NoPE layers.
      for (int64_t i = 0; i < layers_ && i < static_cast<int64_t>(list.size()); ++i)
        nope[i] = list[i].is_number() && list[i].get<int64_t>() == 0;
    } else if (llama4() || c_.has("no_rope_layer_interval")) {
      int64_t interval = c_.get_int("no_rope_layer_interval", 4);
      for (int64_t i = 0; i < layers_; ++i) nope[i] = (i + 1) % interval == 0;
    }
    return nope;
  }

  void detect_rope() {
    if (positions_ != "rope") {
      c_.mark_read(
          {"rope_theta", "rope_scaling", "rope_parameters", "rotary_dim", "rotary_emb_base"});
      add("rope.type", "none", FeatureKind::kChoice, {});
      return;
    }
    Keys rope_keys = {c_.has("rope_parameters") ? "rope_parameters" : "rope_scaling"};
    RopeParameters rope = c_.rope();
    if (!c_.has("rope_theta") && !c_.has("rope_parameters") && c_.has("rotary_emb_base"))
      rope.theta = c_.get_double("rotary_emb_base");  // GPT-NeoX's legacy name
    add("rope.type", rope.type, FeatureKind::kChoice, rope_keys);
    add("rope.theta", format_number(rope.theta), FeatureKind::kInfo,
        {c_.has("rope_parameters") ? "rope_parameters" : "rope_theta"});
    detect_rope_scaling(rope, rope_keys);

    if (!mla_) {
      std::string fraction_key = first_key({"partial_rotary_factor", "rotary_pct", "rotary_dim"});
      int64_t rotary_dim = head_dim_;
      if (rope.params.contains("partial_rotary_factor")) {
        rotary_dim =
            static_cast<int64_t>(head_dim_ * rope.params["partial_rotary_factor"].get<double>());
        fraction_key = rope_keys[0];
      } else if (fraction_key == "rotary_dim") {
        rotary_dim = c_.get_int(fraction_key);
      } else if (!fraction_key.empty()) {
        rotary_dim = static_cast<int64_t>(head_dim_ * c_.get_double(fraction_key));
      }
      add("rope.fraction", rotary_fraction_value(rotary_dim, head_dim_), FeatureKind::kChoice,
          {fraction_key});
    }

    bool interleaved = c_.get_bool("rope_interleave", mt_.interleaved_rope());
    add("rope.pairing", interleaved ? "interleaved" : "half_split", FeatureKind::kChoice,
        {c_.has("rope_interleave") ? "rope_interleave" : ""}, false);

    bool has_sliding =
        std::count(layer_types_.begin(), layer_types_.end(), "sliding_attention") > 0;
    if (has_sliding || c_.has("rope_local_base_freq")) {
      RopeParameters local = c_.rope("sliding_attention");
      bool implied = gemma3() && !c_.has("rope_local_base_freq") && !c_.has("rope_parameters");
      if (implied) {  // Gemma 3's default rope_local_base_freq
        local = RopeParameters();
        local.theta = 10000.0;
      }
      bool differs = local.theta != rope.theta || local.type != rope.type;
      add("rope.local",
          differs ? "theta " + format_number(local.theta) + ", " + local.type : "none",
          FeatureKind::kSwitch,
          {c_.has("rope_local_base_freq") ? "rope_local_base_freq" : rope_keys[0]}, !implied);
    }

    if (c_.get_bool("use_mrope", false))
      add("rope.mrope", "sections per modality", FeatureKind::kSwitch, {"use_mrope"});

    int64_t nope = std::count(no_rope_.begin(), no_rope_.end(), true);
    if (nope > 0) {
      std::string letters;
      for (bool n : no_rope_) letters += n ? 'N' : 'R';
      add("rope.skipped_layers",
          std::to_string(nope) + " of " + std::to_string(layers_) + " layers, " +
              layer_pattern(letters),
          FeatureKind::kSwitch, {"no_rope_layers"});
    }
  }

  void detect_rope_scaling(const RopeParameters& rope, const Keys& rope_keys) {
    static const std::set<std::string> numeric = {
        "factor",           "original_max_position_embeddings",
        "beta_fast",        "beta_slow",
        "mscale",           "mscale_all_dim",
        "attention_factor", "low_freq_factor",
        "high_freq_factor", "short_mscale",
        "long_mscale"};
    Json params = rope.params;
    // Phi-3 keeps original_max_position_embeddings beside rope_scaling.
    if (c_.has("original_max_position_embeddings") &&
        !params.contains("original_max_position_embeddings") && rope.type != "default") {
      params["original_max_position_embeddings"] = c_.get_int("original_max_position_embeddings");
    }
    c_.mark_read({"original_max_position_embeddings"});
    for (auto it = params.begin(); it != params.end(); ++it) {
      const std::string& name = it.key();
      if (name == "partial_rotary_factor") continue;
      const Json& v = it.value();
      std::string id = "rope.scaling." + name;
      if (numeric.count(name) && v.is_number()) {
        add(id, format_number(v.get<double>()), FeatureKind::kInfo, rope_keys);
      } else if (name == "truncate" && v.is_boolean()) {
        add(id, v.get<bool>() ? "true" : "false", FeatureKind::kInfo, rope_keys);
      } else if ((name == "short_factor" || name == "long_factor") && v.is_array()) {
        add(id, list_value(v.size()), FeatureKind::kInfo, rope_keys);
      } else {
        add(id, json_value(v), FeatureKind::kSwitch, rope_keys);
      }
    }
  }

  void detect_norms() {
    for (const char* k : {"layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"})
      c_.mark_read({k});
    const NormConvention norm = mt_.norm(c_);
    const std::string& eps_key = norm.eps_key;
    const double eps = eps_key.empty() ? 1e-6 : c_.get_double(eps_key);
    const NormKind kind = norm.kind;
    Keys keys = {eps_key};
    if (norm.by_norm_type) keys.push_back("norm_type");
    // A LayerNorm the conventions imply (not norm_type) is pinned down even without an eps.
    const bool checkable = !eps_key.empty() || (kind == NormKind::kLayerNorm && !norm.by_norm_type);
    add("norm.kind", norm_value(kind, eps), FeatureKind::kChoice, keys, checkable);

    std::string placement = "pre";
    Keys placement_keys;
    if (type_is({"olmo2", "olmo3"})) {
      placement = "post";
    } else if (gemma() && type_ != "gemma") {
      placement = "sandwich";
    } else if (type_ == "gpt_neox") {
      placement_keys = {"use_parallel_residual"};
      placement = c_.get_bool("use_parallel_residual", true) ? "parallel" : "pre";
    } else if (falcon()) {
      placement_keys = {"parallel_attn", "new_decoder_architecture", "num_ln_in_parallel_attn"};
      bool parallel = c_.get_bool("parallel_attn", true);
      bool new_architecture = c_.get_bool("new_decoder_architecture", false);
      int64_t norms = c_.get_int("num_ln_in_parallel_attn", 2);
      bool two_norms = new_architecture && norms == 2;
      placement = !parallel ? "pre" : two_norms ? "parallel" : "parallel_shared_norm";
    } else if (type_is({"phi", "gptj", "codegen", "cohere"})) {
      placement = "parallel_shared_norm";
    }
    if (c_.get_bool("apply_residual_connection_post_layernorm", false)) {
      placement = "residual_from_norm";
      placement_keys.push_back("apply_residual_connection_post_layernorm");
    }
    add("norm.placement", placement, FeatureKind::kChoice, placement_keys);
  }

  void detect_mlp() {
    bool plain = mt_.plain_mlp();
    c_.mark_read({"mlp_type"});
    add("mlp.kind", plain ? "plain" : "gated", FeatureKind::kChoice, {});

    std::string act_key;
    std::string activation;
    if (type_ == "gpt_oss") {
      activation = "clamped_swiglu (alpha 1.702, limit " +
                   format_number(c_.get_double("swiglu_limit", 7.0)) + ")";
      act_key = "swiglu_limit";
      c_.mark_read({"hidden_act"});
    } else if (gemma()) {
      // Gemma reads hidden_activation (default gelu_pytorch_tanh); hidden_act is ignored.
      act_key = c_.has("hidden_activation") ? "hidden_activation" : "";
      activation = activation_name(c_.get_string("hidden_activation", "gelu_pytorch_tanh"));
      c_.mark_read({"hidden_act"});
    } else {
      act_key = first_key({"hidden_act", "activation_function", "activation"});
      std::string fallback = type_ == "gpt2" ? "gelu_new" : falcon() ? "gelu" : "silu";
      activation = activation_name(act_key.empty() ? fallback : c_.get_string(act_key));
      c_.mark_read({"activation_function"});
    }
    add("mlp.activation", activation, FeatureKind::kChoice, {act_key});

    std::string bias_key = first_key({"mlp_bias", "use_bias"});
    bool bias = false;
    if (!bias_key.empty()) {
      bias = c_.get_bool(bias_key);
    } else if (falcon()) {
      bias_key = "bias";
      bias = c_.get_bool("bias", false);
    } else {
      bias = mt_.biased_mlp();
    }
    add("mlp.bias", bias ? "yes" : "none", FeatureKind::kSwitch, {bias_key});
  }

  void detect_moe() {
    std::string experts_key =
        first_key({"num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"});
    int64_t experts = experts_key.empty() ? 0 : c_.get_int(experts_key);
    std::vector<bool> is_moe(layers_, experts > 0);
    Keys dense_keys;
    if (experts > 0) dense_keys = moe_layout(&is_moe);
    bool any_dense = std::count(is_moe.begin(), is_moe.end(), false) > 0;
    std::string dense_key =
        first_key({"intermediate_size_mlp", "intermediate_size", "n_inner", "ffn_hidden_size"});
    if (any_dense) {
      int64_t intermediate = dense_key.empty() ? 4 * hidden_ : c_.get_int(dense_key);
      add("mlp.intermediate", std::to_string(intermediate), FeatureKind::kInfo, {dense_key},
          !dense_key.empty() || mt_.plain_mlp());
    }
    if (experts == 0) {
      // MoE settings that dense variants of MoE architectures still carry.
      c_.mark_read({"num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step",
                    "mlp_only_layers", "norm_topk_prob"});
      add("moe", "none", FeatureKind::kSwitch, {experts_key});
      return;
    }
    std::string topk_key = first_key({"num_experts_per_tok", "experts_per_token", "moe_top_k"});
    c_.mark_read({"experts_per_token"});
    int64_t top_k = topk_key.empty() ? 0 : c_.get_int(topk_key);
    std::string expert_key = first_key({"moe_intermediate_size", "intermediate_size"});
    int64_t expert_intermediate = expert_key.empty() ? 0 : c_.get_int(expert_key);
    add("moe",
        std::to_string(experts) + " experts, top-" + std::to_string(top_k) +
            ", expert intermediate " + std::to_string(expert_intermediate),
        FeatureKind::kSwitch, {experts_key, topk_key, expert_key});

    detect_router();
    if (c_.has("norm_topk_prob")) {
      add("moe.norm_topk_prob", c_.get_bool("norm_topk_prob") ? "true" : "false",
          FeatureKind::kInfo, {"norm_topk_prob"});
    }
    bool oss = type_ == "gpt_oss";
    add("moe.router_bias", oss ? "yes" : "none", FeatureKind::kSwitch, {});
    add("moe.expert_bias", oss ? "yes" : "none", FeatureKind::kSwitch, {});
    // Groups limit the sigmoid router and group_limited_greedy; plain greedy ignores them.
    const std::string method = c_.get_string("topk_method", "");
    const bool grouped = c_.get_string("scoring_func", "softmax") == "sigmoid" ||
                         method == "noaux_tc" || method == "group_limited_greedy" ||
                         type_ == "deepseek_v3";
    const int64_t stated_groups = c_.get_int("n_group", 1);
    int64_t groups = grouped ? stated_groups : 1;
    int64_t top_groups = c_.get_int("topk_group", 1);
    add("moe.groups",
        groups > 1
            ? std::to_string(groups) + " groups, top " + std::to_string(top_groups) + " groups"
            : "none",
        FeatureKind::kSwitch, {"n_group", "topk_group"});
    double routed_scale = c_.get_double("routed_scaling_factor", 1.0);
    add("moe.routed_scaling", routed_scale != 1.0 ? format_number(routed_scale) : "none",
        FeatureKind::kSwitch, {"routed_scaling_factor"});

    std::string shared = "none";
    Keys shared_keys;
    bool shared_gate = false;
    if (c_.get_int("n_shared_experts", 0) > 0) {
      int64_t n = c_.get_int("n_shared_experts");
      shared = shared_experts_value(n, n * expert_intermediate);
      shared_keys = {"n_shared_experts"};
    } else if (c_.get_int("shared_expert_intermediate_size", 0) > 0) {
      shared = shared_experts_value(1, c_.get_int("shared_expert_intermediate_size"));
      shared_keys = {"shared_expert_intermediate_size"};
      shared_gate = true;
    } else if (llama4()) {
      shared = shared_experts_value(1, expert_intermediate);
    }
    add("moe.shared_experts", shared, FeatureKind::kSwitch, shared_keys);
    add("moe.shared_expert_gate", shared_gate ? "sigmoid" : "none", FeatureKind::kSwitch,
        shared_keys);
    add("moe.dense_layers", dense_layers_value(is_moe), FeatureKind::kSwitch, dense_keys);
  }

  // Which layers are MoE; returns the keys that decided it.
  Keys moe_layout(std::vector<bool>* is_moe) const {
    if (c_.has("first_k_dense_replace") || c_.has("moe_layer_freq")) {  // DeepSeek
      int64_t first = c_.get_int("first_k_dense_replace", 0);
      int64_t freq = std::max<int64_t>(1, c_.get_int("moe_layer_freq", 1));
      for (int64_t i = 0; i < layers_; ++i) (*is_moe)[i] = i >= first && i % freq == 0;
      return {"first_k_dense_replace", "moe_layer_freq"};
    }
    if (c_.has("decoder_sparse_step") || c_.has("mlp_only_layers")) {  // Qwen MoE
      int64_t step = std::max<int64_t>(1, c_.get_int("decoder_sparse_step", 1));
      std::set<int64_t> dense;
      for (int64_t i : c_.get_int_list("mlp_only_layers")) dense.insert(i);
      for (int64_t i = 0; i < layers_; ++i) (*is_moe)[i] = !dense.count(i) && (i + 1) % step == 0;
      return {"decoder_sparse_step", "mlp_only_layers"};
    }
    if (c_.has("moe_layers")) {  // Llama 4 (newer configs)
      std::fill(is_moe->begin(), is_moe->end(), false);
      for (int64_t i : c_.get_int_list("moe_layers"))
        if (i >= 0 && i < layers_) (*is_moe)[i] = true;
      return {"moe_layers"};
    }
    if (c_.has("interleave_moe_layer_step")) {  // Llama 4
      int64_t step = std::max<int64_t>(1, c_.get_int("interleave_moe_layer_step"));
      for (int64_t i = 0; i < layers_; ++i) (*is_moe)[i] = (i + 1) % step == 0;
      return {"interleave_moe_layer_step"};
    }
    return {};
  }

  void detect_router() {
    std::string scoring = c_.get_string("scoring_func", "softmax");
    std::string method = c_.get_string("topk_method", "");
    Keys keys = {c_.has("scoring_func") ? "scoring_func" : "", method.empty() ? "" : "topk_method"};
    std::string router = "softmax_top_k";
    bool checkable = true;
    if (scoring == "sigmoid" || method == "noaux_tc" || type_ == "deepseek_v3") {
      router = "sigmoid_group";
    } else if (method == "group_limited_greedy") {  // softmax top-k within groups (moe.groups)
      router = "softmax_top_k";
    } else if (type_is({"mixtral", "gpt_oss"})) {
      router = "top_k_softmax";
    } else if (type_ == "phimoe") {  // its margin is router_jitter_noise
      router = "sparsemixer";
      keys.push_back("router_jitter_noise");
    } else if (llama4()) {
      router = "top_k_sigmoid";
    } else if (!type_is({"qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2"})) {
      checkable = false;
    }
    add("moe.router", router, FeatureKind::kChoice, keys, checkable);
  }

  void detect_output() {
    if (c_.has("final_logit_softcapping")) {
      add("logits.softcap", format_number(c_.get_double("final_logit_softcapping")),
          FeatureKind::kSwitch, {"final_logit_softcapping"});
    } else {
      add("logits.softcap", "none", FeatureKind::kSwitch, {"final_logit_softcapping"});
    }
    if (c_.has("logit_scale")) {
      add("logits.scale", format_number(c_.get_double("logit_scale")), FeatureKind::kSwitch,
          {"logit_scale"});
    } else if (c_.has("logits_scaling")) {  // Granite divides by it
      add("logits.scale", format_number(1.0 / c_.get_double("logits_scaling")),
          FeatureKind::kSwitch, {"logits_scaling"});
    } else {
      add("logits.scale", "none", FeatureKind::kSwitch, {});
    }
    bool bias = c_.has("lm_head_bias") ? c_.get_bool("lm_head_bias") : type_ == "phi";
    add("logits.bias", bias ? "yes" : "none", FeatureKind::kSwitch,
        {c_.has("lm_head_bias") ? "lm_head_bias" : ""});
  }

  void detect_other() {
    const Json& quant = c_.get("quantization_config");
    if (quant.is_object()) {
      std::string method = quant.value("quant_method", std::string("unknown"));
      std::string details;
      auto detail = [&](const std::string& text) {
        details += (details.empty() ? "" : ", ") + text;
      };
      if (quant.contains("fmt")) detail(json_value(quant["fmt"]));
      if (quant.contains("weight_block_size") && quant["weight_block_size"].is_array()) {
        std::string block;
        for (const Json& d : quant["weight_block_size"])
          block += (block.empty() ? "" : "x") + json_value(d);
        detail("weight blocks " + block);
      }
      if (quant.contains("activation_scheme"))
        detail(json_value(quant["activation_scheme"]) + " activations");
      if (quant.contains("modules_to_not_convert")) detail("some modules unquantized");
      add("quantization", method + (details.empty() ? "" : " (" + details + ")"),
          FeatureKind::kChoice, {"quantization_config"});
    } else {
      add("quantization", "none", FeatureKind::kChoice, {});
    }
    if (c_.get_int("num_nextn_predict_layers", 0) > 0) {
      add("mtp",
          std::to_string(c_.get_int("num_nextn_predict_layers")) +
              " next-token prediction layer(s), not used for generation",
          FeatureKind::kInfo, {"num_nextn_predict_layers"});
    }
    std::string tokens;
    for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"}) {
      const Json& v = c_.get(key);
      if (v.is_null()) continue;
      tokens += (tokens.empty() ? "" : ", ") + std::string(key).substr(0, 3) + " " + v.dump();
    }
    add("tokens", tokens.empty() ? "unspecified" : tokens, FeatureKind::kInfo,
        {"bos_token_id", "eos_token_id", "pad_token_id"}, false);
  }

  const HfConfig& c_;
  std::string type_, arch_;
  ModelType mt_;
  std::string hidden_key_, layers_key_, heads_key_, kv_key_, max_pos_key_, window_key_;
  int64_t hidden_ = 0, layers_ = 0, heads_ = 0, kv_heads_ = 0, head_dim_ = 0, max_pos_ = 0;
  int64_t window_ = 0;
  bool mla_ = false;
  std::string positions_;
  std::vector<std::string> layer_types_;
  Keys kinds_keys_;
  bool kinds_checkable_ = true;
  std::vector<bool> no_rope_;
  std::vector<Feature> features_;
};

}  // namespace

std::vector<Feature> detect_features(const HfConfig& config) {
  return Detector(config).run();
}

}  // namespace kiln::analyze
