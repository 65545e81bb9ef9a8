// Helpers shared by the tests: paths to test data, running the kiln CLI, comparing tensors.
#pragma once

#include <random>
#include <string>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/models/loader.h"

namespace kiln::test {

// n standard normal floats drawn from rng.
inline std::vector<float> random_vector(std::mt19937& rng, size_t n) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// tests/data/<relative>
std::string data_path(const std::string& relative);
// A fresh empty temporary directory (removed by the OS's tmp cleaning; tests remove it).
std::string make_temp_dir(const std::string& prefix);

struct CommandResult {
  int exit_code;
  std::string out;  // stdout
  std::string err;  // stderr
};
// Runs the kiln CLI with `args` (a shell-quoted argument string) and captures its output.
CommandResult run_kiln(const std::string& args);
// Same, with `input` on stdin.
CommandResult run_kiln_with_input(const std::string& args, const std::string& input);
// Quotes a string for the shell.
std::string shell_quote(const std::string& s);

// Max |a - b| over all elements (shapes must match; any float dtypes).
double max_abs_diff(const Tensor& a, const Tensor& b);

// The logits at every position of `input_ids` ([B, T], any integer or float dtype) from one
// forward pass of `loaded` from position 0: [B, T, V].
Tensor all_logits(const LoadedModel& loaded, const Tensor& input_ids);

}  // namespace kiln::test
