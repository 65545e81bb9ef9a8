#include "test_util.h"

#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "kiln/core/error.h"
#include "kiln/layers/model.h"

namespace kiln::test {
namespace fs = std::filesystem;

std::string data_path(const std::string& relative) {
  return (fs::path(KILN_TEST_DATA) / relative).string();
}

std::string make_temp_dir(const std::string& prefix) {
  std::random_device rd;
  for (int attempt = 0; attempt < 100; ++attempt) {
    fs::path p = fs::temp_directory_path() / (prefix + "-" + std::to_string(rd()));
    if (fs::create_directory(p)) return p.string();
  }
  throw Error("cannot create a temporary directory");
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  return out + "'";
}

static std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

CommandResult run_kiln_with_input(const std::string& args, const std::string& input) {
  std::string dir = make_temp_dir("kiln-cli");
  fs::path in = fs::path(dir) / "in", out = fs::path(dir) / "out", err = fs::path(dir) / "err";
  std::ofstream(in, std::ios::binary) << input;
  std::string cmd = std::string(KILN_CLI_PATH) + " " + args + " <" + in.string() + " >" +
                    out.string() + " 2>" + err.string();
  int status = std::system(cmd.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(out);
  r.err = slurp(err);
  fs::remove_all(dir);
  return r;
}

CommandResult run_kiln(const std::string& args) {
  return run_kiln_with_input(args, "");
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  check(a.shape() == b.shape(),
        "max_abs_diff: shapes differ " + a.shape_string() + " vs " + b.shape_string());
  Tensor fa = a.to(DType::F32), fb = b.to(DType::F32);
  const float* pa = fa.data<float>();
  const float* pb = fb.data<float>();
  double m = 0;
  for (int64_t i = 0; i < fa.numel(); ++i) {
    double d = std::fabs(static_cast<double>(pa[i]) - pb[i]);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

Tensor all_logits(const LoadedModel& loaded, const Tensor& input_ids) {
  const Model model(loaded.spec, loaded.weights);
  const int64_t batch = input_ids.dim(0), length = input_ids.dim(1);
  std::vector<int32_t> tokens(batch * length);  // [B, T]
  for (int64_t i = 0; i < batch * length; ++i)
    tokens[i] = static_cast<int32_t>(input_ids.item_as_double(i));
  KvCache cache = model.make_cache(batch, length);
  return model.forward(tokens.data(), batch, length, cache);
}

}  // namespace kiln::test
