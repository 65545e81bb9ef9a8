#include "kiln/models/auto_family.h"

#include <cctype>
#include <initializer_list>
#include <map>
#include <set>

#include "kiln/core/error.h"
#include "kiln/models/detect_spec.h"
#include "kiln/models/model_type.h"
#include "kiln/models/moe_weights.h"
#include "kiln/models/weight_mappings.h"
#include "kiln/models/weight_names.h"

namespace kiln {
namespace {

using Candidates = std::initializer_list<const char*>;

// The names of one checkpoint, with lookups relative to its decoder layers.
class NameIndex {
 public:
  explicit NameIndex(const TensorSource& source) : source_(source) {
    std::map<std::string, int64_t> prefixes;
    for (const std::string& name : source.names()) {
      // The first ".<digits>." splits "<layers>.<i>.<rest>".
      for (size_t dot = name.find('.'); dot != std::string::npos; dot = name.find('.', dot + 1)) {
        size_t end = dot + 1;
        while (end < name.size() && std::isdigit(static_cast<unsigned char>(name[end]))) ++end;
        if (end > dot + 1 && end < name.size() && name[end] == '.') {
          ++prefixes[name.substr(0, dot)];
          break;
        }
      }
    }
    int64_t best = 0;
    for (const auto& [prefix, count] : prefixes)
      if (count > best) best = count, layers_ = prefix;
    for (const std::string& name : source.names()) {
      if (layers_.empty() || name.rfind(layers_ + ".", 0) != 0) continue;
      const size_t dot = name.find('.', layers_.size() + 1);
      if (dot != std::string::npos) rests_.insert(name.substr(dot + 1));
    }
  }
  const std::string& layers() const { return layers_; }
  // True when some layer has a tensor under the module `module` ("self_attn.q_proj") or
  // named exactly `module`.
  bool layer_has(const std::string& module) const {
    auto it = rests_.lower_bound(module);
    return it != rests_.end() && (*it == module || it->rfind(module + ".", 0) == 0);
  }
  // The first candidate child of `parent` ("" = the layer) present in some layer, or "".
  std::string layer_child(const std::string& parent, Candidates candidates) const {
    for (const char* c : candidates)
      if (layer_has(parent.empty() ? c : parent + "." + c)) return c;
    return "";
  }
  // The first candidate top-level module with a `.weight`, or "", also under a prefix that
  // the layers share ("language_model.model.embed_tokens").
  std::string top(Candidates candidates) const {
    for (const char* c : candidates)
      if (source_.contains(std::string(c) + ".weight")) return c;
    const size_t dot = layers_.find('.');
    const std::string prefix = dot == std::string::npos ? "" : layers_.substr(0, dot + 1);
    if (!prefix.empty())
      for (const char* c : candidates)
        if (source_.contains(prefix + c + ".weight")) return prefix + c;
    return "";
  }

 private:
  const TensorSource& source_;
  std::string layers_;
  std::set<std::string> rests_;
};

std::string layer_prefix(const HfTensorNames& n, int64_t i) {
  return n.layers + "." + std::to_string(i) + ".";
}
std::string join(const std::string& parent, const std::string& child) {
  return parent.empty() || child.empty() ? child : parent + "." + child;
}

}  // namespace

namespace {
// Every string field of HfTensorNames with its key in family files.
const std::vector<std::pair<const char*, std::string HfTensorNames::*>>& name_fields() {
  using N = HfTensorNames;
  static const std::vector<std::pair<const char*, std::string N::*>> fields = {
      {"embedding", &N::embedding},
      {"positions", &N::positions},
      {"final_norm", &N::final_norm},
      {"lm_head", &N::lm_head},
      {"layers", &N::layers},
      {"input_norm", &N::input_norm},
      {"post_attention_norm", &N::post_attention_norm},
      {"pre_ffw_norm", &N::pre_ffw_norm},
      {"post_ffw_norm", &N::post_ffw_norm},
      {"attention", &N::attention},
      {"query", &N::query},
      {"key", &N::key},
      {"value", &N::value},
      {"out", &N::out},
      {"query_norm", &N::query_norm},
      {"key_norm", &N::key_norm},
      {"sinks", &N::sinks},
      {"qkv", &N::qkv},
      {"qkv_layout", &N::qkv_layout},
      {"q_a", &N::q_a},
      {"q_a_norm", &N::q_a_norm},
      {"q_b", &N::q_b},
      {"kv_a", &N::kv_a},
      {"kv_a_norm", &N::kv_a_norm},
      {"kv_b", &N::kv_b},
      {"mlp", &N::mlp},
      {"gate", &N::gate},
      {"up", &N::up},
      {"down", &N::down},
      {"gate_up", &N::gate_up},
      {"moe", &N::moe},
      {"router", &N::router},
      {"experts", &N::experts},
      {"expert_gate", &N::expert_gate},
      {"expert_up", &N::expert_up},
      {"expert_down", &N::expert_down},
      {"shared", &N::shared},
      {"shared_gate", &N::shared_gate},
      {"expert_layout", &N::expert_layout},
  };
  return fields;
}
}  // namespace

Json HfTensorNames::to_json() const {
  Json j = Json::object();
  for (const auto& [key, field] : name_fields())
    if (!(this->*field).empty()) j[key] = this->*field;
  if (conv1d) j["conv1d"] = true;
  return j;
}

HfTensorNames HfTensorNames::from_json(const Json& json, const std::string& where) {
  check(json.is_object(), where + " must be an object of module names");
  HfTensorNames n;
  std::map<std::string, std::string*> fields;
  for (const auto& [key, field] : name_fields()) fields[key] = &(n.*field);
  for (auto it = json.begin(); it != json.end(); ++it) {
    if (it.key() == "conv1d") {
      check(it.value().is_boolean(), where + ": key 'conv1d' must be true or false");
      n.conv1d = it.value().get<bool>();
      continue;
    }
    auto field = fields.find(it.key());
    check(field != fields.end(), where + ": unknown key '" + it.key() + "'");
    check(it.value().is_string(), where + ": key '" + it.key() + "' must be a string");
    *field->second = it.value().get<std::string>();
  }
  check(!n.layers.empty() && !n.embedding.empty(),
        where + ": keys 'layers' and 'embedding' are required");
  check(n.qkv.empty() || n.qkv_layout == "contiguous" || n.qkv_layout == "grouped",
        where + ": key 'qkv_layout' must be \"contiguous\" or \"grouped\"");
  check(n.expert_layout.empty() || n.expert_layout == "input_major" ||
            n.expert_layout == "input_major_interleaved",
        where + ": key 'expert_layout' must be \"input_major\" or \"input_major_interleaved\"");
  return n;
}

HfTensorNames discover_tensor_names(const ModelSpec& spec, const TensorSource& source,
                                    const std::string& model_type) {
  const NameIndex index(source);
  HfTensorNames n;
  n.embedding = index.top({"model.embed_tokens", "transformer.wte", "gpt_neox.embed_in",
                           "transformer.word_embeddings", "model.decoder.embed_tokens",
                           "embed_tokens", "wte", "tok_embeddings"});
  check(!n.embedding.empty(), source.where() +
                                  ": no token embedding found (looked for model.embed_tokens, "
                                  "transformer.wte, gpt_neox.embed_in, ...)");
  n.positions = index.top({"transformer.wpe", "wpe", "model.decoder.embed_positions"});
  n.final_norm =
      index.top({"model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm",
                 "model.final_layernorm", "model.decoder.final_layer_norm", "ln_f", "norm"});
  n.lm_head = index.top({"lm_head", "embed_out", "output"});
  n.layers = index.layers();
  check(!n.layers.empty(), source.where() + ": no decoder layers found (no '<prefix>.<i>.' names)");

  n.input_norm =
      index.layer_child("", {"input_layernorm", "ln_1", "ln_attn", "attention_norm", "norm1"});
  n.post_attention_norm =
      index.layer_child("", {"post_attention_layernorm", "ln_2", "ln_mlp", "ffn_norm", "norm2"});
  n.pre_ffw_norm = index.layer_child("", {"pre_feedforward_layernorm"});
  n.post_ffw_norm = index.layer_child("", {"post_feedforward_layernorm"});

  n.attention = index.layer_child("", {"self_attn", "attention", "attn", "self_attention"});
  check(!n.attention.empty(), source.where() + ": no attention module found in '" + n.layers +
                                  ".<i>' (looked for self_attn, attention, attn, self_attention)");
  auto attention_child = [&](Candidates c) { return index.layer_child(n.attention, c); };
  n.qkv = attention_child({"qkv_proj", "Wqkv", "c_attn", "query_key_value"});
  if (!n.qkv.empty()) n.qkv_layout = n.qkv == "query_key_value" ? "grouped" : "contiguous";
  n.out = attention_child({"o_proj", "dense", "out_proj", "c_proj", "wo"});
  n.query_norm = attention_child({"q_norm", "q_layernorm", "query_layernorm"});
  n.key_norm = attention_child({"k_norm", "k_layernorm", "key_layernorm"});
  n.sinks = attention_child({"sinks"});
  if (spec.layers.at(0).attention.is_mla()) {
    n.q_a = attention_child({"q_a_proj"});
    n.q_a_norm = attention_child({"q_a_layernorm"});
    n.q_b = attention_child({"q_b_proj"});
    n.kv_a = attention_child({"kv_a_proj_with_mqa"});
    n.kv_a_norm = attention_child({"kv_a_layernorm"});
    n.kv_b = attention_child({"kv_b_proj"});
    n.query = attention_child({"q_proj"});
  } else if (n.qkv.empty()) {
    n.query = attention_child({"q_proj", "query", "wq"});
    n.key = attention_child({"k_proj", "key", "wk"});
    n.value = attention_child({"v_proj", "value", "wv"});
  }

  // Feed-forward blocks: the module with experts is the MoE block, the one with a down
  // projection the dense MLP (they may be the same module in different layers).
  for (const char* block : {"mlp", "feed_forward", "ffn", "block_sparse_moe"}) {
    if (n.moe.empty() && index.layer_has(join(block, "experts"))) n.moe = block;
    if (n.mlp.empty() &&
        !index.layer_child(block, {"down_proj", "fc2", "fc_out", "c_proj", "dense_4h_to_h", "w2"})
             .empty())
      n.mlp = block;
  }
  if (!n.mlp.empty()) {
    auto child = [&](Candidates c) { return index.layer_child(n.mlp, c); };
    n.gate_up = child({"gate_up_proj"});
    if (index.layer_has(join(n.mlp, "w1")) && index.layer_has(join(n.mlp, "w3"))) {
      n.gate = "w1", n.up = "w3", n.down = "w2";
    } else {
      n.gate = child({"gate_proj"});
      n.up = child({"up_proj", "fc1", "fc_in", "c_fc", "dense_h_to_4h", "w1"});
      n.down = child({"down_proj", "fc2", "fc_out", "c_proj", "dense_4h_to_h", "w2"});
    }
  }
  if (!n.moe.empty()) {
    n.router = index.layer_child(n.moe, {"gate", "router"});
    n.experts = "experts";
    const std::string experts = join(n.moe, n.experts);
    const bool w = index.layer_has(experts + ".0.w1");
    n.expert_gate = w ? "w1" : "gate_proj";
    n.expert_up = w ? "w3" : "up_proj";
    n.expert_down = w ? "w2" : "down_proj";
    n.shared = index.layer_child(n.moe, {"shared_expert", "shared_experts"});
    n.shared_gate = index.layer_child(n.moe, {"shared_expert_gate"});
    for (int64_t i = 0; i < spec.num_layers(); ++i) {
      const std::string stacked = layer_prefix(n, i) + experts + ".gate_up_proj";
      if (!spec.layers[i].moe.enabled() || !source.contains(stacked)) continue;
      const Shape shape = source.shape_of(stacked);
      if (shape.size() == 3 && shape[1] == spec.hidden_size &&
          shape[2] == 2 * spec.layers[i].moe.expert_intermediate)
        n.expert_layout = ModelType(model_type).interleaved_stacked_experts()
                              ? "input_major_interleaved"
                              : "input_major";
      break;
    }
  }

  // GPT-2's Conv1D stores [in, out]: a non-square projection read transposed says so.
  const std::string first = layer_prefix(n, 0) + n.attention + ".";
  const std::string probe = !n.qkv.empty() ? first + n.qkv + ".weight"
                            : !n.mlp.empty() && !n.up.empty()
                                ? layer_prefix(n, 0) + n.mlp + "." + n.up + ".weight"
                                : "";
  if (!probe.empty() && source.contains(probe)) {
    const Shape shape = source.shape_of(probe);
    n.conv1d = shape.size() == 2 && shape[0] == spec.hidden_size && shape[1] != spec.hidden_size;
  }
  return n;
}

void refine_spec_from_tensors(ModelSpec& spec, const HfTensorNames& n, const TensorSource& source) {
  auto has = [&](const std::string& name) { return source.contains(name); };
  // LayerNorm with or without bias, as the tensors say.
  auto norm_from = [&](NormSpec& norm, const std::string& module) {
    if (module.empty() || !has(module + ".weight")) return;
    const bool bias = has(module + ".bias");
    if (norm.kind == NormKind::kLayerNorm && !bias) norm.kind = NormKind::kLayerNormNoBias;
    if (bias && norm.kind != NormKind::kLayerNorm) norm.kind = NormKind::kLayerNorm;
  };
  for (int64_t i = 0; i < spec.num_layers(); ++i) {
    LayerSpec& layer = spec.layers[i];
    AttentionSpec& a = layer.attention;
    const std::string L = layer_prefix(n, i);
    const std::string att = L + n.attention + ".";
    if (!a.is_mla()) {
      if (!n.qkv.empty()) {
        a.q_bias = a.k_bias = a.v_bias = has(att + n.qkv + ".bias");
      } else {
        a.q_bias = has(att + n.query + ".bias");
        a.k_bias = has(att + n.key + ".bias");
        a.v_bias = has(att + n.value + ".bias");
      }
      a.o_bias = has(att + n.out + ".bias");
    }
    const std::string qn = n.query_norm.empty() ? "" : att + n.query_norm;
    if (!qn.empty() && has(qn + ".weight")) {
      const Shape shape = source.shape_of(qn + ".weight");
      a.qk_norm = !shape.empty() && shape[0] == a.head_dim ? QkNormKind::kPerHead
                                                           : QkNormKind::kWholeProjection;
      if (has(qn + ".bias")) a.qk_norm_spec.kind = NormKind::kLayerNorm;
    } else if (a.qk_norm == QkNormKind::kPerHead || a.qk_norm == QkNormKind::kWholeProjection) {
      a.qk_norm = QkNormKind::kNone;
    }
    a.sinks = !n.sinks.empty() && has(att + n.sinks);
    auto present = [&](const std::string& norm) {
      return !norm.empty() && has(L + norm + ".weight");
    };
    const bool in = present(n.input_norm), post_attention = present(n.post_attention_norm);
    const bool pre_ffw = present(n.pre_ffw_norm), post_ffw = present(n.post_ffw_norm);
    if (pre_ffw && post_ffw) {
      layer.placement = NormPlacement::kSandwich;
    } else if (!in && post_attention && post_ffw) {
      layer.placement = NormPlacement::kPost;
    } else if (in && !post_attention && !pre_ffw && !post_ffw) {
      layer.placement = NormPlacement::kParallel;
      layer.parallel_shared_norm = true;
    } else if (layer.placement == NormPlacement::kSandwich ||
               layer.placement == NormPlacement::kPost) {
      layer.placement = NormPlacement::kPre;
    }
    if (layer.placement != NormPlacement::kParallel) layer.parallel_shared_norm = false;
    norm_from(layer.norm, L + (in ? n.input_norm : n.post_attention_norm));
    if (!layer.moe.enabled() && !n.mlp.empty()) {
      const std::string mlp = L + n.mlp + ".";
      layer.mlp.gated = (!n.gate.empty() && has(mlp + n.gate + ".weight")) ||
                        (!n.gate_up.empty() && has(mlp + n.gate_up + ".weight"));
      layer.mlp.bias = has(mlp + n.up + ".bias") || has(mlp + n.gate_up + ".bias");
    }
    if (layer.moe.enabled()) {
      MoeSpec& m = layer.moe;
      const std::string moe = L + n.moe + ".";
      const std::string shared_down = moe + n.shared + ".down_proj.weight";
      if (!n.shared.empty() && has(shared_down)) {
        m.num_shared_experts = std::max<int64_t>(1, m.num_shared_experts);
        m.shared_intermediate = source.shape_of(shared_down).at(1);
      } else {
        m.num_shared_experts = 0;
        m.shared_intermediate = 0;
      }
      m.shared_expert_gate = !n.shared_gate.empty() && has(moe + n.shared_gate + ".weight");
      m.score_correction_bias = has(moe + n.router + ".e_score_correction_bias");
      m.router_bias = has(moe + n.router + ".bias");
      const std::string experts = moe + n.experts + ".";
      m.expert_bias = has(experts + "gate_up_proj_bias") ||
                      has(experts + "0." + n.expert_gate + ".bias") ||
                      has(experts + "0." + n.expert_up + ".bias");
    }
  }
  spec.tie_word_embeddings = n.lm_head.empty();
  spec.lm_head_bias = !n.lm_head.empty() && has(n.lm_head + ".bias");
  if (!n.positions.empty()) {
    spec.learned_positions = true;
    for (LayerSpec& layer : spec.layers) layer.attention.rope.type = RopeType::kNone;
  }
  spec.has_final_norm = !n.final_norm.empty();
  norm_from(spec.final_norm, n.final_norm);
}

std::vector<WeightMapping> map_weights_by_names(const ModelSpec& spec, const HfTensorNames& n,
                                                const TensorSource& source,
                                                bool require_all_placed) {
  const int64_t hidden = spec.hidden_size;
  WeightMappingList list;
  auto linear = [&](const std::string& kiln, const std::string& hf, int64_t out, int64_t in,
                    bool bias) {
    if (!n.conv1d) return list.linear(kiln, hf, out, in, bias);
    list.derive(names::kernel(kiln), hf + ".weight", {out, in}, transposed);
    if (bias) list.rename(names::bias(kiln), hf + ".bias", {out});
  };
  list.rename(names::embedding(names::token_embedder()), n.embedding + ".weight",
              {spec.vocab_size, hidden});
  if (spec.learned_positions)
    list.rename(names::embedding(names::position_embedder()), n.positions + ".weight",
                {spec.max_position_embeddings, hidden});
  std::vector<WeightMapping> moe_mappings;
  for (int64_t i = 0; i < spec.num_layers(); ++i) {
    const LayerSpec& layer = spec.layers[i];
    const AttentionSpec& a = layer.attention;
    const std::string L = layer_prefix(n, i);
    const std::string hf_att = L + n.attention + ".";
    const std::string attention = names::attention(i);
    if (layer.placement != NormPlacement::kPost)
      list.norm(names::input_norm(i), L + n.input_norm, layer.norm, hidden);
    if (!(layer.placement == NormPlacement::kParallel && layer.parallel_shared_norm))
      list.norm(names::post_attention_norm(i), L + n.post_attention_norm, layer.norm, hidden);
    if (layer.placement == NormPlacement::kSandwich)
      list.norm(names::pre_ffw_norm(i), L + n.pre_ffw_norm, layer.norm, hidden);
    if (layer.placement == NormPlacement::kSandwich || layer.placement == NormPlacement::kPost)
      list.norm(names::post_ffw_norm(i), L + n.post_ffw_norm, layer.norm, hidden);

    const int64_t q_rows = a.num_heads * a.head_dim, kv_rows = a.num_kv_heads * a.head_dim;
    const int64_t v_rows = a.num_kv_heads * a.value_head_dim;
    if (a.is_mla()) {
      const int64_t H = a.num_heads, P = a.qk_rope_head_dim, R = a.kv_lora_rank;
      const int64_t q_width = H * (a.qk_nope_head_dim + P);
      auto part = [&](const char* kiln) { return names::child(attention, kiln); };
      if (a.q_lora_rank > 0) {
        linear(part("wq_a"), hf_att + n.q_a, a.q_lora_rank, hidden, a.q_bias);
        list.rename(names::scale(part("q_norm")), hf_att + n.q_a_norm + ".weight", {a.q_lora_rank});
        linear(part("wq_b"), hf_att + n.q_b, q_width, a.q_lora_rank, false);
      } else {
        linear(part("query"), hf_att + n.query, q_width, hidden, false);
      }
      linear(part("wkv_a"), hf_att + n.kv_a, R + P, hidden, a.k_bias);
      list.rename(names::scale(part("kv_norm")), hf_att + n.kv_a_norm + ".weight", {R});
      linear(part("wkv_b"), hf_att + n.kv_b, H * (a.qk_nope_head_dim + a.value_head_dim), R, false);
    } else if (!n.qkv.empty()) {
      const std::string fused = hf_att + n.qkv;
      const QkvPart parts[] = {QkvPart::kQuery, QkvPart::kKey, QkvPart::kValue};
      const char* kiln_parts[] = {"query", "key", "value"};
      const int64_t rows[] = {q_rows, kv_rows, v_rows};
      const int64_t offsets[] = {0, q_rows, q_rows + kv_rows};
      const bool biases[] = {a.q_bias, a.k_bias, a.v_bias};
      for (int p = 0; p < 3; ++p) {
        const bool grouped = n.qkv_layout == "grouped";
        const bool conv1d = n.conv1d;
        const int64_t offset = offsets[p], count = rows[p];
        const QkvPart part = parts[p];
        const int64_t kv = a.num_kv_heads, per_kv = a.num_heads / a.num_kv_heads, hd = a.head_dim;
        auto split = [=](const Tensor& t, bool weight) {
          const Tensor rows_first = weight && conv1d ? transposed(t) : t;
          return grouped ? grouped_qkv_part(rows_first, kv, per_kv, hd, part)
                         : fused_rows(rows_first, offset, count);
        };
        const std::string module = names::child(attention, kiln_parts[p]);
        list.derive(names::kernel(module), fused + ".weight", {count, hidden},
                    [=](const Tensor& t) { return split(t, true); });
        if (biases[p])
          list.derive(names::bias(module), fused + ".bias", {count},
                      [=](const Tensor& t) { return split(t, false); });
      }
    } else {
      linear(names::child(attention, "query"), hf_att + n.query, q_rows, hidden, a.q_bias);
      linear(names::child(attention, "key"), hf_att + n.key, kv_rows, hidden, a.k_bias);
      linear(names::child(attention, "value"), hf_att + n.value, v_rows, hidden, a.v_bias);
    }
    linear(names::child(attention, "out"), hf_att + n.out, hidden, a.num_heads * a.value_head_dim,
           a.o_bias);
    if (a.sinks) list.rename(names::sinks(attention), hf_att + n.sinks, {a.num_heads});
    if (a.qk_norm != QkNormKind::kNone && a.qk_norm != QkNormKind::kL2 && !n.query_norm.empty()) {
      const bool whole = a.qk_norm == QkNormKind::kWholeProjection;
      list.norm(names::child(attention, "query_norm"), hf_att + n.query_norm, a.qk_norm_spec,
                whole ? q_rows : a.head_dim);
      list.norm(names::child(attention, "key_norm"), hf_att + n.key_norm, a.qk_norm_spec,
                whole ? kv_rows : a.head_dim);
    }

    if (layer.moe.enabled()) {
      const std::string block = L + n.moe;
      MoeHfNames hf{join(block, n.router), join(block, n.experts),
                    n.expert_gate,         n.expert_up,
                    n.expert_down,         n.shared.empty() ? "" : join(block, n.shared)};
      if (!n.shared_gate.empty()) hf.shared_gate = join(block, n.shared_gate);
      hf.interleaved_gate_up = n.expert_layout == "input_major_interleaved";
      hf.stacked_input_major = n.expert_layout == "input_major";
      map_moe_weights(layer.moe, hidden, i, hf, source, moe_mappings);
      continue;
    }
    const MlpSpec& mlp = layer.mlp;
    const std::string hf_mlp = L + n.mlp + ".";
    const int64_t inner = mlp.intermediate;
    if (mlp.gated && !n.gate_up.empty() && source.contains(hf_mlp + n.gate_up + ".weight")) {
      for (int half = 0; half < 2; ++half) {
        const std::string module = half == 0 ? names::mlp_gate(i) : names::mlp_up(i);
        list.derive(names::kernel(module), hf_mlp + n.gate_up + ".weight", {inner, hidden},
                    [=](const Tensor& t) { return fused_rows(t, half * inner, inner); });
        if (mlp.bias)
          list.derive(names::bias(module), hf_mlp + n.gate_up + ".bias", {inner},
                      [=](const Tensor& t) { return fused_rows(t, half * inner, inner); });
      }
    } else {
      if (mlp.gated) linear(names::mlp_gate(i), hf_mlp + n.gate, inner, hidden, mlp.bias);
      linear(names::mlp_up(i), hf_mlp + n.up, inner, hidden, mlp.bias);
    }
    linear(names::mlp_down(i), hf_mlp + n.down, hidden, inner, mlp.bias);
  }
  if (spec.has_final_norm) list.norm(names::final_norm(), n.final_norm, spec.final_norm, hidden);
  if (!spec.tie_word_embeddings)
    list.rename(names::kernel(names::lm_head()), n.lm_head + ".weight", {spec.vocab_size, hidden});
  if (spec.lm_head_bias)
    list.rename(names::bias(names::lm_head()), n.lm_head + ".bias", {spec.vocab_size});
  std::vector<WeightMapping> mappings = list.take();
  for (WeightMapping& m : moe_mappings) mappings.push_back(std::move(m));

  for (const WeightMapping& m : mappings)
    for (const std::string& name : m.hf_names)
      check(source.contains(name),
            source.where() + ": missing tensor '" + name + "' (needed for '" + m.kiln_name + "')");
  if (require_all_placed) {
    std::set<std::string> used;
    for (const WeightMapping& m : mappings) used.insert(m.hf_names.begin(), m.hf_names.end());
    std::vector<std::string> unplaced;
    for (const std::string& name : source.names()) {
      const bool buffer = name.ends_with(".inv_freq") || name.ends_with(".attn.bias") ||
                          name.ends_with(".attn.masked_bias");
      if (!used.count(name) && !buffer) unplaced.push_back(name);
    }
    if (!unplaced.empty()) {
      std::string list_text;
      for (const std::string& name : unplaced) list_text += (list_text.empty() ? "" : ", ") + name;
      throw Error(source.where() + ": " + std::to_string(unplaced.size()) +
                  " tensor(s) the generic mapping cannot place: " + list_text);
    }
  }
  return mappings;
}

HfModuleNames module_names_from(const ModelSpec& spec, const HfTensorNames& n,
                                const std::string& model_type) {
  HfModuleNames m;
  const LayerSpec& first = spec.layers.at(0);
  m.embedding = n.embedding;
  if (spec.embedding_scale != 1.0f || spec.learned_positions) {
    m.embedding = "";
    const std::string why =
        spec.learned_positions
            ? "Kiln reports the sum of token and position embeddings (compared as hidden_states.0)"
            : "Kiln's embedding output is scaled: compared as hidden_states.0";
    m.not_compared.push_back({n.embedding, why});
    if (!n.positions.empty()) m.not_compared.push_back({n.positions, why});
  }
  m.layers = n.layers;
  m.input_norm = n.input_norm;
  m.attention = n.attention;
  m.attention_parts.clear();
  auto part = [&](const char* kiln, const std::string& hf) {
    if (!hf.empty()) m.attention_parts.push_back({kiln, hf});
  };
  if (first.attention.is_mla()) {
    part("wq_a", n.q_a);
    part("q_norm", n.q_a_norm);
    part("query", first.attention.q_lora_rank > 0 ? n.q_b : n.query);
    part("wkv_a", n.kv_a);
    part("kv_norm", n.kv_a_norm);
    m.not_compared.push_back({n.attention + "." + n.kv_b,
                              "Kiln applies wkv_b to the cached latents inside the attention"});
  } else {
    part("query", n.query);
    part("key", n.key);
    part("value", n.value);
    part("query_norm", n.query_norm);
    part("key_norm", n.key_norm);
    if (first.attention.qk_norm == QkNormKind::kL2 && n.query_norm.empty())
      part("query_norm", ModelType(model_type).weightless_qk_norm_module());
  }
  part("out", n.out);
  if (!n.qkv.empty())
    m.not_compared.push_back({n.attention + "." + n.qkv,
                              "fused QKV projection: Kiln splits it into query, key and value"});
  m.post_attention_norm = first.placement == NormPlacement::kParallel && first.parallel_shared_norm
                              ? ""
                              : n.post_attention_norm;
  m.pre_ffw_norm = n.pre_ffw_norm;
  m.mlp = n.mlp.empty() ? n.moe : n.mlp;
  m.mlp_parts.clear();
  if (!n.down.empty()) m.mlp_parts.push_back({"wo", n.down});
  // The router's output: its logits, or for routers that return their scores (Llama 4's
  // sigmoid of the top-k) Kiln's routing weights.
  bool sigmoid_scores = false;
  for (const LayerSpec& layer : spec.layers)
    sigmoid_scores = sigmoid_scores || layer.moe.router == RouterKind::kTopKSigmoid;
  if (!n.router.empty()) m.mlp_parts.push_back({sigmoid_scores ? "routing" : "gate", n.router});
  if (!n.gate_up.empty())
    m.not_compared.push_back(
        {m.mlp + "." + n.gate_up, "fused gate and up projections: Kiln splits them at load"});
  if (!n.shared.empty())
    m.not_compared.push_back(
        {m.mlp + "." + n.shared, "Kiln adds the shared experts inside the MoE block"});
  if (first.placement == NormPlacement::kSandwich || first.placement == NormPlacement::kPost) {
    m.attention_output = n.post_attention_norm;
    m.mlp_output = n.post_ffw_norm;
  }
  // Falcon's HF code adds the attention output into the MLP's output tensor in place.
  m.mlp_out_includes_attention = first.placement == NormPlacement::kParallel &&
                                 ModelType(model_type).mlp_output_includes_attention();
  m.final_norm = n.final_norm;
  m.lm_head = n.lm_head.empty() ? "lm_head" : n.lm_head;
  if (spec.final_logit_softcap != 0.0f) {
    m.not_compared.push_back(
        {m.lm_head, "HF soft-caps the logits after this module: Kiln's are compared as logits"});
    m.lm_head = "";
  }
  return m;
}

ModelSpec AutoFamily::build_spec(const HfConfig& config) const {
  model_type_ = config.model_type();
  names_ = {};
  return detect_spec(config);
}

void AutoFamily::refine_spec(ModelSpec& spec, const TensorSource& source) const {
  names_ = discover_tensor_names(spec, source, model_type_);
  refine_spec_from_tensors(spec, names_, source);
}

std::vector<WeightMapping> AutoFamily::map_weights(const ModelSpec& spec,
                                                   const TensorSource& source) const {
  if (names_.layers.empty()) names_ = discover_tensor_names(spec, source, model_type_);
  return map_weights_by_names(spec, names_, source, true);
}

HfModuleNames AutoFamily::hf_modules(const ModelSpec& spec) const {
  return module_names_from(spec, names_, model_type_);
}

}  // namespace kiln
