// Mistral: like Llama, except that every layer attends within `sliding_window` when the
// config sets one, and attention has no biases. Mixtral derives from it.
#pragma once

#include <string>
#include <vector>

#include "kiln/models/llama.h"

namespace kiln {

class MistralFamily : public LlamaFamily {
 public:
  std::string name() const override { return "mistral"; }
  std::vector<std::string> architectures() const override { return {"MistralForCausalLM"}; }
  std::vector<std::string> model_types() const override { return {"mistral"}; }

 protected:
  void apply_differences(const HfConfig& config, ModelSpec& spec) const override;
};

}  // namespace kiln
