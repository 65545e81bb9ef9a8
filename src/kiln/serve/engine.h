// The serving engine: one worker thread owns the model and runs the active sequences of every
// request (at most `parallel` at a time, the rest queued). Each step is one batched pass
// (Model::step_rows: each weight read once for up to 16 rows; more rows take more passes) with a
// row per decoding sequence, each sequence with its own KV cache and sampler. Prompts go in one
// of two ways (EngineOptions::prefill_chunk):
// - one-shot (the default): the prompts admitted since the last step run together, in passes of
//   Model::prefill_rows (every product through the GEMM, attention per row), between decode
//   steps. Fast for long prompts and for many prompts at once; the other streams wait for it.
// - chunked (--prefill-chunk N or auto): a bounded chunk of the prompts being taken in shares
//   each step with the decode rows, so a new prompt does not stall the other streams; prompts
//   go through the row path, slower than the GEMM for long prompts.
// Decode rows compute exactly what feeding their sequence alone computes, whatever rows share
// the pass; a prompt goes through the same path whatever else runs. So at temperature 0, or with
// a seed, a request gives bitwise the same tokens and log-probabilities alone or among others,
// preempted or not (in a given mode). KV caches grow in blocks as sequences grow; when a block
// does not fit the KV budget the youngest sequence is preempted (its cache freed, itself
// requeued first) and later rebuilt exactly by the passes that built it: one-shot, its prompt
// through a prompt pass and its generated tokens replayed one by one through the decode path;
// chunked, its prompt and generated tokens fed again row by row. The optional prefix cache
// reuses the KV of earlier prompts' block-aligned prefixes, bitwise in both modes (a prompt
// row's results do not depend on the rows computed with it or on how the prompt is cut). Each
// sequence reports its text (stop strings cut, never emitted), tokens and log-probabilities
// through a Channel that the HTTP side reads; cancelling the channel (a client that went away)
// ends the sequence at its next step.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "kiln/core/dtype.h"
#include "kiln/layers/model.h"
#include "kiln/runtime/sampler.h"
#include "kiln/serve/json_schema.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::serve {

struct TokenLogprob {
  int32_t id = 0;
  std::string text;  // the token's own text (decode of the id alone)
  double logprob = 0.0;
};

// One generated token (or the end of the sequence).
struct Event {
  std::string text;  // new text to show (may be empty: held back as a possible stop string)
  std::optional<TokenLogprob> token;  // the token chosen at this step (absent on the last event)
  std::vector<TokenLogprob> top;      // its top alternatives, when asked for
  bool done = false;
  std::string finish_reason;      // on the last event: "stop" or "length"
  std::string error;              // on the last event when the sequence failed
  int64_t completion_tokens = 0;  // on the last event
};

// The events of one sequence, from the engine to the request's handler.
class Channel {
 public:
  void push(Event event);
  // The next event; waits up to `timeout_ms` (nullopt when none came).
  std::optional<Event> pop(int timeout_ms);
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Event> events_;
  std::atomic<bool> cancelled_{false};
};

struct SequenceRequest {
  std::vector<int32_t> prompt;
  int64_t max_tokens = 16;
  SamplingParams sampling;
  std::vector<std::string> stop;   // strings that end the text (not included in it)
  float presence_penalty = 0.0f;   // subtracted from the logit of every generated token seen
  float frequency_penalty = 0.0f;  // times how often it was generated
  int top_logprobs = -1;           // -1: no log-probabilities; k >= 0: the chosen and k best
  // The reply is one JSON object: only tokens that keep the text a prefix of one are drawn
  // (a token that breaks it is removed and the draw repeated), and the reply ends when the
  // object closes.
  bool json_object = false;
  // The reply is one JSON object matching this schema (as json_object, with the schema's
  // constraints); null: none.
  std::shared_ptr<const JsonSchema> json_schema;
};

struct EngineOptions {
  int64_t parallel = 4;    // sequences decoded at a time
  int64_t context = 0;     // tokens per sequence (prompt + completion); 0 = the model's limit
  int64_t max_queue = 64;  // sequences waiting beyond `parallel`; more are refused
  // Bytes of KV cache the active sequences may hold together. A sequence is admitted when the
  // blocks of its prompt fit; a decode step that needs a block beyond the budget preempts the
  // youngest sequence. 0: room for max(parallel, 16) sequences of the full context.
  int64_t kv_budget = 0;
  int64_t kv_block = 64;        // positions per KV block (the unit of growth and of the budget)
  DType kv_dtype = DType::F32;  // f32 or bf16 (half the memory; values rounded)
  int64_t prefix_cache = 0;     // bytes of KV the prefix cache may keep; 0: no prefix cache
  // How prompts go in. 0 (default): one-shot, each prompt alone in one GEMM pass between decode
  // steps. N > 0: chunked, up to N prompt tokens per step beside the decode rows (a prompt is
  // fed in chunks over several steps). kPrefillChunkAuto: chunked, filling the step's last pass
  // of Model::kMaxDecodeRows rows (and one more pass when under a quarter of a pass is left).
  static constexpr int64_t kPrefillChunkAuto = -1;
  int64_t prefill_chunk = 0;
  bool chunked() const { return prefill_chunk != 0; }
  // When a request finds the engine idle (nothing decoding), the engine waits up to this many
  // microseconds (or until `parallel` requests wait) before it starts, so that a burst of
  // requests arriving together is taken in by one prompt pass instead of the first alone and
  // the rest after it. 0: start at once. Requests arriving while sequences decode join at the
  // next step as before.
  int64_t admission_window_us = 0;
};

// Counters for /metrics.
struct EngineStats {
  std::atomic<int64_t> prompt_tokens{0}, generated_tokens{0}, sequences_done{0};
  std::atomic<int64_t> active{0}, queued{0};
  std::atomic<int64_t> kv_bytes{0};         // KV cache bytes allocated to active sequences
  std::atomic<int64_t> kv_peak_bytes{0};    // the most kv_bytes reached
  std::atomic<int64_t> preemptions{0};      // sequences preempted for KV memory
  std::atomic<int64_t> replayed_tokens{0};  // tokens recomputed to rebuild preempted sequences
  std::atomic<int64_t> prefix_hits{0}, prefix_misses{0};
  std::atomic<int64_t> prefix_tokens_reused{0};  // prompt tokens whose KV came from the cache
  std::atomic<int64_t> prefix_cache_bytes{0};    // KV bytes the prefix cache holds
  std::atomic<int64_t> steps{0};                 // engine steps run
  std::atomic<int64_t> step_rows{0};             // rows (decode and prompt tokens) they ran
  std::atomic<int64_t> step_microseconds{0};     // time spent in them
  std::atomic<int64_t> prompt_passes{0};         // one-shot prompt passes (Model::prefill_rows)
};

class QueueFull : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Engine {
 public:
  Engine(const Model& model, const Tokenizer& tokenizer, std::vector<int64_t> stop_ids,
         EngineOptions options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a sequence; its events arrive on the returned channel. Throws QueueFull when
  // parallel + max_queue sequences are already running or waiting, Error when the prompt is empty,
  // has ids outside the vocabulary or leaves no room in the context.
  std::shared_ptr<Channel> submit(SequenceRequest request);
  // The context length sequences get (prompt + completion).
  int64_t context() const { return context_; }
  // The KV cache bytes a sequence of `positions` positions holds (whole blocks), and the
  // budget for all.
  int64_t kv_bytes(int64_t positions) const {
    return blocks(positions) * options_.kv_block * kv_bytes_per_token_;
  }
  int64_t kv_budget() const { return kv_budget_; }
  int64_t kv_bytes_per_token() const { return kv_bytes_per_token_; }
  const EngineStats& stats() const { return stats_; }

 private:
  struct Slot;
  class PrefixCache;
  void run();
  int64_t blocks(int64_t positions) const {
    return (positions + options_.kv_block - 1) / options_.kv_block;
  }
  // One row of a step: a token fed to a sequence's cache (a decode token, or one of a prompt
  // chunk), and whether its logits are needed.
  struct Row {
    Slot* slot = nullptr;
    int32_t token = 0;
    bool prompt = false;  // part of the tokens to take in (Slot::feed)
    bool want = false;
  };
  // A request's first admission: its sampler, decoder and output constraint. False (after
  // its final event) when it asks for no tokens.
  bool begin(Slot& slot);
  // One-shot mode: the prompts of the sequences just admitted (admit()), all together in
  // passes of Model::prefill_rows of up to kPrefillPassRows rows (a row's results do not depend
  // on the rows that share its pass), each sequence's first token from its last prompt row;
  // a rebuilt sequence's generated tokens but the last then one by one through the decode path.
  void prefill(const std::vector<Slot*>& slots, Workspace& workspace);
  static constexpr int64_t kPrefillPassRows = 256;
  // Sets up a sequence just admitted: its cache (the reserved blocks, a prefix-cache hit copied
  // in) and the tokens to take in; at its first admission its sampler and decoder. False when
  // the sequence ended (max_tokens 0).
  bool admit(Slot& slot);
  // The prompt tokens a step takes in beside `decoding` decode rows (--prefill-chunk).
  int64_t prompt_budget(int64_t decoding) const;
  // Runs the rows of step_ (Model::step_rows, passes of up to kMaxDecodeRows rows) and
  // hands each sequence its logits.
  void run_step(Workspace& workspace);
  // A sequence whose tokens are all in: its prompt offered to the prefix cache, and its first
  // token chosen from `logits` (null when rebuilding: it has one already).
  void after_ingest(Slot& slot, const float* logits);
  // Runs `work`, failing `slot` with the message of what it throws.
  void guard(Slot& slot, const std::function<void()>& work);
  // The positions a queued sequence's cache needs to be (re)built.
  static int64_t positions_to_build(const Slot& slot);
  // The choice of the next token from `logits` [V] and its events; false when the sequence
  // ended.
  bool emit(Slot& slot, const float* logits);
  // Ends `slot` with an error event.
  void fail(Slot& slot, const std::string& message);
  // The text of token `id` alone (cached).
  const std::string& token_text(int32_t id);
  bool is_stop(int32_t id) const;

  const Model& model_;
  const Tokenizer& tokenizer_;
  std::vector<int64_t> stop_ids_;
  std::vector<std::optional<std::string>> token_texts_;  // [V], filled on use
  EngineOptions options_;
  int64_t context_;
  int64_t kv_bytes_per_token_;
  int64_t kv_budget_;
  int64_t kv_in_use_ = 0;  // bytes held by the active sequences (worker thread only)
  std::unique_ptr<PrefixCache> prefix_cache_;  // null without --prefix-cache
  EngineStats stats_;

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Slot>> queue_;
  bool stopping_ = false;
  int64_t in_flight_ = 0;  // sequences queued or active
  uint64_t arrivals_ = 0;  // sequences submitted so far
  std::vector<Row> step_;  // the rows of the current step (worker thread only)
  std::thread worker_;
};

// `bytes` as "1.5 MiB".
std::string mib(int64_t bytes);

// The longest suffix of `text` that is a proper prefix of one of `stops` (text to hold back).
size_t held_suffix(const std::string& text, const std::vector<std::string>& stops);

}  // namespace kiln::serve
