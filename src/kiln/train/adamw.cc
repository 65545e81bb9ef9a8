#include "kiln/train/adamw.h"

#include <algorithm>
#include <cmath>

#include "kiln/core/error.h"
#include "kiln/ops/softmax.h"

namespace kiln::train {

bool decays(const std::string& name, const Tensor& parameter) {
  const std::string suffix = "/embedding";
  const bool embedding = name.size() >= suffix.size() &&
                         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  return parameter.ndim() >= 2 && !embedding;
}

double global_norm(const ParameterMap& gradients) {
  double sum = 0.0;
  for (const auto& [name, g] : gradients) {
    const float* data = g.data<float>();
    for (int64_t i = 0; i < g.numel(); ++i) sum += static_cast<double>(data[i]) * data[i];
  }
  return std::sqrt(sum);
}

double AdamW::step(ParameterMap& parameters, const ParameterMap& gradients) {
  const AdamWOptions& o = options_;
  for (const auto& [name, p] : parameters) {
    const auto it = gradients.find(name);
    if (it == gradients.end()) throw Error("AdamW: no gradient for parameter '" + name + "'");
    if (it->second.shape() != p.shape() || it->second.dtype() != DType::F32 ||
        p.dtype() != DType::F32)
      throw Error("AdamW: the gradient of '" + name + "' is not an f32 " + p.shape_string());
  }
  const double norm = global_norm(gradients);
  const float clip = clip_factor(o.clip_norm, norm);
  ++steps_;
  for (auto& [name, p] : parameters) {
    const int64_t n = p.numel();
    std::vector<float>& m = m_[name];
    std::vector<float>& v = v_[name];
    m.resize(n);
    v.resize(n);
    adamw_update(o, steps_, clip, decays(name, p), p.mutable_data<float>(),
                 gradients.at(name).data<float>(), m.data(), v.data(), n);
  }
  return norm;
}

float clip_factor(double clip_norm, double norm) {
  return clip_norm > 0.0 && norm > 0.0
             ? static_cast<float>(std::min(1.0, clip_norm / (norm + 1e-6)))
             : 1.0f;
}

void adamw_update(const AdamWOptions& o, int64_t t, float clip, bool decay, float* w,
                  const float* g, float* m, float* v, int64_t n) {
  const double steps = static_cast<double>(t);
  // The scalars in double, then f32, as PyTorch applies Python floats to f32 tensors.
  const float bias_correction2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(o.beta2, steps)));
  const float step_size = static_cast<float>(o.lr / (1.0 - std::pow(o.beta1, steps)));
  ops::AdamWScalars s;
  s.clip = clip;
  s.decay = decay ? static_cast<float>(1.0 - o.lr * o.weight_decay) : 1.0f;
  s.beta1 = static_cast<float>(o.beta1);
  s.beta2 = static_cast<float>(o.beta2);
  s.eps = static_cast<float>(o.eps);
  s.step_size = step_size;
  s.bias_correction2_sqrt = bias_correction2_sqrt;
  ops::adamw_update(w, g, m, v, n, s);  // the active kernel set's vector kernel
}

}  // namespace kiln::train
