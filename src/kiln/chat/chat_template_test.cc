// Finding a model's chat template and the variables transformers passes to it.
#include "kiln/chat/chat_template.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "test_util.h"

namespace kiln::chat {
namespace {

namespace fs = std::filesystem;
using OrderedJson = nlohmann::ordered_json;

void write(const fs::path& path, const std::string& text) {
  std::ofstream(path) << text;
}

const OrderedJson kHello = OrderedJson::parse(R"([{"role": "user", "content": "Hi"}])");

class ChatTemplateTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("chat_template"); }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(ChatTemplateTest, TokenizerConfigStringTemplateAndSpecialTokens) {
  write(dir_ / "tokenizer_config.json", R"({
    "bos_token": {"content": "<s>", "lstrip": false, "special": true},
    "eos_token": "</s>", "unk_token": null, "pad_token": "",
    "additional_special_tokens": ["<a>", {"content": "<b>"}],
    "chat_template": "{{ bos_token }}|{{ eos_token }}|{{ unk_token is defined }}|{{ pad_token is defined }}|{{ additional_special_tokens }}|{% for m in messages %}{{ m.content }}{% endfor %}|{{ add_generation_prompt }}|{{ tools }}|{{ documents }}"
  })");
  const ChatTemplate t = ChatTemplate::load(dir_.string());
  EXPECT_EQ(t.origin(), (dir_ / "tokenizer_config.json").string() + " (chat_template)");
  ChatOptions options;
  options.add_generation_prompt = true;
  EXPECT_EQ(t.apply(kHello, options), "<s>|</s>|False|False|['<a>', '<b>']|Hi|True|None|None");
}

TEST_F(ChatTemplateTest, ChatTemplateJinjaIsPreferred) {
  write(dir_ / "tokenizer_config.json", R"({"eos_token": "E", "chat_template": "config"})");
  write(dir_ / "chat_template.jinja", "file {{ eos_token }}\n");
  const ChatTemplate t = ChatTemplate::load(dir_.string());
  EXPECT_EQ(t.origin(), (dir_ / "chat_template.jinja").string());
  EXPECT_EQ(t.apply(kHello), "file E");  // jinja2 drops the single trailing newline
  EXPECT_EQ(ChatTemplate::load((dir_ / "chat_template.jinja").string()).apply(kHello), "file E");
  EXPECT_EQ(ChatTemplate::load((dir_ / "tokenizer_config.json").string()).apply(kHello), "config");
}

TEST_F(ChatTemplateTest, NamedTemplatesPickDefault) {
  write(dir_ / "tokenizer_config.json", R"({"chat_template": [
    {"name": "tool_use", "template": "tools"}, {"name": "default", "template": "plain"}]})");
  EXPECT_EQ(ChatTemplate::load(dir_.string()).apply(kHello), "plain");
  EXPECT_EQ(ChatTemplate::load(dir_.string(), "tool_use").apply(kHello), "tools");
  try {
    ChatTemplate::load(dir_.string(), "rag");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              (dir_ / "tokenizer_config.json").string() +
                  ": chat_template: no template named 'rag' (templates: tool_use, default)");
  }
}

TEST_F(ChatTemplateTest, MissingTemplateIsAnErrorNamingTheFileAndKey) {
  write(dir_ / "tokenizer_config.json", R"({"eos_token": "E"})");
  try {
    ChatTemplate::load(dir_.string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), (dir_ / "tokenizer_config.json").string() +
                                         ": no \"chat_template\" key (this model has no chat "
                                         "template)");
  }
  EXPECT_THROW(ChatTemplate::load((dir_ / "nothing").string()), Error);
  write(dir_ / "tokenizer_config.json", "{bad");
  EXPECT_THROW(ChatTemplate::load(dir_.string()), Error);
}

TEST_F(ChatTemplateTest, SyntaxErrorNamesTheTemplateAndLine) {
  write(dir_ / "chat_template.jinja", "ok\n{% if %}");
  try {
    ChatTemplate::load(dir_.string());
    FAIL();
  } catch (const jinja::TemplateError& e) {
    EXPECT_EQ(std::string(e.what()),
              (dir_ / "chat_template.jinja").string() + ":2: unexpected end of statement block");
  }
}

TEST_F(ChatTemplateTest, ToolsDocumentsAndExtraVariables) {
  const ChatTemplate t("{{ tools|tojson }} {{ documents[0].title }} {{ enable_thinking }}", "t");
  ChatOptions options;
  options.tools = OrderedJson::parse(R"([{"name": "f", "b": 1, "a": 2}])");
  options.documents = OrderedJson::parse(R"([{"title": "T", "text": "x"}])");
  options.extra["enable_thinking"] = false;
  EXPECT_EQ(t.apply(kHello, options), R"([{"name": "f", "b": 1, "a": 2}] T False)");
}

TEST_F(ChatTemplateTest, ReadMessages) {
  write(dir_ / "m.json", R"([{"role": "user", "content": [{"type": "text", "text": "x"}]}])");
  EXPECT_EQ(read_messages((dir_ / "m.json").string())[0]["content"][0]["text"], "x");
  write(dir_ / "m.json", R"({"role": "user"})");
  EXPECT_THROW(read_messages((dir_ / "m.json").string()), Error);
  write(dir_ / "m.json", R"([1])");
  EXPECT_THROW(read_messages((dir_ / "m.json").string()), Error);
  EXPECT_THROW(read_messages((dir_ / "missing.json").string()), Error);
}

}  // namespace
}  // namespace kiln::chat
