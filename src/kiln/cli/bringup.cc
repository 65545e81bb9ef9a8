// `kiln bringup MODEL`: the bring-up checklist in one command. Runs the architecture
// analysis, a conversion to a Kiln checkpoint, module-level verification against a
// reference dump and a short greedy generation, and prints the checklist as markdown.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "kiln/analyze/analyze.h"
#include "kiln/cli/command.h"
#include "kiln/convert/hf_to_kiln.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint_source.h"
#include "kiln/io/kiln_checkpoint.h"
#include "kiln/layers/model.h"
#include "kiln/models/detect_spec.h"
#include "kiln/models/language_model.h"
#include "kiln/models/loader.h"
#include "kiln/runtime/generator.h"
#include "kiln/tokenizer/tokenizer.h"
#include "kiln/verify/choices.h"
#include "kiln/verify/reference_check.h"

namespace kiln::cli {

namespace {
// One row of the checklist.
struct CheckItem {
  std::string step;
  enum class Status { kPassed, kFailed } status = Status::kFailed;
  std::string detail;
};

std::string format(const char* fmt, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, fmt, value);
  return buffer;
}
}  // namespace

class BringupCommand : public Command {
 public:
  void configure(CLI::App& app) override {
    app.add_option("model", model_path_, "HuggingFace model folder")->required();
    app.add_option("--reference", reference_path_,
                   "reference dump (default: MODEL/reference.safetensors)");
    app.add_option("--tolerance", tolerance_, "max absolute error allowed (default 1e-4)")
        ->check(finite_positive());
    add_family_options(app, family_);
    app.add_option("-o,--output", output_,
                   "generic route: folder for kiln_family.json, written when every check passes "
                   "(default: MODEL)");
  }

  int run() override {
    const std::string reference = reference_or_default(model_path_, reference_path_);
    std::vector<CheckItem> items;
    check_analysis(items);
    const std::filesystem::path work = std::filesystem::temp_directory_path() /
                                       ("kiln-bringup-" + std::to_string(::getpid()) + "-family");
    FamilyChoice route = family_;
    std::string family_file;  // the generic route's family file, in `work`
    std::vector<Decision> decisions;
    if (generic_route()) {
      std::filesystem::create_directories(work);
      family_file = (work / kFamilyFileName).string();
      items.push_back(bring_up_generic(reference, family_file, decisions));
      if (items.back().status == CheckItem::Status::kPassed) route = {"", family_file};
    }
    check_conversion(items, route);
    check_model(reference, items, route);

    const bool passed = std::none_of(items.begin(), items.end(), [](const CheckItem& item) {
      return item.status == CheckItem::Status::kFailed;
    });
    std::printf("# Bring-up checklist: %s\n\n", model_path_.c_str());
    for (const CheckItem& item : items) {
      const char* mark = item.status == CheckItem::Status::kPassed ? "✓" : "✗";
      std::printf("- %s **%s**: %s\n", mark, item.step.c_str(), item.detail.c_str());
    }
    if (!decisions.empty()) {
      std::printf(
          "\n| choice | kept | candidate | logits max abs err | modules matching | first "
          "divergent module |\n|---|---|---|---|---|---|\n");
      for (const Decision& d : decisions) {
        if (d.evidence.empty())
          std::printf("| %s | %s (unverified) | %s | | | |\n", d.choice.c_str(), d.value.c_str(),
                      join(d.candidates).c_str());
        for (const CandidateResult& c : d.evidence)
          std::printf("| %s | %s | %s | %s | %s | %s |\n", d.choice.c_str(),
                      c.value == d.value ? "✓" : "", c.value.c_str(),
                      c.ran ? format("%.2e", c.logits_max_abs_err).c_str() : "-",
                      c.ran ? std::to_string(c.modules_matching).c_str() : "-",
                      c.ran ? (c.first_divergent.empty() ? "none" : c.first_divergent.c_str())
                            : c.error.c_str());
      }
    }
    if (!family_file.empty() && passed) {
      const std::string destination =
          (std::filesystem::path(output_.empty() ? model_path_ : output_) / kFamilyFileName)
              .string();
      FamilyFile::load(family_file).save(destination);
      std::printf(
          "\nFamily file written: %s (loaded automatically from that folder, or with "
          "--family-file)\n",
          destination.c_str());
    } else if (!family_file.empty()) {
      std::printf("\nNo family file written: a check failed.\n");
    }
    std::error_code ignored;
    std::filesystem::remove_all(work, ignored);
    std::printf("\n**%s**\n", passed ? "Bring-up complete: every check passed."
                                     : "Bring-up incomplete: see the ✗ rows.");
    return passed ? 0 : 1;
  }

 private:
  static std::string join(const std::vector<std::string>& values) {
    std::string out;
    for (const std::string& v : values) out += (out.empty() ? "" : " / ") + v;
    return out;
  }

  // True when the model runs on the generic route: `--family auto`, or no family file and no
  // built-in family for its architecture.
  bool generic_route() const {
    if (!family_.file.empty()) return false;
    if (family_.name == "auto") return true;
    if (!family_.name.empty()) return false;
    if (std::filesystem::exists(std::filesystem::path(model_path_) / kFamilyFileName)) return false;
    try {
      family_for(HfConfig::load(model_path_));
      return false;
    } catch (const Error&) {
      return true;
    }
  }

  // The generic route: detect the spec, discover the tensor names, settle the choices
  // config.json leaves open against the reference, and write the family file to `path`.
  CheckItem bring_up_generic(const std::string& reference, const std::string& path,
                             std::vector<Decision>& decisions) const {
    try {
      const HfConfig config = HfConfig::load(model_path_);
      const std::unique_ptr<TensorSource> source = open_model_source(model_path_, config);
      AutoFamily family;
      ModelSpec spec = family.build_spec(config);
      family.refine_spec(spec, *source);
      HfTensorNames names = family.tensor_names();
      const bool verified = std::filesystem::exists(reference);
      decisions = verified ? settle_choices(spec, names, *source, config.model_type(), reference,
                                            tolerance_)
                           : open_choices(spec, names);
      FamilyFile file;
      file.name = config.model_type().empty() ? "brought_up" : config.model_type();
      if (family_named(file.name)) file.name += "_generic";
      if (!config.architecture().empty()) file.architectures = {config.architecture()};
      if (!config.model_type().empty()) file.model_types = {config.model_type()};
      file.spec_overrides = spec_overrides(detect_spec(config), spec);
      file.tensor_names = names;
      for (const Decision& d : decisions) file.decisions.push_back(d.to_json());
      file.save(path);
      std::string detail = "generic route: spec from config.json (" +
                           std::to_string(file.spec_overrides.size()) +
                           " overrides from the tensors), every tensor placed by name and shape";
      bool all_verified = true;
      for (const Decision& d : decisions) {
        detail +=
            "; " + d.choice + " = " + d.value + (d.verified ? " (verified)" : " (unverified)");
        all_verified = all_verified && d.verified;
      }
      if (!verified) detail += "; no reference: choices unverified";
      return {"family",
              all_verified && verified ? CheckItem::Status::kPassed : CheckItem::Status::kFailed,
              detail};
    } catch (const Error& e) {
      return {"family", CheckItem::Status::kFailed, e.what()};
    }
  }

  void check_analysis(std::vector<CheckItem>& items) const {
    const analyze::Analysis analysis = analyze::analyze_config(model_path_);
    const bool has_family = !analysis.family.empty();
    const bool generic = generic_route();
    items.push_back({"architecture analysis",
                     has_family || analysis.generic_route ? CheckItem::Status::kPassed
                                                          : CheckItem::Status::kFailed,
                     analysis.architecture + " (model_type " + analysis.model_type + ") -> " +
                         (generic      ? std::string("the generic route (--family auto)")
                          : has_family ? "family " + analysis.family
                                       : "no family in this build")});
    std::string detail = std::to_string(analysis.features.size()) + " features, " +
                         std::to_string(analysis.missing_count()) + " missing, " +
                         std::to_string(analysis.unknown_keys.size()) +
                         " config keys not understood";
    for (const analyze::FeatureReport& f : analysis.features)
      if (!f.supported) detail += "; missing " + f.feature.id + " -> " + f.where;
    for (const std::string& key : analysis.unknown_keys) detail += "; unknown key " + key;
    items.push_back(
        {"features",
         analysis.fully_supported() ? CheckItem::Status::kPassed : CheckItem::Status::kFailed,
         detail + " (`kiln analyze " + model_path_ + "` for the table)"});
  }

  // Converts the folder to an unscanned Kiln checkpoint in a temporary folder, checks its
  // checksums, and compares every tensor bit for bit with the weights load_model maps.
  void check_conversion(std::vector<CheckItem>& items, const FamilyChoice& route) const {
    const std::filesystem::path destination =
        std::filesystem::temp_directory_path() /
        ("kiln-bringup-" + std::to_string(::getpid()) + "-checkpoint");
    try {
      ConvertOptions options;
      options.family = route;
      convert_hf_to_kiln(model_path_, destination.string(), options);
      const KilnCheckpoint checkpoint(destination.string());
      checkpoint.verify();
      const LoadedModel loaded = load_model(model_path_, Residency::kResident, route);
      size_t bytes = 0;
      for (const auto& [name, expected] : loaded.weights) {
        check(checkpoint.contains(name), destination.string() + ": missing tensor '" + name + "'");
        const Tensor actual = checkpoint.get(name).contiguous();
        const Tensor wanted = expected.contiguous();
        check(actual.dtype() == wanted.dtype() && actual.shape() == wanted.shape() &&
                  std::memcmp(actual.raw(), wanted.raw(), wanted.nbytes()) == 0,
              destination.string() + ": tensor '" + name + "' differs from the loaded weight");
        bytes += wanted.nbytes();
      }
      items.push_back(
          {"conversion", CheckItem::Status::kPassed,
           "HF -> Kiln checkpoint (unscanned): " + std::to_string(loaded.weights.size()) +
               " tensors, " + format("%.1f MB", bytes / 1e6) +
               ", checksums verified, every tensor bit-identical to the loaded "
               "weights"});
    } catch (const Error& e) {
      items.push_back({"conversion", CheckItem::Status::kFailed, e.what()});
    }
    std::error_code ignored;
    std::filesystem::remove_all(destination, ignored);
  }

  void check_model(const std::string& reference, std::vector<CheckItem>& items,
                   const FamilyChoice& route) const {
    const std::vector<std::string> steps = {"layer checks", "logit check", "decode check"};
    if (!std::filesystem::exists(reference)) {
      for (const std::string& step : steps)
        items.push_back(
            {step, CheckItem::Status::kFailed,
             "no reference dump at " + reference + " (write one with tools/dump_reference.py)"});
      return;
    }
    try {
      const LoadedModel loaded = load_model(model_path_, Residency::kResident, route);
      const Model model(loaded.spec, loaded.weights);
      const ReferenceReport report =
          check_against_reference(model, reference, tolerance_, loaded.family.get());
      items.push_back(layer_item(report));
      items.push_back(logit_item(report));
      items.push_back(decode_item(report, model, loaded.spec));
    } catch (const Error& e) {
      for (const std::string& step : steps)
        items.push_back({step, CheckItem::Status::kFailed, e.what()});
    }
  }

  CheckItem layer_item(const ReferenceReport& report) const {
    double worst = 0.0;
    for (const ModuleComparison& m : report.modules) worst = std::max(worst, m.max_abs_err);
    bool hidden_ok = true;
    for (const TensorComparison& c : report.comparisons)
      if (c.name != "logits") hidden_ok &= c.passed;
    const bool ok = report.first_divergent.empty() && hidden_ok && !report.modules.empty();
    std::string detail =
        std::to_string(report.modules.size()) + " modules compared, worst max abs err " +
        format("%.2e", worst) + ", hidden states max abs err " +
        format("%.2e", report.hidden_max_abs_err) + ", " +
        std::to_string(report.not_compared.size()) + " reference modules not compared";
    if (!report.first_divergent.empty())
      detail += "; first divergent module: " + report.first_divergent;
    return {"layer checks", ok ? CheckItem::Status::kPassed : CheckItem::Status::kFailed, detail};
  }

  CheckItem logit_item(const ReferenceReport& report) const {
    bool ok = true;
    for (const TensorComparison& c : report.comparisons)
      if (c.name == "logits") ok = c.passed;
    ok &= report.top1_agreement == 1.0;
    return {"logit check", ok ? CheckItem::Status::kPassed : CheckItem::Status::kFailed,
            "max abs err " + format("%.2e", report.logits_max_abs_err) + ", KL mean " +
                format("%.2e", report.kl_mean) + " / max " + format("%.2e", report.kl_max) +
                ", top-1 agreement " + format("%.1f%%", 100.0 * report.top1_agreement)};
  }

  // The reference's greedy continuation decoded with the KV cache (done by the reference
  // check), then a short timed greedy generation: from a prompt when the folder has a
  // tokenizer, else after the greedy ids.
  CheckItem decode_item(const ReferenceReport& report, const Model& model,
                        const ModelSpec& spec) const {
    size_t same = 0;
    while (same < report.expected_greedy.size() && same < report.actual_greedy.size() &&
           report.expected_greedy[same] == report.actual_greedy[same])
      ++same;
    std::string detail = "greedy ids with the KV cache " +
                         std::string(report.greedy_match ? "identical to" : "differ from") +
                         " the reference (" + std::to_string(same) + "/" +
                         std::to_string(report.expected_greedy.size()) + " ids agree)";
    Generator generator(model, SamplingParams{}, spec.eos_token_ids);
    const int64_t new_tokens = 12;
    std::unique_ptr<Tokenizer> tokenizer;
    try {
      tokenizer = Tokenizer::load(model_path_);
    } catch (const Error&) {
      tokenizer.reset();
    }
    if (tokenizer) {
      const std::vector<int32_t> prompt_ids = tokenizer->encode("The capital of France is", true);
      const std::vector<int32_t> out = generator.generate(prompt_ids, new_tokens);
      detail += "; \"The capital of France is\" -> \"" + tokenizer->decode(out, true) + "\"";
    } else {
      const std::vector<int32_t> ids(report.actual_greedy.begin(), report.actual_greedy.end());
      generator.generate(ids, new_tokens);
      detail += "; no tokenizer: timed 12 more tokens after the greedy ids";
    }
    detail += format(", decode %.1f tokens/s", generator.stats().decode_tokens_per_second());
    return {"decode check",
            report.greedy_match ? CheckItem::Status::kPassed : CheckItem::Status::kFailed, detail};
  }

  std::string model_path_;
  std::string reference_path_;
  std::string output_;
  FamilyChoice family_;
  double tolerance_ = 1e-4;
};

KILN_COMMAND(BringupCommand, "bringup",
             "The bring-up checklist: analyze, convert, verify modules and logits, decode");

}  // namespace kiln::cli
