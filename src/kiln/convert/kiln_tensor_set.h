// The Kiln tensors an exporter reads, wherever they come from: a Kiln checkpoint on disk, or
// a HuggingFace folder seen through its family's Kiln mapping without writing a checkpoint
// (open_hf_as_kiln in hf_to_kiln.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/io/json.h"

namespace kiln {

class KilnTensorSet {
 public:
  virtual ~KilnTensorSet() = default;
  // A Kiln manifest (docs/checkpoint_format.md): model_spec, source_config, layout, dtype,
  // layer_groups when scanned, and "tensors" with each tensor's shape, dtype and, when
  // stacked, layer_axis and layer_group (file offsets and checksums only for a checkpoint).
  virtual const Json& manifest() const = 0;
  // Every tensor name of manifest()["tensors"].
  virtual std::vector<std::string> names() const = 0;
  // Tensor `name`: a read-only view of a file mapping where possible (its pages may be
  // dropped with release_mapped_pages once used), else a new tensor.
  virtual Tensor get(const std::string& name) const = 0;
  // Decoder layer `layer`'s parameter `param` in either layout (KilnCheckpoint::layer_tensor).
  virtual Tensor layer_tensor(int64_t layer, const std::string& param) const = 0;
  virtual std::string where() const = 0;
};

}  // namespace kiln
