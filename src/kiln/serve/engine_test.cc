// The serving engine on tinycoder: stop strings are cut and never emitted (also across
// tokens), max_tokens and EOS end sequences with OpenAI's finish reasons, and a sequence's
// tokens and log-probabilities are bitwise the same whether it ran alone or among others.
#include "kiln/serve/engine.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <iostream>
#include <thread>

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
    std::optional<Event> e = channel.pop(30000);  // generous: a loaded machine
    if (!e) {
      ADD_FAILURE() << "no event within 30 s";
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

// Both prompt modes: the default one-shot prefill (prompt passes through the GEMM) and
// chunked prefill (auto chunk); within a mode, a request alone and among others is bitwise equal.
TEST_F(EngineTest, BatchedSequencesEqualTheSequenceAloneBitwise) {
  const std::vector<std::string> prompts = {"def fibonacci(n):", "import os\n",
                                            "class Stack:", "# sort a list\n", "x = [1, 2"};
  for (int64_t chunk : {int64_t{0}, EngineOptions::kPrefillChunkAuto}) {
    EngineOptions one{1, 0, 64}, four{4, 0, 64};
    one.prefill_chunk = four.prefill_chunk = chunk;
    std::vector<Result> alone;
    {
      Engine engine(*model_, *tokenizer_, loaded_->spec.eos_token_ids, one);
      for (const std::string& p : prompts) alone.push_back(drain(*engine.submit(request(p, 20))));
    }
    Engine engine(*model_, *tokenizer_, loaded_->spec.eos_token_ids, four);
    std::vector<std::shared_ptr<Channel>> channels;
    for (int round = 0; round < 3; ++round)
      for (const std::string& p : prompts) channels.push_back(engine.submit(request(p, 20)));
    for (size_t i = 0; i < channels.size(); ++i) {
      const Result r = drain(*channels[i]);
      const Result& want = alone[i % prompts.size()];
      EXPECT_EQ(r.tokens, want.tokens) << "chunk " << chunk << ", request " << i;
      EXPECT_EQ(r.logprobs, want.logprobs) << "chunk " << chunk << ", request " << i;  // bitwise
      EXPECT_EQ(r.text, want.text) << "chunk " << chunk << ", request " << i;
      EXPECT_EQ(r.finish, "length");
      EXPECT_EQ(r.tokens.size(), 20u);
    }
  }
}

// The default mode prefills a prompt in a prompt pass through the GEMM, not in the steps: no
// engine step runs for it (only the decode steps), and its reply stays close to the chunked one
// (the GEMM's sums differ from the GEMV's: greedy tokens equal, log-probabilities close).
TEST_F(EngineTest, DefaultModePrefillsPromptsInOnePass) {
  const std::string text =
      "# A helper module with small utilities for lists and strings.\n"
      "# Every function has a docstring and type hints.\nimport os\n";
  SequenceRequest r = request(text, 8);
  ASSERT_GE(r.prompt.size(), 20u);
  Result results[2];
  for (int64_t chunk : {int64_t{0}, int64_t{4}}) {
    EngineOptions options{1, 0, 8};
    options.prefill_chunk = chunk;
    Engine engine(*model_, *tokenizer_, {}, options);  // no EOS: 8 tokens
    results[chunk == 0 ? 0 : 1] = drain(*engine.submit(r));
    const EngineStats& s = engine.stats();
    std::cout << "prefill chunk " << chunk << ": " << s.steps << " steps, " << s.step_rows
              << " rows" << std::endl;
    const auto prompt_steps = static_cast<int64_t>(chunk == 0 ? 0 : (r.prompt.size() + 3) / 4);
    EXPECT_EQ(s.steps.load(), prompt_steps + 7) << "chunk " << chunk;
    EXPECT_EQ(s.prompt_tokens.load(), static_cast<int64_t>(r.prompt.size()));
  }
  ASSERT_EQ(results[0].tokens.size(), 8u);
  double max_diff = 0.0;
  for (size_t j = 0; j < 8 && results[0].tokens[j] == results[1].tokens[j]; ++j)
    max_diff = std::max(max_diff, std::fabs(results[0].logprobs[j] - results[1].logprobs[j]));
  std::cout << "one-shot against chunked: largest log-probability difference " << max_diff
            << std::endl;
  EXPECT_EQ(results[0].tokens, results[1].tokens);
  EXPECT_LT(max_diff, 0.05);
}

// An idle engine with an admission window waits for a burst: four requests submitted 20 ms
// apart go in through one prompt pass (without the window the first starts at once: a pass of
// its own), their replies are bitwise those of each request alone, and a lone request on the
// idle engine waits the window once.
TEST_F(EngineTest, AdmissionWindowTakesABurstInOnePromptPass) {
  const std::vector<std::string> prompts = {"def fibonacci(n):", "import os\n",
                                            "class Stack:", "# sort a list\n"};
  std::vector<Result> alone;
  {
    Engine engine(*model_, *tokenizer_, loaded_->spec.eos_token_ids, EngineOptions{1, 0, 64});
    for (const std::string& p : prompts) alone.push_back(drain(*engine.submit(request(p, 12))));
  }
  for (int64_t window_us : {int64_t{0}, int64_t{500'000}}) {
    EngineOptions options{4, 0, 64};
    options.admission_window_us = window_us;
    Engine engine(*model_, *tokenizer_, loaded_->spec.eos_token_ids, options);
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::shared_ptr<Channel>> channels;
    for (const std::string& p : prompts) {
      channels.push_back(engine.submit(request(p, 12)));
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    for (size_t i = 0; i < channels.size(); ++i) {
      const Result r = drain(*channels[i]);
      EXPECT_EQ(r.tokens, alone[i].tokens) << "window " << window_us << " us, request " << i;
      EXPECT_EQ(r.logprobs, alone[i].logprobs) << "window " << window_us << " us, request " << i;
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const int64_t passes = engine.stats().prompt_passes.load();
    std::cout << "admission window " << window_us / 1000 << " ms: " << passes << " prompt passes, "
              << seconds << " s" << std::endl;
    if (window_us == 0) {
      EXPECT_GE(passes, 2);
      continue;
    }
    EXPECT_EQ(passes, 1);  // the fourth request filled `parallel`: no need to wait longer
    // A lone request on the idle engine waits the whole window (nothing else comes), then runs.
    {
      const auto t0 = std::chrono::steady_clock::now();
      const Result r = drain(*engine.submit(request(prompts[0], 12)));
      const double lone =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::cout << "a lone request after the burst: " << lone << " s" << std::endl;
      EXPECT_EQ(r.tokens, alone[0].tokens);
      EXPECT_GE(lone, 0.5);  // it waited the window: nothing else came
      EXPECT_EQ(engine.stats().prompt_passes.load(), 2);
    }
  }
}

// Chunked prefill: prompts (one of 60 tokens) taken in a few tokens per step beside other
// sequences' decode rows give bitwise the tokens and log-probabilities of each request run
// alone, whatever the chunk size.
TEST_F(EngineTest, ChunkedPrefillIsBitwiseWhateverTheChunk) {
  const std::string text =
      "# A helper module with small utilities for lists and strings.\n"
      "# Every function has a docstring and type hints.\nimport os\n"
      "import sys\nimport re\n\n\ndef reverse(s: str) -> str:\n"
      "    \"\"\"Return s reversed.\"\"\"\n    return s[::-1]\n\n\ndef total(";
  SequenceRequest long_prompt = request(text, 16);
  ASSERT_GE(long_prompt.prompt.size(), 60u);
  long_prompt.prompt.resize(60);
  std::vector<SequenceRequest> requests = {request("def fibonacci(n):", 16), long_prompt,
                                           request("import os\n", 16), request("class Stack:", 16)};
  std::vector<Result> alone;
  {
    EngineOptions options{1, 0, 64};
    options.prefill_chunk = 7;
    Engine engine(*model_, *tokenizer_, loaded_->spec.eos_token_ids, options);
    for (const SequenceRequest& r : requests) alone.push_back(drain(*engine.submit(r)));
  }
  for (int64_t chunk :
       {int64_t{1}, int64_t{3}, EngineOptions::kPrefillChunkAuto, int64_t{16}, int64_t{64}}) {
    EngineOptions options{4, 0, 64};
    options.prefill_chunk = chunk;
    Engine engine(*model_, *tokenizer_, loaded_->spec.eos_token_ids, options);
    std::vector<std::shared_ptr<Channel>> channels;
    for (int round = 0; round < 2; ++round)
      for (const SequenceRequest& r : requests) channels.push_back(engine.submit(r));
    for (size_t i = 0; i < channels.size(); ++i) {
      const Result r = drain(*channels[i]);
      const Result& want = alone[i % requests.size()];
      EXPECT_EQ(r.tokens, want.tokens) << "chunk " << chunk << ", request " << i;
      EXPECT_EQ(r.logprobs, want.logprobs) << "chunk " << chunk << ", request " << i;
      EXPECT_EQ(r.text, want.text) << "chunk " << chunk << ", request " << i;
    }
    const EngineStats& s = engine.stats();
    std::cout << "prefill chunk " << chunk << ": " << s.steps << " steps, " << s.step_rows
              << " rows" << std::endl;
  }
}

// A prompt taken in while another sequence decodes shares that sequence's steps: with a chunk
// of 4, sequence A (a 10-token prompt, 400 tokens) runs 3 steps for its prompt and 399 decode
// steps, and B's 60-token prompt, submitted once A decodes, adds rows to 15 of those steps but
// no step of its own.
TEST_F(EngineTest, PromptChunksShareStepsWithDecoding) {
  EngineOptions options{2, 0, 8};
  options.prefill_chunk = 4;
  Engine engine(*model_, *tokenizer_, {}, options);  // no EOS: A runs its 400 tokens
  const std::string text =
      "# A helper module with small utilities for lists and strings.\n"
      "# Every function has a docstring and type hints.\nimport os\n"
      "import sys\nimport re\n\n\ndef reverse(s: str) -> str:\n"
      "    \"\"\"Return s reversed.\"\"\"\n    return s[::-1]\n";
  SequenceRequest a = request(text, 400);
  a.prompt.resize(10);
  SequenceRequest b = request(text, 1);
  ASSERT_GE(b.prompt.size(), 60u);
  b.prompt.resize(60);
  auto channel_a = engine.submit(a);
  std::optional<Event> first = channel_a->pop(30000);
  ASSERT_TRUE(first && first->token);
  const Result result_b = drain(*engine.submit(b));
  EXPECT_EQ(result_b.tokens.size(), 1u);
  const Result rest_a = drain(*channel_a);
  ASSERT_EQ(rest_a.tokens.size(), 399u) << "A ended early: " << rest_a.finish;
  const EngineStats& s = engine.stats();
  std::cout << s.steps << " steps, " << s.step_rows << " rows" << std::endl;
  EXPECT_EQ(s.steps.load(), 3 + 399);
  EXPECT_EQ(s.step_rows.load(), 10 + 399 + 60);
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

// JSON schema mode: the reply is a prefix of an object matching the schema, and when the
// sequence ends with "stop", a complete one with the required keys and the right types.
TEST_F(EngineTest, JsonSchemaRepliesMatchTheSchema) {
  const auto schema = JsonSchema::parse(nlohmann::json::parse(R"({
    "type": "object",
    "properties": {"name": {"type": "string"}, "count": {"type": "integer"},
                   "ok": {"type": "boolean"}, "kind": {"enum": ["list", "map"]},
                   "sizes": {"type": "array", "items": {"type": "number"}}},
    "required": ["count", "ok", "kind"]})"));
  Engine engine(*model_, *tokenizer_, loaded_->spec.eos_token_ids, {2, 0, 8});
  int complete = 0;
  for (const auto& [prompt, temperature] :
       {std::pair{"def fibonacci(n):", 0.0f}, std::pair{"config = ", 0.8f},
        std::pair{"# settings\n", 0.0f}}) {
    SequenceRequest r = request(prompt, 80);
    r.json_schema = schema;
    r.sampling.temperature = temperature;
    r.sampling.seed = 5;
    const Result result = drain(*engine.submit(r));
    std::cout << result.finish << ": " << nlohmann::json(result.text).dump() << std::endl;
    JsonSchemaPrefix check(schema);
    EXPECT_TRUE(check.feed(result.text)) << result.text;
    if (result.finish != "stop") continue;
    ++complete;
    EXPECT_TRUE(check.complete()) << result.text;
    const nlohmann::json reply = nlohmann::json::parse(result.text);
    EXPECT_TRUE(reply.at("count").is_number_integer()) << result.text;
    EXPECT_TRUE(reply.at("ok").is_boolean()) << result.text;
    EXPECT_TRUE(reply.at("kind") == "list" || reply.at("kind") == "map") << result.text;
  }
  EXPECT_GE(complete, 1);
}

// The KV budget: a sequence that cannot fit is refused; sequences that fit one at a time wait
// for each other instead of running together, and all complete with the tokens they have alone.
TEST_F(EngineTest, KvBudgetQueuesAndRefuses) {
  EngineOptions options{4, 0, 8};
  Engine probe(*model_, *tokenizer_, loaded_->spec.eos_token_ids, options);
  const int64_t one = probe.kv_bytes(10 + 24);
  options.kv_budget = one + one / 2;  // room for one such sequence at a time
  Engine engine(*model_, *tokenizer_, loaded_->spec.eos_token_ids, options);
  try {  // needs more than the whole budget
    engine.submit(request("def fibonacci(n):", 200));
    ADD_FAILURE() << "a sequence beyond the KV budget was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("of KV cache; the server's budget is"), std::string::npos)
        << e.what();
  }
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

// KV blocks and preemption (both prompt modes): with a budget of a few blocks, sequences that
// outgrow it are preempted (KV freed, requeued) and rebuilt by replay; every text, token and
// log-probability is bitwise what the same sequences give with an unconstrained budget, and the
// allocated KV never exceeds the budget.
TEST_F(EngineTest, PreemptionKeepsEverySequenceBitwise) {
  for (int64_t chunk : {int64_t{0}, EngineOptions::kPrefillChunkAuto}) {
    SCOPED_TRACE("prefill chunk " + std::to_string(chunk));
    const std::vector<std::string> prompts = {"def fibonacci(n):", "import os\n",
                                              "class Stack:", "# sort a list\n", "x = [1, 2"};
    EngineOptions free_options{4, 0, 64};
    free_options.kv_block = 8;
    free_options.prefill_chunk = chunk;
    std::vector<Result> want;
    {
      Engine engine(*model_, *tokenizer_, loaded_->spec.eos_token_ids, free_options);
      std::vector<std::shared_ptr<Channel>> channels;
      for (const std::string& p : prompts) channels.push_back(engine.submit(request(p, 40)));
      for (auto& c : channels) want.push_back(drain(*c));
      EXPECT_EQ(engine.stats().preemptions.load(), 0);
    }
    EngineOptions tight = free_options;
    Engine probe(*model_, *tokenizer_, loaded_->spec.eos_token_ids, tight);
    tight.kv_budget = probe.kv_bytes(8) * 12;  // 96 positions: one sequence's 40 + prompt fit
    Engine engine(*model_, *tokenizer_, loaded_->spec.eos_token_ids, tight);
    std::vector<std::shared_ptr<Channel>> channels;
    for (const std::string& p : prompts) channels.push_back(engine.submit(request(p, 40)));
    for (size_t i = 0; i < channels.size(); ++i) {
      const Result r = drain(*channels[i]);
      EXPECT_EQ(r.tokens, want[i].tokens) << i;
      EXPECT_EQ(r.logprobs, want[i].logprobs) << i;  // bitwise: no tolerance
      EXPECT_EQ(r.text, want[i].text) << i;
      EXPECT_EQ(r.finish, want[i].finish) << i;
    }
    const EngineStats& s = engine.stats();
    for (int i = 0; i < 100 && s.kv_bytes.load() != 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // the last sequence retires
    std::cout << "budget " << tight.kv_budget << " bytes: " << s.preemptions << " preemptions, "
              << s.replayed_tokens << " tokens recomputed, peak " << s.kv_peak_bytes << " bytes"
              << std::endl;
    EXPECT_GT(s.preemptions.load(), 0);
    EXPECT_GT(s.replayed_tokens.load(), 0);
    EXPECT_LE(s.kv_peak_bytes.load(), tight.kv_budget);
    EXPECT_EQ(s.kv_bytes.load(), 0);  // all done: nothing held
  }
}

// The KV a sequence holds grows block by block with its length instead of being reserved for
// prompt + max_tokens up front: a sequence cut short by a stop string after a few dozen of its
// 900 allowed tokens peaks at the blocks of the positions it filled. With bf16 values the
// bytes per token are half the f32 ones.
TEST_F(EngineTest, KvMemoryGrowsInBlocksAndHalvesWithBf16) {
  const std::string prompt = "def fibonacci(n):";
  Result f32_full;
  for (DType dtype : {DType::F32, DType::BF16}) {
    EngineOptions options{1, 0, 8};
    options.kv_block = 16;
    options.kv_dtype = dtype;
    Engine engine(*model_, *tokenizer_, loaded_->spec.eos_token_ids, options);
    const int64_t per_token = model_->make_cache(1, 1).bytes_per_token();
    EXPECT_EQ(engine.kv_bytes_per_token(), dtype == DType::F32 ? per_token : per_token / 2);
    EXPECT_EQ(engine.kv_bytes(1), 16 * engine.kv_bytes_per_token());
    EXPECT_EQ(engine.kv_bytes(17), 32 * engine.kv_bytes_per_token());
    const Result full = drain(*engine.submit(request(prompt, 40)));
    ASSERT_GT(full.text.size(), 60u);
    if (dtype == DType::F32) {
      f32_full = full;
    } else {  // bf16 against f32: the log-probabilities while the greedy tokens agree
      size_t same = 0;
      double max_diff = 0.0;
      while (same < full.tokens.size() && same < f32_full.tokens.size() &&
             full.tokens[same] == f32_full.tokens[same]) {
        max_diff = std::max(max_diff, std::fabs(full.logprobs[same] - f32_full.logprobs[same]));
        ++same;
      }
      std::cout << "bf16 KV on tinycoder: " << same << " of " << full.tokens.size()
                << " greedy tokens as with f32, largest log-probability difference " << max_diff
                << std::endl;
      EXPECT_GE(same, 10u);
      EXPECT_LT(max_diff, 0.1);
    }
    SequenceRequest r = request(prompt, 900);
    r.stop = {full.text.substr(50, 8)};
    const Result cut = drain(*engine.submit(r));
    EXPECT_EQ(cut.finish, "stop");
    const auto filled = static_cast<int64_t>(r.prompt.size() + cut.tokens.size()) - 1;
    const int64_t peak = engine.stats().kv_peak_bytes.load();
    std::cout << dtype_name(dtype) << ": " << engine.kv_bytes_per_token() << " bytes per token; "
              << cut.tokens.size() << " tokens of 900 allowed: " << filled << " positions in "
              << engine.kv_bytes(filled) << " bytes; KV peak of both runs " << peak
              << " bytes (prompt + max_tokens up front: "
              << engine.kv_bytes_per_token() * static_cast<int64_t>(r.prompt.size() + 900) << ")"
              << std::endl;
    const auto first = static_cast<int64_t>(r.prompt.size() + full.tokens.size()) - 1;
    EXPECT_EQ(peak, std::max(engine.kv_bytes(filled), engine.kv_bytes(first)));
    EXPECT_LT(peak, engine.kv_bytes(static_cast<int64_t>(r.prompt.size()) + 900) / 4);
    for (int i = 0; i < 100 && engine.stats().kv_bytes.load() != 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // the sequence retires
    EXPECT_EQ(engine.stats().kv_bytes.load(), 0);
  }
}

// The prefix cache: a prompt sharing a block-aligned prefix with an earlier one reuses its KV
// (hits, tokens reused), other prompts miss, the least recently used entry goes when the size
// limit is reached. Replies against the replies without the cache: bitwise in both modes (a
// prompt row's products and attention do not depend on the rows computed with it, so reused KV
// is exactly what prefilling those positions computes: row by row chunked, through the GEMM's
// prompt passes one-shot).
TEST_F(EngineTest, PrefixCacheReusesBlockAlignedPrefixes) {
  std::string system = "# A helper module with small utilities for lists and strings.\n";
  system += "# Every function has a docstring and type hints.\nimport os\nimport sys\n";
  const std::vector<std::string> prompts = {system + "def reverse(s):", system + "def total(xs):",
                                            "class Stack:", system + "def reverse(s):"};
  const auto length = [&](const std::string& p) {
    return static_cast<int64_t>(tokenizer_->encode(p, true).size());
  };
  for (int64_t chunk : {int64_t{0}, EngineOptions::kPrefillChunkAuto}) {
    EngineOptions plain{1, 0, 8};
    plain.kv_block = 8;
    plain.prefill_chunk = chunk;
    std::vector<Result> want;
    {
      Engine engine(*model_, *tokenizer_, loaded_->spec.eos_token_ids, plain);
      for (const std::string& p : prompts) want.push_back(drain(*engine.submit(request(p, 12))));
    }
    const auto system_tokens = static_cast<int64_t>(tokenizer_->encode(system, true).size());
    ASSERT_GT(system_tokens, 16);
    EngineOptions cached = plain;
    cached.prefix_cache = int64_t{64} << 20;
    Engine engine(*model_, *tokenizer_, loaded_->spec.eos_token_ids, cached);
    const EngineStats& s = engine.stats();
    std::vector<int64_t> reused;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const int64_t before = s.prefix_tokens_reused.load();
      const Result r = drain(*engine.submit(request(prompts[i], 12)));
      reused.push_back(s.prefix_tokens_reused.load() - before);
      EXPECT_EQ(r.tokens, want[i].tokens) << i;
      ASSERT_EQ(r.logprobs.size(), want[i].logprobs.size());
      double max_diff = 0.0;
      for (size_t j = 0; j < r.logprobs.size(); ++j)
        max_diff = std::max(max_diff, std::fabs(r.logprobs[j] - want[i].logprobs[j]));
      std::cout << "prefill chunk " << chunk << ", prompt " << i
                << ": largest log-probability difference " << max_diff << std::endl;
      EXPECT_EQ(r.logprobs, want[i].logprobs) << i;  // bitwise, no tolerance
    }
    std::cout << "system prompt " << system_tokens << " tokens; reused " << reused[0] << " "
              << reused[1] << " " << reused[2] << " " << reused[3] << "; cache "
              << s.prefix_cache_bytes << " bytes" << std::endl;
    EXPECT_EQ(reused[0], 0);                                 // a miss: nothing cached yet
    EXPECT_EQ(reused[1], system_tokens / 8 * 8);             // the shared blocks
    EXPECT_EQ(reused[2], 0);                                 // nothing in common
    EXPECT_EQ(reused[3], (length(prompts[3]) - 1) / 8 * 8);  // all but the last token's block
    EXPECT_EQ(s.prefix_hits.load(), 2);
    EXPECT_EQ(s.prefix_misses.load(), 2);
    EXPECT_GT(s.prefix_cache_bytes.load(), 0);
    EXPECT_LE(s.prefix_cache_bytes.load(), cached.prefix_cache);
  }

  // A limit that holds one prompt's prefix: each new prompt evicts the previous one.
  EngineOptions small{1, 0, 8};
  small.kv_block = 8;
  small.prefix_cache = model_->make_cache(1, 1).bytes_per_token() * (length(prompts[0]) / 8 * 8);
  Engine tight(*model_, *tokenizer_, loaded_->spec.eos_token_ids, small);
  const std::string other = "import unittest\n\nclass TestHelpers(unittest.TestCase):\n";
  ASSERT_GE(length(other), 9);
  ASSERT_LT(length(other), length(prompts[0]));
  for (const std::string& p : {prompts[0], other, prompts[0]}) drain(*tight.submit(request(p, 4)));
  EXPECT_EQ(tight.stats().prefix_hits.load(), 0);  // prompts[0]'s entry was evicted
  EXPECT_LE(tight.stats().prefix_cache_bytes.load(), small.prefix_cache);
  drain(*tight.submit(request(prompts[0], 4)));
  EXPECT_EQ(tight.stats().prefix_hits.load(), 1);
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
