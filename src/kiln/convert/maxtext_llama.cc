#include "kiln/convert/maxtext_llama.h"

#include <cmath>
#include <string>

#include "kiln/core/error.h"

namespace kiln {
namespace {

// Rounds the positive normal `x` to `bits` significant bits, to nearest even.
double round_to_bits(double x, int bits) {
  int exponent = 0;
  const double mantissa = std::frexp(x, &exponent);
  return std::ldexp(std::nearbyint(std::ldexp(mantissa, bits)), exponent - bits);
}

}  // namespace

double maxtext_query_divisor(int64_t head_dim, DType dtype) {
  const double root = std::sqrt(static_cast<double>(head_dim));
  switch (dtype) {
    case DType::BF16:
      return round_to_bits(root, 8);
    case DType::F16:
      return round_to_bits(root, 11);
    case DType::F32:
      return round_to_bits(root, 24);
    case DType::F64:
      return root;
    default:
      throw Error("maxtext query scale: no divisor for dtype " + std::string(dtype_name(dtype)));
  }
}

}  // namespace kiln
