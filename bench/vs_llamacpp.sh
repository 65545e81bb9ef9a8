#!/usr/bin/env bash
# Kiln against llama.cpp on the same 1B weights, in one run: prefill and decode speed of
# `kiln bench` and `llama-bench` (prompt 512 tokens, 64 decoded, 2 threads by default), for
#   Kiln int8 (`kiln convert --dtype int8`)         vs llama.cpp Q8_0
#   Kiln int4 (`kiln convert --dtype int4`)         vs llama.cpp Q4_K_M
#   Kiln int8 with its tied head left in bf16 (`--keep 'decoder/logits_dense/kernel'`,
#   PAIRS row int8-bf16head, not run by default)    vs llama.cpp Q8_0
#   Kiln reading llama.cpp's Q8_0 / Q4_K_M / Q4_0 .gguf files (`--gguf-weights direct`)
#                                                   vs llama.cpp on the same file
# and a table of the speed ratios Kiln / llama.cpp against the target 1.2.
#
# Usage: bench/vs_llamacpp.sh LLAMA_CPP_DIR [WORK_DIR]
#   LLAMA_CPP_DIR: a llama.cpp source tree with its gguf-py/ and a build holding llama-bench and
#                  llama-quantize (in build/bin/, bin/ or the folder itself). Nothing of
#                  llama.cpp is part of this repository; see docs/performance.md for the build.
#   WORK_DIR:      where the models go (default /tmp/kiln-vs-llamacpp, about 9 GB); models
#                  already there are reused.
# Environment: KILN (the kiln binary, default build/kiln), THREADS (2), PROMPT (512), GEN (64),
# REPS (llama-bench repetitions, 1), ROUNDS (3: every row measured that many times, Kiln and
# llama.cpp alternating; medians and the range of the ratios are shown), PAIRS (which rows,
# default "int8 int4 gguf-Q8_0 gguf-Q4_K_M gguf-Q4_0"; also int8-bf16head).
#
# The 1B model is `kiln synth llama-3.2-1b` (random bf16 weights, Llama 3.2 1B's shapes). Its
# weights are written as a bf16 GGUF by tools/hf_llama_to_gguf.py (llama.cpp's gguf-py, Debian
# python3-numpy; llama.cpp's names and Q/K row order, the synth's byte-level vocabulary), which
# llama-quantize turns into Q8_0, Q4_K_M and Q4_0.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
llama="${1:?usage: bench/vs_llamacpp.sh LLAMA_CPP_DIR [WORK_DIR]}"
work="${2:-/tmp/kiln-vs-llamacpp}"
kiln="${KILN:-$root/build/kiln}"
threads="${THREADS:-2}"
prompt="${PROMPT:-512}"
gen="${GEN:-64}"
reps="${REPS:-1}"
rounds="${ROUNDS:-3}"
pairs="${PAIRS:-int8 int4 gguf-Q8_0 gguf-Q4_K_M gguf-Q4_0}"
py=/usr/bin/python3
"$py" -c 'import numpy' 2>/dev/null || {
  echo "bench/vs_llamacpp.sh: needs Debian's python3-numpy for gguf-py (apt-get install python3-numpy)" >&2
  exit 1
}

find_tool() {
  local d
  for d in "$llama/build/bin" "$llama/bin" "$llama"; do
    if [ -x "$d/$1" ]; then
      echo "$d/$1"
      return
    fi
  done
  echo "bench/vs_llamacpp.sh: no $1 under $llama (build/bin, bin)" >&2
  exit 1
}
llama_bench="$(find_tool llama-bench)"
llama_quantize="$(find_tool llama-quantize)"
[ -d "$llama/gguf-py/gguf" ] || {
  echo "bench/vs_llamacpp.sh: no gguf-py under $llama" >&2
  exit 1
}
[ -x "$kiln" ] || {
  echo "bench/vs_llamacpp.sh: no kiln binary at $kiln (scripts/build.sh)" >&2
  exit 1
}
mkdir -p "$work"
log="$work/log"
mkdir -p "$log"

# Idle OpenMP threads sleep instead of spinning (both engines link libgomp). Neither engine's
# decode waits on libgomp per operation: Kiln's runs on its own pool (ops/cpu/work_pool.h),
# llama.cpp (GGML_OPENMP) opens one OpenMP region per graph and spins in its own barrier
# inside. The policy costs one futex wake per region: per token for llama.cpp, per GEMM for
# Kiln's prefill. With `active`, libgomp's idle threads would spin on through Kiln's decode
# beside the pool's workers; on a shared machine a spinning thread burns a core others need.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
echo "$(nproc) cores:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)," \
  "load average $(cut -d' ' -f1-3 /proc/loadavg), OMP_WAIT_POLICY=$OMP_WAIT_POLICY"
echo "llama.cpp: $llama_bench"
echo "prompt $prompt tokens, $gen decoded, $threads threads, llama-bench repetitions $reps, $rounds rounds"

step() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# --- models ---------------------------------------------------------------------------------
hf="$work/l1b"
if [ ! -f "$hf/config.json" ]; then
  step "kiln synth llama-3.2-1b"
  "$kiln" synth llama-3.2-1b -o "$hf" --force >/dev/null
fi
if [ ! -f "$work/l1b-bf16.gguf" ]; then
  step "writing l1b-bf16.gguf (gguf-py)"
  GGUF_PY="$llama/gguf-py" $py "$root/tools/hf_llama_to_gguf.py" "$hf" "$work/l1b-bf16.gguf.tmp" \
    --real-tokenizer >/dev/null
  mv "$work/l1b-bf16.gguf.tmp" "$work/l1b-bf16.gguf"
fi
needed=" "  # the llama.cpp files the rows need
for p in $pairs; do
  case "$p" in
    int8 | int8-bf16head) needed+="Q8_0 " ;;
    int4) needed+="Q4_K_M " ;;
    gguf-*) needed+="${p#gguf-} " ;;
  esac
done
for q in Q8_0 Q4_K_M Q4_0; do
  case "$needed" in *" $q "*) ;; *) continue ;; esac
  if [ ! -f "$work/l1b-$q.gguf" ]; then
    step "llama-quantize $q"
    "$llama_quantize" "$work/l1b-bf16.gguf" "$work/l1b-$q.gguf.tmp" "$q" "$threads" \
      >"$log/quantize-$q.txt" 2>&1
    mv "$work/l1b-$q.gguf.tmp" "$work/l1b-$q.gguf"
  fi
done
for d in int8 int4 int8-bf16head; do
  case " $pairs " in *" $d "*) ;; *) continue ;; esac
  options=(--dtype "${d%%-*}")
  # the tied head's copy (decoder/logits_dense/kernel) in the checkpoint's own format
  want_head=Q8_0
  [ "$d" = int4 ] && want_head=Q4_1
  [ "$d" = int8-bf16head ] && options+=(--keep 'decoder/logits_dense/kernel') && want_head=no
  # (a checkpoint written before the head copy was the default, or before int4's head was
  # Q4_1, is rewritten)
  has_head=no
  [ -f "$work/l1b-$d/kiln_checkpoint.json" ] && has_head=$("$py" -c '
import json, sys
t = json.load(open(sys.argv[1]))["tensors"].get("decoder/logits_dense/kernel")
print(t["dtype"] if t else "no")' "$work/l1b-$d/kiln_checkpoint.json")
  if [ ! -f "$work/l1b-$d/kiln_checkpoint.json" ] || [ "$has_head" != "$want_head" ]; then
    step "kiln convert ${options[*]}"
    rm -rf "$work/l1b-$d"
    "$kiln" convert "$hf" -o "$work/l1b-$d" "${options[@]}" >/dev/null
  fi
done

# --- measurements -----------------------------------------------------------------------------
# ROUNDS rounds, each running every row's Kiln and llama.cpp measurements one after the other:
# on a shared machine the memory bandwidth moves by 20-50% within minutes (kiln bench's probe
# reads 33-55 GB/s in one session), so only a measurement and its peer taken together compare,
# and the table shows per-row medians over the rounds and the range of the per-round ratios.
declare -A measured  # llama.cpp results measured in this round
# llama-bench in three runs: pp (prompt tokens into an empty context), tg at depth `prompt`
# (the tokens generated after a prompt of that length, as Kiln's decode is measured: attention
# over the prompt's KV), and tg at depth 0 (llama-bench's default tgN, shown for reference).
run_llama() {  # $1 = gguf file, $2 = result name
  step "round $round: llama-bench $(basename "$1")"
  measured[$2]=1
  local common=(-m "$1" -t "$threads" -r "$reps" -o json) out="$log/$2.r$round"
  "$llama_bench" "${common[@]}" -p "$prompt" -n 0 >"$out.pp.json" 2>"$out.err"
  "$llama_bench" "${common[@]}" -p 0 -n "$gen" -d "$prompt" >"$out.tg.json" 2>>"$out.err"
  "$llama_bench" "${common[@]}" -p 0 -n "$gen" >"$out.tg0.json" 2>>"$out.err"
}
run_kiln() {  # $1 = model, $2 = result name
  step "round $round: kiln bench $(basename "$1")"
  "$kiln" bench "$1" --prompt-tokens "$prompt" --gen-tokens "$gen" --threads "$threads" --json \
    >"$log/$2.r$round.json" 2>"$log/$2.r$round.err"
}
for round in $(seq 1 "$rounds"); do
  measured=()
  rows=()
  for p in $pairs; do
    case "$p" in
      int8)
        run_kiln "$work/l1b-int8" kiln-int8
        run_llama "$work/l1b-Q8_0.gguf" llama-Q8_0
        rows+=("Kiln int8 (Q8_0 checkpoint)|kiln-int8|llama.cpp Q8_0|llama-Q8_0")
        ;;
      int8-bf16head)
        run_kiln "$work/l1b-int8-bf16head" kiln-int8-bf16head
        [ -n "${measured[llama-Q8_0]:-}" ] || run_llama "$work/l1b-Q8_0.gguf" llama-Q8_0
        rows+=("Kiln int8, bf16 head (--keep)|kiln-int8-bf16head|llama.cpp Q8_0|llama-Q8_0")
        ;;
      int4)
        run_kiln "$work/l1b-int4" kiln-int4
        run_llama "$work/l1b-Q4_K_M.gguf" llama-Q4_K_M
        rows+=("Kiln int4 (Q4_1 checkpoint)|kiln-int4|llama.cpp Q4_K_M|llama-Q4_K_M")
        ;;
      gguf-*)
        q="${p#gguf-}"
        run_kiln "$work/l1b-$q.gguf" "kiln-gguf-$q"
        [ -n "${measured[llama-$q]:-}" ] || run_llama "$work/l1b-$q.gguf" "llama-$q"
        rows+=("Kiln reading l1b-$q.gguf|kiln-gguf-$q|llama.cpp, same file|llama-$q")
        ;;
      *)
        echo "bench/vs_llamacpp.sh: unknown pair '$p'" >&2
        exit 1
        ;;
    esac
  done
done
echo "load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- table ------------------------------------------------------------------------------------
$py - "$log" "$prompt" "$gen" "$rounds" "${rows[@]}" <<'EOF'
import json, os, sys
log, prompt, gen, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = sys.argv[5:]
target = 1.2

def kiln(name, r):
    k = json.load(open(os.path.join(log, f"{name}.r{r}.json")))
    return k["prefill_tokens_per_s"], k["decode_tokens_per_s"], k["peak_rss_mb"], k["weight_bytes"]

def llama(name, r):
    def run(part):
        return json.load(open(os.path.join(log, f"{name}.r{r}.{part}.json")))[0]
    pp, tg, tg0 = run("pp"), run("tg"), run("tg0")
    assert pp["n_prompt"] == prompt and tg["n_gen"] == gen and tg.get("n_depth") == prompt
    return pp["avg_ts"], tg["avg_ts"], tg0["avg_ts"], pp["model_size"]

def median(xs):
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2

def verdict(ratios):
    m = median(ratios)
    spread = f" ({min(ratios):.2f}–{max(ratios):.2f})" if len(ratios) > 1 else ""
    return f"**{m:.2f}**" + (" ✓" if m >= target else "") + spread

print()
print(f"| Kiln | llama.cpp | Kiln prefill tok/s | llama.cpp pp{prompt} tok/s | prefill ratio "
      f"(target {target}) | Kiln decode tok/s (after the prompt) | llama.cpp tg{gen} @ depth "
      f"{prompt} tok/s | decode ratio (target {target}) | llama.cpp tg{gen} @ depth 0 | Kiln "
      f"weights / peak RSS | llama.cpp model size |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for row in rows:
    kname, kfile, lname, lfile = row.split("|")
    k = [kiln(kfile, r) for r in range(1, rounds + 1)]
    l = [llama(lfile, r) for r in range(1, rounds + 1)]
    kp, kd = median([x[0] for x in k]), median([x[1] for x in k])
    lp, ld, ld0 = (median([x[i] for x in l]) for i in range(3))
    rss, wbytes, lsize = max(x[2] for x in k), k[0][3], l[0][3]
    prefill = verdict([a[0] / b[0] for a, b in zip(k, l)])
    decode = verdict([a[1] / b[1] for a, b in zip(k, l)])
    print(f"| {kname} | {lname} | {kp:.1f} | {lp:.1f} | {prefill} | {kd:.2f} | {ld:.2f} "
          f"| {decode} | {ld0:.2f} | {wbytes / 2**20:.0f} MiB / {rss:.0f} MB "
          f"| {lsize / 2**20:.0f} MiB |")
EOF
