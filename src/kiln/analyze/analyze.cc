#include "kiln/analyze/analyze.h"
#include "kiln/models/gguf_model.h"
#include "kiln/models/language_model.h"

#include <map>
#include <memory>
#include <optional>
#include <sstream>

#include "kiln/analyze/config_keys.h"
#include "kiln/analyze/detect.h"
#include "kiln/analyze/locations.h"
#include "kiln/analyze/spec_features.h"
#include "kiln/core/error.h"
#include "kiln/io/hf_config.h"
#include "kiln/io/hf_quantized.h"
#include "kiln/models/capabilities.h"
#include "kiln/models/detect_spec.h"
#include "kiln/models/family.h"

namespace kiln::analyze {
namespace {

// Keys a wrapper may hold for its text model.
const char* const kInheritedKeys[] = {"bos_token_id", "eos_token_id", "pad_token_id",
                                      "tie_word_embeddings"};

const Family* find_family(const HfConfig& config) {
  try {
    return &family_for(config);
  } catch (const Error&) {
    return nullptr;
  }
}

// Keys that describe the non-text towers of a multimodal wrapper.
bool is_multimodal_key(const std::string& key) {
  for (const char* word : {"image", "vision", "video", "audio", "mm_", "boi_", "eoi_"})
    if (key.find(word) != std::string::npos) return true;
  return false;
}

void append(std::string* text, const std::string& more) {
  if (more.empty()) return;
  if (!text->empty()) *text += "; ";
  *text += more;
}

// The family's side of the analysis: which family builds the config, its ModelSpec values.
struct FamilyResult {
  const Family* family = nullptr;
  bool builds_wrapper = false;  // the family accepts the outer (wrapper) config itself
  std::string error;            // build_spec's message when it rejects the config
  std::optional<std::map<std::string, std::string>> values;
  bool generic = false;  // no family: the detected spec's values
};

FamilyResult build_with_family(const HfConfig& outer, const HfConfig& text, bool wrapper) {
  FamilyResult result;
  result.family = find_family(outer);
  result.builds_wrapper = result.family != nullptr;
  const HfConfig* source = &outer;
  if (!result.family && wrapper) {
    result.family = find_family(text);
    source = &text;
  }
  if (!result.family) {
    try {
      result.values = spec_feature_values(detect_spec(text));
      result.generic = true;
    } catch (const Error& e) {
      result.error = e.what();
    }
    return result;
  }
  try {
    result.values = spec_feature_values(result.family->build_spec(*source));
  } catch (const Error& e) {
    result.error = e.what();
  }
  return result;
}

FeatureReport architecture_report(const Analysis& a, const FamilyResult& family, bool wrapper) {
  FeatureReport r;
  r.feature = {"architecture",
               a.architecture + " (model_type " + a.model_type + ")",
               FeatureKind::kInfo,
               {"architectures", "model_type"},
               true};
  std::string name = a.model_type.empty() ? "new_family" : a.model_type;
  if (family.generic) {
    r.note =
        "no built-in family: the generic route runs it (`kiln bringup --reference` verifies "
        "it and writes a family file)";
  } else if (!family.family) {
    r.supported = false;
    r.where = "src/kiln/models/" + name + ".cc: a family for " + a.architecture +
              " (config.json -> ModelSpec, HF tensor names -> Kiln names)";
    r.note =
        "no registered family handles this architecture, and the generic route cannot "
        "read its config: " +
        family.error;
  } else if (!family.error.empty()) {
    r.supported = false;
    r.where = "src/kiln/models/" + family.family->name() + ".cc: build_spec";
    r.note = "family " + family.family->name() + " rejects it: " + family.error;
  } else if (wrapper && !family.builds_wrapper) {
    r.supported = false;
    r.where = "src/kiln/models/" + family.family->name() + ".cc: accept " + a.architecture +
              " and map its text model's tensor names";
    r.note = "the text model builds with family " + family.family->name() +
             ", but no family loads the wrapper";
  }
  return r;
}

void collect_keys(const HfConfig& config, const std::string& prefix, Analysis* a) {
  for (auto it = config.json().begin(); it != config.json().end(); ++it) {
    const std::string& key = it.key();
    if (is_irrelevant_key(key))
      a->ignored_keys.push_back(prefix + key);
    else if (!config.keys_read().count(key))
      a->unknown_keys.push_back(prefix + key);
  }
}

}  // namespace

FeatureReport judge_feature(const Feature& feature,
                            const std::map<std::string, std::string>* spec_values,
                            const std::string& family) {
  FeatureReport r;
  r.feature = feature;
  const bool has_spec = spec_values != nullptr;
  std::optional<std::string> spec_value;
  if (has_spec) {
    auto it = spec_values->find(feature.id);
    if (it != spec_values->end()) spec_value = it->second;
  }
  if (spec_value && !feature.checkable) r.feature.value = *spec_value;

  std::string token = capability_value(r.feature);
  if (!token.empty()) {
    r.capability = feature.id + "=" + token;
    if (!has_capability(feature.id, token)) {
      r.supported = false;
      r.where = feature_location(feature.id, r.feature.value);
      r.note = "no code in this build declares KILN_CAPABILITY(\"" + feature.id + "\", \"" + token +
               "\")";
    }
  }
  if (!has_spec) return r;
  const std::string family_file = "src/kiln/models/" + family + ".cc";
  if (spec_value && feature.checkable && *spec_value != feature.value) {
    r.supported = false;
    std::string keys;
    for (const auto& k : feature.keys) {
      if (!keys.empty()) keys += ", ";
      keys += k;
    }
    append(&r.where, family_file + ": build_spec" + (keys.empty() ? "" : " (read " + keys + ")"));
    append(&r.note, "family " + family + " builds '" + *spec_value + "'");
  } else if (!spec_value && !token.empty()) {
    r.supported = false;
    append(&r.where, "src/kiln/models/model_spec.h: a field for it, set in " + family_file +
                         " and read in src/kiln/analyze/spec_features.cc");
    append(&r.note, "ModelSpec cannot express it");
  }
  return r;
}

Analysis analyze_config(const std::string& path) {
  Analysis a;
  a.config_path = path;
  // A .gguf file: the config its metadata stands for (models/gguf_model.h).
  HfConfig outer =
      is_gguf_model(path) ? gguf_hf_config(GgufFile::open(path)) : HfConfig::load(path);
  std::unique_ptr<HfConfig> text_holder;
  if (std::optional<HfConfig> text = language_model_config(outer)) {
    // With the wrapper's settings and the text config class's defaults where it is sparse.
    text_holder = std::make_unique<HfConfig>(std::move(*text));
    a.text_model = "text_config";
  }
  const bool wrapper = text_holder != nullptr;
  const HfConfig& text = wrapper ? *text_holder : outer;
  a.architecture = outer.architecture();
  a.model_type = outer.model_type();

  std::vector<Feature> features = detect_features(text);
  if (wrapper) outer.mark_read({std::begin(kInheritedKeys), std::end(kInheritedKeys)});
  std::string towers;
  std::vector<std::string> tower_keys;
  for (auto it = outer.json().begin(); it != outer.json().end(); ++it) {
    const std::string& key = it.key();
    bool tower = it.value().is_object() && key.size() > 7 &&
                 key.compare(key.size() - 7, 7, "_config") == 0 && key != "text_config" &&
                 key != "quantization_config";
    if (!tower && !(wrapper && is_multimodal_key(key))) continue;
    tower_keys.push_back(key);
    if (tower) {
      std::string type = it.value().value("model_type", std::string());
      if (!towers.empty()) towers += ", ";
      towers += key;
      if (!type.empty()) towers += " (" + type + ")";
    }
  }
  outer.mark_read(tower_keys);
  if (!towers.empty())
    features.insert(features.begin(),
                    Feature{"multimodal", towers + ": not run (Kiln runs the language model)",
                            FeatureKind::kSwitch, tower_keys, true});

  FamilyResult family = build_with_family(outer, text, wrapper);
  // A spec for the wrapper's language model runs it; the towers are set aside when loading
  // (LanguageModelSource), which the multimodal row says.
  if (family.values && !towers.empty()) (*family.values)["multimodal"] = features.front().value;
  // A pre-quantized checkpoint whose format the loader reads is dequantized on load
  // (io/hf_quantized.h) whatever the family: the quantization row is then carried.
  if (family.values) {
    bool readable = false;
    try {
      readable = !hf_quantization(outer).method.empty();
    } catch (const Error&) {  // a method Kiln does not read: the row stays missing
    }
    for (const Feature& f : features)
      if (readable && f.id == "quantization") (*family.values)["quantization"] = f.value;
  }
  if (family.family && family.error.empty()) a.family = family.family->name();
  a.generic_route = family.generic;
  a.features.push_back(architecture_report(a, family, wrapper));
  const auto* spec_values = family.values ? &*family.values : nullptr;
  for (const Feature& f : features)
    a.features.push_back(
        judge_feature(f, spec_values, family.generic ? std::string("detect_spec") : a.family));

  collect_keys(outer, "", &a);
  if (wrapper) collect_keys(text, "text_config.", &a);
  return a;
}

bool Analysis::fully_supported() const {
  return missing_count() == 0 && unknown_keys.empty();
}

int Analysis::missing_count() const {
  int missing = 0;
  for (const auto& f : features) missing += f.supported ? 0 : 1;
  return missing;
}

Json Analysis::to_json() const {
  Json j;
  j["config"] = config_path;
  j["architecture"] = architecture;
  j["model_type"] = model_type;
  j["text_model"] = text_model.empty() ? Json() : Json(text_model);
  j["family"] = family.empty() ? Json() : Json(family);
  j["route"] = !family.empty() ? "family" : generic_route ? "generic" : "none";
  j["supported"] = fully_supported();
  Json list = Json::array();
  for (const auto& r : features) {
    Json f;
    f["id"] = r.feature.id;
    f["value"] = r.feature.value;
    f["status"] = r.supported ? "supported" : "missing";
    f["keys"] = r.feature.keys;
    if (!r.capability.empty()) f["capability"] = r.capability;
    if (!r.where.empty()) f["where"] = r.where;
    if (!r.note.empty()) f["note"] = r.note;
    list.push_back(std::move(f));
  }
  j["features"] = std::move(list);
  j["unknown_keys"] = unknown_keys;
  j["ignored_keys"] = ignored_keys;
  return j;
}

std::string Analysis::to_markdown() const {
  std::ostringstream out;
  out << "# kiln analyze: " << config_path << "\n\n";
  out << "Architecture: " << architecture << " (model_type " << model_type << ")";
  if (!text_model.empty())
    out << " is a multimodal wrapper; this analyzes its text model (" << text_model << ")";
  out << ".\nFamily: "
      << (!family.empty() ? family
          : generic_route ? "none in this build; the generic route runs it (--family auto)"
                          : "none in this build")
      << ".\n\n";
  out << "| feature | value | status | where it would go |\n|---|---|---|---|\n";
  auto cell = [](const std::string& text) {
    std::string escaped;
    for (char c : text) {
      if (c == '|') escaped += '\\';
      escaped += c;
    }
    return escaped;
  };
  for (const auto& r : features) {
    out << "| " << r.feature.id << " | " << cell(r.feature.value) << " | "
        << (r.supported ? "✓" : "✗ missing") << " | " << cell(r.where);
    if (!r.note.empty()) out << " (" << cell(r.note) << ")";
    out << " |\n";
  }
  auto key_list = [&](const char* title, const std::vector<std::string>& keys) {
    out << "\n" << title << " (" << keys.size() << "):";
    for (size_t i = 0; i < keys.size(); ++i) out << (i ? ", `" : " `") << keys[i] << "`";
    if (keys.empty()) out << " none";
    out << "\n";
  };
  key_list("Config keys Kiln does not understand", unknown_keys);
  key_list("Keys with no effect on inference", ignored_keys);
  out << "\n";
  if (fully_supported()) {
    out << "Result: every feature is supported (exit 0).\n";
  } else {
    out << "Result: " << missing_count() << " of " << features.size() << " features missing, "
        << unknown_keys.size() << " keys not understood (exit 2).\n";
  }
  return out.str();
}

}  // namespace kiln::analyze
