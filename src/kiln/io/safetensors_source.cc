#include "kiln/io/safetensors_source.h"

namespace kiln {

SafetensorsSource::SafetensorsSource(const std::string& path, Residency residency)
    : path_(path), set_(SafetensorsSet::open(path, residency)) {}

}  // namespace kiln
