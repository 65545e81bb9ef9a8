// Zarr arrays beyond what the orbax samples exercise: several chunks, missing chunks with
// a fill value, padded edge chunks, the crc32c codec and v2 key encoding in zarr v3.
#include "kiln/io/orbax/zarr.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "kiln/core/error.h"
#include "kiln/io/crc32c.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

class ZarrTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("kiln-zarr"); }
  void TearDown() override { fs::remove_all(dir_); }
  void put(const std::string& key, const std::string& bytes) {
    fs::create_directories((fs::path(dir_) / key).parent_path());
    std::ofstream(fs::path(dir_) / key, std::ios::binary) << bytes;
  }
  // `count` float32 values start, start + 1, ...
  static std::string floats(int count, float start) {
    std::string out;
    for (int i = 0; i < count; ++i) {
      float f = start + static_cast<float>(i);
      out.append(reinterpret_cast<char*>(&f), 4);
    }
    return out;
  }
  std::string dir_;
};

TEST_F(ZarrTest, V2ChunksMissingChunksAndPaddedEdges) {
  // [5, 3] in chunks of [2, 3]: chunk 1 (rows 2-3) is missing, chunk 2 holds row 4 and a
  // padding row.
  put("a/.zarray",
      R"({"chunks":[2,3],"compressor":null,"dtype":"<f4","fill_value":1.5,"filters":null,)"
      R"("order":"C","shape":[5,3],"zarr_format":2})");
  put("a/0.0", floats(6, 0));
  put("a/2.0", floats(6, 100));
  Tensor t = read_zarr_array(DirectoryKvStore(dir_), "a/");
  ASSERT_EQ(t.shape(), (Shape{5, 3}));
  const float* v = t.data<float>();
  EXPECT_EQ(v[0], 0.0f);
  EXPECT_EQ(v[5], 5.0f);
  for (int i = 6; i < 12; ++i) EXPECT_EQ(v[i], 1.5f) << i;
  EXPECT_EQ(v[12], 100.0f);
  EXPECT_EQ(v[14], 102.0f);
}

TEST_F(ZarrTest, V3Crc32cCodecAndV2KeyEncoding) {
  put("b/zarr.json",
      R"({"zarr_format":3,"node_type":"array","shape":[4],"data_type":"float32",)"
      R"("chunk_grid":{"name":"regular","configuration":{"chunk_shape":[2]}},)"
      R"("chunk_key_encoding":{"name":"v2","configuration":{"separator":"."}},)"
      R"("fill_value":"NaN","codecs":[{"name":"bytes","configuration":{"endian":"little"}},)"
      R"({"name":"crc32c"}]})");
  std::string chunk = floats(2, 7);
  const uint32_t crc = crc32c(chunk.data(), chunk.size());
  chunk.append(reinterpret_cast<const char*>(&crc), 4);
  put("b/0", chunk);
  Tensor t = read_zarr_array(DirectoryKvStore(dir_), "b/");
  EXPECT_EQ(t.data<float>()[0], 7.0f);
  EXPECT_EQ(t.data<float>()[1], 8.0f);
  EXPECT_TRUE(std::isnan(t.data<float>()[2])) << "missing chunk takes the NaN fill value";
  chunk[0] ^= 1;
  put("b/0", chunk);
  try {
    read_zarr_array(DirectoryKvStore(dir_), "b/");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    std::cout << "  error: " << e.what() << "\n";
    EXPECT_NE(std::string(e.what()).find("b/0: crc32c mismatch"), std::string::npos);
  }
}

TEST_F(ZarrTest, UnsupportedFeaturesAreNamed) {
  put("c/.zarray", R"({"chunks":[2],"compressor":{"id":"blosc"},"dtype":"<f4","fill_value":null,)"
                   R"("filters":null,"order":"C","shape":[2],"zarr_format":2})");
  put("d/.zarray", R"({"chunks":[2],"compressor":null,"dtype":">f4","fill_value":null,)"
                   R"("filters":null,"order":"C","shape":[2],"zarr_format":2})");
  put("e/.zarray", R"({"chunks":[2],"zarr_format":2,"dtype":"<f4"})");
  for (const auto& [prefix, expected] : std::vector<std::pair<std::string, std::string>>{
           {"c/", "unsupported zarr compressor 'blosc'"},
           {"d/", "unsupported zarr dtype '>f4'"},
           {"e/", "malformed zarr metadata"},
           {"f/", "no zarr array at 'f/'"}}) {
    try {
      read_zarr_array(DirectoryKvStore(dir_), prefix);
      ADD_FAILURE() << prefix << ": no error";
    } catch (const Error& e) {
      std::cout << "  error: " << e.what() << "\n";
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace kiln
