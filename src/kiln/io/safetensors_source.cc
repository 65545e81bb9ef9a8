#include "kiln/io/safetensors_source.h"

namespace kiln {

SafetensorsSource::SafetensorsSource(const std::string& path)
    : path_(path), set_(SafetensorsSet::open(path)) {}

}  // namespace kiln
