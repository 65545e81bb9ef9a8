#include "kiln/models/moe_weights.h"

#include <cstring>

#include "kiln/core/error.h"
#include "kiln/models/weight_names.h"

namespace kiln {

Tensor stack_tensors(const std::vector<Tensor>& parts) {
  check(!parts.empty(), "stack_tensors: nothing to stack");
  Shape shape = parts[0].shape();
  for (const Tensor& part : parts)
    check(part.shape() == shape && part.dtype() == parts[0].dtype(),
          "stack_tensors: parts of shape " + part.shape_string() + " and " +
              parts[0].shape_string() + " (or of different dtypes) cannot be stacked");
  shape.insert(shape.begin(), static_cast<int64_t>(parts.size()));
  Tensor stacked = Tensor::zeros(parts[0].dtype(), shape);  // [parts, ...]
  auto* out = static_cast<std::byte*>(stacked.mutable_raw());
  for (const Tensor& part : parts) {
    const Tensor dense = part.contiguous();
    std::memcpy(out, dense.raw(), dense.nbytes());
    out += dense.nbytes();
  }
  return stacked;
}

Tensor interleaved_gate_up_part(const Tensor& gate_up, int64_t part) {
  const int ndim = gate_up.ndim();
  check((ndim == 2 || ndim == 3) && gate_up.dim(ndim - 1) % 2 == 0,
        "gate_up_proj of shape " + gate_up.shape_string() +
            " is not [E, hidden, 2 I] or [E, 2 I] with gate and up alternating");
  Shape pairs = gate_up.shape();  // [..., I, 2]
  pairs.back() /= 2;
  pairs.push_back(2);
  const Tensor taken = gate_up.contiguous().reshape(pairs).select(ndim, part);  // [..., I]
  return ndim == 3 ? taken.transpose(1, 2).contiguous(true) : taken.contiguous(true);
}

void map_moe_weights(const MoeSpec& spec, int64_t hidden, int64_t layer, const MoeHfNames& hf,
                     const TensorSource& source, std::vector<WeightMapping>& mappings) {
  const int64_t E = spec.num_experts, I = spec.expert_intermediate;
  const std::string module = names::mlp(layer);
  const std::string router = names::child(module, "gate");
  mappings.push_back({names::kernel(router), {hf.router + ".weight"}, {E, hidden}, {}});
  if (spec.router_bias) mappings.push_back({names::bias(router), {hf.router + ".bias"}, {E}, {}});
  if (spec.score_correction_bias)
    mappings.push_back(
        {names::score_correction_bias(router), {hf.router + ".e_score_correction_bias"}, {E}, {}});

  const std::string gate = names::kernel(names::child(module, "wi_0"));
  const std::string up = names::kernel(names::child(module, "wi_1"));
  const std::string down = names::kernel(names::child(module, "wo"));
  const std::string gate_up = hf.experts + ".gate_up_proj";
  if (hf.interleaved_gate_up) {
    auto part = [](int64_t which) {
      return
          [which](const std::vector<Tensor>& in) { return interleaved_gate_up_part(in[0], which); };
    };
    auto transposed = [](const std::vector<Tensor>& in) {
      check(in[0].ndim() == 3,
            "down_proj has shape " + in[0].shape_string() + ", expected [E, I, hidden]");
      return in[0].transpose(1, 2).contiguous(true);
    };
    mappings.push_back({gate, {gate_up}, {E, I, hidden}, part(0)});
    mappings.push_back({up, {gate_up}, {E, I, hidden}, part(1)});
    mappings.push_back({down, {hf.experts + ".down_proj"}, {E, hidden, I}, transposed});
    if (spec.expert_bias) {
      const std::string gate_up_bias = gate_up + "_bias";
      mappings.push_back(
          {names::bias(names::child(module, "wi_0")), {gate_up_bias}, {E, I}, part(0)});
      mappings.push_back(
          {names::bias(names::child(module, "wi_1")), {gate_up_bias}, {E, I}, part(1)});
      mappings.push_back({names::bias(names::child(module, "wo")),
                          {hf.experts + ".down_proj_bias"},
                          {E, hidden},
                          {}});
    }
  } else if (source.contains(gate_up) && hf.stacked_input_major) {
    // [E, hidden, 2 I] -> columns [first, first + I) as [E, I, hidden]
    auto columns = [I, hidden](int64_t first) {
      return [I, hidden, first](const std::vector<Tensor>& in) {
        check(in[0].ndim() == 3 && in[0].dim(1) == hidden && in[0].dim(2) == 2 * I,
              "gate_up_proj has shape " + in[0].shape_string() + ", expected [E, " +
                  std::to_string(hidden) + ", " + std::to_string(2 * I) + "]");
        return in[0].slice(2, first, first + I).transpose(1, 2).contiguous();
      };
    };
    auto transposed = [](const std::vector<Tensor>& in) {
      check(in[0].ndim() == 3, "down_proj has shape " + in[0].shape_string() + ", expected 3-D");
      return in[0].transpose(1, 2).contiguous();  // [E, I, hidden] -> [E, hidden, I]
    };
    mappings.push_back({gate, {gate_up}, {E, I, hidden}, columns(0)});
    mappings.push_back({up, {gate_up}, {E, I, hidden}, columns(I)});
    mappings.push_back({down, {hf.experts + ".down_proj"}, {E, hidden, I}, transposed});
  } else if (source.contains(gate_up)) {
    auto rows = [I](int64_t first) {
      return [I, first](const std::vector<Tensor>& in) {
        check(in[0].ndim() == 3 && in[0].dim(1) == 2 * I,
              "gate_up_proj has shape " + in[0].shape_string() + ", expected [E, " +
                  std::to_string(2 * I) + ", hidden]");
        return in[0].slice(1, first, first + I).contiguous();
      };
    };
    mappings.push_back({gate, {gate_up}, {E, I, hidden}, rows(0)});
    mappings.push_back({up, {gate_up}, {E, I, hidden}, rows(I)});
    mappings.push_back({down, {hf.experts + ".down_proj"}, {E, hidden, I}, {}});
  } else {
    auto per_expert = [&](const std::string& projection) {
      std::vector<std::string> hf_names;
      for (int64_t e = 0; e < E; ++e)
        hf_names.push_back(hf.experts + "." + std::to_string(e) + "." + projection + ".weight");
      return hf_names;
    };
    mappings.push_back({gate, per_expert(hf.gate), {E, I, hidden}, stack_tensors});
    mappings.push_back({up, per_expert(hf.up), {E, I, hidden}, stack_tensors});
    mappings.push_back({down, per_expert(hf.down), {E, hidden, I}, stack_tensors});
  }

  if (spec.num_shared_experts > 0) {
    const std::string shared = names::child(module, "shared_experts");
    const int64_t S = spec.shared_intermediate;
    mappings.push_back({names::kernel(names::child(shared, "wi_0")),
                        {hf.shared + ".gate_proj.weight"},
                        {S, hidden},
                        {}});
    mappings.push_back({names::kernel(names::child(shared, "wi_1")),
                        {hf.shared + ".up_proj.weight"},
                        {S, hidden},
                        {}});
    mappings.push_back({names::kernel(names::child(shared, "wo")),
                        {hf.shared + ".down_proj.weight"},
                        {hidden, S},
                        {}});
  }
  if (spec.shared_expert_gate) {
    check(!hf.shared_gate.empty(),
          "layer " + std::to_string(layer) +
              ": the MoE block has a shared-expert gate but no name for it");
    mappings.push_back({names::kernel(names::child(module, "shared_expert_gate")),
                        {hf.shared_gate + ".weight"},
                        {1, hidden},
                        {}});
  }
}

}  // namespace kiln
