#include "kiln/convert/synth.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "kiln/core/error.h"
#include "kiln/core/tensor.h"
#include "kiln/io/json.h"
#include "kiln/io/safetensors.h"

namespace kiln {
namespace fs = std::filesystem;

namespace {

struct ShapeDef {
  std::string name;
  Json config;
};

Json llama_config(int64_t hidden, int64_t intermediate, int64_t layers, int64_t heads,
                  int64_t kv_heads, int64_t head_dim, int64_t vocab, bool tied) {
  return Json{{"architectures", {"LlamaForCausalLM"}},
              {"model_type", "llama"},
              {"attention_bias", false},
              {"mlp_bias", false},
              {"hidden_act", "silu"},
              {"hidden_size", hidden},
              {"intermediate_size", intermediate},
              {"num_hidden_layers", layers},
              {"num_attention_heads", heads},
              {"num_key_value_heads", kv_heads},
              {"head_dim", head_dim},
              {"vocab_size", vocab},
              {"max_position_embeddings", 131072},
              {"rms_norm_eps", 1e-5},
              {"rope_theta", 500000.0},
              {"rope_scaling",
               {{"factor", 32.0},
                {"high_freq_factor", 4.0},
                {"low_freq_factor", 1.0},
                {"original_max_position_embeddings", 8192},
                {"rope_type", "llama3"}}},
              {"tie_word_embeddings", tied},
              {"bos_token_id", vocab - 2},
              {"eos_token_id", vocab - 1},
              {"torch_dtype", "bfloat16"}};
}

std::vector<ShapeDef> shape_defs() {
  std::vector<ShapeDef> defs;
  defs.push_back({"llama-3.2-1b", llama_config(2048, 8192, 16, 32, 8, 64, 128256, true)});
  Json l8 = llama_config(4096, 14336, 32, 32, 8, 128, 128256, false);
  l8["rope_scaling"]["factor"] = 8.0;
  defs.push_back({"llama-3.1-8b", l8});
  Json q = llama_config(1024, 3072, 28, 16, 8, 128, 151936, true);
  q["architectures"] = {"Qwen3ForCausalLM"};
  q["model_type"] = "qwen3";
  q["rope_theta"] = 1000000.0;
  q["rope_scaling"] = nullptr;
  q["rms_norm_eps"] = 1e-6;
  q["max_position_embeddings"] = 40960;
  q["use_sliding_window"] = false;
  defs.push_back({"qwen3-0.6b", q});
  Json m = llama_config(4096, 14336, 32, 32, 8, 128, 32000, false);
  m["architectures"] = {"MixtralForCausalLM"};
  m["model_type"] = "mixtral";
  m["rope_theta"] = 1000000.0;
  m["rope_scaling"] = nullptr;
  m["max_position_embeddings"] = 32768;
  m["num_local_experts"] = 8;
  m["num_experts_per_tok"] = 2;
  defs.push_back({"mixtral-8x7b", m});
  Json t = llama_config(64, 128, 2, 4, 2, 16, 512, false);
  t["rope_scaling"]["original_max_position_embeddings"] = 64;
  t["max_position_embeddings"] = 256;
  defs.push_back({"tiny-llama", t});
  return defs;
}

struct TensorDef {
  std::string name;
  Shape shape;
  int64_t fan_in;  // 0 = a norm scale (filled with ones)
};

std::vector<TensorDef> tensor_defs(const Json& c) {
  const int64_t h = c["hidden_size"], inter = c["intermediate_size"];
  const int64_t heads = c["num_attention_heads"], kv = c["num_key_value_heads"];
  const int64_t hd = c["head_dim"], vocab = c["vocab_size"], layers = c["num_hidden_layers"];
  const bool qk_norm = c["model_type"] == "qwen3";
  const int64_t experts = c.value("num_local_experts", 0);
  std::vector<TensorDef> defs;
  defs.push_back({"model.embed_tokens.weight", {vocab, h}, h});
  for (int64_t i = 0; i < layers; ++i) {
    std::string p = "model.layers." + std::to_string(i) + ".";
    defs.push_back({p + "input_layernorm.weight", {h}, 0});
    defs.push_back({p + "self_attn.q_proj.weight", {heads * hd, h}, h});
    defs.push_back({p + "self_attn.k_proj.weight", {kv * hd, h}, h});
    defs.push_back({p + "self_attn.v_proj.weight", {kv * hd, h}, h});
    defs.push_back({p + "self_attn.o_proj.weight", {h, heads * hd}, heads * hd});
    if (qk_norm) {
      defs.push_back({p + "self_attn.q_norm.weight", {hd}, 0});
      defs.push_back({p + "self_attn.k_norm.weight", {hd}, 0});
    }
    defs.push_back({p + "post_attention_layernorm.weight", {h}, 0});
    if (experts > 0) {
      std::string m = p + "block_sparse_moe.";
      defs.push_back({m + "gate.weight", {experts, h}, h});
      for (int64_t e = 0; e < experts; ++e) {
        std::string x = m + "experts." + std::to_string(e) + ".";
        defs.push_back({x + "w1.weight", {inter, h}, h});
        defs.push_back({x + "w2.weight", {h, inter}, inter});
        defs.push_back({x + "w3.weight", {inter, h}, h});
      }
    } else {
      defs.push_back({p + "mlp.gate_proj.weight", {inter, h}, h});
      defs.push_back({p + "mlp.up_proj.weight", {inter, h}, h});
      defs.push_back({p + "mlp.down_proj.weight", {h, inter}, inter});
    }
  }
  defs.push_back({"model.norm.weight", {h}, 0});
  if (!c["tie_word_embeddings"].get<bool>()) defs.push_back({"lm_head.weight", {vocab, h}, h});
  return defs;
}

// xoshiro256** seeded by splitmix64: fast, reproducible, good enough for random weights.
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (auto& s : state_) {
      seed += 0x9e3779b97f4a7c15ull;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      s = z ^ (z >> 31);
    }
  }
  uint64_t next() {
    const uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }
  // Uniform in [-1, 1).
  float uniform() {
    return static_cast<float>(static_cast<int64_t>(next() >> 40) - (1 << 23)) * (1.0f / (1 << 23));
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t state_[4];
};

void write_values(std::ofstream& out, DType dtype, const float* values, size_t n) {
  if (dtype == DType::F32) {
    out.write(reinterpret_cast<const char*>(values), static_cast<std::streamsize>(n * 4));
    return;
  }
  std::vector<uint16_t> half(n);
  for (size_t i = 0; i < n; ++i)
    half[i] = dtype == DType::BF16 ? f32_to_bf16(values[i]) : f32_to_f16(values[i]);
  out.write(reinterpret_cast<const char*>(half.data()), static_cast<std::streamsize>(n * 2));
}

// A byte-level BPE tokenizer.json with exactly `vocab` ids: the 256 byte symbols, merges
// that build longer tokens from earlier ones, and `<|endoftext|>`-style specials at the
// end (bos = vocab-2, eos = vocab-1).
Json synth_tokenizer(int64_t vocab) {
  // GPT-2's byte -> printable character table.
  std::vector<std::string> byte_char(256);
  std::vector<int> bs;
  for (int b = '!'; b <= '~'; ++b) bs.push_back(b);
  for (int b = 0xA1; b <= 0xAC; ++b) bs.push_back(b);
  for (int b = 0xAE; b <= 0xFF; ++b) bs.push_back(b);
  std::vector<int> cs = bs;
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    if (std::find(bs.begin(), bs.end(), b) == bs.end()) {
      bs.push_back(b);
      cs.push_back(256 + extra++);
    }
  }
  auto utf8 = [](int cp) {
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
  };
  for (size_t i = 0; i < bs.size(); ++i) byte_char[bs[i]] = utf8(cs[i]);
  Json vocab_json = Json::object();
  std::vector<std::string> tokens;
  std::set<std::string> seen;
  for (int b = 0; b < 256; ++b) {
    tokens.push_back(byte_char[b]);
    seen.insert(byte_char[b]);
  }
  Json merges = Json::array();
  const int64_t regular = vocab - 2;
  // Merge letters and common characters first so real text gets multi-byte tokens.
  Rng rng(12345);
  size_t attempts = 0;
  while (static_cast<int64_t>(tokens.size()) < regular && attempts < 100000000) {
    ++attempts;
    size_t limit = std::min<size_t>(tokens.size(), 4096);
    const std::string& a = tokens[rng.next() % limit];
    const std::string& b = tokens[(rng.next() % 96) + 32];
    std::string merged = a + b;
    if (merged.size() > 48 || !seen.insert(merged).second) continue;
    merges.push_back(a + " " + b);
    tokens.push_back(merged);
  }
  for (size_t i = 0; i < tokens.size(); ++i) vocab_json[tokens[i]] = i;
  Json added = Json::array();
  for (int64_t id = static_cast<int64_t>(tokens.size()); id < vocab; ++id) {
    std::string content = id == vocab - 1 ? "<|endoftext|>" : "<|begin_of_text|>";
    if (id < vocab - 2) content = "<|reserved_" + std::to_string(id) + "|>";
    vocab_json[content] = id;
    added.push_back({{"id", id},
                     {"content", content},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  Json byte_level = {{"type", "ByteLevel"},
                     {"add_prefix_space", false},
                     {"trim_offsets", true},
                     {"use_regex", true}};
  return Json{{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", added},
              {"normalizer", nullptr},
              {"pre_tokenizer", byte_level},
              {"post_processor", byte_level},
              {"decoder", byte_level},
              {"model",
               {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", false},
                {"vocab", vocab_json},
                {"merges", merges}}}};
}

}  // namespace

std::vector<std::string> synth_shapes() {
  std::vector<std::string> names;
  for (const auto& d : shape_defs()) names.push_back(d.name);
  return names;
}

uint64_t synth_model(const std::string& shape, const std::string& out_dir,
                     const SynthOptions& options) {
  auto defs = shape_defs();
  auto it =
      std::find_if(defs.begin(), defs.end(), [&](const ShapeDef& d) { return d.name == shape; });
  if (it == defs.end()) {
    std::string known;
    for (const auto& d : defs) known += (known.empty() ? "" : ", ") + d.name;
    throw Error("unknown shape '" + shape + "'; known shapes: " + known);
  }
  check(options.dtype == DType::BF16 || options.dtype == DType::F32 || options.dtype == DType::F16,
        "synth: --dtype must be bf16, f16 or f32");
  Json config = it->config;
  if (options.layers > 0) config["num_hidden_layers"] = options.layers;
  config["torch_dtype"] = options.dtype == DType::F32   ? "float32"
                          : options.dtype == DType::F16 ? "float16"
                                                        : "bfloat16";

  fs::path out(out_dir);
  if (fs::exists(out) && !options.force)
    throw Error(out_dir + ": already exists (use --force to replace it)");
  fs::path parent = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  fs::create_directories(parent);
  fs::path tmp =
      parent / (".kiln-tmp-" + out.filename().string() + "-" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    auto tensors = tensor_defs(config);
    // Split into shards of about shard_bytes.
    std::vector<std::vector<size_t>> shards(1);
    uint64_t in_shard = 0, total = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      uint64_t bytes =
          static_cast<uint64_t>(shape_numel(tensors[i].shape)) * dtype_size(options.dtype);
      if (in_shard > 0 && in_shard + bytes > options.shard_bytes) {
        shards.emplace_back();
        in_shard = 0;
      }
      shards.back().push_back(i);
      in_shard += bytes;
      total += bytes;
    }
    Json weight_map = Json::object();
    Rng rng(options.seed);
    std::vector<float> chunk(1 << 20);
    for (size_t s = 0; s < shards.size(); ++s) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
      std::vector<std::pair<std::string, std::pair<DType, Shape>>> specs;
      for (size_t i : shards[s]) {
        specs.push_back({tensors[i].name, {options.dtype, tensors[i].shape}});
        weight_map[tensors[i].name] = name;
      }
      std::ofstream file(tmp / name, std::ios::binary);
      if (!file) throw Error((tmp / name).string() + ": cannot open for writing");
      std::string header = safetensors_header(specs);
      file.write(header.data(), static_cast<std::streamsize>(header.size()));
      for (size_t i : shards[s]) {
        const TensorDef& t = tensors[i];
        const float amplitude = t.fan_in > 0 ? std::sqrt(3.0f / static_cast<float>(t.fan_in)) : 0;
        int64_t left = shape_numel(t.shape);
        while (left > 0) {
          size_t n =
              static_cast<size_t>(std::min<int64_t>(left, static_cast<int64_t>(chunk.size())));
          for (size_t k = 0; k < n; ++k) chunk[k] = t.fan_in > 0 ? amplitude * rng.uniform() : 1.0f;
          write_values(file, options.dtype, chunk.data(), n);
          left -= static_cast<int64_t>(n);
        }
      }
      file.flush();
      if (!file) throw Error((tmp / name).string() + ": write failed");
    }
    write_json_file((tmp / "model.safetensors.index.json").string(),
                    Json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}});
    write_json_file((tmp / "config.json").string(), config);
    write_json_file(
        (tmp / "generation_config.json").string(),
        Json{{"bos_token_id", config["bos_token_id"]}, {"eos_token_id", config["eos_token_id"]}});
    std::ofstream tok(tmp / "tokenizer.json", std::ios::binary);
    tok << synth_tokenizer(config["vocab_size"].get<int64_t>()).dump();
    tok.close();
    if (!tok) throw Error((tmp / "tokenizer.json").string() + ": write failed");
    if (fs::exists(out)) fs::remove_all(out);
    fs::rename(tmp, out);
    return total;
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace kiln
