// Chat SFT masks with the Llama 3, Qwen3 and Gemma 3 templates (tests/data/tokenizers/<name>,
// the templates transformers' goldens use): on every conversation of tests/data/train/chat.jsonl
// the tokens that carry loss decode to exactly each assistant turn's content and its
// end-of-turn text, in order, and nothing else.
#include "kiln/train/sft.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <iostream>

#include "kiln/core/error.h"
#include "kiln/models/loader.h"
#include "kiln/train/adamw.h"
#include "kiln/train/backward.h"
#include "kiln/train/train_model.h"
#include "test_util.h"

namespace kiln::train {
namespace {

using OrderedJson = nlohmann::ordered_json;

std::vector<OrderedJson> conversations() {
  std::ifstream in(test::data_path("train/chat.jsonl"));
  std::vector<OrderedJson> out;
  std::string line;
  while (std::getline(in, line)) out.push_back(OrderedJson::parse(line)["messages"]);
  return out;
}

// The decoded text of each run of consecutive loss tokens.
std::vector<std::string> masked_runs(const ChatExample& ex, const Tokenizer& tokenizer) {
  std::vector<std::string> runs;
  std::vector<int32_t> run;
  for (size_t k = 0; k <= ex.tokens.size(); ++k) {
    if (k < ex.tokens.size() && ex.loss[k]) {
      run.push_back(ex.tokens[k]);
    } else if (!run.empty()) {
      runs.push_back(tokenizer.decode(run, false));
      run.clear();
    }
  }
  return runs;
}

// What each template renders as an assistant turn: content then end-of-turn text. Qwen3 puts
// an empty think block before the content of a turn after the last user message.
std::string expected_turn(const std::string& model, const std::string& content, bool last) {
  if (model == "llama3") return content + "<|eot_id|>";
  if (model == "gemma3") return content + "<end_of_turn>";
  return (last ? "<think>\n\n</think>\n\n" : "") + content + "<|im_end|>";
}

class SftMask : public ::testing::TestWithParam<std::string> {};

TEST_P(SftMask, LossCoversExactlyTheAssistantTurns) {
  const std::string folder = test::data_path("tokenizers/" + GetParam());
  const chat::ChatTemplate chat_template = chat::ChatTemplate::load(folder);
  const auto tokenizer = Tokenizer::load(folder);
  int turns = 0;
  for (const OrderedJson& messages : conversations()) {
    const ChatExample ex = render_chat(chat_template, *tokenizer, messages, "test");
    std::vector<std::string> expected;
    for (size_t i = 0; i < messages.size(); ++i)
      if (messages[i]["role"] == "assistant")
        expected.push_back(
            expected_turn(GetParam(), messages[i]["content"], i + 1 == messages.size()));
    const std::vector<std::string> runs = masked_runs(ex, *tokenizer);
    EXPECT_EQ(runs, expected) << GetParam() << ": " << OrderedJson(ex.text).dump();
    int64_t masked = 0;
    for (uint8_t m : ex.loss) masked += m;
    std::cout << GetParam() << ": " << ex.tokens.size() << " tokens, " << masked
              << " with loss, in " << runs.size() << " turn(s)" << std::endl;
    turns += static_cast<int>(runs.size());
  }
  EXPECT_EQ(turns, 5);
}

INSTANTIATE_TEST_SUITE_P(Templates, SftMask, ::testing::Values("llama3", "qwen3", "gemma3"));

TEST(Sft, BadConversationsAreClearErrors) {
  const std::string folder = test::data_path("tokenizers/qwen3");
  const chat::ChatTemplate chat_template = chat::ChatTemplate::load(folder);
  const auto tokenizer = Tokenizer::load(folder);
  auto expect_error = [&](const std::string& messages, const std::string& needle) {
    try {
      render_chat(chat_template, *tokenizer, OrderedJson::parse(messages), "chat.jsonl:3");
      ADD_FAILURE() << "no error for " << messages;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).rfind("chat.jsonl:3", 0), 0u) << e.what();
    }
  };
  expect_error(R"([{"role": "user", "content": "hi"}])", "no assistant message");
  expect_error(R"([{"content": "hi"}])", "string \"role\"");
  expect_error(R"({"role": "user"})", "non-empty array");
  expect_error(R"([{"role": "user", "content": "hi"}, {"role": "assistant", "content": 3}])",
               "needs a string \"content\"");
  const std::string dir = test::make_temp_dir("kiln_sft_");
  std::ofstream(dir + "/bad.jsonl") << R"({"messages": [{"role": "user", "content": "x"}]})"
                                    << "\n{oops\n";
  EXPECT_TRUE(is_chat_jsonl(dir + "/bad.jsonl"));
  try {
    read_chat_windows(dir + "/bad.jsonl", chat_template, *tokenizer, 64);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:1: the conversation has no assistant"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(is_chat_jsonl(test::data_path("../../tools/torch_reference.py")));
  const std::vector<Window> windows =
      read_chat_windows(test::data_path("train/chat.jsonl"), chat_template, *tokenizer, 40);
  EXPECT_EQ(windows.size(), 4u);
  for (const Window& w : windows) EXPECT_LE(w.tokens.size(), 40u);
}

// A few AdamW steps on the chat windows of each template (rendered for tinycoder's tokenizer,
// which lacks the templates' special tokens and so reads their markers as text) lower the loss
// on the assistant tokens.
TEST_P(SftMask, TrainingLowersTheAssistantLoss) {
  const std::string model_dir = test::data_path("../../models/tinycoder");
  const chat::ChatTemplate chat_template =
      chat::ChatTemplate::load(test::data_path("tokenizers/" + GetParam()));
  const LoadedModel loaded = load_model(model_dir);
  const auto tokenizer = Tokenizer::load(model_dir);
  const std::vector<Window> windows =
      read_chat_windows(test::data_path("train/chat.jsonl"), chat_template, *tokenizer, 128);
  ASSERT_EQ(windows.size(), 4u);
  int64_t T = 0;
  for (const Window& w : windows) T = std::max<int64_t>(T, static_cast<int64_t>(w.tokens.size()));
  const auto B = static_cast<int64_t>(windows.size());
  std::vector<int32_t> tokens(static_cast<size_t>(B * T), 0);
  std::vector<uint8_t> mask(static_cast<size_t>(B * T), 0);
  for (int64_t b = 0; b < B; ++b) {
    std::copy(windows[b].tokens.begin(), windows[b].tokens.end(), tokens.begin() + b * T);
    std::copy(windows[b].loss.begin(), windows[b].loss.end(), mask.begin() + b * T);
  }
  const std::vector<int32_t> targets = next_token_targets(tokens.data(), mask.data(), B, T);
  TrainModel model(loaded.spec, loaded.weights);
  AdamW optimizer({.lr = 2e-3, .beta1 = 0.9, .beta2 = 0.95});
  double first = 0, last = 0;
  for (int step = 0; step < 2; ++step) {
    model.zero_gradients();
    last = model.forward_backward(tokens.data(), targets.data(), B, T);
    if (step == 0) first = last;
    optimizer.step(model.parameters(), model.gradients());
  }
  last = model.loss(tokens.data(), targets.data(), B, T);
  std::cout << GetParam() << " template, tinycoder: assistant-token loss " << first << " -> "
            << last << " after 2 steps (" << count_targets(targets.data(), B * T) << " targets)"
            << std::endl;
  EXPECT_LT(last, first - 0.2);
}

}  // namespace
}  // namespace kiln::train
