// CRC-32C: the standard check values, and extending a checksum piece by piece equals one
// pass, for every length around the 8-byte steps.
#include "kiln/io/crc32c.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace kiln {
namespace {

TEST(Crc32c, CheckValues) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c("", 0), 0u);
  const std::vector<unsigned char> zeros(32, 0), ones(32, 0xff);
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);  // RFC 3720, B.4
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
}

TEST(Crc32c, PiecewiseEqualsOnePass) {
  std::string data;
  for (int i = 0; i < 100; ++i) data.push_back(static_cast<char>(i * 37 + 11));
  for (size_t length = 0; length <= data.size(); ++length) {
    const uint32_t whole = crc32c(data.data(), length);
    for (size_t split : {size_t{0}, length / 3, length / 2, length}) {
      const uint32_t first = crc32c(data.data(), split);
      EXPECT_EQ(crc32c(data.data() + split, length - split, first), whole)
          << "length " << length << " split " << split;
    }
  }
}

}  // namespace
}  // namespace kiln
