#!/usr/bin/env bash
# Serving benchmark: starts `kiln serve MODEL --parallel 16` and streams completions at 1, 4, 8
# and 16 concurrent streams (bench/serve_bench.mjs, the OpenAI Node client from tests/openai).
# Usage: bench/serve.sh [MODEL] [MAX_TOKENS]   (default: a 1B-shaped bf16 synth model in
# /tmp/kiln_synth_1b, written on first use; 64 tokens per request)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
kiln="$root/build/kiln"
model="${1:-/tmp/kiln_synth_1b}"
max_tokens="${2:-64}"
if [ ! -d "$model" ]; then "$kiln" synth llama-3.2-1b --dtype bf16 -o "$model"; fi
[ -d "$root/tests/openai/node_modules/openai" ] || (cd "$root/tests/openai" && npm ci --no-audit --no-fund >/dev/null)
export NODE_PATH="$root/tests/openai/node_modules"
log="$(mktemp)"
"$kiln" serve "$model" --port 0 --parallel 16 --ctx 512 >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 600); do
  port="$(sed -n 's|.*http://127.0.0.1:\([0-9]*\).*|\1|p' "$log")"
  [ -n "$port" ] && break
  kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.2
done
echo "model $model, $max_tokens tokens per request, $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
cd "$root/tests/openai" && node "$root/bench/serve_bench.mjs" "http://127.0.0.1:$port" "$max_tokens" 1 4 8 16
