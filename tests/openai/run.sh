#!/usr/bin/env bash
# Starts `kiln serve` (tinycoder, Qwen3's chat template) on a free port and runs
# client_test.mjs with the real OpenAI client against it. Usage: run.sh KILN_BINARY
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
kiln="$1"
[ -d "$here/node_modules/openai" ] || (cd "$here" && npm ci --no-audit --no-fund >/dev/null)
log="$(mktemp)"
"$kiln" serve "$root/models/tinycoder" --port 0 --parallel 4 --api-key sk-kiln-test \
  --chat-template "$root/tests/data/tokenizers/qwen3/tokenizer_config.json" >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 100); do
  port="$(sed -n 's|.*http://127.0.0.1:\([0-9]*\).*|\1|p' "$log")"
  [ -n "$port" ] && break
  kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { echo "the server did not start"; cat "$log"; exit 1; }
node "$here/client_test.mjs" "http://127.0.0.1:$port" sk-kiln-test
