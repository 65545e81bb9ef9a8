#include "kiln/models/family_file.h"

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <set>

#include "kiln/core/error.h"
#include "kiln/models/detect_spec.h"

namespace kiln {
namespace {

std::vector<std::string> string_list(const Json& json, const std::string& key,
                                     const std::string& where) {
  std::vector<std::string> out;
  if (!json.contains(key)) return out;
  const Json& list = json.at(key);
  check(list.is_array(), where + ": key '" + key + "' must be a list of strings");
  for (const Json& item : list) {
    check(item.is_string(), where + ": key '" + key + "' must be a list of strings");
    out.push_back(item.get<std::string>());
  }
  return out;
}

// Leaf paths ("attention.rope.theta") of `a` whose values differ in `b`, with b's value.
void leaf_differences(const Json& a, const Json& b, const std::string& path, Json& out) {
  if (a.is_object() && b.is_object()) {
    for (auto it = b.begin(); it != b.end(); ++it)
      leaf_differences(a.contains(it.key()) ? a.at(it.key()) : Json(), it.value(),
                       path + (path.empty() ? "" : ".") + it.key(), out);
    return;
  }
  if (a != b) out[path] = b;
}

// Sets `value` at the dotted `path` of `json`; every part but the last must exist, and so must
// the last unless the object is new. Returns false when the path is not there.
bool set_path(Json& json, const std::string& path, const Json& value) {
  Json* node = &json;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot == std::string::npos ? dot : dot - start);
    if (!node->is_object() || !node->contains(part)) return false;
    if (dot == std::string::npos) {
      (*node)[part] = value;
      return true;
    }
    node = &(*node)[part];
    start = dot + 1;
  }
}

}  // namespace

Json spec_overrides(const ModelSpec& detected, const ModelSpec& wanted) {
  const Json a = detected.to_json(), b = wanted.to_json();
  Json out = Json::object();
  for (auto it = b.begin(); it != b.end(); ++it) {
    if (it.key() == "family" || it.key() == "layers") continue;
    Json diff = Json::object();
    leaf_differences(a.at(it.key()), it.value(), it.key(), diff);
    out.update(diff);
  }
  const Json& la = a.at("layers");
  const Json& lb = b.at("layers");
  check(la.size() == lb.size(), "spec_overrides: the layer counts differ");
  std::vector<Json> per_layer;
  for (size_t i = 0; i < lb.size(); ++i) {
    Json diff = Json::object();
    leaf_differences(la[i], lb[i], "", diff);
    // Without QK norms their setting computes nothing: not an override.
    if (lb[i]["attention"]["qk_norm"] == "none") {
      diff.erase("attention.qk_norm_spec.kind");
      diff.erase("attention.qk_norm_spec.eps");
    }
    per_layer.push_back(diff);
  }
  // A change every layer makes alike is written once for "layers.*".
  std::set<std::string> paths;
  for (const Json& d : per_layer)
    for (auto it = d.begin(); it != d.end(); ++it) paths.insert(it.key());
  for (const std::string& path : paths) {
    bool uniform = !per_layer.empty();
    for (const Json& d : per_layer)
      uniform = uniform && d.contains(path) && d.at(path) == per_layer[0].at(path);
    if (uniform) {
      out["layers.*." + path] = per_layer[0].at(path);
      continue;
    }
    for (size_t i = 0; i < per_layer.size(); ++i)
      if (per_layer[i].contains(path))
        out["layers." + std::to_string(i) + "." + path] = per_layer[i].at(path);
  }
  return out;
}

ModelSpec apply_spec_overrides(const ModelSpec& spec, const Json& overrides,
                               const std::string& where) {
  check(overrides.is_object(), where + " must be an object");
  Json json = spec.to_json();
  for (auto it = overrides.begin(); it != overrides.end(); ++it) {
    const std::string& path = it.key();
    bool placed = false;
    if (path.rfind("layers.", 0) == 0) {
      const size_t dot = path.find('.', 7);
      check(dot != std::string::npos, where + ": key '" + path + "' names no layer field");
      const std::string which = path.substr(7, dot - 7), rest = path.substr(dot + 1);
      Json& layers = json["layers"];
      if (which == "*") {
        placed = !layers.empty();
        for (Json& layer : layers) placed = set_path(layer, rest, it.value()) && placed;
      } else {
        size_t index = 0;
        try {
          index = std::stoul(which);
        } catch (const std::exception&) {
          throw Error(where + ": key '" + path + "': '" + which + "' is not a layer index or *");
        }
        check(index < layers.size(), where + ": key '" + path + "': the model has " +
                                         std::to_string(layers.size()) + " layers");
        placed = set_path(layers[index], rest, it.value());
      }
    } else {
      placed = path != "family" && path != "layers" && set_path(json, path, it.value());
    }
    check(placed, where + ": key '" + path + "' is not a ModelSpec field");
  }
  return ModelSpec::from_json(json, where);
}

Json FamilyFile::to_json() const {
  return {{"kiln_family", 1},
          {"name", name},
          {"architectures", architectures},
          {"model_types", model_types},
          {"spec_overrides", spec_overrides},
          {"tensor_names", tensor_names.to_json()},
          {"decisions", decisions}};
}

FamilyFile FamilyFile::from_json(const Json& json, const std::string& where) {
  check(json.is_object(), where + ": a family file must be a JSON object");
  for (auto it = json.begin(); it != json.end(); ++it)
    check(it.key() == "kiln_family" || it.key() == "name" || it.key() == "architectures" ||
              it.key() == "model_types" || it.key() == "spec_overrides" ||
              it.key() == "tensor_names" || it.key() == "decisions",
          where + ": unknown key '" + it.key() + "'");
  check(json.value("kiln_family", Json()) == 1,
        where + ": key 'kiln_family' must be 1 (the format version)");
  FamilyFile file;
  check(json.contains("name") && json.at("name").is_string() &&
            !json.at("name").get<std::string>().empty(),
        where + ": key 'name' must be a non-empty string");
  file.name = json.at("name").get<std::string>();
  file.architectures = string_list(json, "architectures", where);
  file.model_types = string_list(json, "model_types", where);
  check(!file.architectures.empty() || !file.model_types.empty(),
        where + ": keys 'architectures' and 'model_types' name no architecture");
  file.spec_overrides = json.value("spec_overrides", Json::object());
  check(file.spec_overrides.is_object(), where + ": key 'spec_overrides' must be an object");
  check(json.contains("tensor_names"), where + ": missing key 'tensor_names'");
  file.tensor_names = HfTensorNames::from_json(json.at("tensor_names"), where + ": tensor_names");
  file.decisions = json.value("decisions", Json::array());
  check(file.decisions.is_array(), where + ": key 'decisions' must be a list");
  return file;
}

FamilyFile FamilyFile::load(const std::string& path) {
  return from_json(read_json_file(path), path);
}

void FamilyFile::save(const std::string& path) const {
  const std::string temporary = path + ".tmp";
  write_json_file(temporary, to_json());
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) {
    std::filesystem::remove(temporary, error);
    throw Error(path + ": cannot write the family file");
  }
}

ModelSpec FileFamily::build_spec(const HfConfig& config) const {
  return apply_spec_overrides(detect_spec(config), file_.spec_overrides,
                              path_ + ": spec_overrides");
}

std::vector<WeightMapping> FileFamily::map_weights(const ModelSpec& spec,
                                                   const TensorSource& source) const {
  return map_weights_by_names(spec, file_.tensor_names, source, true);
}

HfModuleNames FileFamily::hf_modules(const ModelSpec& spec) const {
  return module_names_from(spec, file_.tensor_names,
                           file_.model_types.empty() ? "" : file_.model_types[0]);
}

std::shared_ptr<const Family> choose_family(const HfConfig& config, const std::string& model_dir,
                                            const FamilyChoice& choice) {
  auto from_file = [&](const std::string& path) {
    auto family = std::make_shared<FileFamily>(FamilyFile::load(path), path);
    const auto& archs = family->file().architectures;
    const auto& types = family->file().model_types;
    const bool names_it =
        std::find(archs.begin(), archs.end(), config.architecture()) != archs.end() ||
        std::find(types.begin(), types.end(), config.model_type()) != types.end();
    check(names_it, path + ": the family file is for " +
                        (archs.empty() ? types.at(0) : archs.at(0)) + ", not " +
                        config.architecture() + " (model_type " + config.model_type() + ")");
    return std::shared_ptr<const Family>(family);
  };
  if (!choice.file.empty()) return from_file(choice.file);
  if (choice.name == "auto") {
    std::cerr << "kiln: warning: " << config.source()
              << ": generic route (--family auto): unverified unless `kiln bringup` checked it "
                 "against a reference\n";
    return std::make_shared<AutoFamily>();
  }
  if (!choice.name.empty()) {
    for (const auto& family : families())
      if (family->name() == choice.name) return family;
    std::string known = "auto";
    for (const auto& family : families()) known += ", " + family->name();
    throw Error("--family: unknown family '" + choice.name + "'; known: " + known);
  }
  const std::filesystem::path in_folder = std::filesystem::path(model_dir) / kFamilyFileName;
  if (!model_dir.empty() && std::filesystem::exists(in_folder))
    return from_file(in_folder.string());
  const Family* registered = nullptr;
  try {
    registered = &family_for(config);
  } catch (const Error&) {
  }
  for (const auto& family : families())
    if (family.get() == registered) return family;
  std::cerr << "kiln: warning: " << config.source() << ": no built-in family for '"
            << config.architecture() << "' (model_type '" << config.model_type()
            << "'): running the generic route, unverified (`kiln bringup` checks it)\n";
  return std::make_shared<AutoFamily>();
}

}  // namespace kiln
