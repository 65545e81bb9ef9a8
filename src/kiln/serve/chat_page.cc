#include "kiln/serve/chat_page.h"

namespace kiln::serve {

const char* const kChatPage = R"html(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Kiln chat</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; display: flex; flex-direction: column;
         height: 100vh; background: #fafafa; color: #222; }
  header { padding: 8px 16px; background: #7a2e0e; color: #fff; display: flex; gap: 16px;
           align-items: center; }
  header .model { font-weight: bold; }
  header .stats { margin-left: auto; font-size: 0.9em; opacity: 0.9; }
  #log { flex: 1; overflow-y: auto; padding: 16px; }
  .msg { max-width: 80ch; margin: 8px 0; padding: 8px 12px; border-radius: 8px;
         white-space: pre-wrap; }
  .user { background: #e3ecfa; margin-left: auto; }
  .assistant { background: #fff; border: 1px solid #ddd; }
  .error { background: #fde2e2; border: 1px solid #e99; }
  form { display: flex; gap: 8px; padding: 12px 16px; border-top: 1px solid #ddd; background: #fff; }
  textarea { flex: 1; font: inherit; min-height: 3em; }
  input#key { width: 12em; }
</style>
</head>
<body>
<header><span>Kiln</span><span class="model" id="model">…</span>
  <span class="stats" id="stats"></span></header>
<div id="log"></div>
<form id="form">
  <textarea id="input" placeholder="Message (Enter sends, Shift+Enter: new line)"></textarea>
  <input id="key" type="password" placeholder="API key (if any)">
  <button id="send" type="submit">Send</button>
  <button id="stop" type="button" disabled>Stop</button>
</form>
<script>
const log = document.getElementById("log"), input = document.getElementById("input");
const sendButton = document.getElementById("send"), stopButton = document.getElementById("stop");
const stats = document.getElementById("stats"), keyInput = document.getElementById("key");
const params = new URLSearchParams(location.search);
keyInput.value = localStorage.getItem("kiln-key") || "";
const messages = [];
let controller = null, modelName = "";

function headers() {
  const h = { "Content-Type": "application/json" };
  if (keyInput.value) h["Authorization"] = "Bearer " + keyInput.value;
  return h;
}
function add(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
  return div;
}
async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const body = await r.json();
    modelName = body.data ? body.data[0].id : "";
    document.getElementById("model").textContent = modelName || (body.error ? body.error.message : "");
  } catch (e) { document.getElementById("model").textContent = String(e); }
}
async function send(text) {
  if (!text.trim() || controller) return;
  localStorage.setItem("kiln-key", keyInput.value);
  messages.push({ role: "user", content: text });
  add("user", text);
  const reply = add("assistant", "");
  controller = new AbortController();
  sendButton.disabled = true; stopButton.disabled = false;
  const started = performance.now();
  let tokens = 0, content = "";
  try {
    const body = { model: modelName, messages, stream: true };
    if (params.get("max_tokens")) body.max_tokens = Number(params.get("max_tokens"));
    if (params.get("temperature")) body.temperature = Number(params.get("temperature"));
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(),
      body: JSON.stringify(body), signal: controller.signal });
    if (!r.ok) {
      const e = await r.json();
      throw new Error(e.error ? e.error.message : r.statusText);
    }
    const reader = r.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const c of chunk.choices) {
          if (c.delta && c.delta.content) {
            content += c.delta.content;
            tokens++;
            reply.textContent = content;
          }
        }
        const seconds = (performance.now() - started) / 1000;
        stats.textContent = `${tokens} tokens, ${(tokens / seconds).toFixed(1)} tokens/s`;
      }
    }
    reply.dataset.done = "true";
  } catch (e) {
    if (e.name === "AbortError") {
      reply.dataset.done = "stopped";
    } else {
      reply.className = "msg error";
      reply.textContent = String(e.message || e);
      reply.dataset.done = "error";
    }
  }
  messages.push({ role: "assistant", content });
  controller = null;
  sendButton.disabled = false; stopButton.disabled = true;
  document.body.dataset.replies = String(Number(document.body.dataset.replies || 0) + 1);
}
document.getElementById("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = input.value;
  input.value = "";
  send(text);
});
input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); document.getElementById("form").requestSubmit(); }
});
stopButton.addEventListener("click", () => { if (controller) controller.abort(); });
keyInput.addEventListener("input", () => { localStorage.setItem("kiln-key", keyInput.value); loadModel(); });
loadModel().then(() => { if (params.get("prompt")) send(params.get("prompt")); });
</script>
</body>
</html>
)html";

}  // namespace kiln::serve
