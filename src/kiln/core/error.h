// Kiln's error type: every failure names the file, tensor or key at fault.
#pragma once

#include <stdexcept>
#include <string>

namespace kiln {

// Thrown for any user-facing failure (bad input files, unknown architectures, invalid
// arguments). `what()` is one line that starts with the thing at fault, e.g.
// "model.safetensors: tensor 'lm_head.weight': byte range [0, 4096) ends past the file".
// The CLI prints it after "kiln: error: " and exits with a non-zero code.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Throws Error(message) when `condition` is false. A message built by concatenation is
// built on every call: hot paths (the decode loop) test and throw themselves instead.
inline void check(bool condition, const std::string& message) {
  if (!condition) throw Error(message);
}
// The same for a literal message, which costs nothing unless it is thrown.
inline void check(bool condition, const char* message) {
  if (!condition) throw Error(message);
}

}  // namespace kiln
