// Every real config.json in tests/data/hf_configs whose family Kiln registers turns into a
// ModelSpec without error.
#include "kiln/models/family.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <iostream>

#include "kiln/core/error.h"
#include "test_util.h"

namespace kiln {
namespace {

TEST(Families, EverySupportedRealConfigBuildsASpec) {
  int built = 0, unsupported = 0;
  for (const auto& entry : std::filesystem::directory_iterator(test::data_path("hf_configs"))) {
    if (entry.path().extension() != ".json") continue;
    const HfConfig config = HfConfig::load(entry.path().string());
    try {
      family_for(config);
    } catch (const Error&) {
      ++unsupported;
      continue;
    }
    SCOPED_TRACE(entry.path().filename().string());
    ModelSpec spec;
    EXPECT_NO_THROW(spec = spec_from_config(config));
    EXPECT_GT(spec.num_layers(), 0);
    std::cout << entry.path().filename().string() << ": family " << spec.family << ", "
              << spec.num_layers() << " layers\n";
    ++built;
  }
  std::cout << built << " configs built a spec, " << unsupported << " have no family yet\n";
  EXPECT_GE(built, 20);
}

}  // namespace
}  // namespace kiln
