#!/usr/bin/env python3
"""Gradient reference for Kiln's training code: plain-PyTorch forwards of the dense families (no
transformers).

Handles the fixtures of FAMILIES: llama (with its linear, dynamic, llama3 and yarn RoPE
variants), mistral, qwen2, qwen3 (QK norm per head), gemma, gemma2 (sandwich norms, attention
and final soft-caps, query_pre_attn_scalar), gemma3_text (sandwich norms, QK norm, local/global
layers with their own RoPE), olmo2 (post norms, QK norm over the whole projection), phi3 (fused
qkv and gate_up, LongRoPE), starcoder2 and gpt2 (LayerNorm, non-gated MLP, biases; GPT-2's
learned positions and Conv1D), gpt_neox, phi and falcon (parallel blocks, partial rotary).

Needs only torch and numpy (Debian: `apt-get install python3-torch`, run with /usr/bin/python3).
Reads an HF fixture folder (config.json, model.safetensors and reference.safetensors
with `input_ids` and `logits`), checks its own logits against the fixture's (<= 1e-4), then
writes to OUTPUT (safetensors):
  <HF parameter name>   the gradient of the loss for that parameter (f32, HF layout)
  loss                  [1] f64: mean cross-entropy of next-token targets over input_ids
  adamw_losses          [10] f64: the loss before each of 10 AdamW steps on the same batch
                        (lr 1e-3, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only,
                        none on norms, biases and embedding tables; no clipping)

    for m in llama mistral qwen2 gemma qwen3 olmo2 gemma2 gemma3_text llama_rope_linear \
        llama_rope_dynamic llama_rope_llama3 llama_rope_yarn phi3 starcoder2 gpt2 gpt_neox phi \
        falcon; do /usr/bin/python3 tools/torch_reference.py \
        tests/data/hf/$m -o tests/data/train/${m}_grads.safetensors; done

With --lora-rank R (and --lora-alpha A; Llama-named projections only), the base weights are frozen and every q/k/v/o/gate/up/down
projection gets a LoRA adapter y += (A / R) * B (A x) (no dropout), A and B drawn from a seeded
normal distribution (B nonzero, so that both gradients are informative). OUTPUT then holds, under
PEFT's names (base_model.model.<module>.lora_{A,B}.weight), the adapters' values, and under
grad.<PEFT name> their gradients, plus `loss`:

    /usr/bin/python3 tools/torch_reference.py tests/data/hf/llama --lora-rank 4 --lora-alpha 8 \
        -o tests/data/train/llama_lora.safetensors

Each model is written from the formulas of its HF modeling file: embed (times sqrt(hidden) for
the Gemmas, plus learned positions for GPT-2) -> per layer the placement's residual blocks
(pre: x + attn(n(x)), x + mlp(n(x)); post: x + n(attn(x)), x + n(mlp(x)); sandwich:
x + n(attn(n(x))), x + n(mlp(n(x))); parallel: x + attn(n1(x)) + mlp(n2(x))) -> final norm ->
lm_head (optional bias, optional soft-cap). RMSNorm x / sqrt(mean(x^2) + eps) * w (or 1 + w),
LayerNorm F.layer_norm; RoPE on pairs (i, i + r/2) of the first r features with the rope type's
inv_freq and attention scaling; causal softmax(cap tanh(q k^T s / cap)) v with grouped KV heads
and an optional window t - window < j <= t; gated MLP down(act(gate(x)) * up(x)) or plain
fc2(act(fc1(x))).
"""
import argparse
import json
import math
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
          "F16": np.float16}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        array = np.frombuffer(data[base + begin:base + end], dtype=DTYPES[entry["dtype"]])
        tensors[name] = array.reshape(entry["shape"]).copy()
    return tensors


def write_safetensors(path, tensors):
    names = {np.float32: "F32", np.float64: "F64", np.int64: "I64"}
    header, offset, blobs = {}, 0, []
    # Larger elements first so that every tensor is aligned to its element size.
    order = sorted(tensors, key=lambda n: -tensors[n].dtype.itemsize)
    for name in order:
        array = np.ascontiguousarray(tensors[name])
        blob = array.tobytes()
        header[name] = {"dtype": names[array.dtype.type], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((-(8 + len(text))) % 64)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2",
            "phi3", "starcoder2", "gpt2", "gpt_neox", "phi", "falcon")


class Config:
    """The architecture of a fixture, read from config.json: which norms, where, which attention
    and MLP options, and the HF parameter names of each part."""

    def __init__(self, path):
        with open(path) as f:
            c = json.load(f)
        t = c.get("model_type")
        if t not in FAMILIES:
            sys.exit(f"{path}: model_type {t!r} is not one of {', '.join(FAMILIES)}")
        self.type = t
        get = lambda *keys, default=None: next((c[k] for k in keys if c.get(k) is not None),
                                               default)
        self.vocab = c["vocab_size"]
        self.hidden = get("hidden_size", "n_embd")
        self.layers = get("num_hidden_layers", "n_layer")
        self.heads = get("num_attention_heads", "n_head")
        self.kv_heads = get("num_key_value_heads", default=self.heads)
        if t == "falcon":
            self.kv_heads = 1 if c.get("multi_query") else get("num_kv_heads", default=self.heads)
        self.head_dim = c.get("head_dim") or self.hidden // self.heads
        self.inner = get("intermediate_size", "n_inner", "ffn_hidden_size",
                         default=4 * self.hidden)
        self.eps = get("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_epsilon")
        self.tied = c.get("tie_word_embeddings", False)
        # Norms: RMSNorm (w, or 1 + w for the Gemmas) or LayerNorm (with bias).
        self.layer_norm = t in ("starcoder2", "gpt2", "gpt_neox", "phi", "falcon")
        self.one_plus = t.startswith("gemma")
        # Placement: pre (Llama), post (OLMo-2: norms on the branch outputs), sandwich (Gemma 2/3:
        # both), parallel (GPT-NeoX: two norms; Phi, Falcon: one shared norm).
        self.placement = {"olmo2": "post", "gemma2": "sandwich", "gemma3_text": "sandwich",
                          "gpt_neox": "parallel", "phi": "parallel",
                          "falcon": "parallel"}.get(t, "pre")
        if t == "gpt_neox" and not c.get("use_parallel_residual", True):
            self.placement = "pre"
        if t == "falcon" and (c.get("new_decoder_architecture") or not c.get("parallel_attn")):
            sys.exit(f"{path}: only Falcon's parallel block with one norm is written here")
        # QK norm: per head (Qwen3, Gemma 3) or over the whole projection (OLMo-2).
        self.qk_norm = {"qwen3": "head", "gemma3_text": "head", "olmo2": "whole"}.get(t)
        # Biases.
        self.qkv_bias = (t in ("qwen2", "starcoder2", "gpt2", "gpt_neox", "phi") or
                         (t == "llama" and c.get("attention_bias", False)))
        self.o_bias = (t in ("starcoder2", "gpt2", "gpt_neox", "phi") or
                       (t == "llama" and c.get("attention_bias", False)))
        self.mlp_bias = t in ("starcoder2", "gpt2", "gpt_neox", "phi") or c.get("mlp_bias", False)
        if t == "starcoder2" and not c.get("use_bias", True):
            self.qkv_bias = self.o_bias = self.mlp_bias = False
        if t == "falcon" and c.get("bias"):
            sys.exit(f"{path}: Falcon with biases is not written here")
        self.lm_head_bias = t == "phi"
        # MLP: gated (act(gate) * up) or not (act(fc)).
        self.gated = t not in ("starcoder2", "gpt2", "gpt_neox", "phi", "falcon")
        act = get("hidden_activation", "hidden_act", "activation_function", "activation",
                  default="silu")
        acts = {"silu": F.silu, "gelu": F.gelu,
                "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
                "gelu_new": lambda x: F.gelu(x, approximate="tanh")}
        if act not in acts:
            sys.exit(f"{path}: activation {act!r} is not written here")
        self.act = acts[act]
        # Attention: scale, soft-cap, sliding window per layer.
        self.scale = c["query_pre_attn_scalar"] ** -0.5 if t.startswith("gemma") and \
            t != "gemma" else self.head_dim ** -0.5
        self.attn_softcap = c.get("attn_logit_softcapping") if t == "gemma2" else None
        self.final_softcap = c.get("final_logit_softcapping") if t == "gemma2" else None
        types = c.get("layer_types") or ["full_attention"] * self.layers
        window = c.get("sliding_window")
        if t in ("mistral", "starcoder2"):
            self.windows = [window] * self.layers
        elif t in ("gemma2", "gemma3_text"):
            self.windows = [window if k == "sliding_attention" else None for k in types]
        else:
            if c.get("use_sliding_window"):
                sys.exit(f"{path}: a Qwen sliding window is not written here")
            self.windows = [None] * self.layers
        # Embeddings: Gemma's sqrt(hidden) scale, GPT-2's learned positions.
        self.embed_scale = t.startswith("gemma")
        self.learned_positions = t == "gpt2"
        # RoPE per layer (Gemma 3: by layer type).
        rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
        if t == "gemma3_text":
            self.ropes = [self.rope_frequencies(c, rope[k]) for k in types]
        elif t == "gpt2":
            self.ropes = [None] * self.layers
        else:
            self.ropes = [self.rope_frequencies(c, rope)] * self.layers

    def rope_frequencies(self, c, rope):
        """(inv_freq [rotary / 2], attention scaling, rotary dim) for a sequence of SEQ tokens,
        the HF rope_type formulas (learned from transformers' modeling_rope_utils)."""
        theta = rope.get("rope_theta", c.get("rope_theta", 10000.0))
        partial = rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0))
        dim = int(self.head_dim * partial)
        kind = rope.get("rope_type", rope.get("type", "default"))
        powers = theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)
        inv_freq, scaling = 1.0 / powers, 1.0
        max_pos = c.get("max_position_embeddings")
        original = rope.get("original_max_position_embeddings",
                            c.get("original_max_position_embeddings"))
        if kind == "linear":
            inv_freq = inv_freq / rope["factor"]
        elif kind == "dynamic":
            if SEQ > max_pos:  # NTK: theta grown for the longer sequence
                factor = rope["factor"]
                grown = theta * ((factor * torch.tensor(float(SEQ)) / max_pos) -
                                 (factor - 1)) ** (dim / (dim - 2))
                inv_freq = 1.0 / (grown ** (torch.arange(0, dim, 2, dtype=torch.int64).float() /
                                            dim))
        elif kind == "llama3":
            factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
            wavelength = 2 * math.pi / inv_freq
            scaled = torch.where(wavelength > original / low, inv_freq / factor, inv_freq)
            smooth = (original / wavelength - low) / (high - low)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = (wavelength >= original / high) & (wavelength <= original / low)
            inv_freq = torch.where(medium, smoothed, scaled)
        elif kind == "yarn":
            factor = rope["factor"]
            fast, slow = rope.get("beta_fast", 32.0), rope.get("beta_slow", 1.0)
            turns = lambda r: dim * math.log(original / (r * 2 * math.pi)) / (2 * math.log(theta))
            low, high = math.floor(turns(fast)), math.ceil(turns(slow))
            low, high = max(low, 0), min(high, dim - 1)
            if low == high:
                high += 0.001
            ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
            keep = 1 - ramp
            inv_freq = (1.0 / (factor * powers)) * (1 - keep) + (1.0 / powers) * keep
            scaling = rope.get("attention_factor") or (0.1 * math.log(factor) + 1.0
                                                       if factor > 1 else 1.0)
        elif kind == "longrope":
            factors = rope["long_factor"] if SEQ > original else rope["short_factor"]
            inv_freq = 1.0 / (torch.tensor(factors, dtype=torch.float32) * powers)
            factor = max_pos / original
            scaling = rope.get("attention_factor") or (
                math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1 else 1.0)
        elif kind != "default":
            sys.exit(f"rope_type {kind!r} is not written here")
        return inv_freq, scaling, dim


SEQ = 0  # the fixture's sequence length (some RoPE types depend on it)


def norm(cfg, p, name, x, dim_weight=None):
    """The family's norm of x over its last dimension with the parameters `name`.weight/bias."""
    w = p[name + ".weight"]
    if cfg.layer_norm:
        return F.layer_norm(x, (x.shape[-1],), w, p.get(name + ".bias"), cfg.eps)
    return rms_norm(x, w, cfg.eps, cfg.one_plus)


def rms_norm(x, weight, eps, one_plus=False):
    variance = x.pow(2).mean(-1, keepdim=True)
    return (1.0 + weight if one_plus else weight) * (x * torch.rsqrt(variance + eps))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


LORA = {}  # HF module name -> (A [r, in], B [out, r], scale)


def linear(p, name, x, bias):
    y = F.linear(x, p[name + ".weight"], p[name + ".bias"] if bias else None)
    if name in LORA:
        a, b, scale = LORA[name]
        y = y + scale * F.linear(F.linear(x, a), b)
    return y


def conv1d(p, name, x):
    """GPT-2's Conv1D: y = x W + b with W stored [in, out]."""
    return x @ p[name + ".weight"] + p[name + ".bias"]


def project_qkv(cfg, p, pre, h):
    """q [B, T, Hq, D], k and v [B, T, Hkv, D] from the normed input h, under each family's
    names (separate projections, or one fused projection split its own way)."""
    B, T, _ = h.shape
    D, Hq, Hkv = cfg.head_dim, cfg.heads, cfg.kv_heads
    t = cfg.type
    if t == "gpt2":
        q, k, v = conv1d(p, pre + "attn.c_attn", h).split(cfg.hidden, dim=-1)
    elif t == "phi3":  # rows [q; k; v]
        q, k, v = linear(p, pre + "self_attn.qkv_proj", h, False).split(
            [Hq * D, Hkv * D, Hkv * D], dim=-1)
    elif t == "gpt_neox":  # per head [q_h; k_h; v_h]
        qkv = linear(p, pre + "attention.query_key_value", h, True).view(B, T, Hq, 3 * D)
        q, k, v = qkv.split(D, dim=-1)
    elif t == "falcon":  # [q heads; k heads; v heads] (multi-query: one k and one v head)
        qkv = linear(p, pre + "self_attention.query_key_value", h, False).view(
            B, T, Hq + 2 * Hkv, D)
        q, k, v = qkv[:, :, :Hq], qkv[:, :, Hq:Hq + Hkv], qkv[:, :, Hq + Hkv:]
    else:
        q = linear(p, pre + "self_attn.q_proj", h, cfg.qkv_bias)
        k = linear(p, pre + "self_attn.k_proj", h, cfg.qkv_bias)
        v = linear(p, pre + "self_attn.v_proj", h, cfg.qkv_bias)
    if cfg.qk_norm == "whole":  # OLMo-2: over all heads, before the split into heads
        q = rms_norm(q, p[pre + "self_attn.q_norm.weight"], cfg.eps)
        k = rms_norm(k, p[pre + "self_attn.k_norm.weight"], cfg.eps)
    q, k, v = q.reshape(B, T, Hq, D), k.reshape(B, T, Hkv, D), v.reshape(B, T, Hkv, D)
    if cfg.qk_norm == "head":  # Qwen3, Gemma 3: over head_dim
        q = rms_norm(q, p[pre + "self_attn.q_norm.weight"], cfg.eps, cfg.one_plus)
        k = rms_norm(k, p[pre + "self_attn.k_norm.weight"], cfg.eps, cfg.one_plus)
    return q, k, v


def attention(cfg, p, i, pre, h):
    B, T, _ = h.shape
    D, Hq, Hkv = cfg.head_dim, cfg.heads, cfg.kv_heads
    q, k, v = project_qkv(cfg, p, pre, h)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
    if cfg.ropes[i] is not None:  # on the first `rotary` features, pairs (j, j + rotary / 2)
        inv_freq, scaling, rotary = cfg.ropes[i]
        angles = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat((angles, angles), dim=-1)
        cos, sin = emb.cos() * scaling, emb.sin() * scaling  # [T, rotary]
        rot = lambda x: torch.cat((x[..., :rotary] * cos + rotate_half(x[..., :rotary]) * sin,
                                   x[..., rotary:]), dim=-1)
        q, k = rot(q), rot(k)
    k = k.repeat_interleave(Hq // Hkv, dim=1)
    v = v.repeat_interleave(Hq // Hkv, dim=1)
    scores = q @ k.transpose(-1, -2) * cfg.scale
    if cfg.attn_softcap:
        scores = torch.tanh(scores / cfg.attn_softcap) * cfg.attn_softcap
    mask = torch.full((T, T), float("-inf")).triu(1)
    if cfg.windows[i]:  # key j is visible to query t when t - window < j <= t
        mask = mask + torch.full((T, T), float("-inf")).tril(-cfg.windows[i])
    mixed = torch.softmax(scores + mask, dim=-1) @ v  # [B, Hq, T, D]
    mixed = mixed.transpose(1, 2).reshape(B, T, Hq * D)
    if cfg.type == "gpt2":
        return conv1d(p, pre + "attn.c_proj", mixed)
    out = {"gpt_neox": "attention.dense", "falcon": "self_attention.dense",
           "phi": "self_attn.dense"}.get(cfg.type, "self_attn.o_proj")
    return linear(p, pre + out, mixed, cfg.o_bias)


def mlp(cfg, p, pre, h):
    t = cfg.type
    if t == "gpt2":
        return conv1d(p, pre + "mlp.c_proj", cfg.act(conv1d(p, pre + "mlp.c_fc", h)))
    if not cfg.gated:
        fc, out = {"starcoder2": ("mlp.c_fc", "mlp.c_proj"), "phi": ("mlp.fc1", "mlp.fc2"),
                   "gpt_neox": ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
                   "falcon": ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h")}[t]
        return linear(p, pre + out, cfg.act(linear(p, pre + fc, h, cfg.mlp_bias)), cfg.mlp_bias)
    if t == "phi3":  # rows [gate; up]
        gate, up = linear(p, pre + "mlp.gate_up_proj", h, False).chunk(2, dim=-1)
    else:
        gate = linear(p, pre + "mlp.gate_proj", h, cfg.mlp_bias)
        up = linear(p, pre + "mlp.up_proj", h, cfg.mlp_bias)
    return linear(p, pre + "mlp.down_proj", cfg.act(gate) * up, cfg.mlp_bias)


# HF names: the token table, the position table, the layer prefix, the layer norms (attention
# in, MLP in, post-attention, post-MLP), the final norm, the lm_head.
def names(cfg):
    t = cfg.type
    if t == "gpt2":
        return ("transformer.wte", "transformer.wpe", "transformer.h.", "ln_1", "ln_2", None,
                None, "transformer.ln_f", None)
    if t == "gpt_neox":
        return ("gpt_neox.embed_in", None, "gpt_neox.layers.", "input_layernorm",
                "post_attention_layernorm", None, None, "gpt_neox.final_layer_norm", "embed_out")
    if t == "falcon":
        return ("transformer.word_embeddings", None, "transformer.h.", "input_layernorm", None,
                None, None, "transformer.ln_f", "lm_head")
    final = "model.final_layernorm" if t == "phi" else "model.norm"
    if cfg.placement == "post":
        return ("model.embed_tokens", None, "model.layers.", None, None,
                "post_attention_layernorm", "post_feedforward_layernorm", final, "lm_head")
    if cfg.placement == "sandwich":
        return ("model.embed_tokens", None, "model.layers.", "input_layernorm",
                "pre_feedforward_layernorm", "post_attention_layernorm",
                "post_feedforward_layernorm", final, "lm_head")
    if t == "phi":
        return ("model.embed_tokens", None, "model.layers.", "input_layernorm", None, None, None,
                final, "lm_head")
    return ("model.embed_tokens", None, "model.layers.", "input_layernorm",
            "post_attention_layernorm", None, None, final, "lm_head")


def forward(cfg, p, ids):
    B, T = ids.shape
    embed, positions, layer, attn_in, mlp_in, attn_out, mlp_out, final, head = names(cfg)
    x = p[embed + ".weight"][ids]  # [B, T, hidden]
    if cfg.embed_scale:
        x = x * torch.tensor(cfg.hidden ** 0.5, dtype=torch.float32)
    if positions:
        x = x + p[positions + ".weight"][torch.arange(T)][None]
    for i in range(cfg.layers):
        pre = f"{layer}{i}."
        h = norm(cfg, p, pre + attn_in, x) if attn_in else x
        a = attention(cfg, p, i, pre, h)
        if cfg.placement == "parallel":  # x + attn(n1(x)) + mlp(n2(x)) (n2 = n1 when shared)
            x = x + a + mlp(cfg, p, pre, norm(cfg, p, pre + mlp_in, x) if mlp_in else h)
            continue
        x = x + (norm(cfg, p, pre + attn_out, a) if attn_out else a)
        m = mlp(cfg, p, pre, norm(cfg, p, pre + mlp_in, x) if mlp_in else x)
        x = x + (norm(cfg, p, pre + mlp_out, m) if mlp_out else m)
    x = norm(cfg, p, final, x)
    weight = p[embed + ".weight"] if cfg.tied else p[head + ".weight"]
    logits = F.linear(x, weight, p[head + ".bias"] if cfg.lm_head_bias else None)  # [B, T, V]
    if cfg.final_softcap:
        logits = torch.tanh(logits / cfg.final_softcap) * cfg.final_softcap
    return logits


def next_token_loss(logits, ids):
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--lora-alpha", type=float, default=8.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    weights = read_safetensors(args.model_dir + "/model.safetensors")
    reference = read_safetensors(args.model_dir + "/reference.safetensors")
    ids = torch.from_numpy(reference["input_ids"].astype(np.int64))
    global SEQ
    SEQ = ids.shape[1]
    cfg = Config(args.model_dir + "/config.json")
    params = {n: torch.tensor(w, dtype=torch.float32, requires_grad=True)
              for n, w in weights.items() if not (cfg.tied and n == "lm_head.weight")}

    logits = forward(cfg, params, ids)
    err = (logits.detach() - torch.from_numpy(reference["logits"])).abs().max().item()
    print(f"logits vs fixture: max abs err = {err:.3g}")
    if err > 1e-4:
        sys.exit("the reference forward does not reproduce the fixture's logits")
    if args.lora_rank > 0:
        return lora_main(args, cfg, params, ids)
    loss = next_token_loss(logits, ids)
    loss.backward()
    print(f"loss = {loss.item():.9f}")
    out = {n: t.grad.numpy().astype(np.float32) for n, t in params.items()}
    out["loss"] = np.array([loss.item()], dtype=np.float64)

    # AdamW on the same batch: decay matrices only (not norms, biases, embedding tables).
    for t in params.values():
        t.grad = None
    tables = {names(cfg)[0] + ".weight", f"{names(cfg)[1]}.weight"}
    decays = lambda n, t: t.dim() >= 2 and n not in tables
    decay = [t for n, t in params.items() if decays(n, t)]
    no_decay = [t for n, t in params.items() if not decays(n, t)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    losses = []
    for step in range(args.steps):
        optimizer.zero_grad(set_to_none=True)
        loss = next_token_loss(forward(cfg, params, ids), ids)
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
        print(f"adamw step {step}: loss = {losses[-1]:.9f}")
    out["adamw_losses"] = np.array(losses, dtype=np.float64)
    write_safetensors(args.output, out)
    print(f"wrote {args.output}: {len(params)} gradients, loss, {len(losses)} AdamW losses")


def lora_main(args, cfg, params, ids):
    """Frozen base weights, LoRA adapters on every projection; dumps the adapters' gradients."""
    r, scale = args.lora_rank, args.lora_alpha / args.lora_rank
    generator = torch.Generator().manual_seed(1234)
    for t in params.values():
        t.requires_grad_(False)
    modules = [f"model.layers.{i}.{m}" for i in range(cfg.layers)
               for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                         "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    for name in modules:
        out_dim, in_dim = params[name + ".weight"].shape
        a = (torch.randn(r, in_dim, generator=generator) / in_dim ** 0.5).requires_grad_(True)
        b = (torch.randn(out_dim, r, generator=generator) * 0.05).requires_grad_(True)
        LORA[name] = (a, b, scale)
    loss = next_token_loss(forward(cfg, params, ids), ids)
    loss.backward()
    print(f"lora loss = {loss.item():.9f}")
    out = {"loss": np.array([loss.item()], dtype=np.float64)}
    for name, (a, b, _) in LORA.items():
        for part, t in (("lora_A", a), ("lora_B", b)):
            peft = f"base_model.model.{name}.{part}.weight"
            out[peft] = t.detach().numpy().astype(np.float32)
            out["grad." + peft] = t.grad.numpy().astype(np.float32)
    write_safetensors(args.output, out)
    print(f"wrote {args.output}: {len(LORA)} adapters (rank {r}, scale {scale}), their gradients")


if __name__ == "__main__":
    main()
