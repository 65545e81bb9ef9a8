#include "kiln/models/gguf_model.h"

#include <algorithm>
#include <cstring>
#include <optional>

#include "kiln/core/error.h"
#include "kiln/io/gguf_direct.h"

namespace kiln {
namespace {

struct Architecture {
  const char* gguf;        // general.architecture
  const char* hf;          // architectures[0]
  const char* model_type;  // model_type
  bool permuted_qk;        // llama.cpp's converter permuted Q/K rows (rotate-half -> pairs)
};

constexpr Architecture kArchitectures[] = {
    {"llama", "LlamaForCausalLM", "llama", true},
    {"qwen2", "Qwen2ForCausalLM", "qwen2", false},
    {"qwen3", "Qwen3ForCausalLM", "qwen3", false},
};

const Architecture& architecture_of(const GgufFile& gguf) {
  const std::string name = gguf.get_string("general.architecture");
  for (const Architecture& a : kArchitectures)
    if (name == a.gguf) return a;
  std::string known;
  for (const Architecture& a : kArchitectures)
    known += (known.empty() ? "" : ", ") + std::string(a.gguf);
  throw Error(gguf.path() + ": metadata key 'general.architecture' is '" + name +
              "', which Kiln does not read from GGUF (supported: " + known + ")");
}

// Per-layer llama.cpp module names and their HF counterparts.
constexpr std::pair<const char*, const char*> kLayerModules[] = {
    {"attn_norm", "input_layernorm"},    {"ffn_norm", "post_attention_layernorm"},
    {"attn_q", "self_attn.q_proj"},      {"attn_k", "self_attn.k_proj"},
    {"attn_v", "self_attn.v_proj"},      {"attn_output", "self_attn.o_proj"},
    {"attn_q_norm", "self_attn.q_norm"}, {"attn_k_norm", "self_attn.k_norm"},
    {"ffn_gate", "mlp.gate_proj"},       {"ffn_up", "mlp.up_proj"},
    {"ffn_down", "mlp.down_proj"},
};

int64_t positive(const GgufFile& gguf, const std::string& key, int64_t value) {
  check(value > 0 && value <= (int64_t{1} << 40), gguf.path() + ": metadata key '" + key + "' is " +
                                                      std::to_string(value) +
                                                      ", not a positive size");
  return value;
}

int64_t required_size(const GgufFile& gguf, const std::string& key) {
  return positive(gguf, key, gguf.get_int(key));
}

// The byte-level BPE pre-tokenizer regexes of the tokenizers llama.cpp names in
// tokenizer.ggml.pre (the same patterns their HF tokenizer.json files hold).
constexpr const char* kLlama3Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr const char* kQwen2Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

Json byte_level(bool use_regex) {
  return Json{{"type", "ByteLevel"},
              {"add_prefix_space", false},
              {"trim_offsets", true},
              {"use_regex", use_regex}};
}

Json split_then_byte_level(const char* pattern) {
  Json split = {{"type", "Split"},
                {"pattern", {{"Regex", pattern}}},
                {"behavior", "Isolated"},
                {"invert", false}};
  return Json{{"type", "Sequence"}, {"pretokenizers", Json::array({split, byte_level(false)})}};
}

// The (HF name -> GGUF name) pairs of the file's tensors with HF counterparts.
void require_no_rope_freqs(const GgufFile& gguf) {
  check(gguf.find_tensor("rope_freqs.weight") == nullptr,
        gguf.path() +
            ": tensor 'rope_freqs.weight' (llama 3 RoPE frequency factors) is not "
            "supported; convert the HF checkpoint instead");
}

}  // namespace

bool is_gguf_model(const std::string& path) {
  return GgufFile::is_gguf_path(path);
}

std::vector<std::string> gguf_architectures() {
  std::vector<std::string> out;
  for (const Architecture& a : kArchitectures) out.push_back(a.gguf);
  return out;
}

std::string gguf_to_hf_name(const std::string& name) {
  if (name == "token_embd.weight") return "model.embed_tokens.weight";
  if (name == "output_norm.weight") return "model.norm.weight";
  if (name == "output.weight") return "lm_head.weight";
  if (!name.starts_with("blk.")) return "";
  const size_t dot = name.find('.', 4);
  if (dot == std::string::npos || dot == 4) return "";
  const std::string layer = name.substr(4, dot - 4);
  if (layer.find_first_not_of("0123456789") != std::string::npos) return "";
  const std::string rest = name.substr(dot + 1);
  const size_t last = rest.rfind('.');
  if (last == std::string::npos) return "";
  const std::string module = rest.substr(0, last), param = rest.substr(last + 1);
  if (param != "weight" && param != "bias") return "";
  for (const auto& [gguf_module, hf_module] : kLayerModules)
    if (module == gguf_module) return "model.layers." + layer + "." + hf_module + "." + param;
  return "";
}

Json gguf_hf_config_json(const GgufFile& gguf) {
  const Architecture& arch = architecture_of(gguf);
  require_no_rope_freqs(gguf);
  const std::string p = std::string(arch.gguf) + ".";
  Json c = Json::object();
  c["architectures"] = Json::array({arch.hf});
  c["model_type"] = arch.model_type;
  const int64_t hidden = required_size(gguf, p + "embedding_length");
  const int64_t heads = required_size(gguf, p + "attention.head_count");
  c["hidden_size"] = hidden;
  c["num_hidden_layers"] = required_size(gguf, p + "block_count");
  c["intermediate_size"] = required_size(gguf, p + "feed_forward_length");
  c["num_attention_heads"] = heads;
  const int64_t kv_heads = positive(gguf, p + "attention.head_count_kv",
                                    gguf.find_int(p + "attention.head_count_kv").value_or(heads));
  c["num_key_value_heads"] = kv_heads;
  int64_t head_dim = hidden / heads;
  if (auto key_length = gguf.find_int(p + "attention.key_length"))
    head_dim = positive(gguf, p + "attention.key_length", *key_length);
  c["head_dim"] = head_dim;
  if (auto rope_dim = gguf.find_int(p + "rope.dimension_count")) {
    positive(gguf, p + "rope.dimension_count", *rope_dim);
    check(*rope_dim <= head_dim, gguf.path() + ": metadata key '" + p + "rope.dimension_count' (" +
                                     std::to_string(*rope_dim) + ") exceeds the head size " +
                                     std::to_string(head_dim));
    if (*rope_dim != head_dim)
      c["partial_rotary_factor"] = static_cast<double>(*rope_dim) / static_cast<double>(head_dim);
  }
  c["max_position_embeddings"] =
      positive(gguf, p + "context_length", gguf.find_int(p + "context_length").value_or(2048));
  const double eps = gguf.find_float(p + "attention.layer_norm_rms_epsilon").value_or(1e-5);
  check(eps > 0 && eps < 1, gguf.path() + ": metadata key '" + p +
                                "attention.layer_norm_rms_epsilon' must be in (0, 1)");
  c["rms_norm_eps"] = eps;
  const double theta = gguf.find_float(p + "rope.freq_base").value_or(10000.0);
  check(theta > 0, gguf.path() + ": metadata key '" + p + "rope.freq_base' must be positive");
  Json rope = {{"rope_type", "default"}, {"rope_theta", theta}};
  const std::string scaling_key = p + "rope.scaling.type";
  const std::string scaling = gguf.has(scaling_key) ? gguf.get_string(scaling_key) : "none";
  if (scaling == "linear" || scaling == "yarn") {
    rope["rope_type"] = scaling;
    rope["factor"] = gguf.get_float(p + "rope.scaling.factor");
    if (scaling == "yarn")
      rope["original_max_position_embeddings"] =
          gguf.get_int(p + "rope.scaling.original_context_length");
  } else {
    check(scaling == "none", gguf.path() + ": metadata key '" + scaling_key + "' is '" + scaling +
                                 "', which Kiln does not map (none, linear, yarn)");
  }
  c["rope_parameters"] = rope;
  int64_t vocab = 0;
  if (auto v = gguf.find_int(p + "vocab_size")) {
    vocab = positive(gguf, p + "vocab_size", *v);
  } else if (const GgufTensorInfo* embed = gguf.find_tensor("token_embd.weight")) {
    vocab = embed->shape.at(0);
  } else {
    vocab = static_cast<int64_t>(gguf.get_array("tokenizer.ggml.tokens").size());
  }
  c["vocab_size"] = vocab;
  c["tie_word_embeddings"] = gguf.find_tensor("output.weight") == nullptr;
  c["hidden_act"] = "silu";
  if (auto bos = gguf.find_int("tokenizer.ggml.bos_token_id")) c["bos_token_id"] = *bos;
  Json eos = Json::array();
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                          "tokenizer.ggml.eom_token_id"})
    if (auto id = gguf.find_int(key))
      if (std::find(eos.begin(), eos.end(), Json(*id)) == eos.end()) eos.push_back(*id);
  if (eos.size() == 1)
    c["eos_token_id"] = eos[0];
  else if (!eos.empty())
    c["eos_token_id"] = eos;
  c["torch_dtype"] = "bfloat16";
  return c;
}

HfConfig gguf_hf_config(const GgufFile& gguf) {
  return HfConfig::from_json(gguf_hf_config_json(gguf), gguf.path());
}

std::string gguf_tokenizer_json(const GgufFile& gguf) {
  const std::string model = gguf.get_string("tokenizer.ggml.model");
  check(model == "gpt2", gguf.path() + ": metadata key 'tokenizer.ggml.model' is '" + model +
                             "'; Kiln builds only byte-level BPE ('gpt2') tokenizers from GGUF");
  const Json& tokens = gguf.get_array("tokenizer.ggml.tokens");
  check(gguf.find("tokenizer.ggml.tokens")->element_type == GgufType::kString,
        gguf.path() + ": metadata key 'tokenizer.ggml.tokens' must be an array of strings");
  const int64_t n = static_cast<int64_t>(tokens.size());
  check(n > 0, gguf.path() + ": metadata key 'tokenizer.ggml.tokens' is empty");
  std::vector<int64_t> types(static_cast<size_t>(n), 1);
  if (gguf.has("tokenizer.ggml.token_type")) {
    const Json& t = gguf.get_array("tokenizer.ggml.token_type");
    check(static_cast<int64_t>(t.size()) == n,
          gguf.path() + ": metadata key 'tokenizer.ggml.token_type' has " +
              std::to_string(t.size()) + " entries for " + std::to_string(n) + " tokens");
    for (int64_t i = 0; i < n; ++i) {
      check(t[i].is_number_integer(),
            gguf.path() + ": metadata key 'tokenizer.ggml.token_type' must hold integers");
      types[static_cast<size_t>(i)] = t[i].get<int64_t>();
    }
  }
  Json vocab = Json::object();
  Json added = Json::array();
  for (int64_t i = 0; i < n; ++i) {
    const std::string& token = tokens[i].get_ref<const std::string&>();
    check(!token.empty(), gguf.path() + ": metadata key 'tokenizer.ggml.tokens': token " +
                              std::to_string(i) + " is empty");
    if (!vocab.contains(token)) vocab[token] = i;  // duplicates (padding fillers) keep the first
    const int64_t type = types[static_cast<size_t>(i)];
    if (type == 3 || type == 4)  // CONTROL, USER_DEFINED
      added.push_back({{"id", i},
                       {"content", token},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", type == 4},
                       {"special", type == 3}});
  }
  Json merges = Json::array();
  if (gguf.has("tokenizer.ggml.merges")) {
    for (const Json& m : gguf.get_array("tokenizer.ggml.merges")) {
      check(m.is_string(),
            gguf.path() + ": metadata key 'tokenizer.ggml.merges' must hold strings");
      merges.push_back(m);
    }
  }
  const std::string pre =
      gguf.has("tokenizer.ggml.pre") ? gguf.get_string("tokenizer.ggml.pre") : "default";
  Json pre_tokenizer;
  Json normalizer = nullptr;
  bool ignore_merges = false;
  if (pre == "gpt-2" || pre == "default") {
    pre_tokenizer = byte_level(true);
  } else if (pre == "llama-bpe" || pre == "llama3") {
    pre_tokenizer = split_then_byte_level(kLlama3Pattern);
    ignore_merges = true;
  } else if (pre == "qwen2") {
    pre_tokenizer = split_then_byte_level(kQwen2Pattern);
    normalizer = {{"type", "NFC"}};  // as Qwen's tokenizer.json
  } else {
    throw Error(gguf.path() + ": metadata key 'tokenizer.ggml.pre' is '" + pre +
                "'; Kiln knows the byte-level pre-tokenizers gpt-2, default, llama-bpe, qwen2");
  }
  // BOS/EOS added around each text when the file asks for it.
  auto special_id = [&](const char* key) -> std::optional<int64_t> {
    auto id = gguf.find_int(key);
    if (id)
      check(*id >= 0 && *id < n, gguf.path() + ": metadata key '" + key + "' is " +
                                     std::to_string(*id) + ", outside the vocabulary of " +
                                     std::to_string(n));
    return id;
  };
  const auto bos = special_id("tokenizer.ggml.bos_token_id");
  const auto eos = special_id("tokenizer.ggml.eos_token_id");
  const bool add_bos =
      gguf.has("tokenizer.ggml.add_bos_token") && gguf.get_bool("tokenizer.ggml.add_bos_token");
  const bool add_eos =
      gguf.has("tokenizer.ggml.add_eos_token") && gguf.get_bool("tokenizer.ggml.add_eos_token");
  check(!add_bos || bos, gguf.path() +
                             ": tokenizer.ggml.add_bos_token is set but "
                             "tokenizer.ggml.bos_token_id is missing");
  check(!add_eos || eos, gguf.path() +
                             ": tokenizer.ggml.add_eos_token is set but "
                             "tokenizer.ggml.eos_token_id is missing");
  Json post = Json{{"type", "ByteLevel"},
                   {"add_prefix_space", false},
                   {"trim_offsets", false},
                   {"use_regex", true}};
  if (add_bos || add_eos) {
    Json single = Json::array(), pair = Json::array(), table = Json::object();
    auto special = [&](int64_t id) {
      const std::string& token = tokens[id].get_ref<const std::string&>();
      table[token] = {{"id", token}, {"ids", Json::array({id})}, {"tokens", Json::array({token})}};
      return Json{{"SpecialToken", {{"id", token}, {"type_id", 0}}}};
    };
    auto sequence = [](const char* which) {
      return Json{{"Sequence", {{"id", which}, {"type_id", 0}}}};
    };
    if (add_bos) single.push_back(special(*bos));
    single.push_back(sequence("A"));
    if (add_eos) single.push_back(special(*eos));
    pair = single;
    if (add_bos) pair.push_back(special(*bos));
    pair.push_back(sequence("B"));
    if (add_eos) pair.push_back(special(*eos));
    post = {{"type", "TemplateProcessing"},
            {"single", single},
            {"pair", pair},
            {"special_tokens", table}};
  }
  Json tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", normalizer},
      {"pre_tokenizer", pre_tokenizer},
      {"post_processor", post},
      {"decoder",
       {{"type", "ByteLevel"},
        {"add_prefix_space", true},
        {"trim_offsets", true},
        {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", ignore_merges},
        {"vocab", vocab},
        {"merges", merges}}},
  };
  try {
    return tokenizer.dump();
  } catch (const Json::exception&) {
    throw Error(gguf.path() +
                ": metadata key 'tokenizer.ggml.tokens' holds a token that is not "
                "valid UTF-8");
  }
}

GgufSource::GgufSource(const std::string& path, Residency residency, DType dequantized)
    : gguf_(std::make_shared<GgufFile>(GgufFile::open(path, residency))),
      dequantized_(dequantized) {
  const Architecture& arch = architecture_of(*gguf_);
  require_no_rope_freqs(*gguf_);
  permuted_qk_ = arch.permuted_qk;
  const std::string p = std::string(arch.gguf) + ".";
  heads_ = required_size(*gguf_, p + "attention.head_count");
  kv_heads_ = positive(*gguf_, p + "attention.head_count_kv",
                       gguf_->find_int(p + "attention.head_count_kv").value_or(heads_));
  for (const GgufTensorInfo& t : gguf_->tensors()) {
    const std::string hf = gguf_to_hf_name(t.name);
    if (hf.empty()) continue;
    hf_names_.push_back(hf);
    to_gguf_[hf] = t.name;
  }
}

GgufSource::GgufSource(const std::string& path, Residency residency, GgufWeights weights)
    : GgufSource(path, residency, weights == GgufWeights::kBF16 ? DType::BF16 : DType::F32) {
  direct_ = weights == GgufWeights::kDirect;
}

const char* gguf_weights_name(GgufWeights weights) {
  switch (weights) {
    case GgufWeights::kDirect:
      return "direct";
    case GgufWeights::kF32:
      return "f32";
    case GgufWeights::kBF16:
      return "bf16";
  }
  return "?";
}

GgufWeights parse_gguf_weights(const std::string& name) {
  for (GgufWeights w : {GgufWeights::kDirect, GgufWeights::kF32, GgufWeights::kBF16})
    if (name == gguf_weights_name(w)) return w;
  throw Error("--gguf-weights '" + name + "' is not direct, f32 or bf16");
}

namespace {
GgufWeights g_gguf_weights = GgufWeights::kDirect;
}  // namespace

GgufWeights gguf_weights() {
  return g_gguf_weights;
}

void set_gguf_weights(GgufWeights weights) {
  g_gguf_weights = weights;
}

bool GgufSource::contains(const std::string& name) const {
  return to_gguf_.count(name) != 0;
}

const GgufTensorInfo& GgufSource::gguf_tensor(const std::string& hf_name) const {
  auto it = to_gguf_.find(hf_name);
  check(it != to_gguf_.end(), gguf_->path() + ": no tensor for '" + hf_name + "'");
  return gguf_->tensor_info(it->second);
}

Shape GgufSource::shape_of(const std::string& name) const {
  return gguf_tensor(name).shape;
}

DType GgufSource::dtype_of(const std::string& name) const {
  const GgufTensorInfo& info = gguf_tensor(name);
  if (direct_)
    if (const std::optional<DType> kiln = ggml_direct_dtype(info.type)) return *kiln;
  return GgufFile::read_dtype(info, dequantized_);
}

Tensor GgufSource::get(const std::string& name) const {
  const GgufTensorInfo& info = gguf_tensor(name);
  Tensor t = direct_ && ggml_direct_dtype(info.type) ? gguf_read_direct(*gguf_, info)
                                                     : gguf_->read(info.name, dequantized_);
  const bool q = info.name.ends_with(".attn_q.weight") || info.name.ends_with(".attn_q.bias");
  const bool k = info.name.ends_with(".attn_k.weight") || info.name.ends_with(".attn_k.bias");
  if (!permuted_qk_ || (!q && !k)) return t;
  // llama.cpp stores row (h, 2 i + j) of head h for HF's row (h, j * half + i): undo it.
  const int64_t heads = q ? heads_ : kv_heads_;
  const int64_t rows = t.shape().at(0);
  check(rows % (2 * heads) == 0, gguf_->path() + ": tensor '" + info.name + "' has " +
                                     std::to_string(rows) + " rows, not a multiple of 2 x " +
                                     std::to_string(heads) + " heads");
  const int64_t head_dim = rows / heads, half = head_dim / 2;
  const size_t row_bytes = t.nbytes() / static_cast<size_t>(rows);
  Tensor out = Tensor::zeros(t.dtype(), t.shape());
  const std::byte* src = static_cast<const std::byte*>(t.raw());
  std::byte* dst = static_cast<std::byte*>(out.mutable_raw());
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j)
        std::memcpy(dst + static_cast<size_t>(h * head_dim + j * half + i) * row_bytes,
                    src + static_cast<size_t>(h * head_dim + 2 * i + j) * row_bytes, row_bytes);
  return out;
}

}  // namespace kiln
