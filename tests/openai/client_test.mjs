// Drives a running `kiln serve` with the real OpenAI Node client. Usage:
//   node client_test.mjs BASE_URL API_KEY
// The server serves tinycoder with a chat template, --parallel 4 and --api-key API_KEY.
// Prints one line per check with its measurements and exits 1 when any check fails.
import OpenAI from "openai";
import net from "node:net";

const [base, key] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0 });
let failures = 0;
function check(name, ok, detail = "") {
  console.log(`${ok ? "ok  " : "FAIL"} ${name}${detail ? ": " + detail : ""}`);
  if (!ok) failures++;
}
async function expectError(name, promise, status, code) {
  try {
    await promise;
    check(name, false, "no error");
  } catch (e) {
    const ok = e.status === status && (!code || e.code === code) && typeof e.message === "string";
    check(name, ok, `status ${e.status}, code ${e.code}, message ${JSON.stringify(e.error?.message)}`);
  }
}
const chatMessages = [{ role: "user", content: "def add(a, b):" }];

// Models.
const models = await client.models.list();
check("models.list", models.data.length === 1 && models.data[0].id === "tinycoder", JSON.stringify(models.data));

// Completions, greedy, JSON and streamed alike.
const prompt = "def fibonacci(n):";
const greedy = await client.completions.create({ model: "tinycoder", prompt, max_tokens: 24, temperature: 0 });
check("completions greedy", greedy.choices[0].finish_reason === "length" && greedy.usage.completion_tokens === 24 &&
  greedy.usage.total_tokens === greedy.usage.prompt_tokens + 24 && greedy.object === "text_completion",
  JSON.stringify(greedy.choices[0].text));
let streamed = "", ids = new Set(), usage = null, finish = null;
for await (const chunk of await client.completions.create({ model: "tinycoder", prompt, max_tokens: 24, temperature: 0,
  stream: true, stream_options: { include_usage: true } })) {
  ids.add(chunk.id);
  if (chunk.usage) usage = chunk.usage;
  for (const c of chunk.choices) { streamed += c.text; if (c.finish_reason) finish = c.finish_reason; }
}
check("completions stream = JSON", streamed === greedy.choices[0].text && ids.size === 1 && finish === "length" &&
  usage && usage.completion_tokens === 24, `ids ${ids.size}, usage ${JSON.stringify(usage)}`);
let noUsage = null;
for await (const chunk of await client.completions.create({ model: "tinycoder", prompt, max_tokens: 4, temperature: 0, stream: true }))
  if (chunk.usage) noUsage = chunk.usage;
check("stream without include_usage has no usage", noUsage === null);

// Chat, greedy, JSON and streamed.
const chat = await client.chat.completions.create({ model: "tinycoder", messages: chatMessages, max_tokens: 16, temperature: 0 });
const message = chat.choices[0].message;
check("chat greedy", message.role === "assistant" && typeof message.content === "string" && chat.object === "chat.completion" &&
  ["stop", "length"].includes(chat.choices[0].finish_reason), JSON.stringify(message.content));
let chatStreamed = "", roles = 0, chatUsage = null, chatIds = new Set();
for await (const chunk of await client.chat.completions.create({ model: "tinycoder", messages: chatMessages, max_tokens: 16,
  temperature: 0, stream: true, stream_options: { include_usage: true } })) {
  chatIds.add(chunk.id);
  if (chunk.usage) chatUsage = chunk.usage;
  for (const c of chunk.choices) { if (c.delta.role) roles++; if (c.delta.content) chatStreamed += c.delta.content; }
}
check("chat stream = JSON", chatStreamed === message.content && roles === 1 && chatIds.size === 1 &&
  chatUsage && chatUsage.completion_tokens === chat.usage.completion_tokens, `usage ${JSON.stringify(chatUsage)}`);

// Stop strings never appear in the output.
const full = greedy.choices[0].text;
const stopWord = full.trim().split(/\s+/)[1];
const stopped = await client.completions.create({ model: "tinycoder", prompt, max_tokens: 24, temperature: 0, stop: [stopWord, "zzz"] });
check("stop", stopped.choices[0].finish_reason === "stop" && !stopped.choices[0].text.includes(stopWord) &&
  full.startsWith(stopped.choices[0].text) && full.includes(stopped.choices[0].text + stopWord),
  `stop ${JSON.stringify(stopWord)} -> ${JSON.stringify(stopped.choices[0].text)}`);

// n and seed: reproducible per seed, one usage for all choices.
const sample = (seed) => client.completions.create({ model: "tinycoder", prompt, max_tokens: 12, temperature: 1, n: 3, seed });
const [s1, s2, s3] = [await sample(7), await sample(7), await sample(8)];
const texts = (r) => r.choices.map((c) => c.text);
check("n = 3", s1.choices.length === 3 && s1.choices.every((c, i) => c.index === i) &&
  s1.usage.completion_tokens === s1.choices.length * 12, JSON.stringify(s1.usage));
check("seed reproduces", JSON.stringify(texts(s1)) === JSON.stringify(texts(s2)));
check("other seed differs", JSON.stringify(texts(s1)) !== JSON.stringify(texts(s3)));

// Log-probabilities.
const lp = await client.chat.completions.create({ model: "tinycoder", messages: chatMessages, max_tokens: 6, temperature: 0,
  logprobs: true, top_logprobs: 3 });
const content = lp.choices[0].logprobs.content;
check("chat logprobs", content.length === lp.usage.completion_tokens && content.every((t) => t.top_logprobs.length === 3 &&
  t.logprob <= 0 && t.top_logprobs[0].logprob >= t.logprob - 1e-9 && t.top_logprobs[0].token === t.token),
  `first ${JSON.stringify(content[0])}`);
const clp = await client.completions.create({ model: "tinycoder", prompt, max_tokens: 5, temperature: 0, logprobs: 2 });
check("completion logprobs", clp.choices[0].logprobs.tokens.join("") === clp.choices[0].text &&
  clp.choices[0].logprobs.token_logprobs.length === 5);

// Errors in OpenAI's shape with the right status.
await expectError("bad api key", new OpenAI({ baseURL: `${base}/v1`, apiKey: "wrong", maxRetries: 0 }).models.list(), 401, "invalid_api_key");
await expectError("temperature out of range", client.completions.create({ model: "tinycoder", prompt, temperature: 5 }), 400);
await expectError("context overflow", client.completions.create({ model: "tinycoder", prompt, max_tokens: 100000 }), 400, "context_length_exceeded");
await expectError("empty messages", client.chat.completions.create({ model: "tinycoder", messages: [] }), 400);
await expectError("response_format refused", client.chat.completions.create({ model: "tinycoder", messages: chatMessages,
  response_format: { type: "yaml" } }), 400, "unsupported_response_format");
try {
  await client.chat.completions.create({ model: "tinycoder", messages: chatMessages, response_format: { type: "json_schema",
    json_schema: { name: "x", schema: { type: "object", properties: { a: { type: "string", pattern: "x+" } } } } } });
  check("json_schema keyword refused", false, "no error");
} catch (e) {
  check("json_schema keyword refused", e.status === 400 && e.code === "unsupported_json_schema" && /'pattern'/.test(e.message),
    `status ${e.status}, code ${e.code}, message ${JSON.stringify(e.error?.message)}`);
}

// JSON schema mode: the reply matches the schema (complete when it stopped by itself).
const schema = { type: "object", properties: { name: { type: "string" }, count: { type: "integer" },
  ok: { type: "boolean" }, kind: { enum: ["list", "map"] } }, required: ["count", "ok", "kind"] };
let schemaOk = 0;
for (const seed of [1, 2, 3]) {
  const r = await client.chat.completions.create({ model: "tinycoder", messages: [{ role: "user", content: "config = " }],
    response_format: { type: "json_schema", json_schema: { name: "config", schema, strict: true } }, max_tokens: 80,
    temperature: 0.7, seed });
  const text = r.choices[0].message.content;
  if (r.choices[0].finish_reason === "stop") {
    try {
      const v = JSON.parse(text);
      schemaOk += Number.isInteger(v.count) && typeof v.ok === "boolean" && ["list", "map"].includes(v.kind) &&
        Object.keys(v).every((k) => k in schema.properties) ? 1 : 0;
    } catch (e) { console.log("not JSON:", JSON.stringify(text)); }
  } else {
    schemaOk += text.startsWith("{") ? 1 : 0;  // cut by max_tokens: a prefix of an object
  }
}
check("json_schema mode", schemaOk === 3, `${schemaOk} of 3 replies valid`);

// JSON mode: the reply is one JSON object (complete when it stopped by itself).
let jsonOk = 0;
for (const seed of [1, 2, 3]) {
  const r = await client.chat.completions.create({ model: "tinycoder", messages: [{ role: "user", content: "config = " }],
    response_format: { type: "json_object" }, max_tokens: 80, temperature: 0.7, seed });
  const text = r.choices[0].message.content;
  if (r.choices[0].finish_reason === "stop") {
    try { const v = JSON.parse(text); jsonOk += v !== null && typeof v === "object" && !Array.isArray(v) ? 1 : 0; }
    catch (e) { console.log("not JSON:", JSON.stringify(text)); }
  } else {
    jsonOk += text.startsWith("{") ? 1 : 0;  // cut by max_tokens: a prefix of an object
  }
}
check("json_object mode", jsonOk === 3, `${jsonOk} of 3 replies valid`);
const notFound = await fetch(`${base}/v1/nothing`, { headers: { Authorization: `Bearer ${key}` } });
const notFoundBody = await notFound.json();
check("unknown path", notFound.status === 404 && notFoundBody.error.type === "not_found_error", JSON.stringify(notFoundBody));

// Bad input through plain HTTP: the right error, and the server keeps serving.
const raw = async (body, contentType = "application/json") => {
  const r = await fetch(`${base}/v1/chat/completions`, { method: "POST", body,
    headers: { Authorization: `Bearer ${key}`, "Content-Type": contentType } });
  return { status: r.status, body: await r.json() };
};
for (const [name, body] of [
  ["malformed JSON", "{\"messages\": [}"],
  ["invalid UTF-8", Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d])],
  ["not an object", "[1, 2]"],
  ["messages of the wrong type", JSON.stringify({ messages: "hi" })],
  ["a message without a role", JSON.stringify({ messages: [{ content: "hi" }] })],
  ["max_tokens of the wrong type", JSON.stringify({ messages: chatMessages, max_tokens: "8" })],
  ["n too large", JSON.stringify({ messages: chatMessages, n: 99 })],
]) {
  const r = await raw(body);
  check(`bad input: ${name}`, r.status === 400 && r.body.error && typeof r.body.error.message === "string",
    `${r.status} ${JSON.stringify(r.body.error?.message)}`);
}
const health = await fetch(`${base}/health`);
check("still serving after bad input", health.status === 200);

// Half-open and slow clients hold their own connections, not the server: with 8 of them open
// (partial headers, never finished) a normal request is answered at once.
const { hostname, port } = new URL(base);
const halfOpen = await Promise.all(Array.from({ length: 8 }, () => new Promise((resolve) => {
  const socket = net.connect(Number(port), hostname, () => {
    socket.write("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\":");
    resolve(socket);
  });
  socket.on("error", () => {});
})));
const t0 = performance.now();
const during = await client.completions.create({ model: "tinycoder", prompt, max_tokens: 4, temperature: 0 });
check("served beside half-open clients", during.choices[0].text.length > 0 && performance.now() - t0 < 5000,
  `${(performance.now() - t0).toFixed(0)} ms`);
for (const s of halfOpen) s.destroy();

// A client that goes away mid-stream cancels its sequence: far fewer than its 900 tokens are
// generated (this reply never ends by itself).
const metric = async (name) => {
  const text = await (await fetch(`${base}/metrics`, { headers: { Authorization: `Bearer ${key}` } })).text();
  return Number(new RegExp(`${name} (\\d+)`).exec(text)[1]);
};
const generatedBefore = await metric("kiln_generated_tokens_total");
const abort = new AbortController();
try {
  const s = await client.chat.completions.create({ model: "tinycoder", messages: chatMessages, max_tokens: 900,
    temperature: 0, stream: true }, { signal: abort.signal });
  for await (const _ of s) { abort.abort(); }
} catch (e) { /* aborted */ }
// (Until nothing runs, waits or holds KV: a request cancelled while it waits in the queue, or in
// the admission window of an idle server, is dropped at the engine's next turn.)
let active = -1, queued = -1, held = -1;
for (let i = 0; i < 200 && (active !== 0 || queued !== 0 || held !== 0); i++) {
  queued = await metric("kiln_sequences_queued");
  active = await metric("kiln_sequences_active");
  held = await metric("kiln_kv_cache_bytes");
  if (active !== 0 || queued !== 0 || held !== 0) await new Promise((r) => setTimeout(r, 100));
}
const generated = (await metric("kiln_generated_tokens_total")) - generatedBefore;
check("disconnect cancels the sequence", active === 0 && generated < 900, `${generated} tokens generated of 900`);
// KV metrics: nothing allocated once no sequence runs; the budget and the peak reported.
const kvNow = await metric("kiln_kv_cache_bytes"), kvPeak = await metric("kiln_kv_cache_peak_bytes");
const kvBudget = await metric("kiln_kv_cache_capacity_bytes");
check("KV metrics", kvNow === 0 && kvPeak > 0 && kvPeak <= kvBudget && (await metric("kiln_preemptions_total")) === 0,
  `now ${kvNow}, peak ${kvPeak}, budget ${kvBudget}`);

// Load: 32 concurrent streaming clients x 8 requests; each response complete and equal to the
// same request run alone (temperature 0).
const prompts = ["def fibonacci(n):", "import os\n", "class Stack:", "# sort a list\n"];
const alone = {};
for (const p of prompts)
  alone[p] = (await client.completions.create({ model: "tinycoder", prompt: p, max_tokens: 12, temperature: 0 })).choices[0].text;
let completed = 0, mismatched = 0;
const started = Date.now();
await Promise.all(Array.from({ length: 32 }, async (_, c) => {
  for (let r = 0; r < 8; r++) {
    const p = prompts[(c + r) % prompts.length];
    let text = "", done = false;
    for await (const chunk of await client.completions.create({ model: "tinycoder", prompt: p, max_tokens: 12, temperature: 0, stream: true }))
      for (const ch of chunk.choices) { text += ch.text; if (ch.finish_reason) done = true; }
    completed += done ? 1 : 0;
    mismatched += text === alone[p] ? 0 : 1;
  }
}));
check("load 32 x 8 streams", completed === 256 && mismatched === 0,
  `${completed} complete, ${mismatched} differ from the request alone, ${((Date.now() - started) / 1000).toFixed(1)} s`);

console.log(failures ? `${failures} checks failed` : "all checks passed");
process.exit(failures ? 1 : 0);
