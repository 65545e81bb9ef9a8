// `kiln family show NAME|FILE [--model DIR] [--json]`: a family in the family-file format
// (docs/family_file.md). For a family file, the file; for a built-in family, its names and
// the spec overrides and tensor names it amounts to on the model DIR, checked against the
// family's own mapping.
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>

#include "kiln/cli/command.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint_source.h"
#include "kiln/io/hf_config.h"
#include "kiln/models/auto_family.h"
#include "kiln/models/detect_spec.h"
#include "kiln/models/family_file.h"
#include "kiln/models/language_model.h"

namespace kiln::cli {

class FamilyCommand : public Command {
 public:
  void configure(CLI::App& app) override {
    app.add_option("action", action_, "show")->required()->check(CLI::IsMember({"show"}));
    app.add_option("family", family_, "a built-in family name, or a family file")->required();
    app.add_option("--model", model_,
                   "a HF model folder of the family: adds its spec overrides and tensor names");
    app.add_flag("--json", json_, "print the family file JSON only");
  }

  int run() override {
    Json out;
    std::string note;
    if (std::filesystem::is_regular_file(family_)) {
      out = FamilyFile::load(family_).to_json();
    } else {
      const Family* family = family_named(family_);
      if (!family) {
        std::string known;
        for (const auto& f : families()) known += (known.empty() ? "" : ", ") + f->name();
        throw Error("family show: '" + family_ +
                    "' is neither a family file nor a built-in family; "
                    "built-in: " +
                    known);
      }
      out = {{"kiln_family", 1},
             {"name", family->name()},
             {"architectures", family->architectures()},
             {"model_types", family->model_types()}};
      if (model_.empty()) {
        note = "spec overrides and tensor names depend on a checkpoint: pass --model DIR";
      } else {
        note = describe_on_model(*family, out);
      }
    }
    if (json_) {
      std::cout << out.dump(2) << "\n";
      return 0;
    }
    std::cout << "# Family " << out["name"].get<std::string>() << "\n\n"
              << "architectures: " << out["architectures"].dump() << "\n"
              << "model_types: " << out["model_types"].dump() << "\n";
    if (out.contains("spec_overrides"))
      std::cout << "spec overrides of detect_spec(config.json): " << out["spec_overrides"].dump(2)
                << "\n";
    if (out.contains("tensor_names"))
      std::cout << "tensor names: " << out["tensor_names"].dump(2) << "\n";
    if (out.contains("decisions") && !out["decisions"].empty())
      std::cout << "decisions: " << out["decisions"].dump(2) << "\n";
    if (!note.empty()) std::cout << "\n" << note << "\n";
    return 0;
  }

 private:
  // Adds the family's spec overrides and tensor names on model_ to `out`; returns a line that
  // says whether the tensor names map every tensor as the family does.
  std::string describe_on_model(const Family& family, Json& out) const {
    const HfConfig config = HfConfig::load(model_);
    const std::unique_ptr<TensorSource> source = open_model_source(model_, config);
    ModelSpec spec = family.build_spec(config);
    family.refine_spec(spec, *source);
    const HfTensorNames names = discover_tensor_names(spec, *source, config.model_type());
    out["spec_overrides"] = spec_overrides(detect_spec(config), spec);
    out["tensor_names"] = names.to_json();
    std::map<std::string, std::vector<std::string>> theirs, ours;
    for (const WeightMapping& m : family.map_weights(spec, *source))
      theirs[m.kiln_name] = m.hf_names;
    for (const WeightMapping& m : map_weights_by_names(spec, names, *source, true))
      ours[m.kiln_name] = m.hf_names;
    size_t differ = 0;
    for (const auto& [kiln, hf] : theirs) differ += ours.count(kiln) && ours[kiln] == hf ? 0 : 1;
    differ += ours.size() > theirs.size() ? ours.size() - theirs.size() : 0;
    return differ == 0 ? "tensor names: the " + std::to_string(theirs.size()) +
                             " Kiln tensors come from the same HF tensors as in the built-in family"
                       : std::to_string(differ) +
                             " Kiln tensors come from other HF tensors than in the built-in family";
  }

  std::string action_, family_, model_;
  bool json_ = false;
};

KILN_COMMAND(FamilyCommand, "family",
             "show a family (built-in or family file) in the family-file format");

}  // namespace kiln::cli
