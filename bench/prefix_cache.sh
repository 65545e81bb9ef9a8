#!/usr/bin/env bash
# Prefix-cache benchmark: the same long system prompt with different questions, each request
# timed to its answer (max_tokens 1: the time is the prompt's pass), alternating between a
# server without and one with --prefix-cache (so both see the same machine load). Prints the
# times, their medians and the second server's /metrics prefix counters.
# Usage: bench/prefix_cache.sh [MODEL] [REQUESTS] [SERVER OPTIONS...]   (default:
# models/tinycoder, 9 requests), e.g. bench/prefix_cache.sh models/tinycoder 9 --prefill-chunk auto
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
kiln="${KILN:-$root/build/kiln}"  # KILN=path: another build
model="${1:-$root/models/tinycoder}"
requests="${2:-9}"
extra=("${@:3}")  # more `kiln serve` options for both servers
source "$root/tests/openai/start_server.sh"
start_kiln_server "$kiln" "$model" --parallel 1 "${extra[@]}"
plain_server=$server plain_port=$port
start_kiln_server "$kiln" "$model" --parallel 1 --prefix-cache 64 --kv-block 16 "${extra[@]}"
trap "kill $plain_server $server 2>/dev/null" EXIT
# A system prompt of about 600 tokens (tinycoder's context is 1024).
system="# Project conventions for the helper library.\n"
for i in $(seq 1 30); do system+="# Rule $i: functions take typed arguments, return new values and never print.\n"; done
echo "model $model, $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
plain=() cached=()
for i in $(seq 1 "$requests"); do
  body="{\"prompt\": \"$system\ndef helper_$i(xs):\", \"max_tokens\": 1, \"temperature\": 0}"
  a=$(curl -s -o /dev/null -w '%{time_total}' "localhost:$plain_port/v1/completions" -d "$body")
  b=$(curl -s -o /dev/null -w '%{time_total}' "localhost:$port/v1/completions" -d "$body")
  echo "request $i: $a s without, $b s with the prefix cache"
  plain+=("$a") cached+=("$b")
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
echo "median without: $(median "${plain[@]:1}") s, with: $(median "${cached[@]:1}") s (requests 2-$requests)"
curl -s "localhost:$port/metrics" | grep -E '^kiln_(prefix|prompt_tokens)'
