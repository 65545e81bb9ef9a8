// A restricted unpickler for torch.save's data.pkl: it rebuilds a (possibly nested) dict of
// tensor descriptions and refuses every global other than torch's tensor and storage
// rebuilders and collections.OrderedDict. It never imports or calls anything.
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "kiln/core/tensor.h"

namespace kiln {

// One tensor as data.pkl describes it: a view (offset, shape, strides, all in elements)
// of the storage held in the archive entry `<archive>/data/<storage_key>`.
struct TorchTensorRecord {
  std::string storage_key;
  DType dtype = DType::F32;
  int64_t storage_numel = 0;   // elements in the storage, from the persistent id
  int64_t storage_offset = 0;  // first element of the view
  Shape shape;
  Shape strides;
};

// Parses the pickle `data[0, size)`. The top-level object must be a dict (or OrderedDict)
// whose values are tensors or nested dicts; nested keys are joined with '.'. Returns
// (name, record) in pickle order. Throws Error("<where>: ...") on any global outside the
// allowed set (naming it), on unsupported opcodes, malformed pickles and non-tensor values.
std::vector<std::pair<std::string, TorchTensorRecord>> parse_torch_pickle(const std::byte* data,
                                                                          size_t size,
                                                                          const std::string& where);

}  // namespace kiln
