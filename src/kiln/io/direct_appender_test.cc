// DirectAppender: a range written through it (O_DIRECT buffers in the background, a buffered
// tail) reads back byte for byte, next to bytes written before it; write errors surface as
// an Error naming the file.
#include "kiln/io/direct_appender.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>

#include "kiln/core/error.h"
#include "test_util.h"

namespace kiln {
namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(DirectAppender, RangesReadBackBitwiseBesideBufferedBytes) {
  const std::string dir = test::make_temp_dir("kiln-direct");
  const std::string path = dir + "/data";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  std::mt19937 rng(7);
  std::string expected(3 * DirectAppender::kBufferBytes + 12345 + 2 * 8192, '\0');
  for (char& c : expected) c = static_cast<char>(rng());
  // A buffered head (as the Kiln writer's unaligned start), then two ranges through one
  // appender: a long one from offset 8192, a short one (tail only) after it.
  ASSERT_EQ(::pwrite(fd, expected.data(), 8192, 0), 8192);
  const int direct = ::open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  const int target = direct >= 0 ? direct : fd;
  DirectAppender appender(path);
  const size_t first = 2 * DirectAppender::kBufferBytes + 4096 + 100;
  appender.begin(target, 8192);
  for (size_t at = 8192; at < 8192 + first;) {  // pieces of uneven sizes
    const size_t n = std::min<size_t>(8192 + first - at, 1 + rng() % (3 << 20));
    appender.append(expected.data() + at, n);
    at += n;
  }
  appender.finish();
  if (direct >= 0) ::close(direct);
  const size_t second_at = 8192 + first;  // not aligned: buffered descriptor then
  appender.begin(fd, second_at);
  appender.append(expected.data() + second_at, expected.size() - second_at);
  appender.finish();
  ::close(fd);
  const std::string got = read_all(path);
  ASSERT_EQ(got.size(), expected.size());
  size_t wrong = 0;
  for (size_t i = 0; i < got.size(); ++i) wrong += got[i] != expected[i];
  EXPECT_EQ(wrong, 0u) << wrong << " of " << got.size() << " bytes differ";
  std::filesystem::remove_all(dir);
}

TEST(DirectAppender, WriteErrorNamesTheFile) {
  const std::string dir = test::make_temp_dir("kiln-direct");
  const std::string path = dir + "/data";
  { std::ofstream(path) << "x"; }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);  // writes fail: EBADF
  ASSERT_GE(fd, 0);
  DirectAppender appender(path);
  appender.begin(fd, 0);
  const std::string bytes(DirectAppender::kBufferBytes + 10, 'a');
  try {
    appender.append(bytes.data(), bytes.size());  // the full buffer fails in the background
    appender.finish();
    FAIL() << "writing through a read-only descriptor succeeded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("write failed"), std::string::npos) << e.what();
  }
  ::close(fd);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kiln
