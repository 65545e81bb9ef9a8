#include "kiln/verify/reference_check.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "kiln/core/error.h"
#include "kiln/io/safetensors.h"
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

std::vector<int64_t> int_values(const Tensor& t) {
  std::vector<int64_t> out(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = static_cast<int64_t>(t.item_as_double(i));
  return out;
}
}  // namespace

ReferenceReport check_against_reference(const Model& model, const std::string& reference_path,
                                        double tolerance) {
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
  ActivationObserver observer = [&](const std::string& name, const Tensor& activation) {
    auto it = hidden_sources.find(name);
    if (it != hidden_sources.end()) captured[it->second] = activation.contiguous(true);
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
  return report;
}

}  // namespace kiln
