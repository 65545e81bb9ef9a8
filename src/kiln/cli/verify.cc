// `kiln verify MODEL`: runs a reference dump's inputs through Kiln and compares logits,
// hidden states, every captured module and the greedy continuation (KV cache) with it;
// reports the KV-cache bytes per token. With --against BASE: compares MODEL with another
// checkpoint of the same architecture on a text file (KL per token, top-1, perplexities).
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>

#include "kiln/cli/command.h"
#include "kiln/convert/orbax_export.h"
#include "kiln/io/json.h"
#include "kiln/io/kiln_checkpoint.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"
#include "kiln/tokenizer/tokenizer.h"
#include "kiln/train/data.h"
#include "kiln/verify/quality.h"
#include "kiln/verify/reference_check.h"

namespace kiln::cli {

class VerifyCommand : public Command {
 public:
  void configure(CLI::App& app) override {
    app.add_option("model", model_path_, "HuggingFace model folder or Kiln checkpoint")->required();
    add_family_options(app, family_);
    app.add_option("--reference", reference_path_,
                   "reference dump (default: MODEL/reference.safetensors)");
    app.add_flag("--json", json_, "print one JSON object instead of a table");
    app.add_option("--tolerance", tolerance_, "max absolute error allowed (default 1e-4)")
        ->check(finite_positive());
    app.add_option("--against", base_path_,
                   "compare with this model (e.g. the bf16 source of a quantized checkpoint) "
                   "on --data instead of a reference dump");
    app.add_option("--data", data_,
                   "with --against: a text file, folder or JSONL (as kiln eval) to compare on");
    app.add_option("--seq", seq_, "with --against: tokens per window (default 256)")
        ->check(CLI::Range(2, 1 << 20));
  }

  int run() override {
    if (!base_path_.empty()) return run_against();
    const std::string reference = reference_or_default(model_path_, reference_path_);
    LoadedModel loaded = load_model(model_path_, Residency::kResident, family_);
    if (KilnCheckpoint::present_in(model_path_))
      provenance_ = maxtext_provenance(KilnCheckpoint(model_path_).manifest());
    Model model(loaded.spec, loaded.weights);
    const ReferenceReport report =
        check_against_reference(model, reference, tolerance_, loaded.family.get());
    kv_bytes_per_token_ = model.make_cache(1, 1).bytes_per_token();
    if (json_) {
      print_json(report, reference, loaded.spec.family);
    } else {
      print_table(report, reference, loaded.spec.family);
    }
    return report.passed ? 0 : 1;
  }

 private:
  int run_against() {
    check(!data_.empty(), "verify --against needs --data TEXTFILE to compare on");
    const LoadedModel loaded = load_model(model_path_, Residency::kResident, family_);
    const LoadedModel base_loaded = load_model(base_path_, Residency::kResident, family_);
    const Model model(loaded.spec, loaded.weights);
    const Model base(base_loaded.spec, base_loaded.weights);
    const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::load(model_path_);
    const int32_t eos =
        loaded.spec.eos_token_ids.empty() ? -1 : static_cast<int32_t>(loaded.spec.eos_token_ids[0]);
    const int64_t seq = std::min<int64_t>(seq_, loaded.spec.max_position_embeddings);
    const QualityReport r =
        compare_models(model, base, train::read_windows(data_, *tokenizer, seq, eos));
    if (json_) {
      const Json out = {{"model", model_path_},
                        {"against", base_path_},
                        {"data", data_},
                        {"positions", r.positions},
                        {"kl_mean", r.kl_mean},
                        {"kl_p99", r.kl_p99},
                        {"kl_max", r.kl_max},
                        {"top1_agreement", r.top1_agreement},
                        {"targets", r.targets},
                        {"perplexity", r.perplexity},
                        {"base_perplexity", r.base_perplexity}};
      std::cout << out.dump() << std::endl;
      return 0;
    }
    std::printf("kiln verify: %s against %s on %s (%lld positions)\n", model_path_.c_str(),
                base_path_.c_str(), data_.c_str(), static_cast<long long>(r.positions));
    std::printf("  KL(base || model) per token: mean %.4e, p99 %.4e, max %.4e nats\n", r.kl_mean,
                r.kl_p99, r.kl_max);
    std::printf("  top-1 agreement: %.2f%%\n", 100.0 * r.top1_agreement);
    std::printf("  perplexity over %lld targets: model %.4f, base %.4f (%+.2f%%)\n",
                static_cast<long long>(r.targets), r.perplexity, r.base_perplexity,
                100.0 * (r.perplexity / r.base_perplexity - 1.0));
    return 0;
  }

  void print_json(const ReferenceReport& report, const std::string& reference,
                  const std::string& family) const {
    Json comparisons = Json::array();
    for (const TensorComparison& c : report.comparisons)
      comparisons.push_back({{"name", c.name},
                             {"kiln", c.kiln},
                             {"max_abs_err", c.max_abs_err},
                             {"passed", c.passed}});
    Json modules = Json::array();
    for (const ModuleComparison& m : report.modules)
      modules.push_back({{"module", m.module},
                         {"kiln", m.kiln},
                         {"max_abs_err", m.max_abs_err},
                         {"max_rel_err", m.max_rel_err},
                         {"passed", m.passed}});
    Json not_compared = Json::array();
    for (const NotComparedModule& m : report.not_compared)
      not_compared.push_back({{"module", m.module}, {"reason", m.reason}});
    const Json first_divergent =
        report.first_divergent.empty() ? Json(nullptr) : Json(report.first_divergent);
    const Json out = {{"model", model_path_},
                      {"family", family},
                      {"reference", reference},
                      {"tolerance", report.tolerance},
                      {"logits_max_abs_err", report.logits_max_abs_err},
                      {"hidden_max_abs_err", report.hidden_max_abs_err},
                      {"greedy_match", report.greedy_match},
                      {"expected_greedy_ids", report.expected_greedy},
                      {"greedy_ids", report.actual_greedy},
                      {"comparisons", comparisons},
                      {"kv_cache_bytes_per_token", kv_bytes_per_token_},
                      {"modules", modules},
                      {"first_divergent_module", first_divergent},
                      {"not_compared", not_compared},
                      {"logits",
                       {{"max_abs_err", report.logits_max_abs_err},
                        {"kl_mean", report.kl_mean},
                        {"kl_max", report.kl_max},
                        {"top1_agreement", report.top1_agreement},
                        {"greedy_match", report.greedy_match}}},
                      {"maxtext_provenance", provenance_},
                      {"passed", report.passed}};
    std::cout << out.dump() << std::endl;
  }

  void print_table(const ReferenceReport& report, const std::string& reference,
                   const std::string& family) const {
    std::printf("kiln verify: %s (family %s) against %s, tolerance %.1e\n", model_path_.c_str(),
                family.c_str(), reference.c_str(), report.tolerance);
    for (const std::string& line : provenance_) std::printf("  %s\n", line.c_str());
    std::printf("  %-18s %-34s %12s  %s\n", "reference", "kiln", "max abs err", "status");
    for (const TensorComparison& c : report.comparisons)
      std::printf("  %-18s %-34s %12.3e  %s\n", c.name.c_str(), c.kiln.c_str(), c.max_abs_err,
                  c.passed ? "ok" : "FAIL");
    std::printf(
        "  logits: KL(reference || kiln) per position mean %.3e, max %.3e; top-1 "
        "agreement %.1f%%\n",
        report.kl_mean, report.kl_max, 100.0 * report.top1_agreement);
    std::printf("\n  modules of batch row 0, in execution order (act.<module>.out):\n");
    std::printf("  %-42s %12s %12s  %s\n", "module", "max abs err", "max rel err", "status");
    for (const ModuleComparison& m : report.modules)
      std::printf("  %-42s %12.3e %12.3e  %s\n", m.module.c_str(), m.max_abs_err, m.max_rel_err,
                  m.passed ? "ok" : "FAIL");
    std::printf("  first divergent module: %s\n",
                report.first_divergent.empty() ? "none" : report.first_divergent.c_str());
    if (!report.not_compared.empty())
      std::printf("  not compared (no Kiln counterpart): %zu reference modules\n",
                  report.not_compared.size());
    for (const NotComparedModule& m : report.not_compared)
      std::printf("    %-42s %s\n", m.module.c_str(), m.reason.c_str());
    std::printf("\n  %-18s %-34s %12s  %s\n", "greedy_ids", "greedy decode with KV cache",
                report.greedy_match ? "identical" : "differ", report.greedy_match ? "ok" : "FAIL");
    if (!report.greedy_match) {
      std::printf("    expected:");
      for (int64_t id : report.expected_greedy) std::printf(" %lld", static_cast<long long>(id));
      std::printf("\n    kiln:    ");
      for (int64_t id : report.actual_greedy) std::printf(" %lld", static_cast<long long>(id));
      std::printf("\n");
    }
    std::printf("KV cache: %lld bytes per token (f32, all layers)\n",
                static_cast<long long>(kv_bytes_per_token_));
    std::printf("%s\n", report.passed ? "PASSED" : "FAILED");
  }

  FamilyChoice family_;
  std::string model_path_;
  std::string reference_path_;
  std::string base_path_, data_;
  int64_t seq_ = 256;
  bool json_ = false;
  double tolerance_ = 1e-4;
  int64_t kv_bytes_per_token_ = 0;
  std::vector<std::string> provenance_;  // a Kiln checkpoint read from a MaxText tree
};

KILN_COMMAND(
    VerifyCommand, "verify",
    "Compare a model's logits, hidden states, modules and greedy decode with a reference dump, "
    "or (--against) its next-token distributions and perplexity with another checkpoint");

}  // namespace kiln::cli
