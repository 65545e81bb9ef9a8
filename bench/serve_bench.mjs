// Streams completions from a running `kiln serve` at several concurrency levels and prints, per
// level, the aggregate decode tokens/s, time to first token and inter-token latency (p50/p99).
// Usage: node serve_bench.mjs BASE_URL MAX_TOKENS LEVEL...
import OpenAI from "../tests/openai/node_modules/openai/index.mjs";

const [base, maxTokensArg, ...levels] = process.argv.slice(2);
const maxTokens = Number(maxTokensArg);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0 });
const pct = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : NaN; };

async function stream(i) {
  const start = performance.now();
  let first = null, last = null, tokens = 0;
  const gaps = [], times = [];
  const s = await client.completions.create({ model: "m", prompt: `Request ${i}: the quick brown fox`, max_tokens: maxTokens,
    temperature: 0, stream: true, stream_options: { include_usage: true } });
  for await (const chunk of s) {
    if (chunk.usage) tokens = chunk.usage.completion_tokens;
    if (!chunk.choices.length) continue;
    const now = performance.now();
    times.push(now);
    if (first === null) first = now - start; else gaps.push(now - last);
    last = now;
  }
  return { first, gaps, times, tokens, end: performance.now() };
}

async function metrics() {
  const text = await (await fetch(`${base}/metrics`)).text();
  const value = (name) => Number((text.match(new RegExp(`^${name} (\\S+)$`, "m")) || [])[1] ?? NaN);
  return { steps: value("kiln_engine_steps_total"), rows: value("kiln_engine_step_rows_total"),
           seconds: value("kiln_engine_step_seconds_total"), kvPeak: value("kiln_kv_cache_peak_bytes") };
}

// Steady decode: the tokens that arrive after every stream of the level has its first token
// (all prompts are in, no prefill runs any more), over the time from then to the last token.
function steady(results) {
  const start = Math.max(...results.map((r) => r.times[0]));
  const end = Math.max(...results.map((r) => r.times[r.times.length - 1]));
  const tokens = results.reduce((a, r) => a + r.times.filter((t) => t > start).length, 0);
  return end > start ? (1000 * tokens) / (end - start) : NaN;
}

console.log("| streams | aggregate tokens/s | x one stream (target 5x at 8) | per stream tokens/s | steady decode tokens/s, x one stream | TTFT p50 / p99 ms | ITL p50 / p99 ms | steps, rows per step, ms per step | KV peak MiB |");
console.log("|---|---|---|---|---|---|---|---|---|");
let single = null, singleSteady = null;
for (const level of levels.map(Number)) {
  await stream(-1);  // warm up
  const before = await metrics();
  const t0 = performance.now();
  const results = await Promise.all(Array.from({ length: level }, (_, i) => stream(i)));
  const seconds = (performance.now() - t0) / 1000;
  const after = await metrics();
  const total = results.reduce((a, r) => a + r.tokens, 0);
  const aggregate = total / seconds;
  const steadyRate = steady(results);
  if (level === 1) single = aggregate, singleSteady = steadyRate;
  const ttft = results.map((r) => r.first), itl = results.flatMap((r) => r.gaps);
  const steps = after.steps - before.steps;
  const ratio = single ? `${(aggregate / single).toFixed(2)}x` : "";
  console.log(`| ${level} | ${aggregate.toFixed(1)} | ${ratio}${level === 8 ? (aggregate / single >= 5 ? " ✓" : " (short of 5x)") : ""} | ${(aggregate / level).toFixed(1)} | ${steadyRate.toFixed(1)}, ${(steadyRate / singleSteady).toFixed(2)}x | ${pct(ttft, 0.5).toFixed(0)} / ${pct(ttft, 0.99).toFixed(0)} | ${pct(itl, 0.5).toFixed(1)} / ${pct(itl, 0.99).toFixed(1)} | ${steps}, ${((after.rows - before.rows) / steps).toFixed(1)}, ${(1000 * (after.seconds - before.seconds) / steps).toFixed(0)} | ${(after.kvPeak / 1048576).toFixed(1)} |`);
}
