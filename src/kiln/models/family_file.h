// Family files (`kiln_family.json`): a brought-up architecture as data. `kiln bringup
// --family auto` writes one; Kiln loads it with `--family-file` or finds it in the model
// folder, and runs the model exactly as the generic route found it, as fast as a built-in
// family. Format: docs/family_file.md.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kiln/io/json.h"
#include "kiln/models/auto_family.h"
#include "kiln/models/family.h"

namespace kiln {

struct FamilyFile {
  std::string name;
  std::vector<std::string> architectures, model_types;
  // Changes to detect_spec(config): "layers.*.attention.q_bias" (every layer),
  // "layers.3.placement" (one layer) or a top-level field such as "tie_word_embeddings",
  // each with its ModelSpec::to_json() value.
  Json spec_overrides = Json::object();
  HfTensorNames tensor_names;
  // How each choice config.json does not state was made: [{choice, value, verified,
  // evidence}] (kiln bringup).
  Json decisions = Json::array();

  Json to_json() const;
  // Throws Error naming `where` and the key for malformed files.
  static FamilyFile from_json(const Json& json, const std::string& where);
  static FamilyFile load(const std::string& path);
  // Writes the file atomically (a temporary beside it, then rename).
  void save(const std::string& path) const;
};

// The overrides that turn `detected` into `wanted` (see FamilyFile::spec_overrides).
Json spec_overrides(const ModelSpec& detected, const ModelSpec& wanted);
// `spec` with `overrides` applied; throws Error naming `where` and the key for a path that is
// not a ModelSpec field or a value of the wrong type.
ModelSpec apply_spec_overrides(const ModelSpec& spec, const Json& overrides,
                               const std::string& where);

// A family loaded from a family file.
class FileFamily : public Family {
 public:
  FileFamily(FamilyFile file, std::string path) : file_(std::move(file)), path_(std::move(path)) {}
  std::string name() const override { return file_.name; }
  std::vector<std::string> architectures() const override { return file_.architectures; }
  std::vector<std::string> model_types() const override { return file_.model_types; }
  ModelSpec build_spec(const HfConfig& config) const override;
  std::vector<WeightMapping> map_weights(const ModelSpec& spec,
                                         const TensorSource& source) const override;
  HfModuleNames hf_modules(const ModelSpec& spec) const override;
  const FamilyFile& file() const { return file_; }

 private:
  FamilyFile file_;
  std::string path_;
};

// How the family of a model is chosen (`--family`, `--family-file`).
struct FamilyChoice {
  std::string name;  // "" = default route, "auto" = the generic route, else a built-in family
  std::string file;  // a family file
};

// The family for `config` of the model in `model_dir`: the family file `choice.file`; the
// generic route for "auto"; the built-in family `choice.name`; by default a kiln_family.json in
// `model_dir` when present, else the registered family for the config, else the generic route
// (with a one-line warning on stderr that the model is unverified). Throws Error for an
// unknown family name or a family file that does not load or does not name the config's
// architecture.
std::shared_ptr<const Family> choose_family(const HfConfig& config, const std::string& model_dir,
                                            const FamilyChoice& choice);

// The file name family files have in model folders and checkpoints.
inline constexpr const char* kFamilyFileName = "kiln_family.json";

}  // namespace kiln
