// libFuzzer target: arbitrary bytes -> encode with real tokenizers (byte-level BPE,
// SentencePiece-style BPE with byte fallback, tiktoken) -> decode and stream-decode.
// Invalid UTF-8 must give kiln::Error; valid text must round-trip through the byte-level
// tokenizers. Built by fuzz/run.sh only.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/tokenizer/tokenizer.h"
#include "kiln/tokenizer/utf8.h"

namespace {

const std::vector<std::unique_ptr<kiln::Tokenizer>>& tokenizers() {
  static const auto loaded = [] {
    std::vector<std::unique_ptr<kiln::Tokenizer>> list;
    const std::string data = KILN_TEST_DATA "/tokenizers/";
    for (const char* name : {"tinycoder", "llama2", "qwen3", "tiktoken_cl100k_base"}) {
      list.push_back(kiln::Tokenizer::load(data + name));
    }
    return list;
  }();
  return loaded;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const bool valid = kiln::tok::utf8_valid_prefix(text) == text.size();
  for (size_t t = 0; t < tokenizers().size(); ++t) {
    const kiln::Tokenizer& tokenizer = *tokenizers()[t];
    std::vector<int32_t> ids;
    try {
      ids = tokenizer.encode(text, true);
    } catch (const kiln::Error&) {
      if (valid) std::abort();  // valid UTF-8 must always encode
      continue;
    }
    if (!valid) std::abort();  // invalid UTF-8 must be rejected
    const std::string decoded = tokenizer.decode(ids, false);
    // tinycoder (byte-level, no normalizer) and tiktoken reproduce the text exactly.
    if ((t == 0 || t == 3) && decoded != text) std::abort();
    kiln::StreamDecoder stream(tokenizer, false);
    std::string streamed;
    for (int32_t id : ids) streamed += stream.push(id);
    streamed += stream.finish();
    if (streamed != decoded) std::abort();
  }
  return 0;
}
