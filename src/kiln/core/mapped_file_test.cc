// MappedFile: both residencies hold exactly the file's bytes; errors name the file.
#include "kiln/core/mapped_file.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "kiln/core/error.h"
#include "test_util.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

std::string write_file(const std::string& dir, const std::string& name, const std::string& bytes) {
  const std::string path = (fs::path(dir) / name).string();
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

TEST(MappedFile, BothResidenciesHoldTheFileBytes) {
  const std::string dir = test::make_temp_dir("mapped_file");
  std::string bytes(3 * 4096 + 123, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 131 + 7);
  const std::string path = write_file(dir, "data.bin", bytes);
  for (const Residency residency : {Residency::kMapped, Residency::kResident}) {
    const auto file = MappedFile::open(path, residency);
    ASSERT_EQ(file->size(), bytes.size());
    EXPECT_EQ(std::memcmp(file->data(), bytes.data(), bytes.size()), 0);
    EXPECT_EQ(file->path(), path);
  }
  fs::remove_all(dir);
}

TEST(MappedFile, EmptyFileHasNoData) {
  const std::string dir = test::make_temp_dir("mapped_file");
  const std::string path = write_file(dir, "empty.bin", "");
  for (const Residency residency : {Residency::kMapped, Residency::kResident}) {
    const auto file = MappedFile::open(path, residency);
    EXPECT_EQ(file->size(), 0u);
    EXPECT_EQ(file->data(), nullptr);
  }
  fs::remove_all(dir);
}

TEST(MappedFile, ErrorsNameTheFile) {
  const std::string dir = test::make_temp_dir("mapped_file");
  const std::string missing = (fs::path(dir) / "missing.bin").string();
  for (const Residency residency : {Residency::kMapped, Residency::kResident}) {
    try {
      MappedFile::open(missing, residency);
      FAIL() << "opening a missing file succeeded";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
    }
    try {
      MappedFile::open(dir, residency);
      FAIL() << "opening a directory succeeded";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
