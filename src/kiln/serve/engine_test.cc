// The serving engine on tinycoder: stop strings are cut and never emitted (also across
// tokens), max_tokens and EOS end sequences with OpenAI's finish reasons, and a sequence's
// tokens and log-probabilities are bitwise the same whether it ran alone or among others.
#include "kiln/serve/engine.h"

#include <gtest/gtest.h>

#include <iostream>

#include "kiln/cli/command.h"
#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/models/loader.h"
#include "kiln/serve/json_prefix.h"

namespace kiln::serve {
namespace {

struct Result {
  std::string text;
  std::vector<int32_t> tokens;
  std::vector<double> logprobs;
  std::string finish;
};

Result drain(Channel& channel) {
  Result r;
  while (true) {
    std::optional<Event> e = channel.pop(5000);
    if (!e) {
      ADD_FAILURE() << "no event within 5 s";
      return r;
    }
    EXPECT_TRUE(e->error.empty()) << e->error;
    r.text += e->text;
    if (e->token) {
      r.tokens.push_back(e->token->id);
      r.logprobs.push_back(e->token->logprob);
    }
    if (e->done) {
      r.finish = e->finish_reason;
      return r;
    }
  }
}

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = cli::default_model_path();
    loaded_ = new LoadedModel(load_model(path));
    model_ = new Model(loaded_->spec, loaded_->weights);
    tokenizer_ = Tokenizer::load(path).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    delete loaded_;
    delete tokenizer_;
  }
  SequenceRequest request(const std::string& prompt, int64_t max_tokens) const {
    SequenceRequest r;
    r.prompt = tokenizer_->encode(prompt, true);
    r.max_tokens = max_tokens;
    r.top_logprobs = 2;
    return r;
  }
  static LoadedModel* loaded_;
  static Model* model_;
  static Tokenizer* tokenizer_;
};
LoadedModel* EngineTest::loaded_ = nullptr;
Model* EngineTest::model_ = nullptr;
Tokenizer* EngineTest::tokenizer_ = nullptr;

TEST(HeldSuffix, KeepsTheLongestPossibleStartOfAStopString) {
  EXPECT_EQ(held_suffix("hello wor", {"world"}), 3u);
  EXPECT_EQ(held_suffix("hello w", {"world", "xy"}), 1u);
  EXPECT_EQ(held_suffix("hello", {"world"}), 0u);
  EXPECT_EQ(held_suffix("abcab", {"abcabd"}), 5u);
  EXPECT_EQ(held_suffix("", {"a"}), 0u);
}

TEST_F(EngineTest, BatchedSequencesEqualTheSequenceAloneBitwise) {
  const std::vector<std::string> prompts = {"def fibonacci(n):", "import os\n",
                                            "class Stack:", "# sort a list\n", "x = [1, 2"};
  std::vector<Result> alone;
  {
    Engine engine(*model_, *tokenizer_, loaded_->spec.eos_token_ids, {1, 0, 64});
    for (const std::string& p : prompts) alone.push_back(drain(*engine.submit(request(p, 20))));
  }
  Engine engine(*model_, *tokenizer_, loaded_->spec.eos_token_ids, {4, 0, 64});
  std::vector<std::shared_ptr<Channel>> channels;
  for (int round = 0; round < 3; ++round)
    for (const std::string& p : prompts) channels.push_back(engine.submit(request(p, 20)));
  for (size_t i = 0; i < channels.size(); ++i) {
    const Result r = drain(*channels[i]);
    const Result& want = alone[i % prompts.size()];
    EXPECT_EQ(r.tokens, want.tokens) << i;
    EXPECT_EQ(r.logprobs, want.logprobs) << i;  // bitwise: no tolerance
    EXPECT_EQ(r.text, want.text) << i;
    EXPECT_EQ(r.finish, "length");
    EXPECT_EQ(r.tokens.size(), 20u);
  }
}

TEST_F(EngineTest, StopStringsAreCutAcrossTokensAndNeverEmitted) {
  Engine engine(*model_, *tokenizer_, loaded_->spec.eos_token_ids, {2, 0, 8});
  const Result full = drain(*engine.submit(request("def fibonacci(n):", 30)));
  ASSERT_GT(full.text.size(), 20u);
  // A stop string that starts inside one token and ends in a later one.
  const std::string stop = full.text.substr(7, 9);
  SequenceRequest r = request("def fibonacci(n):", 30);
  r.stop = {"never there", stop};
  const Result cut = drain(*engine.submit(r));
  std::cout << "stop " << stop << " -> " << cut.text << std::endl;
  EXPECT_EQ(cut.text, full.text.substr(0, full.text.find(stop)));
  EXPECT_EQ(cut.finish, "stop");
  // max_tokens 0 gives nothing, finish "length".
  SequenceRequest none = request("x", 0);
  const Result empty = drain(*engine.submit(none));
  EXPECT_EQ(empty.text, "");
  EXPECT_EQ(empty.finish, "length");
}

// JSON mode: the reply is always a prefix of one JSON object, and a complete object when the
// sequence ends with "stop" (tinycoder writes code, so the constraint does the work).
TEST_F(EngineTest, JsonObjectRepliesAreValidJson) {
  Engine engine(*model_, *tokenizer_, loaded_->spec.eos_token_ids, {2, 0, 8});
  for (const auto& [prompt, temperature] :
       {std::pair{"def fibonacci(n):", 0.0f}, std::pair{"config = ", 0.8f}}) {
    SequenceRequest r = request(prompt, 60);
    r.json_object = true;
    r.sampling.temperature = temperature;
    r.sampling.seed = 3;
    const Result result = drain(*engine.submit(r));
    std::cout << result.finish << ": " << nlohmann::json(result.text).dump() << std::endl;
    JsonPrefix check;
    EXPECT_TRUE(check.feed(result.text)) << result.text;
    if (result.finish == "stop") {
      EXPECT_TRUE(check.complete()) << result.text;
      EXPECT_TRUE(nlohmann::json::accept(result.text)) << result.text;
    }
  }
}

// The KV budget: a sequence that cannot fit is refused; sequences that fit one at a time wait
// for each other instead of running together, and all complete with the tokens they have alone.
TEST_F(EngineTest, KvBudgetQueuesAndRefuses) {
  EngineOptions options{4, 0, 8};
  Engine probe(*model_, *tokenizer_, loaded_->spec.eos_token_ids, options);
  const int64_t one = probe.kv_bytes(10 + 24);
  options.kv_budget = one + one / 2;  // room for one such sequence at a time
  Engine engine(*model_, *tokenizer_, loaded_->spec.eos_token_ids, options);
  EXPECT_THROW(engine.submit(request("def fibonacci(n):", 200)), Error);  // needs more than all
  std::vector<std::shared_ptr<Channel>> channels;
  const std::vector<std::string> prompts = {"import os\n", "class Stack:", "x = [1, 2"};
  std::vector<Result> alone;
  for (const std::string& p : prompts) {
    SequenceRequest r = request(p, 24);
    r.prompt.resize(std::min<size_t>(r.prompt.size(), 10));
    alone.push_back(drain(*probe.submit(r)));
    channels.push_back(engine.submit(r));
  }
  for (size_t i = 0; i < channels.size(); ++i) {
    const Result r = drain(*channels[i]);
    EXPECT_EQ(r.tokens, alone[i].tokens) << i;
  }
}

TEST_F(EngineTest, RefusesBadPromptsAndAFullQueue) {
  Engine engine(*model_, *tokenizer_, loaded_->spec.eos_token_ids, {1, 0, 1});
  SequenceRequest bad = request("x", 4);
  bad.prompt = {1, -5};
  EXPECT_THROW(engine.submit(bad), Error);
  bad.prompt.clear();
  EXPECT_THROW(engine.submit(bad), Error);
  bad.prompt.assign(static_cast<size_t>(engine.context()), 1);
  EXPECT_THROW(engine.submit(bad), Error);
  // One running and one waiting: a third is refused.
  auto a = engine.submit(request("def fibonacci(n):", 200));
  auto b = engine.submit(request("import os\n", 200));
  EXPECT_THROW(engine.submit(request("class Stack:", 4)), QueueFull);
  a->cancel();
  b->cancel();
}

}  // namespace
}  // namespace kiln::serve
