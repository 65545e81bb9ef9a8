// `kiln analyze`: step 1 of a model bring-up. Reads a config.json, lists every architectural
// feature it implies, and says for each whether this build supports it and, when not, where
// in src/kiln/ it would go. Support is derived from the build: the registered families
// (does one build this architecture, and does its ModelSpec carry the feature with the
// config's value?) and the capabilities that layers declare (models/capabilities.h).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "kiln/analyze/feature.h"
#include "kiln/io/json.h"

namespace kiln::analyze {

struct FeatureReport {
  Feature feature;
  bool supported = true;
  // When missing: where in src/kiln/ the work goes (several places joined by "; ").
  std::string where;
  // When missing: why (the capability no code declares, or what the family made of it).
  std::string note;
  // The capability it needs ("rope.type=yarn"), "" when none.
  std::string capability;
};

struct Analysis {
  std::string config_path;  // as given
  std::string architecture;
  std::string model_type;
  // "text_config" when the config is a multimodal wrapper and its text model was analyzed.
  std::string text_model;
  // The registered family that builds this config, "" when none does.
  std::string family;
  // True when no family builds it but the generic route (models/detect_spec.h, tensors placed
  // by name) does: features are then judged against the detected ModelSpec.
  bool generic_route = false;
  std::vector<FeatureReport> features;    // "architecture" first
  std::vector<std::string> unknown_keys;  // keys nothing in Kiln reads ("text_config.x")
  std::vector<std::string> ignored_keys;  // keys present that have no effect on inference

  // True when every feature is supported and every key is understood.
  bool fully_supported() const;
  int missing_count() const;
  // The `--json` form: {config, architecture, model_type, text_model, family, supported,
  // features: [{id, value, status, keys, capability?, where?, note?}], unknown_keys,
  // ignored_keys}.
  Json to_json() const;
  // A markdown report: a summary line, the feature table, the key lists and the verdict.
  std::string to_markdown() const;
};

// Judges one detected feature: supported when the capability it needs is declared
// (models/capabilities.h) and, when `spec_values` is given (spec_feature_values() of the
// ModelSpec that family `family` built), the spec states the same value. A missing feature
// gets `where` (the layer, op or family file to change) and `note` (why).
FeatureReport judge_feature(const Feature& feature,
                            const std::map<std::string, std::string>* spec_values,
                            const std::string& family);

// Analyzes `path`, a model folder with config.json or a config.json file. Throws Error naming
// the file for a missing or malformed config (an unknown architecture is not an error: it is
// reported as missing).
Analysis analyze_config(const std::string& path);

}  // namespace kiln::analyze
