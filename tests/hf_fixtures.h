// Helpers for tests driven by the HF fixtures in tests/data/hf/: every folder found there
// is a test case (no list to edit), skipped while its family is not registered.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/io/hf_config.h"
#include "kiln/models/family.h"
#include "test_util.h"

namespace kiln::test {

// Names of the model fixtures under tests/data/hf, sorted: every folder with a
// reference.safetensors (folders holding only a config.json serve config tests).
inline std::vector<std::string> hf_fixture_names() {
  std::vector<std::string> names;
  const std::filesystem::path root = data_path("hf");
  if (std::filesystem::is_directory(root))
    for (const auto& entry : std::filesystem::directory_iterator(root))
      if (std::filesystem::exists(entry.path() / "reference.safetensors"))
        names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// tests/data/hf/<name>
inline std::string hf_fixture_path(const std::string& name) {
  return data_path("hf/" + name);
}

// Empty when the fixture's family is registered, else why it is not (the registry's error).
inline std::string unsupported_reason(const std::string& name) {
  try {
    family_for(HfConfig::load(hf_fixture_path(name)));
    return "";
  } catch (const Error& e) {
    return e.what();
  }
}

// For INSTANTIATE_TEST_SUITE_P: the fixture name as the test name.
struct FixtureName {
  std::string operator()(const ::testing::TestParamInfo<std::string>& info) const {
    return info.param;
  }
};

}  // namespace kiln::test

// Skips the current test when the fixture's family is not registered yet.
#define KILN_SKIP_UNSUPPORTED_FIXTURE(name)                                             \
  do {                                                                                  \
    const std::string kiln_reason = ::kiln::test::unsupported_reason(name);             \
    if (!kiln_reason.empty()) GTEST_SKIP() << "family not registered: " << kiln_reason; \
  } while (0)
