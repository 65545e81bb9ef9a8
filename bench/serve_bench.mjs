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
  const gaps = [];
  const s = await client.completions.create({ model: "m", prompt: `Request ${i}: the quick brown fox`, max_tokens: maxTokens,
    temperature: 0, stream: true, stream_options: { include_usage: true } });
  for await (const chunk of s) {
    if (chunk.usage) tokens = chunk.usage.completion_tokens;
    if (!chunk.choices.length) continue;
    const now = performance.now();
    if (first === null) first = now - start; else gaps.push(now - last);
    last = now;
  }
  return { first, gaps, tokens, end: performance.now() };
}

console.log("| streams | aggregate tokens/s | per stream tokens/s | TTFT p50 / p99 ms | ITL p50 / p99 ms |");
console.log("|---|---|---|---|---|");
let single = null;
for (const level of levels.map(Number)) {
  await stream(-1);  // warm up
  const t0 = performance.now();
  const results = await Promise.all(Array.from({ length: level }, (_, i) => stream(i)));
  const seconds = (performance.now() - t0) / 1000;
  const total = results.reduce((a, r) => a + r.tokens, 0);
  const aggregate = total / seconds;
  if (level === 1) single = aggregate;
  const ttft = results.map((r) => r.first), itl = results.flatMap((r) => r.gaps);
  console.log(`| ${level} | ${aggregate.toFixed(1)}${single && level > 1 ? ` (${(aggregate / single).toFixed(2)}x one stream)` : ""} | ${(aggregate / level).toFixed(1)} | ${pct(ttft, 0.5).toFixed(0)} / ${pct(ttft, 0.99).toFixed(0)} | ${pct(itl, 0.5).toFixed(1)} / ${pct(itl, 0.99).toFixed(1)} |`);
}
