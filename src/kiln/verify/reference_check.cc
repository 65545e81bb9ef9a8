#include "kiln/verify/reference_check.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "kiln/core/error.h"
#include "kiln/io/safetensors.h"
#include "kiln/models/family.h"
#include "kiln/models/model_type.h"
#include "kiln/models/weight_names.h"
#include "kiln/runtime/generator.h"

namespace kiln {

namespace {
double max_abs_error(const Tensor& actual, const Tensor& expected) {
  Tensor a = actual.to(DType::F32), e = expected.to(DType::F32);
  const float* pa = a.data<float>();
  const float* pe = e.data<float>();
  double worst = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double d = std::fabs(static_cast<double>(pa[i]) - pe[i]);
    if (std::isnan(d)) return INFINITY;
    worst = std::max(worst, d);
  }
  return worst;
}

// Row 0 of a Kiln activation [B, T, ...] as f32 values.
std::vector<float> first_row(const Tensor& activation) {
  const Tensor f = activation.to(DType::F32);
  const int64_t row = f.numel() / f.dim(0);
  return std::vector<float>(f.data<float>(), f.data<float>() + row);
}

// `row` (row 0 of Kiln's activation, [T, ...]) against the reference tensor element by
// element; the shapes may differ in how heads are laid out ([T, H*D], [T, H, D], or
// [H, T, D], which is transposed first). A reference of one token's features ([E]: HF's
// routers see the tokens flattened, so the dump kept token 0) is compared with token 0.
ModuleComparison compare_module(const std::string& module, const std::string& kiln,
                                const std::vector<float>& row, const Tensor& reference,
                                int64_t tokens, double tolerance,
                                const std::string& reference_path) {
  const Tensor expected = reference.to(DType::F32);
  const bool first_token_only =
      expected.ndim() == 1 && static_cast<int64_t>(row.size()) == tokens * expected.numel();
  const std::vector<float> actual(row.begin(),
                                  first_token_only ? row.begin() + expected.numel() : row.end());
  check(expected.numel() == static_cast<int64_t>(actual.size()),
        reference_path + ": tensor 'act." + module + ".out' has shape " + expected.shape_string() +
            ", the model's " + kiln + " has " + std::to_string(actual.size()) +
            " values per batch row");
  std::vector<float> values(expected.data<float>(), expected.data<float>() + expected.numel());
  if (expected.ndim() == 3 && expected.dim(1) == tokens && expected.dim(0) != tokens) {
    // Heads first ([H, T, D], a norm applied after HF's transpose): to Kiln's [T, H, D].
    const int64_t heads = expected.dim(0), depth = expected.dim(2);
    const float* source = expected.data<float>();
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t t = 0; t < tokens; ++t)
        for (int64_t d = 0; d < depth; ++d)
          values[(t * heads + h) * depth + d] = source[(h * tokens + t) * depth + d];
  }
  const float* pe = values.data();
  double worst = 0.0, scale = 0.0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double d = std::fabs(static_cast<double>(actual[i]) - pe[i]);
    worst = std::isnan(d) ? INFINITY : std::max(worst, d);
    scale = std::max(scale, std::fabs(static_cast<double>(pe[i])));
  }
  ModuleComparison c{module, kiln, worst, scale > 0.0 ? worst / scale : worst, false};
  c.passed = worst <= tolerance * std::max(1.0, scale);
  return c;
}

// log-softmax of one row of logits, in double.
std::vector<double> log_softmax(const float* logits, int64_t vocab) {
  double peak = -INFINITY;
  for (int64_t v = 0; v < vocab; ++v) peak = std::max(peak, static_cast<double>(logits[v]));
  double sum = 0.0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(logits[v] - peak);
  const double log_sum = peak + std::log(sum);
  std::vector<double> out(vocab);
  for (int64_t v = 0; v < vocab; ++v) out[v] = logits[v] - log_sum;
  return out;
}

// KL(reference || Kiln) per position and top-1 agreement, over logits [B, T, V].
void logit_statistics(const Tensor& actual, const Tensor& expected, ReferenceReport& report) {
  const Tensor a = actual.to(DType::F32), e = expected.to(DType::F32);
  const int64_t vocab = a.dim(a.ndim() - 1), positions = a.numel() / vocab;
  double kl_sum = 0.0;
  int64_t agree = 0;
  for (int64_t p = 0; p < positions; ++p) {
    const float* pa = a.data<float>() + p * vocab;
    const float* pe = e.data<float>() + p * vocab;
    const std::vector<double> la = log_softmax(pa, vocab), le = log_softmax(pe, vocab);
    double kl = 0.0;
    for (int64_t v = 0; v < vocab; ++v) kl += std::exp(le[v]) * (le[v] - la[v]);
    kl = std::max(kl, 0.0);
    kl_sum += kl;
    report.kl_max = std::max(report.kl_max, kl);
    agree += std::max_element(pa, pa + vocab) - pa == std::max_element(pe, pe + vocab) - pe;
  }
  report.kl_mean = kl_sum / static_cast<double>(positions);
  report.top1_agreement = static_cast<double>(agree) / static_cast<double>(positions);
}

// The module path of a reference tensor "act.<module>.in|out", or "" for other tensors.
std::string reference_module(const std::string& name) {
  if (name.rfind("act.", 0) != 0) return "";
  const size_t dot = name.rfind('.');
  return name.substr(4, dot - 4);
}

std::vector<int64_t> int_values(const Tensor& t) {
  std::vector<int64_t> out(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = static_cast<int64_t>(t.item_as_double(i));
  return out;
}
}  // namespace

ReferenceReport check_against_reference(const Model& model, const std::string& reference_path,
                                        double tolerance, const Family* family) {
  const SafetensorsFile reference = SafetensorsFile::open(reference_path);
  const ModelSpec& spec = model.spec();
  ReferenceReport report;
  report.tolerance = tolerance;

  const Tensor input_ids = reference.get("input_ids");
  check(input_ids.ndim() == 2,
        reference_path + ": tensor 'input_ids' must be [B, T], got " + input_ids.shape_string());
  const int64_t batch = input_ids.dim(0), tokens = input_ids.dim(1);
  std::vector<int32_t> ids;  // [B, T]
  for (int64_t id : int_values(input_ids)) ids.push_back(static_cast<int32_t>(id));

  // The Kiln activation that matches each hidden_states.i of HF.
  std::map<std::string, std::string> hidden_sources;
  const int64_t layers = spec.num_layers();
  hidden_sources[names::token_embedder()] = "hidden_states.0";
  for (int64_t i = 0; i + 1 < layers; ++i)
    hidden_sources[names::layer(i)] = "hidden_states." + std::to_string(i + 1);
  hidden_sources[names::final_norm()] = "hidden_states." + std::to_string(layers);
  std::map<std::string, Tensor> captured;  // reference name -> Kiln activation
  // Kiln activations with an HF counterpart, in execution order: (kiln, module, row 0).
  struct ModuleCapture {
    std::string kiln, module;
    std::vector<float> row;  // [T, ...]
  };
  std::vector<ModuleCapture> module_captures;
  if (!family) family = family_named(spec.family);
  const HfModuleNames hf_names = family ? family->hf_modules(spec) : HfModuleNames{};
  std::vector<float> attention_row;  // [T, hidden]: the latest layer's attention output
  ActivationObserver observer = [&](const std::string& name, const Tensor& activation) {
    auto it = hidden_sources.find(name);
    if (it != hidden_sources.end()) captured[it->second] = activation.contiguous(true);
    const std::vector<std::string> modules = hf_modules_for(hf_names, name);
    if (modules.empty()) return;
    std::vector<float> row = first_row(activation);
    if (hf_names.mlp_out_includes_attention) {
      // HF's captured MLP output holds the attention output too (added in place).
      for (int64_t i = 0; i < layers; ++i) {
        if (name == names::attention(i)) attention_row = row;
        if (name == names::mlp(i) || name == names::child(names::mlp(i), "wo"))
          for (size_t j = 0; j < row.size(); ++j) row[j] += attention_row.at(j);
      }
    }
    for (const std::string& module : modules) {
      // A module named after the checkpoint's tensors may carry transformers' newer name.
      const std::string renamed = transformers_module_path(module);
      if (reference.contains("act." + module + ".out"))
        module_captures.push_back({name, module, row});
      else if (renamed != module && reference.contains("act." + renamed + ".out"))
        module_captures.push_back({name, renamed, row});
    }
  };
  KvCache cache = model.make_cache(batch, tokens);
  ForwardOptions options;
  options.observer = &observer;
  const Tensor logits = model.forward(ids.data(), batch, tokens, cache, options);

  auto compare = [&](const std::string& name, const std::string& kiln, const Tensor& actual) {
    const Tensor expected = reference.get(name);
    check(expected.shape() == actual.shape(), reference_path + ": tensor '" + name +
                                                  "' has shape " + expected.shape_string() +
                                                  ", the model gives " + actual.shape_string());
    const double err = max_abs_error(actual, expected);
    report.comparisons.push_back({name, kiln, err, err <= tolerance});
    return err;
  };
  report.logits_max_abs_err = compare("logits", names::lm_head(), logits);
  std::vector<std::pair<int64_t, std::string>> ordered;  // hidden state index -> Kiln name
  for (const auto& [kiln, name] : hidden_sources)
    ordered.emplace_back(std::stoll(name.substr(name.find('.') + 1)), kiln);
  std::sort(ordered.begin(), ordered.end());
  for (const auto& [index, kiln] : ordered) {
    const std::string name = "hidden_states." + std::to_string(index);
    report.hidden_max_abs_err =
        std::max(report.hidden_max_abs_err, compare(name, kiln, captured.at(name)));
  }

  logit_statistics(logits, reference.get("logits"), report);

  std::set<std::string> compared;
  for (const ModuleCapture& capture : module_captures) {
    report.modules.push_back(compare_module(capture.module, capture.kiln, capture.row,
                                            reference.get("act." + capture.module + ".out"), tokens,
                                            tolerance, reference_path));
    compared.insert(capture.module);
    if (!report.modules.back().passed && report.first_divergent.empty())
      report.first_divergent = capture.module;
  }
  std::set<std::string> not_compared;
  for (const std::string& name : reference.names()) {
    const std::string module = reference_module(name);
    if (!module.empty() && !compared.count(module)) not_compared.insert(module);
  }
  const std::vector<std::string> compared_list(compared.begin(), compared.end());
  for (const std::string& module : not_compared)
    report.not_compared.push_back(
        {module, hf_not_compared_reason(hf_names, module, compared_list)});

  report.expected_greedy = int_values(reference.get("greedy_ids"));
  const int64_t new_tokens = static_cast<int64_t>(report.expected_greedy.size()) - tokens;
  check(new_tokens >= 0, reference_path + ": tensor 'greedy_ids' is shorter than input_ids");
  const std::vector<int32_t> prompt(ids.begin(), ids.begin() + tokens);
  Generator generator(model, SamplingParams{}, {});
  const std::vector<int32_t> continuation = generator.generate(prompt, new_tokens);
  report.actual_greedy.assign(prompt.begin(), prompt.end());
  report.actual_greedy.insert(report.actual_greedy.end(), continuation.begin(), continuation.end());
  report.greedy_match = report.actual_greedy == report.expected_greedy;

  report.passed = report.greedy_match;
  for (const TensorComparison& c : report.comparisons) report.passed &= c.passed;
  report.passed &= report.first_divergent.empty();
  return report;
}

std::string reference_or_default(const std::string& model_dir, const std::string& reference) {
  if (!reference.empty()) return reference;
  return (std::filesystem::path(model_dir) / "reference.safetensors").string();
}

}  // namespace kiln
