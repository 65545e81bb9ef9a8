// Damaged Kiln checkpoints through the CLI: a missing or truncated data file, a manifest
// that is not JSON or has a bad entry, and checksum mismatches end in one line
// "kiln: error: ..." naming the file or tensor, and exit status 1.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "kiln/io/json.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

constexpr const char* kDataFile = "tensors-00001-of-00001.safetensors";
constexpr const char* kTensor = "decoder/decoder_norm/scale";

class KilnCheckpointErrors : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(test::make_temp_dir("kiln-ckpt-errors"));
    const test::CommandResult r =
        test::run_kiln("convert " + test::shell_quote(test::data_path("hf/llama")) + " -o " +
                       test::shell_quote(*root_ + "/good"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }

  // A copy of the good checkpoint named `name`, damaged by `damage` (given its path).
  static std::string damaged(const std::string& name,
                             const std::function<void(const std::string&)>& damage) {
    const std::string dir = *root_ + "/" + name;
    fs::copy(*root_ + "/good", dir);
    damage(dir);
    return dir;
  }

  // Runs `kiln <command> <dir> <args>`; expects exit 1 and one line naming every `part`.
  static void expect_one_line_error(const std::string& command, const std::string& dir,
                                    const std::string& args,
                                    const std::vector<std::string>& parts) {
    const test::CommandResult r =
        test::run_kiln(command + " " + test::shell_quote(dir) + " " + args);
    std::cout << command << " " << fs::path(dir).filename().string() << ": " << r.err;
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err.rfind("kiln: error: ", 0), 0u) << r.err;
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
    for (const std::string& part : parts) EXPECT_NE(r.err.find(part), std::string::npos) << r.err;
  }

  static std::string* root_;
};
std::string* KilnCheckpointErrors::root_ = nullptr;

const std::string kGenerate = "--prompt 'hi' --max-tokens 2";

TEST_F(KilnCheckpointErrors, MissingDataFile) {
  const std::string dir =
      damaged("missing", [](const std::string& d) { fs::remove(d + "/" + kDataFile); });
  expect_one_line_error("generate", dir, kGenerate, {kDataFile, "does not exist"});
}

TEST_F(KilnCheckpointErrors, TruncatedDataFile) {
  const std::string dir = damaged("truncated", [](const std::string& d) {
    fs::resize_file(d + "/" + kDataFile, fs::file_size(d + "/" + kDataFile) - 100);
  });
  expect_one_line_error("generate", dir, kGenerate, {kDataFile, "the manifest says"});
  expect_one_line_error(
      "verify", dir,
      "--reference " + test::shell_quote(test::data_path("hf/llama/reference.safetensors")),
      {kDataFile});
}

TEST_F(KilnCheckpointErrors, ManifestThatIsNotJson) {
  const std::string dir = damaged("not_json", [](const std::string& d) {
    std::ofstream(d + "/kiln_checkpoint.json", std::ios::app) << "}";
  });
  expect_one_line_error("generate", dir, kGenerate, {"kiln_checkpoint.json", "malformed JSON"});
}

TEST_F(KilnCheckpointErrors, ManifestEntryWithoutOffsetOrWithABadChecksum) {
  auto edit = [](const std::function<void(Json&)>& change) {
    return [change](const std::string& d) {
      Json manifest = read_json_file(d + "/kiln_checkpoint.json");
      change(manifest["tensors"][kTensor]);
      write_json_file(d + "/kiln_checkpoint.json", manifest);
    };
  };
  const std::string no_offset = damaged("no_offset", edit([](Json& e) { e.erase("offset"); }));
  expect_one_line_error("generate", no_offset, kGenerate,
                        {"kiln_checkpoint.json", kTensor, "malformed entry"});
  const std::string not_hex = damaged("not_hex", edit([](Json& e) { e["crc32c"] = "xyz"; }));
  expect_one_line_error("generate", not_hex, kGenerate, {kTensor, "crc32c 'xyz'"});
  const std::string wrong = damaged("wrong_crc", edit([](Json& e) { e["crc32c"] = "deadbeef"; }));
  expect_one_line_error("inspect", wrong, "--verify", {kTensor, "differs from the manifest's"});
}

TEST_F(KilnCheckpointErrors, FlippedDataByteFailsVerification) {
  const std::string dir = damaged("flipped", [](const std::string& d) {
    const Json manifest = read_json_file(d + "/kiln_checkpoint.json");
    const uint64_t offset = manifest["tensors"][kTensor]["offset"];
    std::fstream f(d + "/" + kDataFile, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(offset));
    const char c = static_cast<char>(f.get());
    f.seekp(static_cast<std::streamoff>(offset));
    f.put(static_cast<char>(c ^ 1));
  });
  expect_one_line_error("inspect", dir, "--verify", {kTensor, "checksum"});
}

}  // namespace
}  // namespace kiln
