#!/usr/bin/env bash
# Conversion benchmark: a synthetic 8B-shaped bf16 HF checkpoint (about 16 GB) converted to a
# Kiln checkpoint, next to `cp -r` of the same files in the same run. Prints the conversion's
# peak RSS (target < 1 GB) and its throughput as a fraction of cp's (target >= 0.5).
# Not part of ctest: it needs about 3x the model size of free disk and minutes of an idle
# machine (docs/checkpoint_format.md, "Conversion benchmark").
#
#   bench/convert_8b.sh [SHAPE]            SHAPE: a `kiln synth` shape, default llama-3.1-8b
#
# Environment: KILN (the binary, default build/kiln), WORKDIR (default a fresh folder under
# $TMPDIR or /tmp, removed at the end unless KEEP=1), CONVERT_ARGS (extra `kiln convert`
# arguments, e.g. "--layout scanned"), DROP_CACHES=1 (as root: empty the page cache before
# cp and before convert, so both read the source from disk).
set -euo pipefail

shape="${1:-llama-3.1-8b}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
kiln="${KILN:-$repo/build/kiln}"
[[ -x "$kiln" ]] || { echo "convert_8b.sh: $kiln not found (build first: scripts/build.sh)" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "convert_8b.sh: /usr/bin/time (GNU time) is required" >&2; exit 1; }
if [[ -n "${WORKDIR:-}" ]]; then
  work="$WORKDIR"
  mkdir -p "$work"
  made=("$work/src" "$work/copy" "$work/out" "$work/time.txt" "$work/convert.log")
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

echo "== cp -r (then sync)"
settle
t0=$(now)
cp -r "$work/src" "$work/copy"
t1=$(now)
sync
t2=$(now)
rm -rf "$work/copy"

echo "== /usr/bin/time -v kiln convert ${CONVERT_ARGS:-}"
settle
t3=$(now)
# shellcheck disable=SC2086
/usr/bin/time -v -o "$work/time.txt" "$kiln" convert "$work/src" -o "$work/out" ${CONVERT_ARGS:-} \
  2>"$work/convert.log" || { cat "$work/convert.log" >&2; exit 1; }
t4=$(now)
tail -1 "$work/convert.log"
rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.txt")

awk -v bytes="$bytes" -v files="$files" -v shape="$shape" -v rss_kb="$rss_kb" \
  -v t0="$t0" -v t1="$t1" -v t2="$t2" -v t3="$t3" -v t4="$t4" 'BEGIN {
  cp = t1 - t0; cp_sync = t2 - t0; conv = t4 - t3
  gb = bytes / 1e9
  rss_mb = rss_kb * 1024 / 1e6
  ratio = (gb / conv) / (gb / cp)
  ratio_sync = (gb / conv) / (gb / cp_sync)
  printf "\nsource        %s bf16: %.2f GB in %d files\n", shape, gb, files
  printf "cp -r         %7.1f s  %6.2f GB/s   (with sync: %.1f s, %.2f GB/s)\n", cp, gb / cp, cp_sync, gb / cp_sync
  printf "kiln convert  %7.1f s  %6.2f GB/s   (fsyncs its output)\n", conv, gb / conv
  printf "%-28s %10s  %-14s %s\n", "measure", "value", "target", "result"
  printf "%-28s %7.0f MB  %-14s %s\n", "convert peak RSS", rss_mb, "< 1000 MB", (rss_mb < 1000 ? "ok" : "MISSED")
  printf "%-28s %10.2f  %-14s %s\n", "convert / cp -r throughput", ratio, ">= 0.5", (ratio >= 0.5 ? "ok" : "MISSED")
  printf "%-28s %10.2f  %-14s %s\n", "convert / (cp -r + sync)", ratio_sync, "(for reference)", ""
}'
