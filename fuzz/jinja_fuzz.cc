// libFuzzer target: arbitrary bytes as a chat template, rendered with a small conversation.
// Parsing and rendering may only fail with kiln::Error (TemplateError, RaisedError), within
// the limits. Built by fuzz/run.sh only.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "kiln/chat/jinja.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const nlohmann::ordered_json context = nlohmann::ordered_json::parse(R"({
    "messages": [{"role": "system", "content": "Be brief."},
                 {"role": "user", "content": [{"type": "text", "text": "Hi é"}]},
                 {"role": "assistant", "content": "<think>x</think>ok",
                  "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1.5}}}]}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    "documents": null, "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>"})");
  kiln::jinja::RenderLimits limits;
  limits.max_output_bytes = 1 << 20;
  limits.max_steps = 200000;
  try {
    kiln::jinja::Template t(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    t.render(context, limits);
  } catch (const kiln::Error&) {
  }
  return 0;
}
