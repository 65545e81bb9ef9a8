#!/usr/bin/env bash
# Prompt time of the two prefill modes of `kiln serve`, in one run: a server with the default
# one-shot prefill, one with --prefill-chunk auto (and with BASELINE=path, a third from another
# build), each sent the same ~670-token prompt in turn (max_tokens 1: the time is the prompt's
# pass), so that all see the same machine load. Prints each request's times and the medians of
# requests 2 on.
# Usage: bench/prefill_modes.sh [MODEL] [REQUESTS]   (default: models/tinycoder, 7 requests)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
kiln="${KILN:-$root/build/kiln}"  # KILN=path: another build
model="${1:-$root/models/tinycoder}"
requests="${2:-7}"
source "$root/tests/openai/start_server.sh"
names=() ports=() pids=()
add() {  # NAME BINARY [OPTIONS...]
  local name="$1" binary="$2"
  shift 2
  start_kiln_server "$binary" "$model" --parallel 1 "$@"
  names+=("$name") ports+=("$port") pids+=("$server")
}
[ -n "${BASELINE:-}" ] && add baseline "$BASELINE"
add one-shot "$kiln"
add chunked-auto "$kiln" --prefill-chunk auto
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
system="# Project conventions for the helper library.\n"
for i in $(seq 1 30); do system+="# Rule $i: functions take typed arguments, return new values and never print.\n"; done
echo "model $model, $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
declare -A times
for i in $(seq 1 "$requests"); do
  body="{\"prompt\": \"$system\ndef helper_$i(xs):\", \"max_tokens\": 1, \"temperature\": 0}"
  line="request $i:"
  for j in "${!names[@]}"; do
    t=$(curl -s -o /dev/null -w '%{time_total}' "localhost:${ports[$j]}/v1/completions" -d "$body")
    line+=" ${names[$j]} $t s,"
    [ "$i" -gt 1 ] && times[$j]+="$t "
  done
  echo "${line} load $(cut -d' ' -f1 /proc/loadavg)"
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
line="median of requests 2-$requests:"
# shellcheck disable=SC2086
for j in "${!names[@]}"; do line+=" ${names[$j]} $(median ${times[$j]:-0}) s,"; done
echo "${line%,}"
