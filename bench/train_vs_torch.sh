#!/usr/bin/env bash
# Training speed of `kiln train` and of PyTorch (Debian's python3-torch, CPU) on the same model
# shape and batch, in one run, with peak memory. Usage:
#   bench/train_vs_torch.sh [MODEL] [STEPS] [BATCH] [SEQ]   (default: tinycoder, 6 steps, 8 x 256)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
kiln="$root/build/kiln"
model="${1:-$root/models/tinycoder}"
steps="${2:-6}"
batch="${3:-8}"
seq="${4:-256}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Training text: the repository's own C++ sources, enough windows for every step.
find "$root/src" -name '*.cc' | sort | head -60 | xargs cat > "$work/data.txt"
echo "model $model, $steps steps of $batch x $seq tokens, $(nproc) cores:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
/usr/bin/time -v "$kiln" train "$model" --data "$work/data.txt" -o "$work/out" --steps "$((steps + 1))" \
  --batch "$batch" --seq "$seq" --val-fraction 0 --lr 1e-4 >/dev/null 2>"$work/kiln.err" || { cat "$work/kiln.err"; exit 1; }
kiln_rate="$(tail -1 "$work/out/metrics.jsonl" | /usr/bin/python3 -c 'import json,sys; print(round(json.load(sys.stdin)["tokens_per_s"], 1))')"
kiln_rss="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/kiln.err")"
/usr/bin/time -v /usr/bin/python3 "$root/bench/train_torch.py" "$model" "$steps" "$batch" "$seq" \
  >"$work/torch.out" 2>"$work/torch.err" || { cat "$work/torch.err"; exit 1; }
torch_rate="$(/usr/bin/python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["tokens_per_s"], 1))' "$work/torch.out")"
torch_rss="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/torch.err")"
echo "| engine | training tokens/s | peak RSS MiB |"
echo "|---|---|---|"
echo "| Kiln | $kiln_rate | $((kiln_rss / 1024)) |"
echo "| PyTorch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)') | $torch_rate | $((torch_rss / 1024)) |"
/usr/bin/python3 -c "print(f'Kiln / PyTorch: {$kiln_rate / $torch_rate:.2f}x')"
