// The model commands through the `kiln` executable: verify on every fixture, and the
// one-line errors for bad model folders.
#include <gtest/gtest.h>

#include <filesystem>

#include "hf_fixtures.h"
#include "kiln/io/json.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

class CliVerify : public ::testing::TestWithParam<std::string> {};

TEST_P(CliVerify, PassesWithTableAndJson) {
  KILN_SKIP_UNSUPPORTED_FIXTURE(GetParam());
  const std::string dir = test::shell_quote(test::hf_fixture_path(GetParam()));
  const test::CommandResult table = test::run_kiln("verify " + dir);
  EXPECT_EQ(table.exit_code, 0) << table.out << table.err;
  EXPECT_NE(table.out.find("PASSED"), std::string::npos) << table.out;

  const test::CommandResult json = test::run_kiln("verify " + dir + " --json");
  ASSERT_EQ(json.exit_code, 0) << json.out << json.err;
  const Json report = Json::parse(json.out);
  for (const char* key : {"logits_max_abs_err", "hidden_max_abs_err", "greedy_match", "passed",
                          "kv_cache_bytes_per_token"})
    EXPECT_TRUE(report.contains(key)) << key;
  EXPECT_TRUE(report["passed"].get<bool>());
  EXPECT_TRUE(report["greedy_match"].get<bool>());
  std::cout << GetParam() << ": logits " << report["logits_max_abs_err"] << ", hidden "
            << report["hidden_max_abs_err"] << ", KV cache " << report["kv_cache_bytes_per_token"]
            << " bytes per token" << std::endl;
  EXPECT_NE(table.out.find("bytes per token"), std::string::npos) << table.out;
  EXPECT_LE(report["logits_max_abs_err"].get<double>(), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CliVerify, ::testing::ValuesIn(test::hf_fixture_names()),
                         test::FixtureName());

TEST(CliVerifyFailure, TooTightToleranceFailsWithExitOne) {
  const test::CommandResult r = test::run_kiln(
      "verify " + test::shell_quote(test::data_path("hf/llama")) + " --json --tolerance 1e-12");
  EXPECT_EQ(r.exit_code, 1);
  const Json report = Json::parse(r.out);
  EXPECT_FALSE(report["passed"].get<bool>());
  EXPECT_TRUE(report["greedy_match"].get<bool>());
}

// A copy of the llama fixture with its config.json changed by `edit`.
std::string llama_with_config(const std::function<void(Json&)>& edit) {
  const std::string dir = test::make_temp_dir("kiln-cli-model");
  for (const char* file : {"model.safetensors", "reference.safetensors"})
    fs::copy_file(test::data_path(std::string("hf/llama/") + file), dir + "/" + file);
  Json config = read_json_file(test::data_path("hf/llama/config.json"));
  edit(config);
  write_json_file(dir + "/config.json", config);
  return dir;
}

void expect_one_line_error(const test::CommandResult& r, const std::string& fragment) {
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_EQ(r.err.rfind("kiln: error: ", 0), 0u) << r.err;
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
  EXPECT_NE(r.err.find(fragment), std::string::npos) << r.err;
}

TEST(CliModelErrors, UnknownFamilyName) {
  expect_one_line_error(
      test::run_kiln("verify --family foo " + test::shell_quote(test::data_path("hf/llama"))),
      "--family: unknown family 'foo'; known: auto, ");
}

TEST(CliModelErrors, ConfigWithoutRequiredKey) {
  const std::string dir = llama_with_config([](Json& c) { c.erase("num_hidden_layers"); });
  expect_one_line_error(test::run_kiln("verify " + test::shell_quote(dir)),
                        dir + "/config.json: missing required key 'num_hidden_layers'");
  fs::remove_all(dir);
}

TEST(CliModelErrors, MissingReference) {
  expect_one_line_error(test::run_kiln("verify " + test::shell_quote(test::data_path("hf/llama")) +
                                       " --reference /nonexistent/ref.safetensors"),
                        "/nonexistent/ref.safetensors");
}

}  // namespace
}  // namespace kiln
