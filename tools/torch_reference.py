#!/usr/bin/env python3
"""Gradient reference for Kiln's training code: plain-PyTorch forwards of every trainable family
(no transformers).

Handles the fixtures of FAMILIES: llama (with its linear, dynamic, llama3 and yarn RoPE
variants), mistral, qwen2, qwen3 (QK norm per head), gemma, gemma2 (sandwich norms, attention
and final soft-caps, query_pre_attn_scalar), gemma3_text (sandwich norms, QK norm, local/global
layers with their own RoPE), olmo2 (post norms, QK norm over the whole projection), phi3 (fused
qkv and gate_up, LongRoPE), starcoder2 and gpt2 (LayerNorm, non-gated MLP, biases; GPT-2's
learned positions and Conv1D), gpt_neox, phi and falcon (parallel blocks, partial rotary); and
the mixture-of-experts families: mixtral (top-k softmax router), qwen3_moe (softmax then top-k,
renormalized; per-head QK norm), deepseek_v3 (multi-head latent attention with YaRN and
interleaved RoPE; sigmoid router with bias-corrected group top-k, routed scaling, shared
experts, a dense first layer), gpt_oss (attention sinks, alternating sliding/full layers, YaRN,
biased router, clamped SwiGLU experts with biases) and llama4_text (chunked attention, QK L2 norm
after interleaved RoPE, NoPE layers with temperature tuning, sigmoid top-k router weighing the
experts' inputs, a shared expert). As autograd does on the HF formulas, the choice of experts is
not differentiated: the router's gradient flows through the chosen experts' weights.

Needs only torch and numpy (Debian: `apt-get install python3-torch`, run with /usr/bin/python3).
Reads an HF fixture folder (config.json, model.safetensors and reference.safetensors
with `input_ids` and `logits`), checks its own logits against the fixture's (<= 1e-4), then
writes to OUTPUT (safetensors):
  <HF parameter name>   the gradient of the loss for that parameter (f32, HF layout)
  loss                  [1] f64: mean cross-entropy of next-token targets over input_ids
  adamw_losses          [10] f64: the loss before each of 10 AdamW steps on the same batch
                        (lr 1e-3, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only,
                        none on norms, biases and embedding tables; no clipping; an expert no
                        token chose gets a zero gradient, as Kiln steps every parameter)
DeepSeek-V3's e_score_correction_bias is a buffer in transformers: it gets no gradient (and is
not in OUTPUT).

    for m in llama mistral qwen2 gemma qwen3 olmo2 gemma2 gemma3_text llama_rope_linear \
        llama_rope_dynamic llama_rope_llama3 llama_rope_yarn phi3 starcoder2 gpt2 gpt_neox phi \
        falcon mixtral qwen3_moe deepseek_v3 gpt_oss llama4_text; do \
        /usr/bin/python3 tools/torch_reference.py \
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
fc2(act(fc1(x))); the MoE families' attention and expert blocks replace those of the layers
that have them (mla_attention, llama4_attention, moe, gpt_oss_experts, llama4_moe below).
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


MOE_FAMILIES = ("mixtral", "qwen3_moe", "deepseek_v3", "gpt_oss", "llama4_text")
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2",
            "phi3", "starcoder2", "gpt2", "gpt_neox", "phi", "falcon") + MOE_FAMILIES


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
        # QK norm: per head (Qwen3, Qwen3-MoE, Gemma 3) or over the whole projection (OLMo-2);
        # Llama 4's weightless L2 norm after RoPE is llama4_attention's.
        self.qk_norm = {"qwen3": "head", "qwen3_moe": "head", "gemma3_text": "head",
                        "olmo2": "whole"}.get(t)
        # Biases.
        self.qkv_bias = (t in ("qwen2", "starcoder2", "gpt2", "gpt_neox", "phi") or
                         (t in ("llama",) + MOE_FAMILIES and c.get("attention_bias", False)))
        self.o_bias = (t in ("starcoder2", "gpt2", "gpt_neox", "phi") or
                       (t in ("llama", "gpt_oss") and c.get("attention_bias", False)))
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
        elif t in ("gemma2", "gemma3_text", "gpt_oss"):
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
        elif t in ("gpt2", "deepseek_v3"):  # DeepSeek-V3: mla_attention's own
            self.ropes = [None] * self.layers
        else:
            self.ropes = [self.rope_frequencies(c, rope)] * self.layers
        self.moe_config(c, t, path, rope)

    def moe_config(self, c, t, path, rope):
        """The MoE families' router, experts and attention variants."""
        self.sinks = t == "gpt_oss"  # a learned sink logit per head joins every softmax
        if t == "gpt_oss":  # clamped SwiGLU experts behind a biased router
            self.swiglu_limit, self.swiglu_alpha = c.get("swiglu_limit", 7.0), 1.702
        # Llama 4: interleaved RoPE only on the layers whose no_rope_layers entry is 1 (they
        # attend within chunks and L2-normalize q and k after RoPE); the others (NoPE) attend to
        # everything and scale the query by the temperature of its position; MoE layers
        # (moe_layers) with a sigmoid top-k router weighing the experts' inputs, a shared expert.
        self.llama4 = t == "llama4_text"
        if self.llama4:
            self.use_rope = [bool(u) for u in c["no_rope_layers"]]
            self.chunk = c["attention_chunk_size"]
            self.l2_qk = c.get("use_qk_norm", False)
            self.tuning = c.get("attn_temperature_tuning", False)
            self.floor_scale, self.attn_scale = c["floor_scale"], c["attn_scale"]
            self.moe_layers = set(c["moe_layers"])
        if t == "qwen3_moe" and (c.get("mlp_only_layers") or c.get("decoder_sparse_step", 1) != 1):
            sys.exit(f"{path}: Qwen3-MoE's dense layers are not written here")
        self.experts = (c.get("num_local_experts") or c.get("n_routed_experts") or 0
                        if t in MOE_FAMILIES else 0)
        self.top_k = c.get("num_experts_per_tok", 0)
        self.norm_topk = t == "mixtral" or c.get("norm_topk_prob", False)
        self.first_dense = c.get("first_k_dense_replace", 0) if t == "deepseek_v3" else 0
        if t == "deepseek_v3":
            self.n_group, self.topk_group = c["n_group"], c["topk_group"]
            self.routed_scaling = c["routed_scaling_factor"]
            self.q_rank, self.kv_rank = c["q_lora_rank"], c["kv_lora_rank"]
            self.nope, self.rope_dim = c["qk_nope_head_dim"], c["qk_rope_head_dim"]
            self.v_dim = c["v_head_dim"]
            if not c.get("rope_interleave", True) or c.get("moe_layer_freq", 1) != 1:
                sys.exit(f"{path}: only interleaved RoPE and moe_layer_freq 1 are written here")
            # (inv_freq, cos/sin magnitude, rotary dim) of the rotary part of q and k.
            self.mla_rope = self.rope_frequencies(c, rope, self.rope_dim)
            self.mla_yarn = rope

    def is_moe(self, layer):
        if self.llama4:
            return layer in self.moe_layers
        return self.experts > 0 and layer >= self.first_dense

    def rope_frequencies(self, c, rope, dim=None):
        """(inv_freq [rotary / 2], attention scaling, rotary dim) for a sequence of SEQ tokens,
        the HF rope_type formulas (learned from transformers' modeling_rope_utils). `dim`: the
        rotary dim when it is not head_dim times the partial rotary factor (MLA's)."""
        theta = rope.get("rope_theta", c.get("rope_theta", 10000.0))
        partial = rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0))
        dim = dim or int(self.head_dim * partial)
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
            low, high = turns(fast), turns(slow)
            if rope.get("truncate", True):  # gpt-oss: False
                low, high = math.floor(low), math.ceil(high)
            low, high = max(low, 0), min(high, dim - 1)
            if low == high:
                high += 0.001
            ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
            keep = 1 - ramp
            inv_freq = (1.0 / (factor * powers)) * (1 - keep) + (1.0 / powers) * keep
            mscale = lambda m: 0.1 * m * math.log(factor) + 1.0 if factor > 1 else 1.0
            if rope.get("mscale") and rope.get("mscale_all_dim"):  # DeepSeek-V3
                scaling = mscale(rope["mscale"]) / mscale(rope["mscale_all_dim"])
            else:
                scaling = rope.get("attention_factor") or mscale(1.0)
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
    if cfg.type == "deepseek_v3":
        return mla_attention(cfg, p, pre, h)
    if cfg.llama4:
        return llama4_attention(cfg, p, pre, h, i)
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
    if cfg.sinks:  # gpt-oss: a logit per head that joins every softmax with no value
        sink = p[pre + "self_attn.sinks"].reshape(1, Hq, 1, 1).expand(B, Hq, T, 1)
        probs = torch.softmax(torch.cat((scores + mask, sink), dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores + mask, dim=-1)
    mixed = probs @ v  # [B, Hq, T, D]
    mixed = mixed.transpose(1, 2).reshape(B, T, Hq * D)
    if cfg.type == "gpt2":
        return conv1d(p, pre + "attn.c_proj", mixed)
    out = {"gpt_neox": "attention.dense", "falcon": "self_attention.dense",
           "phi": "self_attn.dense"}.get(cfg.type, "self_attn.o_proj")
    return linear(p, pre + out, mixed, cfg.o_bias)


def mlp(cfg, p, i, pre, h):
    t = cfg.type
    if cfg.llama4:
        return (llama4_moe(cfg, p, pre + "feed_forward", h) if cfg.is_moe(i) else
                gated_mlp(p, pre + "feed_forward", h, cfg.act))
    if cfg.is_moe(i):
        return moe(cfg, p, pre, h, cfg.act)
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


def rope_interleaved(x, cos, sin):
    """RoPE on pairs (2i, 2i + 1): x [..., T, P], cos/sin [T, P/2]."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


def attend(q, k, v, causal, scale):
    """q [B, Hq, T, D], k [B, Hkv, T, D], v [B, Hkv, T, Dv] -> [B, T, Hq * Dv]."""
    B, Hq, T, _ = q.shape
    k = k.repeat_interleave(Hq // k.shape[1], dim=1)
    v = v.repeat_interleave(Hq // v.shape[1], dim=1)
    probs = torch.softmax(q @ k.transpose(-1, -2) * scale + causal, dim=-1)
    return (probs @ v).transpose(1, 2).reshape(B, T, -1)


def mla_attention(cfg, p, pre, h):
    """DeepSeek-V3's multi-head latent attention (q_lora_rank > 0)."""
    B, T, _ = h.shape
    H, nope, P, V, R = cfg.heads, cfg.nope, cfg.rope_dim, cfg.v_dim, cfg.kv_rank
    a = pre + "self_attn."
    q_latent = rms_norm(F.linear(h, p[a + "q_a_proj.weight"]), p[a + "q_a_layernorm.weight"], 1e-6)
    q = F.linear(q_latent, p[a + "q_b_proj.weight"]).view(B, T, H, nope + P).transpose(1, 2)
    kv = F.linear(h, p[a + "kv_a_proj_with_mqa.weight"])  # [B, T, R + P]
    latent = rms_norm(kv[..., :R], p[a + "kv_a_layernorm.weight"], 1e-6)
    up = F.linear(latent, p[a + "kv_b_proj.weight"]).view(B, T, H, nope + V).transpose(1, 2)
    inv_freq, magnitude, _ = cfg.mla_rope
    angles = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None, :]  # [T, P/2]
    cos, sin = angles.cos() * magnitude, angles.sin() * magnitude
    q_rot = rope_interleaved(q[..., nope:], cos, sin)
    k_rot = rope_interleaved(kv[..., R:], cos, sin)[:, None].expand(B, H, T, P)
    query = torch.cat((q[..., :nope], q_rot), dim=-1)
    key = torch.cat((up[..., :nope], k_rot), dim=-1)
    scale = (nope + P) ** -0.5
    y = cfg.mla_yarn
    if y.get("mscale_all_dim"):
        m = 0.1 * y["mscale_all_dim"] * math.log(y["factor"]) + 1.0 if y["factor"] > 1 else 1.0
        scale = scale * m * m
    causal = torch.full((T, T), float("-inf")).triu(1)
    mixed = attend(query, key, up[..., nope:], causal, scale)
    return F.linear(mixed, p[a + "o_proj.weight"])


def llama4_attention(cfg, p, pre, h, i):
    B, T, _ = h.shape
    D, Hq, Hkv = cfg.head_dim, cfg.heads, cfg.kv_heads
    a = pre + "self_attn."
    q = F.linear(h, p[a + "q_proj.weight"]).view(B, T, Hq, D).transpose(1, 2)
    k = F.linear(h, p[a + "k_proj.weight"]).view(B, T, Hkv, D).transpose(1, 2)
    v = F.linear(h, p[a + "v_proj.weight"]).view(B, T, Hkv, D).transpose(1, 2)
    positions = torch.arange(T)
    causal = torch.full((T, T), float("-inf")).triu(1)
    if cfg.use_rope[i]:
        angles = positions[:, None].float() * cfg.ropes[i][0][None, :]  # [T, D/2]
        q = rope_interleaved(q, angles.cos(), angles.sin())
        k = rope_interleaved(k, angles.cos(), angles.sin())
        if cfg.l2_qk:
            q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + cfg.eps)
            k = k * torch.rsqrt(k.pow(2).mean(-1, keepdim=True) + cfg.eps)
        # Chunked: key j is visible to query t in the same chunk only.
        chunk_of = positions // cfg.chunk
        causal = causal.masked_fill(chunk_of[:, None] != chunk_of[None, :], float("-inf"))
    elif cfg.tuning:
        scales = torch.log1p(torch.floor((positions.float() + 1) / cfg.floor_scale)) * \
            cfg.attn_scale + 1.0
        q = q * scales[None, None, :, None]
    mixed = attend(q, k, v, causal, D ** -0.5)
    return F.linear(mixed, p[a + "o_proj.weight"])


def gated_mlp(p, module, h, act, bias=False, names=("gate_proj", "up_proj", "down_proj")):
    gate = linear(p, f"{module}.{names[0]}", h, bias)
    up = linear(p, f"{module}.{names[1]}", h, bias)
    return linear(p, f"{module}.{names[2]}", act(gate) * up, bias)


def moe(cfg, p, pre, h, act):
    """Routed experts (plus DeepSeek's shared experts). The weights of the chosen experts
    carry the router's gradient; the choice itself is not differentiated (top-k indices)."""
    B, T, hidden = h.shape
    x = h.reshape(-1, hidden)
    if cfg.type == "gpt_oss":
        return gpt_oss_experts(cfg, p, pre + "mlp", h)
    if cfg.type == "mixtral":
        block, names = pre + "block_sparse_moe", ("w1", "w3", "w2")
    else:
        block, names = pre + "mlp", ("gate_proj", "up_proj", "down_proj")
    logits = F.linear(x, p[block + ".gate.weight"])  # [rows, E]
    if cfg.type == "deepseek_v3":
        scores = torch.sigmoid(logits)
        biased = scores.detach() + p[block + ".gate.e_score_correction_bias"]
        E, G = cfg.experts, cfg.n_group
        group_scores = biased.view(-1, G, E // G).topk(2, dim=-1)[0].sum(dim=-1)
        groups = group_scores.topk(cfg.topk_group, dim=-1)[1]
        keep = torch.zeros_like(group_scores).scatter_(1, groups, 1.0)
        keep = keep[:, :, None].expand(-1, G, E // G).reshape(-1, E)
        chosen = biased.masked_fill(keep == 0, 0.0).topk(cfg.top_k, dim=-1)[1]
        weights = scores.gather(1, chosen)
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        weights = weights * cfg.routed_scaling
    else:
        probs = torch.softmax(logits, dim=-1)
        weights, chosen = probs.topk(cfg.top_k, dim=-1)
        if cfg.norm_topk:
            weights = weights / weights.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(x)
    for e in range(cfg.experts):
        rows, slot = (chosen == e).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        y = gated_mlp(p, f"{block}.experts.{e}", x[rows], act, names=names)
        out = out.index_add(0, rows, y * weights[rows, slot, None])
    if cfg.type == "deepseek_v3":
        out = out + gated_mlp(p, block + ".shared_experts", x, act)
    return out.view(B, T, hidden)


def gpt_oss_experts(cfg, p, block, h):
    """gpt-oss: softmax over the top-k of the biased router logits; experts stacked with gate
    and up interleaved in gate_up_proj [E, H, 2I] (x @ W layout), biases, clamped SwiGLU
    (up + 1) * g * sigmoid(alpha g), g = min(gate, limit), up clamped to [-limit, limit]."""
    B, T, hidden = h.shape
    x = h.reshape(-1, hidden)
    logits = F.linear(x, p[block + ".router.weight"], p[block + ".router.bias"])
    top, chosen = logits.topk(cfg.top_k, dim=-1)
    weights = torch.softmax(top, dim=-1)
    limit, alpha = cfg.swiglu_limit, cfg.swiglu_alpha
    out = torch.zeros_like(x)
    for e in range(cfg.experts):
        rows, slot = (chosen == e).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        gate_up = x[rows] @ p[block + ".experts.gate_up_proj"][e] + \
            p[block + ".experts.gate_up_proj_bias"][e]
        gate = gate_up[..., 0::2].clamp(max=limit)
        up = gate_up[..., 1::2].clamp(min=-limit, max=limit)
        act = (up + 1) * (gate * torch.sigmoid(gate * alpha))
        y = act @ p[block + ".experts.down_proj"][e] + p[block + ".experts.down_proj_bias"][e]
        out = out.index_add(0, rows, y * weights[rows, slot, None])
    return out.view(B, T, hidden)


def llama4_moe(cfg, p, block, h):
    """Top-k router logits through a sigmoid weigh the chosen experts' inputs; experts stacked
    with gate and up as the halves of gate_up_proj [E, H, 2I]; plus the shared expert."""
    B, T, hidden = h.shape
    x = h.reshape(-1, hidden)
    logits = F.linear(x, p[block + ".router.weight"])
    top, chosen = logits.topk(cfg.top_k, dim=-1)
    weights = torch.sigmoid(top)
    out = gated_mlp(p, block + ".shared_expert", x, F.silu)
    for e in range(cfg.experts):
        rows, slot = (chosen == e).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        gate, up = (x[rows] * weights[rows, slot, None] @
                    p[block + ".experts.gate_up_proj"][e]).chunk(2, dim=-1)
        y = (F.silu(gate) * up) @ p[block + ".experts.down_proj"][e]
        out = out.index_add(0, rows, y)
    return out.view(B, T, hidden)


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
            x = x + a + mlp(cfg, p, i, pre, norm(cfg, p, pre + mlp_in, x) if mlp_in else h)
            continue
        x = x + (norm(cfg, p, pre + attn_out, a) if attn_out else a)
        m = mlp(cfg, p, i, pre, norm(cfg, p, pre + mlp_in, x) if mlp_in else x)
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
    # DeepSeek-V3's e_score_correction_bias is a buffer in transformers (no gradient): it only
    # steers the choice of experts.
    params = {n: torch.tensor(w, dtype=torch.float32,
                              requires_grad=not n.endswith("e_score_correction_bias"))
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
    out = {n: t.grad.numpy().astype(np.float32) for n, t in params.items() if t.requires_grad}
    out["loss"] = np.array([loss.item()], dtype=np.float64)

    # AdamW on the same batch: decay matrices only (not norms, biases, embedding tables).
    for t in params.values():
        t.grad = None
    tables = {names(cfg)[0] + ".weight", f"{names(cfg)[1]}.weight"}
    decays = lambda n, t: t.dim() >= 2 and n not in tables
    trained = {n: t for n, t in params.items() if t.requires_grad}
    decay = [t for n, t in trained.items() if decays(n, t)]
    no_decay = [t for n, t in trained.items() if not decays(n, t)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    losses = []
    for step in range(args.steps):
        optimizer.zero_grad(set_to_none=True)
        loss = next_token_loss(forward(cfg, params, ids), ids)
        loss.backward()
        # An expert that no token chose has no gradient (None), and PyTorch's AdamW would skip
        # it (no decay, no momentum). Kiln steps every parameter, with a zero gradient there, as
        # PyTorch does after zero_grad(set_to_none=False): give it that zero gradient.
        for t in trained.values():
            if t.grad is None:
                t.grad = torch.zeros_like(t)
        losses.append(loss.item())
        optimizer.step()
        print(f"adamw step {step}: loss = {losses[-1]:.9f}")
    out["adamw_losses"] = np.array(losses, dtype=np.float64)
    write_safetensors(args.output, out)
    print(f"wrote {args.output}: {len(trained)} gradients, loss, {len(losses)} AdamW losses")


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
