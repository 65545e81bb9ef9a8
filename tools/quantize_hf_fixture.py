#!/usr/bin/env python3
"""Makes a pre-quantized copy of an HF fixture model, as DeepSeek-V3/R1 (fp8) and gpt-oss (MXFP4)
publish theirs, for Kiln's tests of reading such checkpoints (src/kiln/io/hf_quantized.h).

Needs only numpy (torch 1.13 here has no float8); run with /usr/bin/python3:

    /usr/bin/python3 tools/quantize_hf_fixture.py fp8 tests/data/hf/deepseek_v3 \
        tests/data/hf_quantized/deepseek_v3_fp8 --block 32 48
    /usr/bin/python3 tools/quantize_hf_fixture.py mxfp4 tests/data/hf/gpt_oss \
        tests/data/hf_quantized/gpt_oss_mxfp4

fp8: every 2-D projection weight of the decoder layers (`*proj.weight`, `*_with_mqa.weight`;
not embeddings, norms, the router, lm_head) becomes float8 e4m3fn (safetensors "F8_E4M3") in
blocks of BR x BC (rows = outputs, columns = inputs; edge blocks partial), with
`<name>_scale_inv` (f32 [ceil(rows/BR), ceil(cols/BC)]) = amax(block) / 448 (1 for an all-zero
block), the value multiplied back in: w ~ fp8 * scale_inv. Encoding rounds to nearest even.
config.json gains quantization_config {quant_method "fp8", fmt "e4m3", activation_scheme
"dynamic", weight_block_size [BR, BC]}.

mxfp4: the stacked experts `mlp.experts.gate_up_proj` and `down_proj` ([E, in, out]) become
`<name>_blocks` (uint8 [E, out, in/32, 16]) and `<name>_scales` (uint8 [E, out, in/32]):
the [E, out, in] matrix in blocks of 32 along `in`, each with the shared exponent
e = floor(log2(amax)) - 2 (the OCP MX rule for e2m1, whose largest value is 6 = 1.5 * 2^2),
stored as e + 127, and its 32 values x / 2^e rounded to the nearest e2m1 value
(0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives; ties to the even code, beyond 6 clamped), packed two
per byte with the first value in the low nibble. config.json gains quantization_config
{quant_method "mxfp4", modules_to_not_convert [...]} as gpt-oss's.

Both write `dequantized.safetensors` beside the model: this script's own dequantization of every
quantized tensor under its unquantized name and layout, in bf16 (rounded to nearest even from
the f32 product fp8 * scale_inv; MXFP4 values are exact), the values Kiln's loader must produce.
The other files of the source (config.json edited, generation_config.json) are copied; the
fixture's reference.safetensors is not (its activations are the unquantized model's).
"""

import argparse
import json
import os
import shutil
import struct

import numpy as np

F8_MAX = 448.0


# ---- safetensors (only what the fixtures use) ----

DTYPES = {"F32": np.float32, "U8": np.uint8, "F8_E4M3": np.uint8, "BF16": np.uint16}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        if entry["dtype"] not in ("F32",):
            raise SystemExit(f"{path}: tensor {name}: dtype {entry['dtype']} not handled")
        out[name] = np.frombuffer(data[begin:end], dtype=np.float32).reshape(entry["shape"]).copy()
    return out


def write_safetensors(path, tensors):
    """tensors: name -> (dtype name, array of the storage type)."""
    order = sorted(tensors, key=lambda n: -tensors[n][1].dtype.itemsize)  # aligned offsets
    header, offset, blobs = {}, 0, []
    for name in order:
        dtype, array = tensors[name]
        blob = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":"))
    text += " " * ((8 + len(text) + 63) // 64 * 64 - 8 - len(text))
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text.encode())
        for blob in blobs:
            f.write(blob)


def to_bf16_bits(x):
    """f32 -> bf16 bits, round to nearest even (no NaNs occur here)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = u + 0x7FFF + ((u >> 16) & 1)
    return (u >> 16).astype(np.uint16)


# ---- float8 e4m3fn ----

def f8_table():
    """The f32 value of each of the 256 codes (NaN for 0x7F, 0xFF)."""
    values = np.zeros(256, dtype=np.float32)
    for code in range(256):
        exponent, mantissa = (code >> 3) & 0xF, code & 7
        if exponent == 15 and mantissa == 7:
            v = np.nan
        elif exponent == 0:
            v = mantissa * 2.0 ** -9
        else:
            v = (1 + mantissa / 8) * 2.0 ** (exponent - 7)
        values[code] = -v if code & 0x80 else v
    return values


F8_VALUES = f8_table()
assert F8_VALUES[0x7E] == 448 and F8_VALUES[0x01] == 2.0 ** -9 and F8_VALUES[0x38] == 1.0


def f8_encode(x):
    """Nearest e4m3fn code, ties to the even code, magnitudes clamped to 448."""
    positive = F8_VALUES[:0x7F].astype(np.float64)  # codes 0..126, increasing
    a = np.minimum(np.abs(x.astype(np.float64)), F8_MAX)
    hi = np.clip(np.searchsorted(positive, a), 1, 126)
    lo = hi - 1
    d_lo, d_hi = a - positive[lo], positive[hi] - a
    code = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, np.where(lo % 2 == 0, lo, hi)))
    return (code | np.where(np.signbit(x), 0x80, 0)).astype(np.uint8)


def quantize_fp8(w, br, bc):
    rows, cols = w.shape
    sr, sc = -(-rows // br), -(-cols // bc)
    q = np.zeros(w.shape, dtype=np.uint8)
    scale_inv = np.ones((sr, sc), dtype=np.float32)
    for i in range(sr):
        for j in range(sc):
            block = w[i * br:(i + 1) * br, j * bc:(j + 1) * bc]
            amax = np.float32(np.abs(block).max())
            s = np.float32(amax / np.float32(F8_MAX)) if amax > 0 else np.float32(1)
            scale_inv[i, j] = s
            q[i * br:(i + 1) * br, j * bc:(j + 1) * bc] = f8_encode(block / s)
    return q, scale_inv


def dequantize_fp8(q, scale_inv, br, bc):
    expanded = np.repeat(np.repeat(scale_inv, br, axis=0), bc, axis=1)[:q.shape[0], :q.shape[1]]
    return (F8_VALUES[q] * expanded).astype(np.float32)  # f32 * f32, rounded once


# ---- MXFP4 (e2m1 values, e8m0 block exponents) ----

FP4_VALUES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6],
                      dtype=np.float32)


def fp4_encode(x):
    """Nearest e2m1 code of x (already divided by the block scale), ties to the even code."""
    grid = FP4_VALUES[:8].astype(np.float64)
    a = np.minimum(np.abs(x.astype(np.float64)), 6.0)
    hi = np.clip(np.searchsorted(grid, a), 1, 7)
    lo = hi - 1
    d_lo, d_hi = a - grid[lo], grid[hi] - a
    code = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, np.where(lo % 2 == 0, lo, hi)))
    return (code | np.where(np.signbit(x), 8, 0)).astype(np.uint8)


def quantize_mxfp4(w):
    """w: [E, out, in] -> blocks [E, out, in/32, 16], scales [E, out, in/32]."""
    e, rows, cols = w.shape
    assert cols % 32 == 0, f"input size {cols} is not a multiple of 32"
    grouped = w.reshape(e, rows, cols // 32, 32).astype(np.float64)
    amax = np.abs(grouped).max(axis=-1)
    with np.errstate(divide="ignore"):
        exponent = np.where(amax > 0, np.floor(np.log2(np.where(amax > 0, amax, 1))) - 2, -127)
    exponent = np.clip(exponent, -127, 127).astype(np.int64)
    codes = fp4_encode(grouped / np.exp2(exponent)[..., None])
    blocks = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    return blocks, (exponent + 127).astype(np.uint8)


def dequantize_mxfp4(blocks, scales):
    lo, hi = FP4_VALUES[blocks & 0x0F], FP4_VALUES[blocks >> 4]
    values = np.stack([lo, hi], axis=-1).reshape(*blocks.shape[:-1], 32)
    values = np.ldexp(values, scales.astype(np.int32)[..., None] - 127).astype(np.float32)
    return values.reshape(*blocks.shape[:-2], -1)  # [E, out, in]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("method", choices=["fp8", "mxfp4"])
    p.add_argument("source")
    p.add_argument("dest")
    p.add_argument("--block", type=int, nargs=2, default=[128, 128], metavar=("ROWS", "COLS"),
                   help="fp8 weight_block_size (default 128 128)")
    args = p.parse_args()

    weights = read_safetensors(os.path.join(args.source, "model.safetensors"))
    with open(os.path.join(args.source, "config.json")) as f:
        config = json.load(f)
    out, dequantized = {}, {}
    for name, w in weights.items():
        if args.method == "fp8" and name.startswith("model.layers.") and w.ndim == 2 and (
                name.endswith("proj.weight") or name.endswith("_with_mqa.weight")):
            br, bc = args.block
            q, scale_inv = quantize_fp8(w, br, bc)
            out[name] = ("F8_E4M3", q)
            out[name + "_scale_inv"] = ("F32", scale_inv)
            dequantized[name] = ("BF16", to_bf16_bits(dequantize_fp8(q, scale_inv, br, bc)))
        elif args.method == "mxfp4" and (name.endswith("mlp.experts.gate_up_proj") or
                                         name.endswith("mlp.experts.down_proj")):
            blocks, scales = quantize_mxfp4(np.ascontiguousarray(w.transpose(0, 2, 1)))
            out[name + "_blocks"] = ("U8", blocks)
            out[name + "_scales"] = ("U8", scales)
            back = np.ascontiguousarray(dequantize_mxfp4(blocks, scales).transpose(0, 2, 1))
            dequantized[name] = ("BF16", to_bf16_bits(back))
        else:
            out[name] = ("F32", w)
    if args.method == "fp8":
        config["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3",
                                         "quant_method": "fp8", "weight_block_size": args.block}
    else:
        config["quantization_config"] = {
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                       "model.embed_tokens", "lm_head"],
            "quant_method": "mxfp4"}
    os.makedirs(args.dest, exist_ok=True)
    write_safetensors(os.path.join(args.dest, "model.safetensors"), out)
    write_safetensors(os.path.join(args.dest, "dequantized.safetensors"), dequantized)
    with open(os.path.join(args.dest, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    generation = os.path.join(args.source, "generation_config.json")
    if os.path.exists(generation):
        shutil.copy(generation, args.dest)
    errors = [np.abs(weights[n] - dequantized_f32).max() / np.abs(weights[n]).max()
              for n, dequantized_f32 in
              ((n, (d[1].astype(np.uint32) << 16).view(np.float32)) for n, d in dequantized.items())]
    print(f"{args.dest}: {len(dequantized)} tensors quantized ({args.method}); "
          f"largest error / largest |w| of a tensor: {max(errors):.4f}")


if __name__ == "__main__":
    main()
