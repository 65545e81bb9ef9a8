// Tokenizer throughput: Kiln against HF's Rust tokenizers on the same ~10 MB text, in the same
// run. The text is tests/data/tokenizers/docs/*.txt repeated and cut at line ends into ~4 KB
// chunks, each encoded by one call, one after another (single thread), as the fixtures'
// bench_throughput.js does. Also times loading each tokenizer.
//
//   kiln_tokenizer_bench [--node-modules DIR] [--mb 10] TOKENIZER_DIR...
//
// With --node-modules (a folder holding @anush008/tokenizers; bench/tokenizers.sh installs
// it) the reference runs too and the ratio Kiln / reference is printed.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/io/whole_file.h"
#include "kiln/tokenizer/tokenizer.h"

namespace fs = std::filesystem;

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The benchmark text in chunks of about `chunk_bytes`, cut after '\n'.
std::vector<std::string> make_chunks(const fs::path& docs, double target_mb, size_t chunk_bytes) {
  std::string sample;
  for (const char* name : {"prose.txt", "code.txt", "multilingual.txt"}) {
    if (!sample.empty()) sample += "\n";
    sample += kiln::read_whole_file((docs / name).string());
  }
  std::string text;
  while (text.size() < target_mb * 1e6) text += sample;
  std::vector<std::string> chunks;
  std::string current;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    end = end == std::string::npos ? text.size() : end + 1;
    current.append(text, pos, end - pos);
    pos = end;
    if (current.size() >= chunk_bytes) chunks.push_back(std::move(current)), current.clear();
  }
  if (!current.empty()) chunks.push_back(current);
  return chunks;
}

std::string run_capture(const std::string& command) {
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), &pclose);
  if (!pipe) throw kiln::Error("cannot run: " + command);
  std::string out;
  char buffer[4096];
  while (size_t n = std::fread(buffer, 1, sizeof(buffer), pipe.get())) out.append(buffer, n);
  return out;
}

}  // namespace

int main(int argc, char** argv) try {
  std::string node_modules;
  double target_mb = 10;
  std::vector<std::string> tokenizer_dirs;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--node-modules" && i + 1 < argc)
      node_modules = argv[++i];
    else if (arg == "--mb" && i + 1 < argc)
      target_mb = std::stod(argv[++i]);
    else
      tokenizer_dirs.push_back(arg);
  }
  if (tokenizer_dirs.empty()) {
    std::cerr << "usage: kiln_tokenizer_bench [--node-modules DIR] [--mb 10] TOKENIZER_DIR...\n";
    return 2;
  }
  const fs::path data = fs::path(KILN_SOURCE_DIR) / "tests/data/tokenizers";
  const std::vector<std::string> chunks = make_chunks(data / "docs", target_mb, 4096);
  size_t bytes = 0;
  for (const std::string& c : chunks) bytes += c.size();
  const fs::path scratch = fs::temp_directory_path() / "kiln_tokenizer_bench";
  fs::create_directories(scratch);
  const std::string chunks_path = (scratch / "chunks.json").string();
  std::ofstream(chunks_path) << kiln::Json(chunks).dump();
  std::printf("text: %zu bytes in %zu chunks\n", bytes, chunks.size());
  std::printf("%-24s %9s %9s %10s %10s %8s %10s\n", "tokenizer", "load_s", "tokens", "kiln_MB/s",
              "hf_MB/s", "ratio", "hf_load_s");

  for (const std::string& dir : tokenizer_dirs) {
    const std::string name = fs::path(dir).filename().string();
    auto start = std::chrono::steady_clock::now();
    const auto tokenizer = kiln::Tokenizer::load(dir);
    const double load_s = seconds_since(start);
    size_t tokens = 0;
    start = std::chrono::steady_clock::now();
    for (const std::string& chunk : chunks) tokens += tokenizer->encode(chunk, false).size();
    const double kiln_mb_s = bytes / 1e6 / seconds_since(start);

    double hf_mb_s = 0, hf_load_s = 0;
    int64_t hf_tokens = -1;
    if (!node_modules.empty()) {
      // The binding reads plain tokenizer.json; decompress a .zst copy for it.
      fs::path json = fs::path(dir) / "tokenizer.json";
      if (!fs::exists(json)) {
        json = scratch / (name + ".tokenizer.json");
        std::ofstream(json) << kiln::read_whole_file(dir + "/tokenizer.json.zst");
      }
      const std::string out =
          run_capture("NODE_PATH='" + node_modules + "' node '" +
                      (fs::path(KILN_SOURCE_DIR) / "bench/tokenizer_reference.js").string() +
                      "' '" + json.string() + "' '" + chunks_path + "'");
      const kiln::Json result = kiln::parse_json(out, "reference output");
      hf_mb_s = result["MB_per_s"].get<double>();
      hf_load_s = result["load_s"].get<double>();
      hf_tokens = result["tokens"].get<int64_t>();
    }
    std::printf("%-24s %9.3f %9zu %10.2f %10.2f %8.2f %10.3f\n", name.c_str(), load_s, tokens,
                kiln_mb_s, hf_mb_s, hf_mb_s > 0 ? kiln_mb_s / hf_mb_s : 0.0, hf_load_s);
    if (hf_tokens >= 0 && hf_tokens != static_cast<int64_t>(tokens)) {
      std::printf("  WARNING: token counts differ (kiln %zu, reference %lld)\n", tokens,
                  static_cast<long long>(hf_tokens));
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "kiln_tokenizer_bench: error: " << e.what() << "\n";
  return 1;
}
