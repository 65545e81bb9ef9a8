#include "kiln/train/lora.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/io/safetensors.h"
#include "kiln/models/language_model.h"
#include "kiln/models/weight_names.h"
#include "kiln/train/backward.h"

namespace kiln::train {
namespace {

constexpr const char* kTargetNames[] = {"q", "k", "v", "o", "gate", "up", "down"};

uint64_t mix(uint64_t x) {  // splitmix64's finalizer
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

const std::string kPeftPrefix = "base_model.model.";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

LinearSlot lora_slot(const std::string& target) {
  for (int i = 0; i < 7; ++i)
    if (target == kTargetNames[i]) return static_cast<LinearSlot>(i);
  throw Error("--lora-targets: unknown module '" + target +
              "' (choose among q, k, v, o, gate, up, down)");
}

std::string lora_module(int64_t layer, LinearSlot slot) {
  switch (slot) {
    case LinearSlot::kQuery:
      return names::child(names::attention(layer), "query");
    case LinearSlot::kKey:
      return names::child(names::attention(layer), "key");
    case LinearSlot::kValue:
      return names::child(names::attention(layer), "value");
    case LinearSlot::kOut:
      return names::child(names::attention(layer), "out");
    case LinearSlot::kGate:
      return names::mlp_gate(layer);
    case LinearSlot::kUp:
      return names::mlp_up(layer);
    case LinearSlot::kDown:
      return names::mlp_down(layer);
  }
  throw Error("lora: bad module slot");
}

std::vector<std::string> parse_lora_targets(const std::string& list) {
  std::vector<std::string> targets;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t comma = std::min(list.find(',', start), list.size());
    const std::string name = list.substr(start, comma - start);
    lora_slot(name);
    for (const std::string& t : targets)
      check(t != name, "--lora-targets: '" + name + "' is listed twice");
    targets.push_back(name);
    start = comma + 1;
  }
  return targets;
}

Lora::Lora(TrainModel& model, LoraOptions options) : model_(model), options_(std::move(options)) {
  check(options_.rank > 0, "--lora-rank must be positive");
  check(std::isfinite(options_.alpha) && options_.alpha > 0, "--lora-alpha must be positive");
  check(options_.dropout >= 0.0 && options_.dropout < 1.0, "--lora-dropout must be in [0, 1)");
  check(!options_.targets.empty(), "--lora-targets: no module given");
  std::set<int> slots;
  for (const std::string& t : options_.targets) slots.insert(static_cast<int>(lora_slot(t)));
  const ModelSpec& spec = model.spec();
  std::mt19937_64 rng(options_.seed);
  for (int64_t i = 0; i < spec.num_layers(); ++i) {
    const AttentionSpec& a = spec.layers[i].attention;
    // Only the dense projections have adapters: not the stacked experts of an MoE block
    // (targets gate, up, down) nor the projections of latent attention (q, k, v, o).
    for (int slot : slots) {
      const auto s = static_cast<LinearSlot>(slot);
      const bool mlp = s == LinearSlot::kGate || s == LinearSlot::kUp || s == LinearSlot::kDown;
      if (mlp && spec.layers[i].moe.enabled())
        throw Error("lora: layer " + std::to_string(i) +
                    " is a mixture of experts: LoRA on expert weights (target '" +
                    kTargetNames[slot] + "') is not supported yet; target the attention (q,k,v,o)");
      if (!mlp && a.is_mla())
        throw Error("lora: layer " + std::to_string(i) +
                    " uses multi-head latent attention: LoRA on its projections (target '" +
                    kTargetNames[slot] + "') is not supported yet");
    }
  }
  for (int64_t i = 0; i < spec.num_layers(); ++i) {
    const AttentionSpec& a = spec.layers[i].attention;
    const int64_t hidden = spec.hidden_size, q = a.num_heads * a.head_dim,
                  kv = a.num_kv_heads * a.head_dim, inner = spec.layers[i].mlp.intermediate;
    const std::pair<int64_t, int64_t> dims[7] = {{hidden, q},    {hidden, kv},    {hidden, kv},
                                                 {q, hidden},    {hidden, inner}, {hidden, inner},
                                                 {inner, hidden}};
    for (int slot : slots) {
      check(static_cast<LinearSlot>(slot) != LinearSlot::kGate || spec.layers[i].mlp.gated,
            "--lora-targets: 'gate': layer " + std::to_string(i) +
                " has a non-gated MLP (no gate projection)");
      Module m;
      m.name = lora_module(i, static_cast<LinearSlot>(slot));
      m.in = dims[slot].first;
      m.out = dims[slot].second;
      m.a = model.add_trainable(m.name + "/lora_a", {options_.rank, m.in});
      m.b = model.add_trainable(m.name + "/lora_b", {m.out, options_.rank});
      Tensor da = model.gradients().at(m.name + "/lora_a");  // shares the gradient's storage
      Tensor db = model.gradients().at(m.name + "/lora_b");
      m.da = da.mutable_data<float>();
      m.db = db.mutable_data<float>();
      const double bound = 1.0 / std::sqrt(static_cast<double>(m.in));
      float* a_data = m.a.mutable_data<float>();
      for (int64_t j = 0; j < m.a.numel(); ++j) {
        const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;  // [0, 1)
        a_data[j] = static_cast<float>((2.0 * u - 1.0) * bound);
      }
      modules_[{i, slot}] = std::move(m);
    }
  }
  model.set_adapter(this);
}

Lora::~Lora() {
  model_.set_adapter(nullptr);
}

Lora::Module* Lora::find(int64_t layer, LinearSlot slot) {
  auto it = modules_.find({layer, static_cast<int>(slot)});
  return it == modules_.end() ? nullptr : &it->second;
}

std::map<std::string, std::pair<Tensor, Tensor>> Lora::adapters() const {
  std::map<std::string, std::pair<Tensor, Tensor>> out;
  for (const auto& [key, m] : modules_) out[m.name] = {m.a, m.b};
  return out;
}

void Lora::forward(int64_t layer, LinearSlot slot, const float* x, float* y, int64_t rows,
                   bool training) {
  Module* m = find(layer, slot);
  if (!m) return;
  const int64_t r = options_.rank;
  const double p = training ? options_.dropout : 0.0;
  const float* input = x;
  std::vector<float> dropped;
  std::vector<uint8_t> keep;
  if (p > 0.0) {
    // Inverted dropout: keep with probability 1 - p, scale kept elements by 1 / (1 - p).
    dropped.resize(static_cast<size_t>(rows * m->in));
    keep.resize(static_cast<size_t>(rows * m->in));
    const float keep_scale = static_cast<float>(1.0 / (1.0 - p));
    const uint64_t base = mix(mix(mix(options_.seed) ^ key_) ^
                              (static_cast<uint64_t>(layer) * 8 + static_cast<uint64_t>(slot)));
    for (int64_t j = 0; j < rows * m->in; ++j) {
      const double u = static_cast<double>(mix(base ^ static_cast<uint64_t>(j)) >> 11) * 0x1.0p-53;
      keep[j] = u >= p ? 1 : 0;
      dropped[j] = keep[j] ? x[j] * keep_scale : 0.0f;
    }
    input = dropped.data();
  }
  std::vector<float> u(static_cast<size_t>(rows * r)), t(static_cast<size_t>(rows * m->out));
  linear_forward(input, m->a.data<float>(), nullptr, u.data(), rows, m->in, r);
  linear_forward(u.data(), m->b.data<float>(), nullptr, t.data(), rows, r, m->out);
  const auto s = static_cast<float>(scale());
  for (int64_t j = 0; j < rows * m->out; ++j) y[j] += s * t[j];
  if (training) {
    m->dropped = std::move(dropped);
    m->keep = std::move(keep);
    m->u = std::move(u);
  }
}

void Lora::backward(int64_t layer, LinearSlot slot, const float* x, const float* dy, float* dx,
                    int64_t rows) {
  Module* m = find(layer, slot);
  if (!m) return;
  const int64_t r = options_.rank;
  check(static_cast<int64_t>(m->u.size()) == rows * r,
        "lora: backward without a matching training forward for " + m->name);
  const auto s = static_cast<float>(scale());
  std::vector<float> scaled(static_cast<size_t>(rows * m->out));
  for (int64_t j = 0; j < rows * m->out; ++j) scaled[j] = s * dy[j];
  std::vector<float> du(static_cast<size_t>(rows * r), 0.0f);
  // t = u B^T: du += dt B, dB += dt^T u.
  linear_backward(m->u.data(), m->b.data<float>(), scaled.data(), du.data(), m->db, nullptr, rows,
                  r, m->out);
  if (m->dropped.empty()) {  // no dropout: u = x A^T
    linear_backward(x, m->a.data<float>(), du.data(), dx, m->da, nullptr, rows, m->in, r);
  } else {  // u = d A^T, d = mask * x / (1 - p): dx += mask / (1 - p) * dd
    std::vector<float> dd(static_cast<size_t>(rows * m->in), 0.0f);
    linear_backward(m->dropped.data(), m->a.data<float>(), du.data(), dd.data(), m->da, nullptr,
                    rows, m->in, r);
    const auto keep_scale = static_cast<float>(1.0 / (1.0 - options_.dropout));
    for (int64_t j = 0; j < rows * m->in; ++j)
      if (m->keep[j]) dx[j] += dd[j] * keep_scale;
  }
  m->u.clear();
  m->dropped.clear();
  m->keep.clear();
}

std::map<std::string, std::string> hf_export_names(const LoadedModel& loaded) {
  check(loaded.family != nullptr,
        loaded.path + ": a HuggingFace folder is needed (a Kiln checkpoint has no HF names)");
  const std::unique_ptr<TensorSource> source = open_model_source(loaded.path, loaded.config);
  std::map<std::string, std::string> names;
  for (const WeightMapping& m : loaded.family->map_weights(loaded.spec, *source)) {
    check(!m.transform && m.hf_names.size() == 1,
          "'" + m.kiln_name + "' is made from " + std::to_string(m.hf_names.size()) +
              " tensor(s) by a transform; exporting family '" + loaded.family->name() +
              "' to HuggingFace names is not implemented yet");
    names[m.kiln_name] = m.hf_names[0];
  }
  return names;
}

void save_lora(const std::string& dir, const Lora& lora,
               const std::map<std::string, std::string>& hf_names, const std::string& base) {
  std::vector<std::pair<std::string, Tensor>> peft, kiln;
  std::set<std::string> leaves;
  for (const auto& [module, ab] : lora.adapters()) {
    auto it = hf_names.find(names::kernel(module));
    check(it != hf_names.end() && ends_with(it->second, ".weight"),
          "lora: no HuggingFace weight name for '" + names::kernel(module) + "'");
    const std::string hf_module = it->second.substr(0, it->second.size() - 7);
    leaves.insert(hf_module.substr(hf_module.rfind('.') + 1));
    peft.emplace_back(kPeftPrefix + hf_module + ".lora_A.weight", ab.first);
    peft.emplace_back(kPeftPrefix + hf_module + ".lora_B.weight", ab.second);
    kiln.emplace_back(module + "/lora_a", ab.first);
    kiln.emplace_back(module + "/lora_b", ab.second);
  }
  const LoraOptions& o = lora.options();
  write_safetensors(dir + "/adapter_model.safetensors", peft, {{"format", "pt"}});
  std::string targets;
  for (const std::string& t : o.targets) targets += (targets.empty() ? "" : ",") + t;
  write_safetensors(dir + "/kiln_adapter.safetensors", kiln,
                    {{"lora_rank", std::to_string(o.rank)},
                     {"lora_alpha", Json(o.alpha).dump()},
                     {"lora_targets", targets}});
  Json config = {{"peft_type", "LORA"},
                 {"task_type", "CAUSAL_LM"},
                 {"base_model_name_or_path", base},
                 {"r", o.rank},
                 {"lora_alpha", o.alpha},
                 {"lora_dropout", o.dropout},
                 {"target_modules", std::vector<std::string>(leaves.begin(), leaves.end())},
                 {"bias", "none"},
                 {"fan_in_fan_out", false},
                 {"use_rslora", false},
                 {"init_lora_weights", true},
                 {"inference_mode", true},
                 {"modules_to_save", nullptr}};
  std::ofstream(dir + "/adapter_config.json") << config.dump(2) << "\n";
}

LoraWeights load_lora(const std::string& dir, const LoadedModel& loaded) {
  const std::string config_path = dir + "/adapter_config.json";
  const std::string tensors_path = dir + "/adapter_model.safetensors";
  check(std::filesystem::exists(config_path), config_path + ": not found (is it a LoRA folder?)");
  const Json config = read_json_file(config_path);
  LoraWeights out;
  try {
    check(config.value("peft_type", std::string("LORA")) == "LORA",
          config_path + ": peft_type '" + config.at("peft_type").get<std::string>() +
              "' is not LORA");
    check(!config.value("fan_in_fan_out", false),
          config_path + ": fan_in_fan_out adapters are not supported");
    out.rank = config.at("r").get<int64_t>();
    const double alpha = config.at("lora_alpha").get<double>();
    check(out.rank > 0, config_path + ": key 'r' must be positive");
    out.scale = config.value("use_rslora", false) ? alpha / std::sqrt(static_cast<double>(out.rank))
                                                  : alpha / static_cast<double>(out.rank);
  } catch (const Json::exception& e) {
    throw Error(config_path + ": " + e.what());
  }
  std::map<std::string, std::string> kiln_of;  // HF module -> Kiln module
  for (const auto& [kiln_name, hf] : hf_export_names(loaded))
    if (ends_with(kiln_name, "/kernel") && ends_with(hf, ".weight"))
      kiln_of[hf.substr(0, hf.size() - 7)] = kiln_name.substr(0, kiln_name.size() - 7);
  const SafetensorsFile file = SafetensorsFile::open(tensors_path);
  for (const std::string& name : file.names()) {
    const bool is_a = ends_with(name, ".lora_A.weight"), is_b = ends_with(name, ".lora_B.weight");
    check(name.rfind(kPeftPrefix, 0) == 0 && (is_a || is_b),
          tensors_path + ": tensor '" + name +
              "' is not a LoRA A or B weight (base_model.model.<module>.lora_{A,B}.weight)");
    const std::string hf_module =
        name.substr(kPeftPrefix.size(), name.size() - kPeftPrefix.size() - 14);
    auto it = kiln_of.find(hf_module);
    check(it != kiln_of.end(),
          tensors_path + ": tensor '" + name + "': the model has no module '" + hf_module + "'");
    const Tensor& w = loaded.weights.at(names::kernel(it->second));
    const Tensor t = file.get(name).to(DType::F32);
    const Shape expected = is_a ? Shape{out.rank, w.dim(1)} : Shape{w.dim(0), out.rank};
    check(t.shape() == expected, tensors_path + ": tensor '" + name + "' has shape " +
                                     t.shape_string() + ", expected " +
                                     Tensor::zeros(DType::F32, expected).shape_string());
    auto& pair = out.modules[it->second];
    (is_a ? pair.first : pair.second) = t;
  }
  for (const auto& [module, pair] : out.modules)
    check(pair.first.defined() && pair.second.defined(),
          tensors_path + ": module '" + module + "' has only one of lora_A and lora_B");
  check(!out.modules.empty(), tensors_path + ": no LoRA tensors");
  return out;
}

void merge_lora(WeightMap& weights, const LoraWeights& lora) {
  for (const auto& [module, ab] : lora.modules) {
    const std::string name = names::kernel(module);
    const Tensor& w = weights.at(name);
    Tensor merged = w.to(DType::F32);  // a copy
    const int64_t out = w.dim(0), in = w.dim(1), r = lora.rank;
    const float* a = ab.first.data<float>();   // [r, in]
    const float* b = ab.second.data<float>();  // [out, r]
    float* m = merged.mutable_data<float>();
    for (int64_t o = 0; o < out; ++o)
      for (int64_t i = 0; i < in; ++i) {
        double sum = 0.0;
        for (int64_t k = 0; k < r; ++k)
          sum += static_cast<double>(b[o * r + k]) * static_cast<double>(a[k * in + i]);
        m[o * in + i] = static_cast<float>(static_cast<double>(m[o * in + i]) + lora.scale * sum);
      }
    weights[name] = w.dtype() == DType::F32 ? merged : merged.to(w.dtype());
  }
}

}  // namespace kiln::train
