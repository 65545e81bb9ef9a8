#!/usr/bin/env python3
"""Reference values for Kiln's GGUF reader, computed by llama.cpp's own gguf-py (its reader and
its numpy dequantization, gguf/quants.py). Nothing of llama.cpp is written, only values.

Usage: GGUF_PY=/tmp/llamacpp/gguf-py tools/gguf_reference_dump.py OUT_DIR FILE.gguf...

Writes into OUT_DIR:
- synthetic.gguf: small tensors of every type Kiln dequantizes (F16, BF16, Q4_0, Q4_1, Q5_0,
  Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) made of random blocks with random finite f16 scales (normal
  and subnormal), and one metadata key of every GGUF value type (scalars and arrays), written
  by gguf-py's GGUFWriter.
- synthetic_dequant.npz: gguf-py's dequantization of each synthetic tensor (f32, shape as
  the tensor's PyTorch shape), named by the tensor.
- fixtures.json: for every tensor of each FILE.gguf: its ggml type, shape and a 64-bit hash of
  gguf-py's dequantized f32 values (hash_f32 below, which the C++ test recomputes), so the
  test checks whole tensors bit for bit.
- fixture_rows.npz: the first two rows of one tensor per (file, type), for readable diffs.
To fetch gguf-py: the `fetch` tool with github:unslothai/llama.cpp, then
`git --git-dir=<path> archive HEAD gguf-py | tar -x -C /tmp/llamacpp`.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.environ.get("GGUF_PY", "/tmp/llamacpp/gguf-py"))
import gguf  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize  # noqa: E402

M64 = (1 << 64) - 1


def hash_f32(values: np.ndarray) -> str:
    """sum_i mix(bits_i + i * golden) mod 2^64, mix = splitmix64's finalizer; as hex."""
    bits = np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = bits + np.arange(bits.size, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
        total = int(x.sum(dtype=np.uint64)) & M64
    return f"{total:016x}"


def random_f16(rng, n):
    """Finite f16 values: mostly normal scales of either sign, some subnormal, some zero."""
    mag = rng.uniform(-12, 2, size=n)
    vals = (np.sign(rng.uniform(-1, 1, size=n)) * np.power(2.0, mag)).astype(np.float16)
    sub = rng.random(n) < 0.15
    vals[sub] = (rng.integers(1, 1024, size=int(sub.sum())).astype(np.uint16)).view(np.float16)
    vals[rng.random(n) < 0.03] = np.float16(0)
    return vals.view(np.uint8).reshape(n, 2)


# (type, block elements, block bytes, byte offsets of f16 fields in a block)
LAYOUTS = [
    (T.Q4_0, 32, 18, [0]),
    (T.Q4_1, 32, 20, [0, 2]),
    (T.Q5_0, 32, 22, [0]),
    (T.Q5_1, 32, 24, [0, 2]),
    (T.Q8_0, 32, 34, [0]),
    (T.Q4_K, 256, 144, [0, 2]),
    (T.Q5_K, 256, 176, [0, 2]),
    (T.Q6_K, 256, 210, [208]),
]


def write_synthetic(out_dir):
    rng = np.random.default_rng(17)
    path = os.path.join(out_dir, "synthetic.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.125)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo ✓")
    w.add_uint64("test.u64", 18000000000000000000)
    w.add_int64("test.i64", -9000000000000000000)
    w.add_float64("test.f64", -2.5e-300)
    w.add_array("test.array_i32", [1, -2, 3])
    w.add_array("test.array_str", ["a", "", "ccc"])
    w.add_array("test.array_f32", [0.5, -1.5])
    w.add_array("test.array_bool", [True, False])
    w.add_key_value("test.array_u8", [1, 2, 255], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT8)
    expected = {}
    rows = 3
    for qtype, block, nbytes, f16_at in LAYOUTS:
        cols = 2 * block
        blocks = rng.integers(0, 256, size=(rows * cols // block, nbytes), dtype=np.uint8)
        for at in f16_at:
            blocks[:, at:at + 2] = random_f16(rng, blocks.shape[0])
        raw = blocks.reshape(rows, cols // block * nbytes)
        name = qtype.name.lower()
        w.add_tensor(name, raw, raw_dtype=qtype)
        expected[name] = dequantize(raw, qtype).reshape(rows, cols)
    f16 = random_f16(rng, 2 * 64).view(np.float16).reshape(2, 64)
    w.add_tensor("f16", f16)
    expected["f16"] = dequantize(f16.view(np.uint8), T.F16).reshape(2, 64)
    bf16 = rng.integers(0, 1 << 16, size=(2, 64), dtype=np.uint16)
    bf16[(bf16 & 0x7F80) == 0x7F80] = 0x3F80  # no inf/NaN
    w.add_tensor("bf16", bf16.view(np.uint8), raw_dtype=T.BF16)
    expected["bf16"] = dequantize(bf16.view(np.uint8), T.BF16).reshape(2, 64)
    w.add_tensor("f32_3d", rng.standard_normal((2, 3, 4)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    # Read back with gguf-py's reader: the values must agree with what was written.
    reader = gguf.GGUFReader(path)
    for t in reader.tensors:
        if t.name in expected:
            got = dequantize(t.data, t.tensor_type).reshape(expected[t.name].shape)
            assert got.tobytes() == expected[t.name].tobytes(), t.name
    np.savez(os.path.join(out_dir, "synthetic_dequant.npz"), **expected)


def dump_fixtures(out_dir, files):
    table = {}
    rows = {}
    for path in files:
        base = os.path.basename(path)
        reader = gguf.GGUFReader(path)
        entries = {}
        seen_types = set()
        for t in reader.tensors:
            shape = [int(x) for x in reversed(t.shape)]
            values = dequantize(t.data, t.tensor_type).reshape(shape)
            entries[t.name] = {"type": t.tensor_type.name, "shape": shape, "hash": hash_f32(values)}
            if t.tensor_type.name not in seen_types and len(shape) == 2:
                seen_types.add(t.tensor_type.name)
                key = base.replace(".gguf", "").replace("-", "_") + "__" + t.name.replace(".", "_")
                rows[key] = np.ascontiguousarray(values[:2], dtype=np.float32)
                entries[t.name]["rows"] = key
        table[base] = entries
    with open(os.path.join(out_dir, "fixtures.json"), "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)
    np.savez(os.path.join(out_dir, "fixture_rows.npz"), **rows)


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    write_synthetic(out_dir)
    dump_fixtures(out_dir, sys.argv[2:])
    print("wrote", out_dir)


if __name__ == "__main__":
    main()
