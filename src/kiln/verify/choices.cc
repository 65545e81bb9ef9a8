#include "kiln/verify/choices.h"

#include <functional>

#include "kiln/core/error.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"
#include "kiln/verify/reference_check.h"

namespace kiln {
namespace {

// One open choice: its candidates, the current value, and how to apply a candidate.
struct Choice {
  std::string id;
  std::vector<std::string> candidates;
  std::function<std::string(const ModelSpec&, const HfTensorNames&)> current;
  std::function<void(ModelSpec&, HfTensorNames&, const std::string&)> apply;
};

bool any_layer(const ModelSpec& spec, const std::function<bool(const LayerSpec&)>& test) {
  for (const LayerSpec& layer : spec.layers)
    if (test(layer)) return true;
  return false;
}

bool is_rms(NormKind kind) {
  return kind == NormKind::kRms || kind == NormKind::kRmsOnePlus;
}
bool is_gelu(Activation a) {
  return a == Activation::kGeluExact || a == Activation::kGeluTanh;
}

std::vector<Choice> choices_of(const ModelSpec& spec, const HfTensorNames& names) {
  std::vector<Choice> out;
  if (any_layer(spec, [](const LayerSpec& l) { return l.attention.rope.type != RopeType::kNone; }))
    out.push_back({"rope.pairing",
                   {"half_split", "interleaved"},
                   [](const ModelSpec& s, const HfTensorNames&) {
                     for (const LayerSpec& l : s.layers)
                       if (l.attention.rope.type != RopeType::kNone)
                         return std::string(l.attention.rope.interleaved ? "interleaved"
                                                                         : "half_split");
                     return std::string("half_split");
                   },
                   [](ModelSpec& s, HfTensorNames&, const std::string& v) {
                     for (LayerSpec& l : s.layers)
                       l.attention.rope.interleaved = v == "interleaved";
                   }});
  if (is_rms(spec.layers.at(0).norm.kind))
    out.push_back({"norm.weight",
                   {"w", "1+w"},
                   [](const ModelSpec& s, const HfTensorNames&) {
                     return std::string(s.layers.at(0).norm.kind == NormKind::kRmsOnePlus ? "1+w"
                                                                                          : "w");
                   },
                   [](ModelSpec& s, HfTensorNames&, const std::string& v) {
                     const NormKind kind = v == "1+w" ? NormKind::kRmsOnePlus : NormKind::kRms;
                     auto set = [&](NormSpec& n) {
                       if (is_rms(n.kind)) n.kind = kind;
                     };
                     for (LayerSpec& l : s.layers) {
                       set(l.norm);
                       set(l.attention.qk_norm_spec);
                     }
                     set(s.final_norm);
                   }});
  if (any_layer(spec, [](const LayerSpec& l) { return is_gelu(l.mlp.activation); }))
    out.push_back({"mlp.gelu",
                   {"gelu", "gelu_tanh"},
                   [](const ModelSpec& s, const HfTensorNames&) {
                     for (const LayerSpec& l : s.layers)
                       if (is_gelu(l.mlp.activation))
                         return std::string(activation_name(l.mlp.activation));
                     return std::string("gelu");
                   },
                   [](ModelSpec& s, HfTensorNames&, const std::string& v) {
                     for (LayerSpec& l : s.layers)
                       if (is_gelu(l.mlp.activation))
                         l.mlp.activation =
                             v == "gelu" ? Activation::kGeluExact : Activation::kGeluTanh;
                   }});
  if (!names.qkv.empty())
    out.push_back({"qkv.layout",
                   {"contiguous", "grouped"},
                   [](const ModelSpec&, const HfTensorNames& n) { return n.qkv_layout; },
                   [](ModelSpec&, HfTensorNames& n, const std::string& v) { n.qkv_layout = v; }});
  if (!names.expert_layout.empty())
    out.push_back(
        {"experts.layout",
         {"input_major", "input_major_interleaved"},
         [](const ModelSpec&, const HfTensorNames& n) { return n.expert_layout; },
         [](ModelSpec&, HfTensorNames& n, const std::string& v) { n.expert_layout = v; }});
  return out;
}

CandidateResult evaluate(const ModelSpec& spec, const HfTensorNames& names,
                         const TensorSource& source, const std::string& model_type,
                         const std::string& reference, double tolerance) {
  CandidateResult result;
  try {
    const WeightMap weights =
        apply_weight_mappings(map_weights_by_names(spec, names, source, true), source);
    const Model model(spec, weights);
    AutoFamily family;
    family.set_names(names, model_type);
    const ReferenceReport report = check_against_reference(model, reference, tolerance, &family);
    result.ran = true;
    result.passed = report.passed;
    result.logits_max_abs_err = report.logits_max_abs_err;
    for (const ModuleComparison& m : report.modules) result.modules_matching += m.passed ? 1 : 0;
    result.first_divergent = report.first_divergent;
  } catch (const Error& e) {
    result.error = e.what();
  }
  return result;
}

// True when `a` matches the reference better than `b`.
bool better(const CandidateResult& a, const CandidateResult& b) {
  if (a.ran != b.ran) return a.ran;
  if (a.passed != b.passed) return a.passed;
  if (a.modules_matching != b.modules_matching) return a.modules_matching > b.modules_matching;
  return a.logits_max_abs_err < b.logits_max_abs_err;
}

}  // namespace

Json Decision::to_json() const {
  Json j = {{"choice", choice}, {"value", value}, {"verified", verified}};
  j["candidates"] = candidates;
  Json list = Json::array();
  for (const CandidateResult& c : evidence) {
    Json e = {{"value", c.value}};
    if (!c.ran) {
      e["error"] = c.error;
    } else {
      e["passed"] = c.passed;
      e["logits_max_abs_err"] = c.logits_max_abs_err;
      e["modules_matching"] = c.modules_matching;
      if (!c.first_divergent.empty()) e["first_divergent"] = c.first_divergent;
    }
    list.push_back(e);
  }
  if (!list.empty()) j["evidence"] = list;
  return j;
}

std::vector<Decision> open_choices(const ModelSpec& spec, const HfTensorNames& names) {
  std::vector<Decision> out;
  for (const Choice& c : choices_of(spec, names))
    out.push_back({c.id, c.current(spec, names), false, {}, c.candidates});
  return out;
}

std::vector<Decision> settle_choices(ModelSpec& spec, HfTensorNames& names,
                                     const TensorSource& source, const std::string& model_type,
                                     const std::string& reference, double tolerance) {
  std::vector<Decision> out;
  for (const Choice& choice : choices_of(spec, names)) {
    Decision decision{choice.id, choice.current(spec, names), true, {}, choice.candidates};
    CandidateResult best;
    ModelSpec best_spec = spec;
    HfTensorNames best_names = names;
    // The generic route's own value first: it is kept on a tie.
    std::vector<std::string> order = {decision.value};
    for (const std::string& value : choice.candidates)
      if (value != decision.value) order.push_back(value);
    for (const std::string& value : order) {
      ModelSpec trial_spec = spec;
      HfTensorNames trial_names = names;
      choice.apply(trial_spec, trial_names, value);
      CandidateResult result =
          evaluate(trial_spec, trial_names, source, model_type, reference, tolerance);
      result.value = value;
      if (decision.evidence.empty() || better(result, best)) {
        best = result;
        best_spec = trial_spec;
        best_names = trial_names;
        decision.value = value;
      }
      decision.evidence.push_back(result);
    }
    spec = best_spec;
    names = best_names;
    decision.verified = best.ran && best.passed;
    out.push_back(decision);
  }
  return out;
}

}  // namespace kiln
