#!/usr/bin/env bash
# Conversion benchmark: a synthetic bf16 HF checkpoint (default 8B-shaped, about 16 GB)
# converted to a Kiln checkpoint and/or exported to Orbax in MaxText's tree, each next to
# `cp -r` of the same files measured just before it (the machine's disk and page cache state
# of the moment). Prints each conversion's peak RSS (target < 1 GB) and its throughput as a
# fraction of cp's (target >= 0.5).
# Not part of ctest: it needs about 3x the model size of free disk and minutes of an idle
# machine (docs/checkpoint_format.md, "Conversion in bounded memory, and its benchmark").
#
#   bench/convert_8b.sh [SHAPE]            SHAPE: a `kiln synth` shape, default llama-3.1-8b
#
# Environment: KILN (the binary, default build/kiln), WORKDIR (default a fresh folder under
# $TMPDIR or /tmp, removed at the end unless KEEP=1), CONVERT_ARGS (extra `kiln convert`
# arguments for the Kiln run, e.g. "--layout scanned"), MODES (what to measure, any of
# "kiln orbax-scanned orbax-unscanned orbax-scanned-raw" (the last: uncompressed chunks,
# --orbax-raw); default "kiln", ORBAX=1 adds both Orbax exports),
# REPEAT (runs of each mode, default 1; a pair cp + convert per run), DROP_CACHES=1 (as root:
# empty the page cache before cp and before convert, so both read the source from disk).
set -euo pipefail

shape="${1:-llama-3.1-8b}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
kiln="${KILN:-$repo/build/kiln}"
[[ -x "$kiln" ]] || { echo "convert_8b.sh: $kiln not found (build first: scripts/build.sh)" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "convert_8b.sh: /usr/bin/time (GNU time) is required" >&2; exit 1; }
modes="${MODES:-kiln}"
[[ "${ORBAX:-0}" == 1 ]] && modes="$modes orbax-scanned orbax-unscanned"
repeat="${REPEAT:-1}"
if [[ -n "${WORKDIR:-}" ]]; then
  work="$WORKDIR"
  mkdir -p "$work"
  made=("$work/src" "$work/copy" "$work/out" "$work/time.txt" "$work/convert.log" "$work/rows.txt")
else
  work="$(mktemp -d "${TMPDIR:-/tmp}/kiln-convert-bench.XXXXXX")"
  made=("$work")
fi
cleanup() { [[ "${KEEP:-0}" == 1 ]] || rm -rf "${made[@]}"; }
trap cleanup EXIT

now() { date +%s.%N; }
settle() {  # flush earlier writes so the next timing does not pay for them
  sync
  if [[ "${DROP_CACHES:-0}" == 1 ]]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

echo "== kiln synth $shape -o $work/src --dtype bf16"
"$kiln" synth "$shape" -o "$work/src" --dtype bf16 --force
bytes=$(du -sb "$work/src" | cut -f1)
files=$(find "$work/src" -type f | wc -l)
free=$(df -B1 --output=avail "$work" | tail -1)
if ((free < 2 * bytes + bytes / 10)); then
  echo "convert_8b.sh: $work has $free bytes free; the copy and the checkpoint need about $((2 * bytes))" >&2
  exit 1
fi
: >"$work/rows.txt"

# measure MODE ARGS...: cp -r (timed, then sync timed) and the conversion, one row.
measure() {
  local mode="$1"
  shift
  echo "== $mode: cp -r (then sync), then kiln convert $*"
  settle
  local t0 t1 t2 t3 t4
  t0=$(now)
  cp -r "$work/src" "$work/copy"
  t1=$(now)
  sync
  t2=$(now)
  rm -rf "$work/copy"
  settle
  t3=$(now)
  /usr/bin/time -v -o "$work/time.txt" "$kiln" convert "$work/src" -o "$work/out" --force "$@" \
    2>"$work/convert.log" || { cat "$work/convert.log" >&2; exit 1; }
  t4=$(now)
  local out_bytes rss_kb
  out_bytes=$(du -sb "$work/out" | cut -f1)
  rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.txt")
  rm -rf "$work/out"
  echo "$mode $t0 $t1 $t2 $t3 $t4 $rss_kb $out_bytes" >>"$work/rows.txt"
}

for ((r = 0; r < repeat; ++r)); do
  for mode in $modes; do
    case "$mode" in
      kiln) # shellcheck disable=SC2086
        measure kiln ${CONVERT_ARGS:-} ;;
      orbax-scanned) measure orbax-scanned --format orbax --layout scanned ;;
      orbax-unscanned) measure orbax-unscanned --format orbax --layout unscanned ;;
      orbax-scanned-raw) measure orbax-scanned-raw --format orbax --layout scanned --orbax-raw ;;
      *) echo "convert_8b.sh: unknown mode '$mode'" >&2; exit 1 ;;
    esac
  done
done

awk -v bytes="$bytes" -v files="$files" -v shape="$shape" -v cargs="${CONVERT_ARGS:-}" \
  -v cpu="$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)" -v cores="$(nproc)" 'BEGIN {
  gb = bytes / 1e9
  printf "\nsource  %s bf16: %.2f GB in %d files (kiln mode: convert %s)\n", shape, gb, files, cargs
  printf "CPU: %s, %d cores\n", cpu, cores
  printf "%-16s %8s %8s %9s %9s %9s %8s %10s\n", "mode", "cp -r s", "+sync s", "convert s",
         "out GB", "RSS MB", "vs cp -r", "vs cp+sync"
} {
  cp = $3 - $2; cp_sync = $4 - $2; conv = $6 - $5
  rss = $7 * 1024 / 1e6
  ratio = cp / conv; ratio_sync = cp_sync / conv
  printf "%-16s %8.1f %8.1f %9.1f %9.2f %9.0f %8.2f %10.2f   %s\n", $1, cp, cp_sync, conv, $8 / 1e9,
         rss, ratio, ratio_sync, (rss < 1000 && ratio >= 0.5) ? "ok" : "MISSED"
  n[$1]++; lo[$1] = (n[$1] == 1 || ratio < lo[$1]) ? ratio : lo[$1]
  hi[$1] = (n[$1] == 1 || ratio > hi[$1]) ? ratio : hi[$1]
  peak[$1] = rss > peak[$1] ? rss : peak[$1]
} END {
  printf "\ntargets: peak RSS < 1000 MB, throughput >= 0.5 x cp -r (convert fsyncs its output; cp does not)\n"
  for (m in n) printf "%-16s ratio %.2f-%.2f over %d run(s), peak RSS %.0f MB\n", m, lo[m], hi[m], n[m], peak[m]
}' "$work/rows.txt"
