// Qwen3: like Llama, except for an RMSNorm over each head of the queries and keys (before
// RoPE) and Qwen's sliding-window settings. Qwen3-MoE derives from it.
#pragma once

#include <string>
#include <vector>

#include "kiln/models/llama.h"

namespace kiln {

class Qwen3Family : public LlamaFamily {
 public:
  std::string name() const override { return "qwen3"; }
  std::vector<std::string> architectures() const override { return {"Qwen3ForCausalLM"}; }
  std::vector<std::string> model_types() const override { return {"qwen3"}; }

 protected:
  void apply_differences(const HfConfig& config, ModelSpec& spec) const override;
};

}  // namespace kiln
