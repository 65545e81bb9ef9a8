"""PyTorch's training speed on a model folder, for bench/train_vs_torch.sh: the plain-PyTorch
Llama forward of tools/torch_reference.py, cross-entropy, backward and AdamW (f32) on random
token batches; prints one JSON line with tokens/s. With the fifth argument bf16 the forward and
loss run under torch.cpu.amp.autocast(dtype=torch.bfloat16) (matrix products in bf16, f32
parameters, gradients and AdamW: PyTorch's mixed precision on the CPU).

Usage: /usr/bin/python3 bench/train_torch.py MODEL_DIR STEPS BATCH SEQ [f32|bf16]
"""
import contextlib
import json
import os
import struct
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import torch_reference as ref  # noqa: E402


def read_folder(model_dir):
    """Every tensor of the folder's safetensors files (sharded or not) as f32 numpy arrays."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for file in files:
        with open(os.path.join(model_dir, file), "rb") as f:
            data = f.read()
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + length])
        base = 8 + length
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            raw = data[base + begin:base + end]
            if entry["dtype"] == "BF16":
                bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
                array = bits.view(np.float32)
            else:
                array = np.frombuffer(raw, dtype={"F32": np.float32, "F16": np.float16}[entry["dtype"]])
            tensors[name] = array.astype(np.float32).reshape(entry["shape"])
    return tensors


def main():
    model_dir, steps, batch, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    dtype = sys.argv[5] if len(sys.argv) > 5 else "f32"
    assert dtype in ("f32", "bf16"), dtype
    # All the cores Kiln uses (OMP_NUM_THREADS, else every core of the affinity mask): Debian's
    # torch 1.13 otherwise picks one intra-op thread on the 2-core machine.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0))))
    torch.manual_seed(0)
    cfg = ref.Config(os.path.join(model_dir, "config.json"))
    weights = read_folder(model_dir)
    params = {n: torch.tensor(w, requires_grad=True) for n, w in weights.items()
              if not (cfg.tied and n == "lm_head.weight")}
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-4, betas=(0.9, 0.95), eps=1e-8,
                                  weight_decay=0.0, foreach=False)
    ids = torch.randint(0, cfg.vocab, (batch, seq))
    start = None
    for step in range(steps + 1):  # the first step warms up and is not timed
        if step == 1:
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with (torch.cpu.amp.autocast(dtype=torch.bfloat16) if dtype == "bf16"
              else contextlib.nullcontext()):
            loss = ref.next_token_loss(ref.forward(cfg, params, ids), ids)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    print(json.dumps({"tokens_per_s": steps * batch * seq / seconds, "threads": torch.get_num_threads(),
                      "loss": loss.item(), "dtype": dtype}))


if __name__ == "__main__":
    main()
