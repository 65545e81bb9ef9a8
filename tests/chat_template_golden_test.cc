// Chat templates against transformers: every case of tests/data/chat_templates/golden.json
// (transformers' apply_chat_template on the llama3, qwen3 and gemma3 tokenizer folders) gives
// the same text, and the same ids when tokenized without adding special tokens.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "kiln/chat/chat_template.h"
#include "kiln/tokenizer/tokenizer.h"
#include "test_util.h"

namespace kiln {
namespace {

using OrderedJson = nlohmann::ordered_json;

OrderedJson golden() {
  std::ifstream in(test::data_path("chat_templates/golden.json"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return OrderedJson::parse(buffer.str());
}

// "" when equal, else where the first difference is.
template <typename Sequence>
std::string first_difference(const Sequence& want, const Sequence& got) {
  size_t k = 0;
  while (k < want.size() && k < got.size() && want[k] == got[k]) ++k;
  if (k == want.size() && k == got.size()) return "";
  std::ostringstream out;
  out << "first difference at position " << k << " (lengths " << want.size() << " vs " << got.size()
      << ")";
  return out.str();
}

TEST(ChatTemplateGolden, TextAndIdsMatchTransformers) {
  const OrderedJson all = golden();
  ASSERT_EQ(all.size(), 3u);
  int cases = 0;
  for (const auto& [model, entry] : all.items()) {
    const std::string folder = test::data_path("tokenizers/" + model);
    const chat::ChatTemplate chat_template = chat::ChatTemplate::load(folder);
    const auto tokenizer = Tokenizer::load(folder);
    for (const OrderedJson& c : entry["cases"]) {
      chat::ChatOptions options;
      options.add_generation_prompt = c["add_generation_prompt"].get<bool>();
      const std::string text = chat_template.apply(c["messages"], options);
      const std::string want_text = c["text"];
      const std::string label =
          model + " case " + c["messages"].dump() +
          " add_generation_prompt=" + (options.add_generation_prompt ? "true" : "false");
      EXPECT_EQ(first_difference(want_text, text), "")
          << label << "\n  want " << OrderedJson(want_text).dump() << "\n  got  "
          << OrderedJson(text).dump();
      const std::vector<int32_t> ids = tokenizer->encode(text, false);
      const std::vector<int32_t> want_ids = c["ids"].get<std::vector<int32_t>>();
      EXPECT_EQ(first_difference(want_ids, ids), "") << label;
      ++cases;
    }
  }
  EXPECT_EQ(cases, 24);
}

}  // namespace
}  // namespace kiln
