#!/usr/bin/env python3
"""Gradient reference for Kiln's training code: a plain-PyTorch forward (no transformers).

Handles the Llama, Mistral (sliding window), Qwen2 (q/k/v biases) and Gemma (1+w RMSNorm, scaled
embeddings, tanh-GELU gated MLP) fixtures with the default RoPE, tied or untied embeddings, and
the mixture-of-experts families: Mixtral (top-k softmax router), Qwen3-MoE (softmax then top-k,
renormalized; per-head QK RMSNorm), DeepSeek-V3 (multi-head latent attention with YaRN and
interleaved RoPE; sigmoid router with bias-corrected group top-k, routed scaling, shared
experts, a dense first layer), gpt-oss (attention sinks, alternating sliding/full layers, YaRN,
biased router, clamped SwiGLU experts with biases) and Llama 4 (chunked attention, QK L2 norm
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
                        none on norms and embeddings; no clipping; an expert no token chose
                        gets a zero gradient, as Kiln steps every parameter)

    for m in llama mistral qwen2 gemma mixtral qwen3_moe deepseek_v3 gpt_oss llama4_text; do
        /usr/bin/python3 tools/torch_reference.py tests/data/hf/$m \
            -o tests/data/train/${m}_grads.safetensors; done

With --lora-rank R (and --lora-alpha A), the base weights are frozen and every q/k/v/o/gate/up/down
projection gets a LoRA adapter y += (A / R) * B (A x) (no dropout), A and B drawn from a seeded
normal distribution (B nonzero, so that both gradients are informative). OUTPUT then holds, under
PEFT's names (base_model.model.<module>.lora_{A,B}.weight), the adapters' values, and under
grad.<PEFT name> their gradients, plus `loss`:

    /usr/bin/python3 tools/torch_reference.py tests/data/hf/llama --lora-rank 4 --lora-alpha 8 \
        -o tests/data/train/llama_lora.safetensors

The model is written from the formulas (HF's LlamaForCausalLM): embed -> per layer
x + attn(rmsnorm(x)), x + mlp(rmsnorm(x)) -> rmsnorm -> lm_head, RMSNorm x / sqrt(mean(x^2) +
eps) * w, RoPE on pairs (i, i + d/2) with inv_freq theta^(-2i/d), causal softmax(q k^T / sqrt(d))
v with grouped KV heads, SwiGLU MLP down(silu(gate(x)) * up(x)).
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


class Config:
    def __init__(self, path):
        with open(path) as f:
            c = json.load(f)
        model_type = c.get("model_type")
        known = ("llama", "mistral", "qwen2", "gemma", "mixtral", "qwen3_moe", "deepseek_v3",
                 "gpt_oss", "llama4_text")
        if model_type not in known:
            sys.exit(f"{path}: model_type {model_type!r} is not one of {', '.join(known)}")
        self.model_type = model_type
        # Gemma: RMSNorm times (1 + w), embeddings times sqrt(hidden) (an f32 constant), GeGLU
        # with the tanh GELU.
        self.gemma = model_type == "gemma"
        rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
        self.rope_type = rope.get("rope_type", rope.get("type", "default"))
        if self.rope_type == "yarn" and model_type in ("deepseek_v3", "gpt_oss"):
            self.yarn = rope
        elif self.rope_type != "default":
            sys.exit(f"{path}: only the default RoPE (and DeepSeek-V3's YaRN) is written here")
        self.vocab = c["vocab_size"]
        self.hidden = c["hidden_size"]
        self.layers = c["num_hidden_layers"]
        self.heads = c["num_attention_heads"]
        self.kv_heads = c.get("num_key_value_heads", self.heads)
        self.head_dim = c.get("head_dim") or self.hidden // self.heads
        self.eps = c["rms_norm_eps"]
        self.theta = rope.get("rope_theta", c.get("rope_theta", 10000.0))
        # Llama: attention_bias on q, k, v and o; Qwen2: always on q, k, v, never on o.
        self.qkv_bias = model_type == "qwen2" or c.get("attention_bias", False)
        self.o_bias = model_type in ("llama", "gpt_oss") and c.get("attention_bias", False)
        # Mistral: key j is visible to query t when t - window < j <= t (None: all j <= t).
        self.window = c.get("sliding_window") if model_type == "mistral" else None
        # gpt-oss: layers alternate sliding-window and full attention; every attention has a
        # learned sink logit per head; clamped SwiGLU experts behind a biased router.
        self.layer_windows = [self.window] * self.layers
        self.sinks = model_type == "gpt_oss"
        if model_type == "gpt_oss":
            types = c.get("layer_types") or ["sliding_attention" if i % 2 == 0 else
                                             "full_attention" for i in range(self.layers)]
            self.layer_windows = [c["sliding_window"] if t == "sliding_attention" else None
                                  for t in types]
            self.swiglu_limit, self.swiglu_alpha = c.get("swiglu_limit", 7.0), 1.702
        # Llama 4: interleaved RoPE only on the layers whose no_rope_layers entry is 1 (they
        # attend within chunks and L2-normalize q and k after RoPE); the others (NoPE) attend to
        # everything and scale the query by the temperature of its position; MoE layers
        # (moe_layers) with a sigmoid top-k router weighing the experts' inputs, a shared expert.
        self.llama4 = model_type == "llama4_text"
        if self.llama4:
            self.use_rope = [bool(u) for u in c["no_rope_layers"]]
            self.chunk = c["attention_chunk_size"]
            self.layer_windows = [None] * self.layers
            self.l2_qk = c.get("use_qk_norm", False)
            self.tuning = c.get("attn_temperature_tuning", False)
            self.floor_scale, self.attn_scale = c["floor_scale"], c["attn_scale"]
            self.moe_layers = set(c["moe_layers"])
            self.dense_inner = c["intermediate_size_mlp"]
        if model_type == "qwen2" and c.get("use_sliding_window"):
            sys.exit(f"{path}: Qwen2's sliding window is not written here")
        if model_type == "qwen3_moe" and (c.get("use_sliding_window") or c.get("mlp_only_layers")
                                          or c.get("decoder_sparse_step", 1) != 1):
            sys.exit(f"{path}: Qwen3-MoE's sliding window and dense layers are not written here")
        self.mlp_bias = c.get("mlp_bias", False)
        self.tied = c.get("tie_word_embeddings", False)
        act = c.get("hidden_activation") or c.get("hidden_act", "silu")
        if act not in ("silu", "gelu_pytorch_tanh"):
            sys.exit(f"{path}: hidden_act must be silu or gelu_pytorch_tanh")
        self.act = act
        # Qwen3-MoE: an RMSNorm (weight [head_dim]) on every query and key head before RoPE.
        self.qk_norm = model_type == "qwen3_moe"
        self.llama4 = model_type == "llama4_text"
        # Mixture of experts: which layers, the router and the experts.
        self.experts = c.get("num_local_experts") or c.get("n_routed_experts") or 0
        self.top_k = c.get("num_experts_per_tok", 0)
        self.norm_topk = model_type == "mixtral" or c.get("norm_topk_prob", False)
        self.expert_inner = c.get("moe_intermediate_size") or c.get("intermediate_size")
        self.first_dense = c.get("first_k_dense_replace", 0) if model_type == "deepseek_v3" else 0
        if model_type == "deepseek_v3":
            self.n_group, self.topk_group = c["n_group"], c["topk_group"]
            self.routed_scaling = c["routed_scaling_factor"]
            self.shared_inner = c["n_shared_experts"] * c["moe_intermediate_size"]
            self.q_rank, self.kv_rank = c["q_lora_rank"], c["kv_lora_rank"]
            self.nope, self.rope_dim = c["qk_nope_head_dim"], c["qk_rope_head_dim"]
            self.v_dim = c["v_head_dim"]
            if not c.get("rope_interleave", True) or c.get("moe_layer_freq", 1) != 1:
                sys.exit(f"{path}: only interleaved RoPE and moe_layer_freq 1 are written here")

    def is_moe(self, layer):
        if self.model_type == "llama4_text":
            return layer in self.moe_layers
        return self.experts > 0 and layer >= self.first_dense


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


def yarn_inv_freq(cfg, dim):
    """DeepSeek-V3's YaRN: frequencies blended between theta^(-2i/d) and that over factor
    along a linear ramp between the correction dims of beta_fast and beta_slow turns; the
    cos/sin magnitude is mscale(factor, mscale) / mscale(factor, mscale_all_dim)."""
    y = cfg.yarn
    factor, context = y["factor"], y["original_max_position_embeddings"]
    fast, slow = y.get("beta_fast", 32.0), y.get("beta_slow", 1.0)

    def mscale(m):
        return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0

    def correction_dim(turns):
        return dim * math.log(context / (turns * 2 * math.pi)) / (2 * math.log(cfg.theta))

    low, high = correction_dim(fast), correction_dim(slow)
    if y.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    powers = cfg.theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp
    inv_freq = (1.0 / (factor * powers)) * (1 - keep) + (1.0 / powers) * keep
    if y.get("mscale") and y.get("mscale_all_dim"):
        magnitude = mscale(y["mscale"]) / mscale(y["mscale_all_dim"])
    else:
        magnitude = mscale(1.0)
    return inv_freq, magnitude


def rope_interleaved(x, cos, sin):
    """RoPE on pairs (2i, 2i + 1): x [..., T, P], cos/sin [T, P/2]."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


def attend(q, k, v, causal, scale, sinks=None):
    """q [B, Hq, T, D], k [B, Hkv, T, D], v [B, Hkv, T, Dv] -> [B, T, Hq * Dv]. sinks [Hq]: a
    logit per head that joins every softmax with no value."""
    B, Hq, T, _ = q.shape
    k = k.repeat_interleave(Hq // k.shape[1], dim=1)
    v = v.repeat_interleave(Hq // v.shape[1], dim=1)
    scores = q @ k.transpose(-1, -2) * scale + causal
    if sinks is None:
        probs = torch.softmax(scores, dim=-1)
    else:
        sink = sinks.reshape(1, Hq, 1, 1).expand(B, Hq, T, 1)
        probs = torch.softmax(torch.cat((scores, sink), dim=-1), dim=-1)[..., :-1]
    return (probs @ v).transpose(1, 2).reshape(B, T, -1)


def mla_attention(cfg, p, pre, h, causal):
    """DeepSeek-V3's multi-head latent attention (q_lora_rank > 0)."""
    B, T, _ = h.shape
    H, nope, P, V, R = cfg.heads, cfg.nope, cfg.rope_dim, cfg.v_dim, cfg.kv_rank
    a = pre + "self_attn."
    q_latent = rms_norm(F.linear(h, p[a + "q_a_proj.weight"]), p[a + "q_a_layernorm.weight"], 1e-6)
    q = F.linear(q_latent, p[a + "q_b_proj.weight"]).view(B, T, H, nope + P).transpose(1, 2)
    kv = F.linear(h, p[a + "kv_a_proj_with_mqa.weight"])  # [B, T, R + P]
    latent = rms_norm(kv[..., :R], p[a + "kv_a_layernorm.weight"], 1e-6)
    up = F.linear(latent, p[a + "kv_b_proj.weight"]).view(B, T, H, nope + V).transpose(1, 2)
    inv_freq, magnitude = yarn_inv_freq(cfg, P)
    angles = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None, :]  # [T, P/2]
    cos, sin = angles.cos() * magnitude, angles.sin() * magnitude
    q_rot = rope_interleaved(q[..., nope:], cos, sin)
    k_rot = rope_interleaved(kv[..., R:], cos, sin)[:, None].expand(B, H, T, P)
    query = torch.cat((q[..., :nope], q_rot), dim=-1)
    key = torch.cat((up[..., :nope], k_rot), dim=-1)
    scale = (nope + P) ** -0.5
    y = cfg.yarn
    if y.get("mscale_all_dim"):
        m = 0.1 * y["mscale_all_dim"] * math.log(y["factor"]) + 1.0 if y["factor"] > 1 else 1.0
        scale = scale * m * m
    mixed = attend(query, key, up[..., nope:], causal, scale)
    return F.linear(mixed, p[a + "o_proj.weight"])


def gqa_attention(cfg, p, pre, h, causal, cos, sin):
    B, T, _ = h.shape
    D, Hq, Hkv = cfg.head_dim, cfg.heads, cfg.kv_heads
    q = linear(p, pre + "self_attn.q_proj", h, cfg.qkv_bias).view(B, T, Hq, D)
    k = linear(p, pre + "self_attn.k_proj", h, cfg.qkv_bias).view(B, T, Hkv, D)
    v = linear(p, pre + "self_attn.v_proj", h, cfg.qkv_bias).view(B, T, Hkv, D)
    if cfg.qk_norm:  # per head, before RoPE
        q = rms_norm(q, p[pre + "self_attn.q_norm.weight"], cfg.eps)
        k = rms_norm(k, p[pre + "self_attn.k_norm.weight"], cfg.eps)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    sinks = p[pre + "self_attn.sinks"] if cfg.sinks else None
    mixed = attend(q, k, v, causal, D ** -0.5, sinks)
    return linear(p, pre + "self_attn.o_proj", mixed, cfg.o_bias)


def gated_mlp(p, module, h, act, bias=False, names=("gate_proj", "up_proj", "down_proj")):
    gate = linear(p, f"{module}.{names[0]}", h, bias)
    up = linear(p, f"{module}.{names[1]}", h, bias)
    return linear(p, f"{module}.{names[2]}", act(gate) * up, bias)


def moe(cfg, p, pre, h, act):
    """Routed experts (plus DeepSeek's shared experts). The weights of the chosen experts
    carry the router's gradient; the choice itself is not differentiated (top-k indices)."""
    B, T, hidden = h.shape
    x = h.reshape(-1, hidden)
    if cfg.model_type == "gpt_oss":
        return gpt_oss_experts(cfg, p, pre + "mlp", h)
    if cfg.model_type == "mixtral":
        block, names = pre + "block_sparse_moe", ("w1", "w3", "w2")
    else:
        block, names = pre + "mlp", ("gate_proj", "up_proj", "down_proj")
    logits = F.linear(x, p[block + ".gate.weight"])  # [rows, E]
    if cfg.model_type == "deepseek_v3":
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
    if cfg.model_type == "deepseek_v3":
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


def llama4_attention(cfg, p, pre, h, i, inv_freq):
    B, T, _ = h.shape
    D, Hq, Hkv = cfg.head_dim, cfg.heads, cfg.kv_heads
    a = pre + "self_attn."
    q = F.linear(h, p[a + "q_proj.weight"]).view(B, T, Hq, D).transpose(1, 2)
    k = F.linear(h, p[a + "k_proj.weight"]).view(B, T, Hkv, D).transpose(1, 2)
    v = F.linear(h, p[a + "v_proj.weight"]).view(B, T, Hkv, D).transpose(1, 2)
    positions = torch.arange(T)
    causal = torch.full((T, T), float("-inf")).triu(1)
    if cfg.use_rope[i]:
        angles = positions[:, None].float() * inv_freq[None, :]  # [T, D/2]
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


def forward(cfg, p, ids):
    B, T = ids.shape
    D = cfg.head_dim
    x = p["model.embed_tokens.weight"][ids]  # [B, T, hidden]
    if cfg.gemma:
        x = x * torch.tensor(cfg.hidden ** 0.5, dtype=torch.float32)
    act = F.silu if cfg.act == "silu" else (lambda g: F.gelu(g, approximate="tanh"))
    magnitude = 1.0
    if cfg.model_type == "gpt_oss":
        inv_freq, magnitude = yarn_inv_freq(cfg, D)
    else:
        inv_freq = 1.0 / (cfg.theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    angles = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None, :]  # [T, D/2]
    emb = torch.cat((angles, angles), dim=-1)
    cos, sin = emb.cos() * magnitude, emb.sin() * magnitude  # [T, D]
    for i in range(cfg.layers):
        causal = torch.full((T, T), float("-inf")).triu(1)
        if cfg.layer_windows[i]:
            causal = causal + torch.full((T, T), float("-inf")).tril(-cfg.layer_windows[i])
        pre = f"model.layers.{i}."
        h = rms_norm(x, p[pre + "input_layernorm.weight"], cfg.eps, cfg.gemma)
        if cfg.model_type == "deepseek_v3":
            x = x + mla_attention(cfg, p, pre, h, causal)
        elif cfg.model_type == "llama4_text":
            x = x + llama4_attention(cfg, p, pre, h, i, inv_freq)
        else:
            x = x + gqa_attention(cfg, p, pre, h, causal, cos, sin)
        h = rms_norm(x, p[pre + "post_attention_layernorm.weight"], cfg.eps, cfg.gemma)
        if cfg.llama4:
            x = x + (llama4_moe(cfg, p, pre + "feed_forward", h) if cfg.is_moe(i) else
                     gated_mlp(p, pre + "feed_forward", h, act))
        elif cfg.is_moe(i):
            x = x + moe(cfg, p, pre, h, act)
        else:
            x = x + gated_mlp(p, pre + "mlp", h, act, cfg.mlp_bias)
    x = rms_norm(x, p["model.norm.weight"], cfg.eps, cfg.gemma)
    head = p["model.embed_tokens.weight"] if cfg.tied else p["lm_head.weight"]
    return F.linear(x, head)  # [B, T, V]


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
    cfg = Config(args.model_dir + "/config.json")
    weights = read_safetensors(args.model_dir + "/model.safetensors")
    reference = read_safetensors(args.model_dir + "/reference.safetensors")
    ids = torch.from_numpy(reference["input_ids"].astype(np.int64))
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

    # AdamW on the same batch: decay matrices only (not norms, not embeddings).
    for t in params.values():
        t.grad = None
    trained = {n: t for n, t in params.items() if t.requires_grad}
    decay = [t for n, t in trained.items() if t.dim() >= 2 and "embed_tokens" not in n]
    no_decay = [t for n, t in trained.items() if not (t.dim() >= 2 and "embed_tokens" not in n)]
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
