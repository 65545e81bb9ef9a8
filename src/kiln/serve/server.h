// `kiln serve`: an OpenAI-compatible HTTP server over the Engine (cpp-httplib).
//   POST /v1/completions, POST /v1/chat/completions (JSON, or server-sent events with
//   "stream": true), GET /v1/models, GET /health, GET /metrics (Prometheus text),
//   POST /tokenize, POST /detokenize, and GET / (a chat page, serve/chat_page.h).
// Errors are {"error": {"message", "type", "code"}} with status 400 (bad request, context
// overflow, a chat template that raised), 401 (API key), 404 (unknown path or model),
// 503 (queue full).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "kiln/serve/engine.h"

namespace kiln::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;         // 0: any free port (see Server::port())
  std::string api_key;     // "" = no key required
  std::string model_name;  // the id /v1/models lists and responses carry
  // Connections served at once (cpp-httplib holds a thread per connection, idle keep-alive
  // ones included, for up to 2 s).
  int http_threads = 64;
};

// Renders a chat (a JSON array of messages) into the prompt text; throws Error (bad
// messages), or an exception whose what() is the template's message when it refused them.
using ChatRenderer = std::function<std::string(const std::string& messages_json)>;

class Server {
 public:
  // `chat` may be empty: /v1/chat/completions then answers 400 (the model has no chat
  // template).
  Server(Engine& engine, const Tokenizer& tokenizer, ChatRenderer chat, ServerOptions options);
  ~Server();
  // Binds the address (throws Error naming it when it cannot); port() is then known.
  void bind();
  // Serves until stop() (blocking).
  void listen();
  void stop();
  int port() const { return port_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace kiln::serve
