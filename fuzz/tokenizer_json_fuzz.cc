// libFuzzer target: tokenizer.json text -> loader -> encode/decode. Malformed files must give
// kiln::Error, never a crash, a hang or a sanitizer report. Built by fuzz/run.sh only.
#include <cstddef>
#include <cstdint>
#include <string>

#include "kiln/core/error.h"
#include "kiln/tokenizer/hf_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto tokenizer = kiln::tok::HfTokenizer::from_json_text(text, "fuzz.json");
    for (const char* sample : {"", "Hello world", " <s> 12345 ünïcödé 😀\n\t", "aaaaaaaaaaaa"}) {
      const std::vector<int32_t> ids = tokenizer->encode(sample, true);
      tokenizer->decode(ids, false);
      tokenizer->decode(ids, true);
    }
  } catch (const kiln::Error&) {
  }
  return 0;
}
