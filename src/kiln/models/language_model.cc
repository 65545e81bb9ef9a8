#include "kiln/models/language_model.h"

#include <algorithm>
#include <iostream>
#include <map>

#include "kiln/core/error.h"
#include "kiln/io/hf_quantized.h"
#include "kiln/io/json.h"
#include "kiln/models/capabilities.h"

namespace kiln {

KILN_CAPABILITY("multimodal", "yes");  // the language model runs; the towers do not

namespace {

// The wrapper's settings a sparse text_config inherits.
const char* const kInherited[] = {"bos_token_id", "eos_token_id", "pad_token_id",
                                  "tie_word_embeddings"};

// The defaults of a text config class, for the keys its checkpoints leave out
// (transformers' Gemma3TextConfig.__init__).
Json text_config_defaults(const std::string& model_type) {
  if (model_type == "gemma3_text")
    return {{"vocab_size", 262208},
            {"hidden_size", 2304},
            {"intermediate_size", 9216},
            {"num_hidden_layers", 26},
            {"num_attention_heads", 8},
            {"num_key_value_heads", 4},
            {"head_dim", 256},
            {"hidden_activation", "gelu_pytorch_tanh"},
            {"max_position_embeddings", 131072},
            {"rms_norm_eps", 1e-6},
            {"rope_theta", 1000000.0},
            {"attention_bias", false},
            {"query_pre_attn_scalar", 256},
            {"sliding_window", 4096},
            {"rope_local_base_freq", 10000.0},
            {"sliding_window_pattern", 6},
            {"tie_word_embeddings", true},
            {"bos_token_id", 2},
            {"eos_token_id", 1},
            {"pad_token_id", 0}};
  return Json::object();
}

// The text-only name of a language-model tensor, or "" when `name` is outside it.
std::string text_only_name(const std::string& name) {
  static const std::pair<const char*, const char*> kPrefixes[] = {
      {"model.language_model.", "model."},      // transformers >= 4.52
      {"language_model.model.", "model."},      // earlier
      {"language_model.lm_head.", "lm_head."},  // earlier
      {"language_model.", ""},                  // other wrappers
  };
  for (const auto& [from, to] : kPrefixes)
    if (name.rfind(from, 0) == 0) return to + name.substr(std::string(from).size());
  if (name.rfind("model.", 0) == 0 || name.rfind("lm_head.", 0) == 0) {
    // Text-only form, unless it is a tower under model. (model.vision_tower.*, ...).
    const std::string rest = name.substr(name.find('.') + 1);
    const bool tower = rest.rfind("vision", 0) == 0 || rest.rfind("multi_modal", 0) == 0 ||
                       rest.rfind("audio", 0) == 0 || rest.rfind("embed_vision", 0) == 0 ||
                       rest.rfind("embed_audio", 0) == 0;
    return tower ? "" : name;
  }
  return "";
}

}  // namespace

std::optional<HfConfig> language_model_config(const HfConfig& config) {
  const Json& text = config.get("text_config");
  if (!text.is_object() || config.has("hidden_size") || config.has("num_hidden_layers"))
    return std::nullopt;
  Json merged = text;
  for (const char* key : kInherited)
    if (!merged.contains(key) && config.has(key)) merged[key] = config.get(key);
  const Json defaults = text_config_defaults(merged.value("model_type", std::string()));
  for (auto it = defaults.begin(); it != defaults.end(); ++it)
    if (!merged.contains(it.key())) merged[it.key()] = it.value();
  return HfConfig::from_json(std::move(merged), config.source() + ": text_config");
}

LanguageModelSource::LanguageModelSource(std::unique_ptr<TensorSource> inner)
    : inner_(std::move(inner)) {
  std::map<std::string, std::string> chosen;  // text-only name -> inner name
  for (const std::string& name : inner_->names()) {
    const std::string text = text_only_name(name);
    if (text.empty()) {
      skipped_.push_back(name);
      continue;
    }
    auto [it, fresh] = chosen.emplace(text, name);
    check(fresh, inner_->where() + ": tensors '" + it->second + "' and '" + name +
                     "' are both the language model's '" + text + "'");
  }
  for (const auto& [text, name] : chosen) {
    names_.push_back(text);
    sources_.push_back(name);
  }
}

const std::string& LanguageModelSource::inner_name(const std::string& name) const {
  auto it = std::lower_bound(names_.begin(), names_.end(), name);
  if (it == names_.end() || *it != name)
    throw Error(inner_->where() + ": no tensor '" + name + "' in the language model");
  return sources_[it - names_.begin()];
}

bool LanguageModelSource::contains(const std::string& name) const {
  return std::binary_search(names_.begin(), names_.end(), name);
}
Tensor LanguageModelSource::get(const std::string& name) const {
  return inner_->get(inner_name(name));
}
Shape LanguageModelSource::shape_of(const std::string& name) const {
  return inner_->shape_of(inner_name(name));
}
DType LanguageModelSource::dtype_of(const std::string& name) const {
  return inner_->dtype_of(inner_name(name));
}

std::string LanguageModelSource::skipped_note() const {
  if (skipped_.empty()) return "";
  std::vector<std::string> modules;  // first two name parts ("vision_tower.vision_model")
  for (const std::string& name : skipped_) {
    const size_t dot = name.find('.');
    std::string module = name.substr(0, dot);
    if (module == "model" && dot != std::string::npos)
      module = name.substr(0, name.find('.', dot + 1));
    if (std::find(modules.begin(), modules.end(), module + ".*") == modules.end())
      modules.push_back(module + ".*");
  }
  std::string list;
  for (const std::string& m : modules) list += (list.empty() ? "" : ", ") + m;
  return "the vision tower is not run: " + std::to_string(skipped_.size()) +
         " tensors set aside (" + list + ")";
}

std::unique_ptr<TensorSource> open_model_source(const std::string& path, const HfConfig& config,
                                                Residency residency) {
  const std::string format = detect_checkpoint_format(path);
  // A pre-quantized checkpoint (io/hf_quantized.h) is always mapped: its quantized bytes are
  // read once, dequantized, and their pages dropped, so that memory holds the dequantized
  // model and not the quantized files besides.
  if (format == "safetensors" && !hf_quantization(config).method.empty())
    residency = Residency::kMapped;
  std::unique_ptr<TensorSource> source = open_tensor_source(path, residency);
  if (format == "kiln") return source;
  if (format != "gguf")
    source = dequantizing_source(std::move(source), config, DType::BF16,
                                 residency == Residency::kMapped);
  if (!language_model_config(config)) return source;
  auto language_model = std::make_unique<LanguageModelSource>(std::move(source));
  if (const std::string note = language_model->skipped_note(); !note.empty())
    std::cerr << "kiln: note: " << path << ": " << note << "\n";
  return language_model;
}

}  // namespace kiln
