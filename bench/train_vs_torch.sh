#!/usr/bin/env bash
# Training speed of `kiln train` and of PyTorch (Debian's python3-torch, CPU) on the same model
# shape and batch, in one run, with peak memory and model FLOP utilisation against the f32 GEMM
# peak measured in the same run. Usage:
#   bench/train_vs_torch.sh                              both shapes of issue 14: tinycoder
#                                                        (B=8, T=256, 6 steps) and a ~100M Llama
#                                                        (hidden 768, 12 layers, vocab 32000,
#                                                        B=4, T=256, 2 steps)
#   bench/train_vs_torch.sh MODEL [STEPS] [BATCH] [SEQ]  one model folder
# Each engine runs STEPS timed steps after one untimed warm-up step, Kiln in f32 and with
# --compute-dtype bf16, PyTorch in f32 and under bf16 autocast. KILN_BASE=path/to/kiln adds
# rows for an earlier build (f32 and bf16 compute), measured in the same run. MFU is against Kiln's f32 GEMM peak for
# every row (bf16 products can exceed it) and, for the bf16 rows, against its bf16 GEMM's.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
kiln="${KILN:-$root/build/kiln}"  # KILN=path: another build of kiln
py=/usr/bin/python3
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Training text: the repository's own C++ sources, enough windows for every step.
find "$root/src" -name '*.cc' | sort | sed -n '1,60p' | xargs cat > "$work/data.txt"
# Threads that wait for each other sleep instead of spinning (both engines use libgomp): on a
# shared machine a spinning thread burns the core its descheduled sibling needs. Override with
# OMP_WAIT_POLICY=active.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
echo "OMP_WAIT_POLICY=$OMP_WAIT_POLICY, OMP_NUM_THREADS=${OMP_NUM_THREADS:-all}"
echo "$(nproc) cores:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), load average $(cut -d' ' -f1-3 /proc/loadavg)"

# The f32 GEMM peak of this machine now: Kiln's packed GEMM, 512 x 2048 -> 2048, all threads.
peak_gflops="$("$root/build/bench/kiln_kernel_bench" --benchmark_filter='linear_f32/2/512/2048/2048' \
  --benchmark_min_time=1 --benchmark_format=json 2>/dev/null |
  $py -c 'import json,sys; print(round(max(b["GFLOP"] for b in json.load(sys.stdin)["benchmarks"]), 1))')"
echo "f32 GEMM peak (Kiln, 512 x 2048 -> 2048): $peak_gflops GFLOP/s"
# The bf16-operand GEMM of --compute-dtype bf16 (ops::gemm_bf16, 1024 x 768 -> 2048, the
# AVX-512 set; none without AVX512_BF16): the peak of the bf16 rows' MFU.
bf16_peak="$("$root/build/bench/kiln_kernel_bench" --benchmark_filter='train_gemm/2/1/0/1024/768/2048' \
  --benchmark_min_time=1 --benchmark_format=json 2>/dev/null |
  $py -c 'import json,sys; r = [b["GFLOP"] for b in json.load(sys.stdin)["benchmarks"] if "GFLOP" in b]; print(round(max(r), 1) if r else "")')"
echo "bf16 GEMM peak (Kiln gemm_bf16, 1024 x 768 -> 2048): ${bf16_peak:-none (no AVX512_BF16)} GFLOP/s"
echo
echo "| model | B x T | engine | training tokens/s | model GFLOP/s | MFU (f32 peak) | MFU (bf16 peak) | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|"

# A ~100M-parameter Llama folder with random bf16 weights and the tinycoder's tokenizer.
make_llama_100m() {
  local dir="$1"
  mkdir -p "$dir"
  cp "$root/models/tinycoder/tokenizer.json" "$root/models/tinycoder/tokenizer_config.json" "$dir/"
  $py - "$dir" <<'EOF'
import json, struct, sys
import numpy as np
out = sys.argv[1]
c = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 768,
     "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
     "num_key_value_heads": 12, "head_dim": 64, "vocab_size": 32000, "hidden_act": "silu",
     "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
     "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False,
     "bos_token_id": 0, "eos_token_id": 0, "torch_dtype": "bfloat16"}
json.dump(c, open(out + "/config.json", "w"), indent=1)
h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
shapes = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h]}
for l in range(c["num_hidden_layers"]):
    p = f"model.layers.{l}."
    for n in ("q", "k", "v", "o"):
        shapes[p + f"self_attn.{n}_proj.weight"] = [h, h]
    shapes[p + "mlp.gate_proj.weight"] = [i, h]
    shapes[p + "mlp.up_proj.weight"] = [i, h]
    shapes[p + "mlp.down_proj.weight"] = [h, i]
    shapes[p + "input_layernorm.weight"] = [h]
    shapes[p + "post_attention_layernorm.weight"] = [h]
rng = np.random.default_rng(0)
header, blobs, offset = {}, [], 0
for name, shape in shapes.items():
    a = np.ones(shape, np.float32) if len(shape) == 1 else \
        rng.standard_normal(shape, np.float32) * np.float32(0.02)
    raw = (a.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + len(raw)]}
    blobs.append(raw)
    offset += len(raw)
head = json.dumps(header).encode()
head += b" " * (-len(head) % 8)
with open(out + "/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(head)) + head)
    for b in blobs:
        f.write(b)
EOF
}

# Model FLOPs per trained token: 6 x the matmul parameters (lm_head included) + causal attention
# (QK^T and PV: 2 x 2 x heads x head_dim x (T + 1) / 2 per layer forward, x 3 with backward).
flops_per_token() {
  $py - "$1/config.json" "$2" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1])); T = int(sys.argv[2])
h, i, L, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
hq = c["num_attention_heads"]; hkv = c.get("num_key_value_heads", hq)
d = c.get("head_dim") or h // hq
per_layer = h * hq * d * 2 + h * hkv * d * 2 + 3 * h * i
print(6 * (L * per_layer + v * h) + 3 * L * 4 * hq * d * (T + 1) / 2)
EOF
}

# Kiln's tokens/s and peak RSS KiB of the timed steps, with the kiln binary $1 (more arguments
# after SEQ go to `kiln train`).
kiln_run() {
  local binary="$1" model="$2" steps="$3" batch="$4" seq="$5"
  shift 5
  rm -rf "$work/out"
  /usr/bin/time -v "$binary" train "$model" --data "$work/data.txt" -o "$work/out" --steps "$((steps + 1))" \
    --batch "$batch" --seq "$seq" --val-fraction 0 --lr 1e-4 "$@" >/dev/null 2>"$work/kiln.err" || { cat "$work/kiln.err"; exit 1; }
  # Tokens/s of the timed steps: the cumulative rates of the last and the first step give the
  # time of steps 2..N+1.
  $py -c '
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
tokens = int(sys.argv[2]) * int(sys.argv[3])
first, last = lines[0], lines[-1]
seconds = last["step"] * tokens / last["tokens_per_s"] - tokens / first["tokens_per_s"]
print(round((last["step"] - 1) * tokens / seconds, 1), end=" ")' "$work/out/metrics.jsonl" "$batch" "$seq"
  sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/kiln.err"
}

# PyTorch's tokens/s, thread count and peak RSS KiB (bench/train_torch.py; $5: f32, or bf16 for
# autocast).
torch_run() {
  local model="$1" steps="$2" batch="$3" seq="$4" dtype="$5"
  /usr/bin/time -v $py "$root/bench/train_torch.py" "$model" "$steps" "$batch" "$seq" "$dtype" \
    >"$work/torch.out" 2>"$work/torch.err" || { cat "$work/torch.err"; exit 1; }
  $py -c 'import json,sys; r = json.load(open(sys.argv[1])); print(round(r["tokens_per_s"], 1), r["threads"], end=" ")' "$work/torch.out"
  sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/torch.err"
}

# Rows: Kiln f32 (the default), Kiln with --compute-dtype bf16 (bf16 products, f32 masters),
# PyTorch f32, PyTorch under bf16 autocast (TORCH_BF16=0 skips it: a PyTorch without a CPU bf16
# path fails there), and with KILN_BASE an earlier build (f32 and bf16 compute); then the ratios.
run_shape() {
  local label="$1" model="$2" steps="$3" batch="$4" seq="$5"
  local k32 k32_rss k16 k16_rss t32 threads t32_rss t16="" t16_rss="" flops base="" base_rss=""
  local base16="" base16_rss=""
  read -r k32 k32_rss < <(kiln_run "$kiln" "$model" "$steps" "$batch" "$seq")
  read -r k16 k16_rss < <(kiln_run "$kiln" "$model" "$steps" "$batch" "$seq" --compute-dtype bf16)
  # KILN_BASE=path: an earlier build of kiln, measured in the same run for a before/after row.
  if [ -n "${KILN_BASE:-}" ]; then
    read -r base base_rss < <(kiln_run "$KILN_BASE" "$model" "$steps" "$batch" "$seq")
    read -r base16 base16_rss < <(kiln_run "$KILN_BASE" "$model" "$steps" "$batch" "$seq" \
      --compute-dtype bf16)
  fi
  read -r t32 threads t32_rss < <(torch_run "$model" "$steps" "$batch" "$seq" f32)
  if [ "${TORCH_BF16:-1}" != 0 ]; then
    read -r t16 threads t16_rss < <(torch_run "$model" "$steps" "$batch" "$seq" bf16)
  fi
  flops="$(flops_per_token "$model" "$seq")"
  $py - "$label" "$batch x $seq" "$flops" "$peak_gflops" "$threads" "${bf16_peak:-0}" \
    "Kiln f32:$k32:$k32_rss" "Kiln bf16 compute:$k16:$k16_rss" "PyTorch f32:$t32:$t32_rss" \
    "PyTorch bf16 autocast:$t16:$t16_rss" "Kiln f32 (KILN_BASE):$base:$base_rss" \
    "Kiln bf16 compute (KILN_BASE):$base16:$base16_rss" <<'EOF'
import sys
import torch
label, shape, flops, peak, threads, bf16_peak = sys.argv[1:7]
flops, peak, bf16_peak = float(flops), float(peak), float(bf16_peak)
rows = {}
for arg in sys.argv[7:]:
    engine, rate, rss = arg.split(":")
    if rate:
        rows[engine] = (float(rate), int(rss))
for engine, (rate, rss) in rows.items():
    g = rate * flops / 1e9
    name = engine.replace("PyTorch", f"PyTorch {torch.__version__} ({threads} threads)")
    mfu16 = f"{100 * g / bf16_peak:.0f}%" if "bf16" in engine and bf16_peak > 0 else ""
    print(f"| {label} | {shape} | {name} | {rate:.1f} | {g:.1f} | {100 * g / peak:.0f}% | {mfu16} | {rss // 1024} |")
for a, b in (("Kiln f32", "PyTorch f32"), ("Kiln bf16 compute", "PyTorch f32"),
             ("Kiln bf16 compute", "PyTorch bf16 autocast"), ("Kiln bf16 compute", "Kiln f32"),
             ("Kiln f32", "Kiln f32 (KILN_BASE)"),
             ("Kiln bf16 compute", "Kiln bf16 compute (KILN_BASE)")):
    if a in rows and b in rows:
        print(f"| {label} | {shape} | {a} / {b} | {rows[a][0] / rows[b][0]:.2f}x | | | | "
              f"{rows[a][1] / rows[b][1]:.2f}x |")
EOF
}

if [ $# -ge 1 ]; then
  run_shape "$(basename "$1")" "$1" "${2:-6}" "${3:-8}" "${4:-256}"
else
  run_shape tinycoder "$root/models/tinycoder" 6 8 256
  make_llama_100m "$work/llama-100m"
  run_shape "Llama ~110M" "$work/llama-100m" 2 4 256
fi
