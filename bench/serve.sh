#!/usr/bin/env bash
# Serving benchmark: starts `kiln serve MODEL --parallel 16` and streams completions at 1, 4, 8
# and 16 concurrent streams (bench/serve_bench.mjs, the OpenAI Node client from tests/openai):
# aggregate decode tokens/s and its ratio to one stream (the issue's target: 5x at 8 streams),
# time to first token and inter-token latency (p50/p99), and the server's step counters.
# Usage: bench/serve.sh [MODEL] [MAX_TOKENS] [SERVE OPTIONS...]   (default: a 1B-shaped bf16
# synth model in /tmp/kiln_synth_1b, written on first use; 64 tokens per request). Without
# --kv-dtype in the options it runs twice, with --kv-dtype f32 and bf16; e.g.
# bench/serve.sh /tmp/kiln_synth_1b 64 --prefill-chunk 8. KV_DTYPES="f32" runs one; KILN=PATH
# runs another kiln binary.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
kiln="${KILN:-$root/build/kiln}"  # KILN=path: another build (e.g. a baseline)
model="${1:-/tmp/kiln_synth_1b}"
max_tokens="${2:-64}"
shift $(( $# < 2 ? $# : 2 ))
if [ ! -d "$model" ]; then "$kiln" synth llama-3.2-1b --dtype bf16 -o "$model"; fi
[ -d "$root/tests/openai/node_modules/openai" ] || (cd "$root/tests/openai" && npm ci --no-audit --no-fund >/dev/null)
source "$root/tests/openai/start_server.sh"
# Passive OpenMP waits (as bench/train_vs_torch.sh): on a shared, oversubscribed machine
# spinning threads stall every parallel region of a decode step (docs/performance.md).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
dtypes="${KV_DTYPES:-f32 bf16}"
case " $* " in *" --kv-dtype "*) dtypes="given" ;; esac
echo "model $model, $max_tokens tokens per request, $(nproc) cores:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), load average $(cut -d' ' -f1-3 /proc/loadavg)"
for dtype in $dtypes; do
  extra=()
  [ "$dtype" = given ] || extra=(--kv-dtype "$dtype")
  start_kiln_server "$kiln" "$model" --parallel 16 --ctx 512 "${extra[@]}" "$@"
  echo
  echo "kiln serve --parallel 16 --ctx 512 ${extra[*]} $*"
  node "$root/bench/serve_bench.mjs" "http://127.0.0.1:$port" "$max_tokens" 1 4 8 16
  kill "$server"
  wait "$server" 2>/dev/null || true
  trap - EXIT
done
