// The family registry. A family translates one HuggingFace architecture: config.json ->
// ModelSpec, and HF tensor names -> Kiln tensor names with the transform each needs.
// Families register themselves (KILN_FAMILY) and are found by `architectures[0]`, then
// by `model_type`.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/io/hf_config.h"
#include "kiln/models/hf_module_names.h"
#include "kiln/models/model_spec.h"

namespace kiln {

// Read-only access to a checkpoint's tensors by name (safetensors set, torch .bin, Kiln
// checkpoint). get() returns a view (possibly mmap-backed) or throws Error naming the
// tensor and file.
class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual std::vector<std::string> names() const = 0;
  virtual bool contains(const std::string& name) const = 0;
  virtual Tensor get(const std::string& name) const = 0;
  virtual Shape shape_of(const std::string& name) const = 0;
  virtual DType dtype_of(const std::string& name) const = 0;
  // Where the tensors come from (a folder or file), for error messages.
  virtual std::string where() const = 0;
};

// How one Kiln tensor is made from HF tensors. `transform` is empty for a plain rename;
// otherwise it receives the HF tensors in `hf_names` order and returns the Kiln tensor
// (transpose, split a fused tensor, permute, stack experts, ...). `shape` is the Kiln shape
// the layers expect; the loader checks it and names the tensor on mismatch.
struct WeightMapping {
  std::string kiln_name;
  std::vector<std::string> hf_names;
  Shape shape;
  std::function<Tensor(const std::vector<Tensor>&)> transform;
};

class Family {
 public:
  virtual ~Family() = default;
  // Registry key, e.g. "llama".
  virtual std::string name() const = 0;
  // `architectures` values (e.g. "LlamaForCausalLM") and `model_type` values it handles.
  virtual std::vector<std::string> architectures() const = 0;
  virtual std::vector<std::string> model_types() const = 0;
  // config.json -> ModelSpec. Throws Error naming the config file and key on bad values.
  virtual ModelSpec build_spec(const HfConfig& config) const = 0;
  // What the checkpoint's tensors add to the spec build_spec() made (the generic route reads
  // biases, norms and placement from them); built-in families need nothing.
  virtual void refine_spec(ModelSpec&, const TensorSource&) const {}
  // Every Kiln tensor the model needs and how to get it from the HF checkpoint `source`
  // (the source lets a family check optional tensors such as biases or a tied lm_head).
  virtual std::vector<WeightMapping> map_weights(const ModelSpec& spec,
                                                 const TensorSource& source) const = 0;
  // The HF module paths of Kiln's activations and layer parts (models/hf_module_names.h):
  // verify compares each with a reference's act.<module>.out, layer tests feed each its
  // act.<module>.in. Llama's names by default.
  virtual HfModuleNames hf_modules(const ModelSpec&) const { return {}; }
};

// Registers a family; returns true (for static registration).
bool register_family(std::shared_ptr<const Family> family);
// All registered families, in registration order.
const std::vector<std::shared_ptr<const Family>>& families();
// The family for this config: by architectures[0], then model_type. Throws
// Error("<config>: unknown architecture 'X' (model_type 'y'); supported: ...") when none.
const Family& family_for(const HfConfig& config);
// The registered family whose name() is `name`, or nullptr.
const Family* family_named(const std::string& name);
// Convenience: family_for(config).build_spec(config), with spec.family set.
ModelSpec spec_from_config(const HfConfig& config);

}  // namespace kiln

#define KILN_FAMILY(Class)                           \
  static const bool kiln_family_registered_##Class = \
      ::kiln::register_family(std::make_shared<Class>())
