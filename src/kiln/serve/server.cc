#include "kiln/serve/server.h"

#include <httplib.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <map>
#include <mutex>
#include <random>

#include <sys/socket.h>

#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/serve/chat_page.h"

namespace kiln::serve {
namespace {

using Clock = std::chrono::steady_clock;

// A request error: HTTP status and OpenAI's error object.
struct HttpError {
  int status;
  std::string message;
  std::string type = "invalid_request_error";
  std::string code = {};
};

std::string dump(const Json& json) {
  return json.dump(-1, ' ', false, Json::error_handler_t::replace);
}

void send_error(httplib::Response& res, const HttpError& e) {
  res.status = e.status;
  Json code = e.code.empty() ? Json(nullptr) : Json(e.code);
  res.set_content(dump({{"error", {{"message", e.message}, {"type", e.type}, {"code", code}}}}),
                  "application/json");
}

[[noreturn]] void bad(const std::string& message, const std::string& code = "") {
  throw HttpError{400, message, "invalid_request_error", code};
}

// Typed reads of optional request fields; a wrong type or range is a 400 naming the field.
class Fields {
 public:
  explicit Fields(const Json& body) : body_(body) {}
  bool has(const char* key) const { return body_.contains(key) && !body_.at(key).is_null(); }
  const Json& at(const char* key) const { return body_.at(key); }
  double number(const char* key, double fallback, double lo, double hi) const {
    if (!has(key)) return fallback;
    const Json& v = body_.at(key);
    if (!v.is_number()) bad(std::string("'") + key + "' must be a number, got " + dump(v));
    const double x = v.get<double>();
    if (!(x >= lo && x <= hi))
      bad(std::string("'") + key + "' must be in [" + fmt(lo) + ", " + fmt(hi) + "], got " +
          dump(v));
    return x;
  }
  int64_t integer(const char* key, int64_t fallback, int64_t lo, int64_t hi) const {
    if (!has(key)) return fallback;
    const Json& v = body_.at(key);
    if (!v.is_number_integer())
      bad(std::string("'") + key + "' must be an integer, got " + dump(v));
    const int64_t x = v.get<int64_t>();
    if (x < lo || x > hi)
      bad(std::string("'") + key + "' must be in [" + std::to_string(lo) + ", " +
          std::to_string(hi) + "], got " + dump(v));
    return x;
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const Json& v = body_.at(key);
    if (!v.is_boolean()) bad(std::string("'") + key + "' must be true or false, got " + dump(v));
    return v.get<bool>();
  }

 private:
  static std::string fmt(double x) {
    std::string s = std::to_string(x);
    s.erase(s.find_last_not_of('0') + 1);
    if (!s.empty() && s.back() == '.') s.pop_back();
    return s;
  }
  const Json& body_;
};

// What a completion request asks for, beyond its prompt.
struct Generation {
  SequenceRequest sequence;  // prompt filled by the caller
  int64_t n = 1;
  bool stream = false;
  bool include_usage = false;
  bool has_seed = false;
  bool max_tokens_given = false;
};

Generation parse_generation(const Json& body, bool chat) {
  const Fields f(body);
  Generation g;
  SequenceRequest& s = g.sequence;
  const char* max_key =
      chat && f.has("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  g.max_tokens_given = f.has(max_key);
  s.max_tokens = f.integer(max_key, chat ? INT64_MAX / 2 : 16, 0, INT64_MAX / 2);
  s.sampling.temperature = static_cast<float>(f.number("temperature", 1.0, 0.0, 2.0));
  s.sampling.top_p = static_cast<float>(f.number("top_p", 1.0, 0.0, 1.0));
  if (s.sampling.top_p <= 0.0f) bad("'top_p' must be in (0, 1], got 0");
  s.sampling.top_k = f.integer("top_k", 0, 0, INT64_MAX / 2);
  g.has_seed = f.has("seed");
  if (g.has_seed) {
    if (!f.at("seed").is_number_integer())
      bad("'seed' must be an integer, got " + dump(f.at("seed")));
    s.sampling.seed = static_cast<uint64_t>(f.at("seed").get<int64_t>());
  } else {
    static std::mutex mutex;
    static std::mt19937_64 seeds(std::random_device{}());
    std::lock_guard<std::mutex> lock(mutex);
    s.sampling.seed = seeds();
  }
  s.presence_penalty = static_cast<float>(f.number("presence_penalty", 0.0, -2.0, 2.0));
  s.frequency_penalty = static_cast<float>(f.number("frequency_penalty", 0.0, -2.0, 2.0));
  g.n = f.integer("n", 1, 1, 16);
  g.stream = f.boolean("stream", false);
  if (f.has("stream_options")) {
    const Json& o = f.at("stream_options");
    if (!o.is_object()) bad("'stream_options' must be an object");
    g.include_usage = Fields(o).boolean("include_usage", false);
  }
  if (f.has("stop")) {
    const Json& stop = f.at("stop");
    if (stop.is_string()) {
      s.stop.push_back(stop.get<std::string>());
    } else if (stop.is_array()) {
      for (const Json& item : stop) {
        if (!item.is_string()) bad("'stop' must be a string or an array of strings");
        s.stop.push_back(item.get<std::string>());
      }
    } else {
      bad("'stop' must be a string or an array of strings, got " + dump(stop));
    }
    std::erase_if(s.stop, [](const std::string& x) { return x.empty(); });
  }
  if (chat) {
    if (f.boolean("logprobs", false))
      s.top_logprobs = static_cast<int>(f.integer("top_logprobs", 0, 0, 20));
    else if (f.has("top_logprobs"))
      bad("'top_logprobs' needs 'logprobs': true");
  } else if (f.has("logprobs")) {
    s.top_logprobs = static_cast<int>(f.integer("logprobs", 0, 0, 5));
  }
  if (f.has("response_format")) {
    const Json& format = f.at("response_format");
    const std::string type = format.is_object() ? format.value("type", std::string()) : "";
    if (type == "json_object") {
      s.json_object = true;
    } else if (type == "json_schema") {
      const Json& spec = format.contains("json_schema") ? format.at("json_schema") : Json();
      if (!spec.is_object() || !spec.contains("schema"))
        bad("'response_format' of type json_schema needs 'json_schema': {\"name\", \"schema\"}");
      try {
        s.json_schema = JsonSchema::parse(spec.at("schema"));
      } catch (const Error& e) {
        bad(e.what(), "unsupported_json_schema");
      }
    } else if (type != "text") {
      bad("'response_format' " + dump(format) +
              " is not supported by this server (text, json_object and json_schema are)",
          "unsupported_response_format");
    }
  }
  return g;
}

std::vector<int> utf8_bytes(const std::string& s) {
  std::vector<int> bytes;
  for (unsigned char c : s) bytes.push_back(c);
  return bytes;
}

// One choice's result, gathered from its events.
struct Choice {
  std::string text;
  std::string finish_reason;
  int64_t completion_tokens = 0;
  std::vector<Event> token_events;  // events that carry a token (for logprobs)
};

Json chat_logprobs(const std::vector<Event>& events) {
  Json content = Json::array();
  for (const Event& e : events) {
    Json top = Json::array();
    for (const TokenLogprob& t : e.top)
      top.push_back({{"token", t.text}, {"logprob", t.logprob}, {"bytes", utf8_bytes(t.text)}});
    content.push_back({{"token", e.token->text},
                       {"logprob", e.token->logprob},
                       {"bytes", utf8_bytes(e.token->text)},
                       {"top_logprobs", top}});
  }
  return {{"content", content}};
}

Json completion_logprobs(const std::vector<Event>& events, size_t offset) {
  Json tokens = Json::array(), logprobs = Json::array(), tops = Json::array(),
       offsets = Json::array();
  for (const Event& e : events) {
    tokens.push_back(e.token->text);
    logprobs.push_back(e.token->logprob);
    Json top = Json::object();
    for (const TokenLogprob& t : e.top) top[t.text] = t.logprob;
    tops.push_back(top);
    offsets.push_back(offset);
    offset += e.token->text.size();
  }
  return {{"tokens", tokens},
          {"token_logprobs", logprobs},
          {"top_logprobs", tops},
          {"text_offset", offsets}};
}

}  // namespace

struct Server::Impl {
  Engine& engine;
  const Tokenizer& tokenizer;
  ChatRenderer chat;
  ServerOptions options;
  httplib::Server http;
  std::atomic<int> listen_socket{-1};
  std::atomic<uint64_t> next_id{1};
  std::mutex metrics_mutex;
  std::map<std::string, int64_t> requests;  // "endpoint status" -> count
  double request_seconds = 0;
  int64_t request_count = 0;

  Impl(Engine& e, const Tokenizer& t, ChatRenderer c, ServerOptions o)
      : engine(e), tokenizer(t), chat(std::move(c)), options(std::move(o)) {}

  void count(const std::string& endpoint, int status, double seconds) {
    std::lock_guard<std::mutex> lock(metrics_mutex);
    ++requests[endpoint + "\t" + std::to_string(status)];
    request_seconds += seconds;
    ++request_count;
  }

  // Runs `handler`, turning HttpError, Error and parse failures into OpenAI error objects.
  void guarded(const std::string& endpoint, const httplib::Request& req, httplib::Response& res,
               const std::function<void(const Json&)>& handler) {
    const auto start = Clock::now();
    try {
      Json body;
      try {
        body = Json::parse(req.body);
      } catch (const std::exception& e) {
        throw HttpError{400, std::string("the body is not valid JSON: ") + e.what()};
      }
      if (!body.is_object()) throw HttpError{400, "the body must be a JSON object"};
      handler(body);
    } catch (const HttpError& e) {
      send_error(res, e);
    } catch (const QueueFull& e) {
      send_error(res, {503, e.what(), "server_error", "queue_full"});
    } catch (const std::exception& e) {
      send_error(res, {400, e.what()});
    }
    count(endpoint, res.status, std::chrono::duration<double>(Clock::now() - start).count());
  }

  std::vector<int32_t> completion_prompt(const Json& body) {
    if (!body.contains("prompt")) bad("'prompt' is required");
    const Json& prompt = body.at("prompt");
    if (prompt.is_string()) return tokenizer.encode(prompt.get<std::string>(), true);
    if (prompt.is_array() && prompt.size() == 1 && prompt[0].is_string())
      return tokenizer.encode(prompt[0].get<std::string>(), true);
    if (prompt.is_array() && !prompt.empty()) {
      std::vector<int32_t> ids;
      for (const Json& id : prompt) {
        if (!id.is_number_integer()) bad("'prompt' must be a string, [string] or token ids");
        ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
      }
      return ids;
    }
    bad("'prompt' must be a string, [string] or token ids, got " + dump(prompt));
  }

  std::vector<int32_t> chat_prompt(const Json& body) {
    if (!chat)
      bad("this model has no chat template: start the server with --chat-template FILE, or use "
          "/v1/completions",
          "no_chat_template");
    if (!body.contains("messages") || !body.at("messages").is_array() ||
        body.at("messages").empty())
      bad("'messages' must be a non-empty array of messages");
    for (const Json& m : body.at("messages")) {
      if (!m.is_object() || !m.contains("role") || !m.at("role").is_string())
        bad("each message must be an object with a string 'role', got " + dump(m));
      if (m.contains("content") && !m.at("content").is_null() && !m.at("content").is_string() &&
          !m.at("content").is_array())
        bad("a message's 'content' must be a string or an array of parts, got " +
            dump(m.at("content")));
    }
    std::string text;
    try {
      text = chat(dump(body.at("messages")));
    } catch (const std::exception& e) {
      bad(std::string("the chat template refused the messages: ") + e.what(), "template_error");
    }
    return tokenizer.encode(text, false);
  }

  std::vector<std::shared_ptr<Channel>> start(const std::vector<int32_t>& prompt, Generation& g) {
    g.sequence.prompt = prompt;
    const int64_t room = engine.context() - static_cast<int64_t>(prompt.size());
    if (room <= 0)
      throw HttpError{400,
                      "the prompt has " + std::to_string(prompt.size()) +
                          " tokens; the context holds " + std::to_string(engine.context()),
                      "invalid_request_error", "context_length_exceeded"};
    if (g.max_tokens_given && g.sequence.max_tokens > room)
      throw HttpError{400,
                      "the prompt (" + std::to_string(prompt.size()) + " tokens) and max_tokens (" +
                          std::to_string(g.sequence.max_tokens) + ") exceed the context of " +
                          std::to_string(engine.context()) + " tokens",
                      "invalid_request_error", "context_length_exceeded"};
    const int64_t positions =
        static_cast<int64_t>(prompt.size()) + std::min(g.sequence.max_tokens, room);
    const int64_t need = g.n * engine.kv_bytes(positions);
    if (need > engine.kv_budget())
      throw HttpError{400,
                      std::to_string(g.n) + " choices of " + std::to_string(positions) +
                          " positions need " + mib(need) + " of KV cache; the server's budget is " +
                          mib(engine.kv_budget()) + " (lower n or max_tokens)",
                      "invalid_request_error", "kv_budget_exceeded"};
    std::vector<std::shared_ptr<Channel>> channels;
    try {
      for (int64_t i = 0; i < g.n; ++i) {
        SequenceRequest s = g.sequence;
        s.sampling.seed += static_cast<uint64_t>(i);
        channels.push_back(engine.submit(std::move(s)));
      }
    } catch (...) {
      for (auto& c : channels) c->cancel();
      throw;
    }
    return channels;
  }

  Json usage(int64_t prompt_tokens, int64_t completion_tokens) const {
    return {{"prompt_tokens", prompt_tokens},
            {"completion_tokens", completion_tokens},
            {"total_tokens", prompt_tokens + completion_tokens}};
  }

  // Waits for every event of every channel (a non-streamed response).
  std::vector<Choice> collect(const std::vector<std::shared_ptr<Channel>>& channels) {
    std::vector<Choice> choices(channels.size());
    for (size_t i = 0; i < channels.size(); ++i) {
      while (true) {
        std::optional<Event> e = channels[i]->pop(1000);
        if (!e) continue;
        if (!e->error.empty()) {
          for (auto& c : channels) c->cancel();
          throw HttpError{500, e->error, "server_error"};
        }
        choices[i].text += e->text;
        if (e->token) choices[i].token_events.push_back(*e);
        if (e->done) {
          choices[i].finish_reason = e->finish_reason;
          choices[i].completion_tokens = e->completion_tokens;
          break;
        }
      }
    }
    return choices;
  }

  void respond(const Json& body, httplib::Response& res, bool chat_api) {
    Generation g = parse_generation(body, chat_api);
    const std::vector<int32_t> prompt = chat_api ? chat_prompt(body) : completion_prompt(body);
    const std::vector<std::shared_ptr<Channel>> channels = start(prompt, g);
    const std::string id =
        std::string(chat_api ? "chatcmpl-" : "cmpl-") + std::to_string(next_id++);
    const int64_t created = static_cast<int64_t>(std::time(nullptr));
    const std::string object = chat_api ? "chat.completion" : "text_completion";
    const bool logprobs = g.sequence.top_logprobs >= 0;
    const int64_t prompt_tokens = static_cast<int64_t>(prompt.size());

    if (!g.stream) {
      const std::vector<Choice> choices = collect(channels);
      Json list = Json::array();
      int64_t completion_tokens = 0;
      for (size_t i = 0; i < choices.size(); ++i) {
        const Choice& c = choices[i];
        completion_tokens += c.completion_tokens;
        Json choice = {{"index", i}, {"finish_reason", c.finish_reason}};
        if (chat_api) {
          choice["message"] = {{"role", "assistant"}, {"content", c.text}};
          choice["logprobs"] = logprobs ? chat_logprobs(c.token_events) : Json(nullptr);
        } else {
          choice["text"] = c.text;
          choice["logprobs"] = logprobs ? completion_logprobs(c.token_events, 0) : Json(nullptr);
        }
        list.push_back(choice);
      }
      res.set_content(dump({{"id", id},
                            {"object", object},
                            {"created", created},
                            {"model", options.model_name},
                            {"choices", list},
                            {"usage", usage(prompt_tokens, completion_tokens)}}),
                      "application/json");
      return;
    }

    // Server-sent events: one chunk per event of any choice, then the usage chunk when asked
    // for, then [DONE]. Every chunk carries the same id.
    const std::string chunk_object = chat_api ? "chat.completion.chunk" : "text_completion";
    auto chunk = [=, this](Json choices) {
      return "data: " +
             dump({{"id", id},
                   {"object", chunk_object},
                   {"created", created},
                   {"model", options.model_name},
                   {"choices", std::move(choices)}}) +
             "\n\n";
    };
    const bool include_usage = g.include_usage;
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [=, this](size_t, httplib::DataSink& sink) {
          auto send = [&](const std::string& data) {
            if (!sink.write(data.data(), data.size())) {
              for (auto& c : channels) c->cancel();  // the client went away
              return false;
            }
            return true;
          };
          if (chat_api)
            for (size_t i = 0; i < channels.size(); ++i)
              if (!send(chunk(Json::array({{{"index", i},
                                            {"delta", {{"role", "assistant"}, {"content", ""}}},
                                            {"logprobs", nullptr},
                                            {"finish_reason", nullptr}}}))))
                return false;
          std::vector<bool> done(channels.size(), false);
          size_t finished = 0;
          int64_t completion_tokens = 0;
          std::vector<size_t> offsets(channels.size(), 0);
          while (finished < channels.size()) {
            bool idle = true;
            for (size_t i = 0; i < channels.size(); ++i) {
              if (done[i]) continue;
              std::optional<Event> e = channels[i]->pop(idle ? 20 : 0);
              if (!e) continue;
              idle = false;
              if (!e->error.empty()) {
                send("data: " +
                     dump({{"error", {{"message", e->error}, {"type", "server_error"}}}}) + "\n\n");
                for (auto& c : channels) c->cancel();
                sink.done();
                return false;
              }
              Json choice = {{"index", i}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
              if (logprobs && e->token) {
                const std::vector<Event> one = {*e};
                choice["logprobs"] =
                    chat_api ? chat_logprobs(one) : completion_logprobs(one, offsets[i]);
                offsets[i] += e->token->text.size();
              }
              if (chat_api)
                choice["delta"] = e->text.empty() ? Json::object() : Json{{"content", e->text}};
              else
                choice["text"] = e->text;
              if (e->done) {
                done[i] = true;
                ++finished;
                completion_tokens += e->completion_tokens;
                choice["finish_reason"] = e->finish_reason;
              }
              if (!e->text.empty() || e->done || (logprobs && e->token))
                if (!send(chunk(Json::array({choice})))) return false;
            }
          }
          if (include_usage) {
            const std::string data = "data: " +
                                     dump({{"id", id},
                                           {"object", chunk_object},
                                           {"created", created},
                                           {"model", options.model_name},
                                           {"choices", Json::array()},
                                           {"usage", usage(prompt_tokens, completion_tokens)}}) +
                                     "\n\n";
            if (!send(data)) return false;
          }
          send("data: [DONE]\n\n");
          sink.done();
          return true;
        },
        [channels](bool) {
          for (auto& c : channels) c->cancel();  // a no-op when they finished
        });
  }

  std::string metrics() {
    const EngineStats& s = engine.stats();
    std::string out;
    auto line = [&](const std::string& name, const std::string& type, const std::string& help,
                    const std::string& value) {
      out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " +
             value + "\n";
    };
    line("kiln_prompt_tokens_total", "counter", "Prompt tokens processed.",
         std::to_string(s.prompt_tokens.load()));
    line("kiln_generated_tokens_total", "counter", "Tokens generated.",
         std::to_string(s.generated_tokens.load()));
    line("kiln_sequences_done_total", "counter", "Sequences finished.",
         std::to_string(s.sequences_done.load()));
    line("kiln_sequences_active", "gauge", "Sequences taking in their prompt or decoding.",
         std::to_string(s.active.load()));
    line("kiln_sequences_queued", "gauge", "Sequences waiting for a slot.",
         std::to_string(s.queued.load()));
    line("kiln_kv_cache_bytes", "gauge", "KV cache bytes allocated to active sequences.",
         std::to_string(s.kv_bytes.load()));
    line("kiln_kv_cache_capacity_bytes", "gauge", "KV cache budget of the active sequences.",
         std::to_string(engine.kv_budget()));
    line("kiln_kv_cache_peak_bytes", "gauge", "Most KV cache bytes allocated at once.",
         std::to_string(s.kv_peak_bytes.load()));
    line("kiln_preemptions_total", "counter",
         "Sequences preempted (KV freed, requeued) because a KV block did not fit the budget.",
         std::to_string(s.preemptions.load()));
    line("kiln_replayed_tokens_total", "counter",
         "Tokens recomputed to rebuild the KV cache of preempted sequences.",
         std::to_string(s.replayed_tokens.load()));
    line("kiln_prefix_cache_hits_total", "counter",
         "Prompts that reused the KV of a cached prefix.", std::to_string(s.prefix_hits.load()));
    line("kiln_prefix_cache_misses_total", "counter",
         "Prompts that found no cached prefix (with --prefix-cache).",
         std::to_string(s.prefix_misses.load()));
    line("kiln_prefix_cache_tokens_reused_total", "counter",
         "Prompt tokens whose KV came from the prefix cache.",
         std::to_string(s.prefix_tokens_reused.load()));
    line("kiln_prefix_cache_bytes", "gauge", "KV cache bytes the prefix cache holds.",
         std::to_string(s.prefix_cache_bytes.load()));
    line("kiln_engine_steps_total", "counter",
         "Engine steps (batched passes over decode rows and prompt chunks).",
         std::to_string(s.steps.load()));
    line("kiln_engine_step_rows_total", "counter",
         "Rows the steps ran: one per decoding sequence, one per prompt token taken in.",
         std::to_string(s.step_rows.load()));
    line("kiln_engine_step_seconds_total", "counter", "Time spent running steps.",
         std::to_string(static_cast<double>(s.step_microseconds.load()) * 1e-6));
    line("kiln_engine_prompt_passes_total", "counter",
         "One-shot prompt passes (the prompts admitted together, through the GEMM).",
         std::to_string(s.prompt_passes.load()));
    std::lock_guard<std::mutex> lock(metrics_mutex);
    out +=
        "# HELP kiln_requests_total HTTP requests by endpoint and status.\n"
        "# TYPE kiln_requests_total counter\n";
    for (const auto& [key, n] : requests) {
      const size_t tab = key.find('\t');
      out += "kiln_requests_total{endpoint=\"" + key.substr(0, tab) + "\",status=\"" +
             key.substr(tab + 1) + "\"} " + std::to_string(n) + "\n";
    }
    out +=
        "# HELP kiln_request_seconds Time to answer a request (to its last byte for JSON, to "
        "its start for streams).\n# TYPE kiln_request_seconds summary\n";
    out += "kiln_request_seconds_sum " + std::to_string(request_seconds) + "\n";
    out += "kiln_request_seconds_count " + std::to_string(request_count) + "\n";
    return out;
  }

  void routes() {
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (options.api_key.empty() || req.path == "/health" || req.path == "/")
        return httplib::Server::HandlerResponse::Unhandled;
      if (req.get_header_value("Authorization") == "Bearer " + options.api_key)
        return httplib::Server::HandlerResponse::Unhandled;
      send_error(res, {401, "invalid or missing API key (Authorization: Bearer KEY)",
                       "authentication_error", "invalid_api_key"});
      count(req.path, 401, 0.0);
      return httplib::Server::HandlerResponse::Handled;
    });
    http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (res.status == 404 && res.body.empty())
        send_error(res, {404, "no route for " + req.method + " " + req.path, "not_found_error",
                         "not_found"});
    });
    http.Get("/", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(kChatPage, "text/html; charset=utf-8");
    });
    http.Get("/health", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("{\"status\":\"ok\"}", "application/json");
    });
    http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(dump({{"object", "list"},
                            {"data", Json::array({{{"id", options.model_name},
                                                   {"object", "model"},
                                                   {"created", 0},
                                                   {"owned_by", "kiln"}}})}}),
                      "application/json");
    });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics(), "text/plain; version=0.0.4");
    });
    http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      guarded("/v1/completions", req, res, [&](const Json& body) { respond(body, res, false); });
    });
    http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      guarded("/v1/chat/completions", req, res,
              [&](const Json& body) { respond(body, res, true); });
    });
    http.Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) {
      guarded("/tokenize", req, res, [&](const Json& body) {
        if (!body.contains("content") || !body.at("content").is_string())
          bad("'content' must be a string");
        const bool special = Fields(body).boolean("add_special", false);
        res.set_content(
            dump({{"tokens", tokenizer.encode(body.at("content").get<std::string>(), special)}}),
            "application/json");
      });
    });
    http.Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) {
      guarded("/detokenize", req, res, [&](const Json& body) {
        if (!body.contains("tokens") || !body.at("tokens").is_array())
          bad("'tokens' must be an array of token ids");
        std::vector<int32_t> ids;
        for (const Json& id : body.at("tokens")) {
          if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
              id.get<int64_t>() >= tokenizer.vocab_size())
            bad("token id " + dump(id) + " is not in the vocabulary of " +
                std::to_string(tokenizer.vocab_size()));
          ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
        }
        res.set_content(dump({{"content", tokenizer.decode(ids, false)}}), "application/json");
      });
    });
  }
};

Server::Server(Engine& engine, const Tokenizer& tokenizer, ChatRenderer chat, ServerOptions options)
    : impl_(std::make_unique<Impl>(engine, tokenizer, std::move(chat), std::move(options))) {
  const int threads = impl_->options.http_threads;
  impl_->http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  impl_->http.set_payload_max_length(16 << 20);
  impl_->http.set_keep_alive_timeout(2);
  // Remember the listening socket (httplib's default options, then its descriptor): bind()
  // raises its backlog, which the packaged cpp-httplib fixes at 5 (more simultaneous connects
  // than that wait a SYN retransmission, a second).
  impl_->http.set_socket_options([impl = impl_.get()](socket_t sock) {
    httplib::default_socket_options(sock);
    impl->listen_socket = sock;
  });
  impl_->http.set_read_timeout(30, 0);
  impl_->http.set_write_timeout(30, 0);
  impl_->routes();
}

Server::~Server() = default;

void Server::bind() {
  const ServerOptions& o = impl_->options;
  if (o.port == 0) {
    port_ = impl_->http.bind_to_any_port(o.host);
    check(port_ > 0, "serve: cannot listen on " + o.host);
  } else {
    check(impl_->http.bind_to_port(o.host, o.port),
          "serve: cannot listen on " + o.host + ":" + std::to_string(o.port));
    port_ = o.port;
  }
  if (impl_->listen_socket >= 0) ::listen(impl_->listen_socket, 1024);
}

void Server::listen() {
  impl_->http.listen_after_bind();
}

void Server::stop() {
  impl_->http.stop();
}

}  // namespace kiln::serve
