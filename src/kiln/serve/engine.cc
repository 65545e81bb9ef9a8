#include "kiln/serve/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <list>
#include <map>

#include "kiln/core/error.h"
#include "kiln/runtime/kv_cache.h"
#include "kiln/serve/json_prefix.h"

namespace kiln::serve {

void Channel::push(Event event) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    events_.push_back(std::move(event));
  }
  ready_.notify_one();
}

std::optional<Event> Channel::pop(int timeout_ms) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!ready_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                       [&] { return !events_.empty(); }))
    return std::nullopt;
  Event event = std::move(events_.front());
  events_.pop_front();
  return event;
}

std::string mib(int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return text;
}

size_t held_suffix(const std::string& text, const std::vector<std::string>& stops) {
  size_t held = 0;
  for (const std::string& stop : stops)
    for (size_t n = std::min(stop.size() - 1, text.size()); n > held; --n)
      if (text.compare(text.size() - n, n, stop, 0, n) == 0) {
        held = n;
        break;
      }
  return held;
}

struct Engine::Slot {
  SequenceRequest request;
  std::shared_ptr<Channel> channel;
  std::optional<KvCache> cache;
  std::optional<Sampler> sampler;
  std::optional<StreamDecoder> decoder;
  std::map<int32_t, int64_t> counts;  // generated token -> times
  std::string held;                   // decoded text not yet sent (a possible stop string)
  int64_t generated = 0;
  std::optional<JsonPrefix> json;          // when request.json_object
  std::optional<JsonSchemaPrefix> schema;  // when request.json_schema
  int32_t last = -1;                       // the token to feed next (-1: the prompt's pass is due)
  bool ended = false;
  // The generated tokens: all but the last are in the cache (replayed when rebuilding).
  std::vector<int32_t> output;
  uint64_t arrival = 0;  // submission order: the largest active one is the youngest
  int64_t reserved = 0;  // positions reserved at admission for the (re)build
  int64_t kv_held = 0;   // bytes of KV cache counted against the budget
  bool rebuild = false;  // preempted: the cache must be rebuilt before decoding on
  bool started = false;  // sampler, decoder and constraints made (at the first admission)
  // The tokens to put into the cache before decoding (the prompt; rebuilding, the prompt and
  // the generated tokens but the last) and how many are in: fed in chunks, a few per step.
  std::vector<int32_t> feed;
  size_t fed = 0;
  bool kept = false;  // the prompt's prefix offered to the prefix cache
  bool ingesting() const { return fed < feed.size(); }
};

// Block-aligned prompt prefixes and their KV, least recently used evicted beyond a size limit.
class Engine::PrefixCache {
 public:
  PrefixCache(const Model& model, DType dtype, int64_t block, int64_t limit)
      : model_(model), dtype_(dtype), block_(block), limit_(limit) {}

  // Copies into `cache` the KV of the longest cached block-aligned prefix of `prompt` that
  // leaves at least one prompt token to run; returns its length (0: none).
  int64_t reuse(const std::vector<int32_t>& prompt, KvCache& cache) {
    Entry* best = nullptr;
    int64_t best_length = 0;
    const int64_t most = (static_cast<int64_t>(prompt.size()) - 1) / block_ * block_;
    for (Entry& e : entries_) {
      const int64_t n = std::min(common(e.tokens, prompt), most) / block_ * block_;
      if (n > best_length) {
        best = &e;
        best_length = n;
      }
    }
    if (!best) return 0;
    best->used = ++clock_;
    cache.copy_prefix(best->kv, best_length);
    return best_length;
  }

  // Keeps the KV of the block-aligned prefix of `prompt` from `cache` (which holds the
  // prompt), unless an entry covers it already; entries it extends are dropped.
  void keep(const std::vector<int32_t>& prompt, const KvCache& cache) {
    const int64_t n = static_cast<int64_t>(prompt.size()) / block_ * block_;
    if (n == 0 || n * cache.bytes_per_token() > limit_) return;
    for (Entry& e : entries_)
      if (common(e.tokens, prompt) >= n) {
        e.used = ++clock_;
        return;
      }
    for (auto it = entries_.begin(); it != entries_.end();) {
      const auto length = static_cast<int64_t>(it->tokens.size());
      if (common(it->tokens, prompt) == length) {  // a shorter prefix of this one
        bytes_ -= it->kv.bytes();
        it = entries_.erase(it);
      } else {
        ++it;
      }
    }
    while (!entries_.empty() && bytes_ + n * cache.bytes_per_token() > limit_) {
      auto oldest =
          std::min_element(entries_.begin(), entries_.end(),
                           [](const Entry& a, const Entry& b) { return a.used < b.used; });
      bytes_ -= oldest->kv.bytes();
      entries_.erase(oldest);
    }
    Entry e{std::vector<int32_t>(prompt.begin(), prompt.begin() + n),
            model_.make_cache(1, n, dtype_), ++clock_};
    e.kv.copy_prefix(cache, n);
    bytes_ += e.kv.bytes();
    entries_.push_back(std::move(e));
  }

  int64_t bytes() const { return bytes_; }

 private:
  struct Entry {
    std::vector<int32_t> tokens;
    KvCache kv;
    uint64_t used = 0;
  };
  static int64_t common(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
    const size_t n = std::min(a.size(), b.size());
    return std::mismatch(a.begin(), a.begin() + static_cast<std::ptrdiff_t>(n), b.begin()).first -
           a.begin();
  }

  const Model& model_;
  DType dtype_;
  int64_t block_, limit_;
  int64_t bytes_ = 0;
  uint64_t clock_ = 0;
  std::list<Entry> entries_;
};

Engine::Engine(const Model& model, const Tokenizer& tokenizer, std::vector<int64_t> stop_ids,
               EngineOptions options)
    : model_(model),
      tokenizer_(tokenizer),
      stop_ids_(std::move(stop_ids)),
      options_(options),
      context_(options.context > 0 ? std::min(options.context, model.spec().max_position_embeddings)
                                   : model.spec().max_position_embeddings) {
  check(options_.parallel > 0, "serve: --parallel must be positive");
  check(context_ > 1, "serve: the context must hold at least 2 tokens");
  check(options_.kv_block > 0, "serve: the KV block must hold at least one position");
  check(options_.prefill_chunk >= 0 || options_.prefill_chunk == EngineOptions::kPrefillChunkAuto,
        "serve: the prefill chunk must be 0 (one-shot), a positive number of tokens or auto");
  kv_bytes_per_token_ = model_.make_cache(1, 1, options_.kv_dtype).bytes_per_token();
  kv_budget_ = options_.kv_budget > 0
                   ? options_.kv_budget
                   : std::max<int64_t>(options_.parallel, 16) * kv_bytes(context_);
  if (options_.prefix_cache > 0)
    prefix_cache_ = std::make_unique<PrefixCache>(model_, options_.kv_dtype, options_.kv_block,
                                                  options_.prefix_cache);
  worker_ = std::thread([this] { run(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  worker_.join();
}

std::shared_ptr<Channel> Engine::submit(SequenceRequest request) {
  const int64_t vocab = model_.spec().vocab_size;
  check(!request.prompt.empty(), "the prompt has no tokens");
  for (int32_t id : request.prompt)
    check(id >= 0 && id < vocab, "token id " + std::to_string(id) +
                                     " is outside the vocabulary of " + std::to_string(vocab));
  const int64_t length = static_cast<int64_t>(request.prompt.size());
  check(length < context_, "the prompt has " + std::to_string(length) +
                               " tokens; the context holds " + std::to_string(context_) +
                               " (prompt and completion)");
  request.max_tokens = std::min(request.max_tokens, context_ - length);
  Sampler check_params(request.sampling);  // rejects unusable sampling settings now
  const int64_t need = kv_bytes(length + request.max_tokens);
  check(need <= kv_budget_, "the sequence needs " + mib(need) +
                                " of KV cache; the server's budget is " + mib(kv_budget_));
  auto slot = std::make_unique<Slot>();
  slot->request = std::move(request);
  slot->channel = std::make_shared<Channel>();
  std::shared_ptr<Channel> channel = slot->channel;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (in_flight_ >= options_.parallel + options_.max_queue)
      throw QueueFull("the server is busy: " + std::to_string(in_flight_) +
                      " sequences are running or queued");
    ++in_flight_;
    slot->arrival = arrivals_++;
    queue_.push_back(std::move(slot));
    stats_.queued = static_cast<int64_t>(queue_.size());
  }
  wake_.notify_one();
  return channel;
}

void Engine::fail(Slot& slot, const std::string& message) {
  Event last;
  last.done = true;
  last.error = message;
  slot.channel->push(std::move(last));
  slot.ended = true;
}

void Engine::guard(Slot& slot, const std::function<void()>& work) {
  try {
    work();
  } catch (const std::exception& e) {
    fail(slot, e.what());
  }
}

int64_t Engine::positions_to_build(const Slot& slot) {
  const auto prompt = static_cast<int64_t>(slot.request.prompt.size());
  return prompt + std::max<int64_t>(static_cast<int64_t>(slot.output.size()) - 1, 0);
}

void Engine::run() {
  Workspace workspace;
  std::vector<std::unique_ptr<Slot>> active;
  // Drops the ended sequences (and their KV).
  auto retire = [&] {
    for (auto it = active.begin(); it != active.end();) {
      if (!(*it)->ended) {
        ++it;
        continue;
      }
      ++stats_.sequences_done;
      kv_in_use_ -= (*it)->kv_held;
      it = active.erase(it);
      std::lock_guard<std::mutex> lock(mutex_);
      --in_flight_;
    }
    stats_.kv_bytes = kv_in_use_;
    stats_.active = static_cast<int64_t>(active.size());
  };
  std::vector<Slot*> order;  // the active sequences, oldest first (reused every step)
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty() || !active.empty(); });
      if (stopping_) break;
      // Idle: give a burst a moment to arrive whole (EngineOptions::admission_window_us).
      if (active.empty() && options_.admission_window_us > 0)
        wake_.wait_for(lock, std::chrono::microseconds(options_.admission_window_us), [&] {
          return stopping_ || static_cast<int64_t>(queue_.size()) >= options_.parallel;
        });
      if (stopping_) break;
      // First come (preempted sequences first), first served, while a slot and the KV budget
      // allow the blocks of the prompt. A preempted sequence (its prompt and generated tokens
      // to rebuild) also waits for a block of headroom per active sequence and itself, so that
      // it is not preempted again at the next block it or another sequence needs. Alone, a
      // sequence always fits (submit checks its longest cache against the budget).
      while (static_cast<int64_t>(active.size()) < options_.parallel && !queue_.empty()) {
        Slot& next = *queue_.front();
        const int64_t positions = positions_to_build(next);
        const int64_t headroom =
            next.rebuild ? (static_cast<int64_t>(active.size()) + 1) * kv_bytes(1) : 0;
        if (!active.empty() && kv_in_use_ + kv_bytes(positions) + headroom > kv_budget_) break;
        next.reserved = blocks(positions) * options_.kv_block;
        next.kv_held = kv_bytes(positions);
        kv_in_use_ += next.kv_held;
        active.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      stats_.queued = static_cast<int64_t>(queue_.size());
    }
    stats_.active = static_cast<int64_t>(active.size());
    stats_.kv_bytes = kv_in_use_;
    std::vector<Slot*> admitted;  // one-shot mode: the prompts to prefill before the step
    for (auto& slot : active) {
      if (slot->channel->cancelled()) {
        slot->ended = true;
      } else if (!slot->cache) {
        guard(*slot, [&] { slot->ended = !admit(*slot); });
        if (!slot->ended && !options_.chunked()) admitted.push_back(slot.get());
      }
    }
    if (!admitted.empty()) prefill(admitted, workspace);
    retire();
    // The block each decoding sequence needs for this step's position, oldest first; while one
    // does not fit the budget, the youngest sequence is preempted (requeued first, in age
    // order). Sequences still taking in their prompt hold its blocks already.
    order.clear();
    for (auto& slot : active) order.push_back(slot.get());
    std::sort(order.begin(), order.end(),
              [](const Slot* a, const Slot* b) { return a->arrival < b->arrival; });
    std::vector<Slot*> preempted;  // youngest first
    for (Slot* slot : order) {
      if (!slot->cache || slot->ingesting()) continue;  // preempted in this step, or ingesting
      KvCache& cache = *slot->cache;
      if (cache.length() + 1 <= cache.capacity()) continue;
      const int64_t grow = kv_bytes(cache.length() + 1) - slot->kv_held;
      while (kv_in_use_ + grow > kv_budget_) {
        Slot* victim = nullptr;
        for (auto it = order.rbegin(); it != order.rend() && !victim; ++it)
          if ((*it)->cache) victim = *it;
        kv_in_use_ -= victim->kv_held;
        victim->kv_held = 0;
        victim->cache.reset();
        victim->rebuild = true;
        preempted.push_back(victim);
        ++stats_.preemptions;
        if (victim == slot) break;
      }
      if (!slot->cache) continue;
      cache.reserve(blocks(cache.length() + 1) * options_.kv_block);
      slot->kv_held += grow;
      kv_in_use_ += grow;
    }
    if (!preempted.empty()) {
      std::lock_guard<std::mutex> lock(mutex_);
      for (Slot* victim : preempted) {
        auto it = std::find_if(active.begin(), active.end(),
                               [&](const std::unique_ptr<Slot>& s) { return s.get() == victim; });
        queue_.push_front(std::move(*it));
        active.erase(it);
      }
      stats_.queued = static_cast<int64_t>(queue_.size());
      order.erase(
          std::remove_if(order.begin(), order.end(), [](const Slot* s) { return !s->cache; }),
          order.end());
    }
    stats_.kv_bytes = kv_in_use_;
    stats_.kv_peak_bytes = std::max(stats_.kv_peak_bytes.load(), kv_in_use_);
    // This step's rows: one per decoding sequence (its last token), then (chunked mode) chunks
    // of the prompts being taken in, oldest first, up to the prompt budget.
    step_.clear();
    int64_t decoding = 0;
    for (Slot* slot : order)
      if (!slot->ingesting()) {
        step_.push_back({slot, slot->last, false, true});
        ++decoding;
      }
    int64_t budget = prompt_budget(decoding);
    for (Slot* slot : order)
      for (size_t i = slot->fed; budget > 0 && i < slot->feed.size(); --budget, ++i)
        step_.push_back(
            {slot, slot->feed[i], true, i + 1 == slot->feed.size() && slot->output.empty()});
    run_step(workspace);
    retire();
  }
  for (auto& slot : active) slot->channel->cancel();
}

int64_t Engine::prompt_budget(int64_t decoding) const {
  if (!options_.chunked()) return 0;  // one-shot: prompts were prefilled before the step
  if (options_.prefill_chunk > 0) return options_.prefill_chunk;
  // Auto: fill the room left in the step's last pass of kMaxDecodeRows rows (a whole pass when
  // nothing decodes); when that is under a quarter pass, one more whole pass, so that passes
  // stay full and prompts keep moving while many sequences decode.
  const int64_t pass = Model::kMaxDecodeRows;
  const int64_t room = decoding == 0 ? pass : (pass - decoding % pass) % pass;
  return room >= pass / 4 ? room : room + pass;
}

void Engine::run_step(Workspace& workspace) {
  const int64_t vocab = model_.spec().vocab_size;
  const auto rows = static_cast<int64_t>(step_.size());
  if (rows == 0) return;
  ++stats_.steps;
  stats_.step_rows += rows;
  const auto t0 = std::chrono::steady_clock::now();
  int32_t tokens[Model::kMaxDecodeRows];
  KvCache* caches[Model::kMaxDecodeRows];
  bool want[Model::kMaxDecodeRows];
  Row* members[Model::kMaxDecodeRows];
  // Passes of up to kMaxDecodeRows rows, in row order (a sequence's chunk may span two).
  for (int64_t first = 0; first < rows;) {
    int64_t n = 0;
    for (; first < rows && n < Model::kMaxDecodeRows; ++first) {
      Row& row = step_[static_cast<size_t>(first)];
      if (row.slot->ended) continue;  // failed in an earlier pass of this step
      members[n] = &row;
      tokens[n] = row.token;
      caches[n] = &*row.slot->cache;
      want[n++] = row.want;
    }
    if (n == 0) break;
    const float* logits = nullptr;
    try {
      logits = model_.step_rows(tokens, n, caches, want, workspace);
    } catch (const std::exception& e) {
      for (int64_t j = 0; j < n; ++j)
        if (!members[j]->slot->ended) fail(*members[j]->slot, e.what());
      continue;
    }
    for (int64_t j = 0, k = 0; j < n; ++j) {
      Slot& slot = *members[j]->slot;
      const float* row_logits = want[j] ? logits + k++ * vocab : nullptr;
      if (members[j]->prompt) {
        ++slot.fed;
        if (!slot.ingesting()) guard(slot, [&] { after_ingest(slot, row_logits); });
      } else {
        guard(slot, [&] { slot.ended = !emit(slot, row_logits); });
      }
    }
  }
  stats_.step_microseconds +=
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0)
          .count();
}

namespace {
// log-softmax of `logits` at `id`, and the best `k` alternatives (most likely first).
void log_probabilities(const float* logits, int64_t vocab, int32_t id, int k,
                       const Tokenizer& tokenizer, Event& event) {
  double max = logits[0];
  for (int64_t v = 1; v < vocab; ++v) max = std::max(max, static_cast<double>(logits[v]));
  double sum = 0.0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(logits[v]) - max);
  const double log_sum = max + std::log(sum);
  auto entry = [&](int32_t token) {
    return TokenLogprob{token, tokenizer.decode({token}, false), logits[token] - log_sum};
  };
  event.token = entry(id);
  if (k <= 0) return;
  thread_local std::vector<int32_t> order;  // reused: no allocation per token
  order.resize(static_cast<size_t>(vocab));
  for (int64_t v = 0; v < vocab; ++v) order[v] = static_cast<int32_t>(v);
  const size_t n = std::min<size_t>(static_cast<size_t>(k), order.size());
  std::partial_sort(order.begin(), order.begin() + n, order.end(), [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  });
  for (size_t j = 0; j < n; ++j) event.top.push_back(entry(order[j]));
}
}  // namespace

bool Engine::emit(Slot& slot, const float* logits) {
  const SequenceRequest& request = slot.request;
  const int64_t vocab = model_.spec().vocab_size;
  auto finish = [&](const std::string& reason, Event event) {
    if (reason == "length" && slot.decoder) slot.held += slot.decoder->finish();
    event.text += reason == "length" ? slot.held : std::string();
    event.done = true;
    event.finish_reason = reason;
    event.completion_tokens = slot.generated;
    slot.channel->push(std::move(event));
    return false;
  };
  // Penalties on the generated tokens, then the sampler's choice.
  thread_local std::vector<float> adjusted;
  const float* choose_from = logits;
  if (!slot.counts.empty() && (request.presence_penalty != 0 || request.frequency_penalty != 0)) {
    adjusted.assign(logits, logits + vocab);
    for (const auto& [token, count] : slot.counts)
      adjusted[token] -=
          request.presence_penalty + request.frequency_penalty * static_cast<float>(count);
    choose_from = adjusted.data();
  }
  int32_t next = 0;
  if (!slot.json && !slot.schema) {
    next = slot.sampler->sample(choose_from, vocab);
  } else {
    // Draw; while the token would break the JSON object (or leave the schema), remove it and
    // draw again (sampling from the distribution restricted to the tokens that keep it valid).
    // The end of the sequence is allowed only once the object is complete.
    if (choose_from != adjusted.data()) adjusted.assign(logits, logits + vocab);
    for (int64_t tries = 0;; ++tries) {
      check(tries < vocab, "no token continues the JSON object");
      next = slot.sampler->sample(adjusted.data(), vocab);
      const bool fits =
          is_stop(next) ? (slot.json ? slot.json->complete() : slot.schema->complete())
                        : (slot.json ? slot.json->feed(token_text(next))
                                     : slot.schema->feed(token_text(next)));  // unchanged if not
      if (fits) break;
      adjusted[next] = -INFINITY;
    }
  }
  Event event;
  if (request.top_logprobs >= 0)
    log_probabilities(logits, vocab, next, request.top_logprobs, tokenizer_, event);
  if (is_stop(next)) {
    // The end-of-sequence token ends the text; what was held back is text after all.
    slot.held += slot.decoder->finish();
    event.text = slot.held;
    event.token.reset();
    event.top.clear();
    return finish("stop", std::move(event));
  }
  ++slot.generated;
  ++stats_.generated_tokens;
  ++slot.counts[next];
  slot.last = next;
  slot.output.push_back(next);
  slot.held += slot.decoder->push(next);
  // A stop string ends the text before it.
  size_t cut = std::string::npos;
  for (const std::string& stop : request.stop)
    if (!stop.empty()) cut = std::min(cut, slot.held.find(stop));
  if (cut != std::string::npos) {
    event.text = slot.held.substr(0, cut);
    slot.held.clear();
    return finish("stop", std::move(event));
  }
  if ((slot.json && slot.json->complete()) || (slot.schema && slot.schema->complete())) {
    // The object closed: the reply is complete.
    slot.held += slot.decoder->finish();
    event.text = slot.held;
    slot.held.clear();
    return finish("stop", std::move(event));
  }
  if (slot.generated >= request.max_tokens) return finish("length", std::move(event));
  const size_t keep = held_suffix(slot.held, request.stop);
  event.text = slot.held.substr(0, slot.held.size() - keep);
  slot.held.erase(0, slot.held.size() - keep);
  slot.channel->push(std::move(event));
  return true;
}

const std::string& Engine::token_text(int32_t id) {
  if (token_texts_.empty()) token_texts_.resize(static_cast<size_t>(model_.spec().vocab_size));
  std::optional<std::string>& text = token_texts_.at(static_cast<size_t>(id));
  if (!text) text = tokenizer_.decode({id}, false);
  return *text;
}

bool Engine::is_stop(int32_t id) const {
  return std::find(stop_ids_.begin(), stop_ids_.end(), id) != stop_ids_.end();
}

bool Engine::begin(Slot& slot) {
  const SequenceRequest& request = slot.request;
  if (request.max_tokens <= 0) {
    Event last;
    last.done = true;
    last.finish_reason = "length";
    slot.channel->push(std::move(last));
    return false;
  }
  slot.sampler.emplace(request.sampling);
  slot.decoder.emplace(tokenizer_);
  if (request.json_schema)
    slot.schema.emplace(request.json_schema);
  else if (request.json_object)
    slot.json.emplace();
  slot.started = true;
  stats_.prompt_tokens += static_cast<int64_t>(request.prompt.size());
  return true;
}

void Engine::prefill(const std::vector<Slot*>& slots, Workspace& workspace) {
  // The prompt rows of all the sequences, in passes of up to kPrefillPassRows rows (a prompt
  // may span passes; a sequence's rows stay in position order).
  struct PromptRow {
    Slot* slot;
    int32_t token;
    bool want;
  };
  std::vector<PromptRow> rows;
  for (Slot* slot : slots) {
    const size_t prompt = slot->request.prompt.size();
    for (size_t i = slot->fed; i < prompt; ++i)
      rows.push_back({slot, slot->feed[i], i + 1 == prompt && slot->output.empty()});
  }
  const int64_t vocab = model_.spec().vocab_size;
  std::vector<int32_t> tokens;
  std::vector<KvCache*> caches;
  std::unique_ptr<bool[]> want(new bool[kPrefillPassRows]);
  std::vector<PromptRow*> members;
  for (size_t first = 0; first < rows.size();) {
    tokens.clear();
    caches.clear();
    members.clear();
    for (; first < rows.size() && static_cast<int64_t>(members.size()) < kPrefillPassRows;
         ++first) {
      PromptRow& row = rows[first];
      if (row.slot->ended) continue;  // failed in an earlier pass
      want[members.size()] = row.want;
      members.push_back(&row);
      tokens.push_back(row.token);
      caches.push_back(&*row.slot->cache);
    }
    if (members.empty()) break;
    const auto n = static_cast<int64_t>(members.size());
    const float* logits = nullptr;
    ++stats_.prompt_passes;
    try {
      logits = model_.prefill_rows(tokens.data(), n, caches.data(), want.get(), workspace);
    } catch (const std::exception& e) {
      for (PromptRow* row : members)
        if (!row->slot->ended) fail(*row->slot, e.what());
      continue;
    }
    for (int64_t j = 0, k = 0; j < n; ++j) {
      Slot& slot = *members[j]->slot;
      ++slot.fed;
      if (want[j]) {
        const float* row_logits = logits + k++ * vocab;
        guard(slot, [&] { after_ingest(slot, row_logits); });
      }
    }
  }
  // A rebuilt sequence: its generated tokens but the last one by one through the single-row
  // decode path (bitwise what the shared decode steps computed); the next step feeds the last.
  for (Slot* slot : slots) {
    if (slot->ended) continue;
    guard(*slot, [&] {
      KvCache* cache = &*slot->cache;
      for (; slot->ingesting(); ++slot->fed)
        model_.decode_rows(&slot->feed[slot->fed], 1, &cache, workspace);
      if (!slot->output.empty()) after_ingest(*slot, nullptr);
    });
  }
}

bool Engine::admit(Slot& slot) {
  const SequenceRequest& request = slot.request;
  if (!slot.started && !begin(slot)) return false;
  slot.cache.emplace(model_.make_cache(1, slot.reserved, options_.kv_dtype));
  // The prompt, and when rebuilding a preempted sequence its generated tokens but the last
  // (the next decode step feeds that one): fed through the same per-row passes as before, so
  // the rebuilt cache is bitwise the one that was freed.
  slot.feed = request.prompt;
  if (!slot.output.empty())
    slot.feed.insert(slot.feed.end(), slot.output.begin(), slot.output.end() - 1);
  slot.fed = 0;
  slot.kept = false;
  if (prefix_cache_) {
    const int64_t reused = prefix_cache_->reuse(request.prompt, *slot.cache);
    slot.fed = static_cast<size_t>(reused);
    if (!slot.rebuild) {
      ++(reused > 0 ? stats_.prefix_hits : stats_.prefix_misses);
      stats_.prefix_tokens_reused += reused;
    }
  }
  if (slot.rebuild) stats_.replayed_tokens += static_cast<int64_t>(slot.feed.size() - slot.fed);
  slot.rebuild = false;
  return true;
}

void Engine::after_ingest(Slot& slot, const float* logits) {
  if (prefix_cache_ && !slot.kept) {
    prefix_cache_->keep(slot.request.prompt, *slot.cache);
    stats_.prefix_cache_bytes = prefix_cache_->bytes();
    slot.kept = true;
  }
  if (logits) slot.ended = !emit(slot, logits);  // the first token
}

}  // namespace kiln::serve
