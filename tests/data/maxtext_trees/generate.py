#!/usr/bin/env python3
"""Writes the expected MaxText parameter tree of each tiny HF fixture (tests/data/hf/<name>)
as tests/data/maxtext_trees/<name>.json: every array MaxText's own converter writes under
params/params, with its shape, unscanned and scanned, and the MaxText file and function the
entry comes from. Transcribed by hand from MaxText's code (AI-Hypercomputer/maxtext,
src/maxtext/checkpoint_conversion/... and src/maxtext/models/...), independently of Kiln's
C++ mapping (src/kiln/convert/maxtext_tree.cc), which the tests compare against these files.

Run: /usr/bin/python3 tests/data/maxtext_trees/generate.py
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
HF = os.path.join(HERE, "..", "hf")

CONV = "src/maxtext/checkpoint_conversion/"
LLAMA_SCRIPT = CONV + "standalone_scripts/llama_or_mistral_ckpt.py: _convert_huggingface_to_jax_weights"
GEMMA_SCRIPT = CONV + "standalone_scripts/convert_gemma_chkpt.py: main"
PM = CONV + "utils/param_mapping.py: "

# MaxText's vocab_size (the rows of token_embedder/embedding) for the Gemma fixtures. MaxText
# pads the stock Gemma 1/2 vocab (HF 256000) to 256128 (src/maxtext/configs/models/gemma-2b.yml,
# gemma-7b.yml, gemma2-*.yml: vocab_size 256128; utils/param_mapping.py:
# GEMMA2_MAXTEXT_TO_HF_PARAM_HOOK_FN.pad_hf_embedding_layer: zero rows appended, then the whole
# array * float32(sqrt(hidden)); the Gemma 1 script convert_gemma_chkpt.py reads the JAX
# checkpoint, already 256128 rows), and cuts Gemma 3's (HF 262208) to 262144
# (configs/models/gemma3-*.yml: vocab_size 262_144; utils/param_mapping.py:
# GEMMA3_MAXTEXT_TO_HF_PARAM_HOOK_FN.pad_and_scale_embedding: * bfloat16(sqrt(hidden)), then
# truncate or pad with zeros). The tiny fixtures (vocab 512) are exported with the same kind of
# padding and cut in small (kiln convert --maxtext-vocab; the test reads it from here).
FIXTURE_MAXTEXT_VOCAB = {"gemma": 640, "gemma2": 640, "gemma3_text": 448}
EMBED_PAD = CONV + "utils/param_mapping.py: GEMMA2_MAXTEXT_TO_HF_PARAM_HOOK_FN.pad_hf_embedding_layer"
EMBED_CUT = CONV + "utils/param_mapping.py: GEMMA3_MAXTEXT_TO_HF_PARAM_HOOK_FN.pad_and_scale_embedding"


def family_rules(name, c):
  """(source, per-layer list of (maxtext name, unscanned shape), top-level list, value changes)."""
  E = c["hidden_size"]
  H = c["num_attention_heads"]
  K = c.get("num_key_value_heads", H)
  D = c.get("head_dim") or E // H
  M = c.get("intermediate_size")
  V = c["vocab_size"]
  X = c.get("num_local_experts", c.get("num_experts", 0))
  I = c.get("moe_intermediate_size", M)
  tied = c.get("tie_word_embeddings", name.startswith("gemma"))
  attn = [
      ("self_attention/query/kernel", [E, H, D]),
      ("self_attention/key/kernel", [E, K, D]),
      ("self_attention/value/kernel", [E, K, D]),
      ("self_attention/out/kernel", [H, D, E]),
  ]
  dense = [("mlp/wi_0/kernel", [E, M]), ("mlp/wi_1/kernel", [E, M]), ("mlp/wo/kernel", [M, E])]
  top = [("token_embedder/embedding", [V, E]), ("decoder/decoder_norm/scale", [E])]
  if not tied:
    top.append(("decoder/logits_dense/kernel", [E, V]))
  changes = {}
  if name in ("llama", "mistral", "qwen2", "mixtral") or name.startswith("llama_rope"):
    source = LLAMA_SCRIPT + ("; models/mixtral.py: MixtralDecoderLayer" if name == "mixtral"
                             else "; models/llama2.py: LlamaDecoderLayer")
    layer = [("pre_self_attention_layer_norm/scale", [E]), ("post_self_attention_layer_norm/scale", [E])]
    layer += attn
    if name == "qwen2":
      layer += [("self_attention/query/bias", [H, D]), ("self_attention/key/bias", [K, D]),
                ("self_attention/value/bias", [K, D])]
    if name == "mixtral":
      layer += [("MoeBlock_0/gate/kernel", [E, X]), ("MoeBlock_0/wi_0", [X, E, I]),
                ("MoeBlock_0/wi_1", [X, E, I]), ("MoeBlock_0/wo", [X, I, E])]
    else:
      layer += dense
    changes["self_attention/query"] = "divided by sqrt(head_dim) cast to the weight dtype"
    return source, layer, top, changes, None
  if name in ("qwen3", "qwen3_moe"):
    source = PM + "QWEN_MAXTEXT_TO_HF_PARAM_MAPPING; models/qwen3.py: Qwen3DecoderLayer / Qwen3MoeDecoderLayer"
    layer = [("pre_self_attention_layer_norm/scale", [E]), ("post_self_attention_layer_norm/scale", [E])]
    layer += attn + [("self_attention/query_norm/scale", [D]), ("self_attention/key_norm/scale", [D])]
    if name == "qwen3_moe":
      layer += [("moe_block/gate/kernel", [E, X]), ("moe_block/wi_0", [X, E, I]),
                ("moe_block/wi_1", [X, E, I]), ("moe_block/wo", [X, I, E])]
    else:
      layer += dense
    return source, layer, top, changes, None
  if name == "gemma":
    source = GEMMA_SCRIPT + "; models/gemma.py: GemmaDecoderLayer"
    layer = [("pre_self_attention_norm/scale", [E]), ("pre_ffw_norm/scale", [E])] + attn + dense
    changes = {"token_embedder/embedding": "* sqrt(hidden), MaxText's vocab_size rows (256128: the JAX checkpoint's; from HF's 256000, zeros appended as for Gemma 2)",
               "norm scales": "1 + w",
               "self_attention/query": "* head_dim**-0.5"}
    return source, layer, top, changes, None
  if name == "gemma2":
    source = PM + "GEMMA2_MAXTEXT_TO_HF_PARAM_MAPPING; models/gemma2.py: Gemma2DecoderLayer"
    layer = []
    for kind in ("local", "global"):
      layer += [(f"pre_self_attention_norm_{kind}/scale", [E]), (f"post_self_attention_norm_{kind}/scale", [E]),
                (f"pre_ffw_norm_{kind}/scale", [E]), (f"post_ffw_norm_{kind}/scale", [E])]
      layer += [(p.replace("self_attention/", f"self_attention_{kind}/"), s) for p, s in attn]
      layer += [(p.replace("mlp/", f"mlp_{kind}/"), s) for p, s in dense]
    changes = {"token_embedder/embedding": "zero rows appended to MaxText's vocab_size, then * float32(sqrt(hidden))",
               "norm scales": "1 + w",
               "self_attention/query": "* float32(1 / sqrt(head_dim))"}
    return source, layer, top, changes, "pairs"
  if name == "gemma3_text":
    source = PM + "GEMMA3_MAXTEXT_TO_HF_PARAM_MAPPING; models/gemma3.py: Gemma3DecoderLayer, Gemma3ScannableBlock"
    layer = [("pre_self_attention_norm/scale", [E]), ("post_self_attention_norm/scale", [E]),
             ("pre_ffw_norm/scale", [E]), ("post_ffw_norm/scale", [E])]
    layer += attn + [("self_attention/query_norm/scale", [D]), ("self_attention/key_norm/scale", [D])] + dense
    changes = {"token_embedder/embedding": "* bfloat16(sqrt(hidden)), then rows past MaxText's vocab_size cut off (zeros appended when short)",
               "norm scales": "1 + w"}
    return source, layer, top, changes, "blocks6"
  if name == "deepseek_v3":
    source = PM + "DEEPSEEK_MAXTEXT_TO_HF_PARAM_MAPPING, DEEPSEEK_MAXTEXT_TO_HF_PARAM_HOOK_FN; models/deepseek.py; layers/attention_mla.py: MLA"
    Rq, Rkv = c["q_lora_rank"], c["kv_lora_rank"]
    nope, rope, vd = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    S = c["n_shared_experts"] * I
    mla = [("pre_self_attention_layer_norm/scale", [E]), ("post_self_attention_layer_norm/scale", [E]),
           ("self_attention/wq_a/kernel", [E, Rq]), ("self_attention/q_norm/scale", [Rq]),
           ("self_attention/wq_b/kernel", [Rq, H, nope + rope]),
           ("self_attention/wkv_a/kernel", [E, Rkv + rope]), ("self_attention/kv_norm/scale", [Rkv]),
           ("self_attention/wkv_b/kernel", [Rkv, H, nope + vd]), ("self_attention/out/kernel", [H, vd, E])]
    X = c["n_routed_experts"]
    moe = [("DeepSeekMoeBlock_0/MoeBlock_0/gate/kernel", [E, X]), ("DeepSeekMoeBlock_0/MoeBlock_0/gate/bias", [X]),
           ("DeepSeekMoeBlock_0/MoeBlock_0/wi_0", [X, E, I]), ("DeepSeekMoeBlock_0/MoeBlock_0/wi_1", [X, E, I]),
           ("DeepSeekMoeBlock_0/MoeBlock_0/wo", [X, I, E]),
           ("DeepSeekMoeBlock_0/shared_experts/wi_0/kernel", [E, S]),
           ("DeepSeekMoeBlock_0/shared_experts/wi_1/kernel", [E, S]),
           ("DeepSeekMoeBlock_0/shared_experts/wo/kernel", [S, E])]
    return source, {"dense": mla + dense, "moe": mla + moe}, top, changes, "dense_moe"
  if name == "gpt_oss":
    source = PM + "GPT_OSS_MAXTEXT_TO_HF_PARAM_MAPPING, GPT_OSS_TO_HF_PARAM_HOOK_FN; models/gpt_oss.py: GptOssDecoderLayer, GptOssScannableBlock"
    a = [(p.replace("self_attention/", "GptOssAttention/"), s) for p, s in attn]
    layer = [("pre_self_attention_layer_norm/scale", [E]), ("post_self_attention_layer_norm/scale", [E])] + a
    layer += [("GptOssAttention/query/bias", [H, D]), ("GptOssAttention/key/bias", [K, D]),
              ("GptOssAttention/value/bias", [K, D]), ("GptOssAttention/out/bias", [E]),
              ("GptOssAttention/sinks", [H]),
              ("GptOssMlp/gate/kernel", [E, X]), ("GptOssMlp/gate/bias", [X]),
              ("GptOssMlp/wi_0", [X, E, M]), ("GptOssMlp/wi_1", [X, E, M]), ("GptOssMlp/wo", [X, M, E]),
              ("GptOssMlp/wi_0_bias", [X, M]), ("GptOssMlp/wi_1_bias", [X, M]), ("GptOssMlp/wo_bias", [X, E])]
    # inhomogeneous_layer_cycle_interval: 2 (configs/models/gpt-oss-20b.yml)
    return source, layer, top, changes, "blocks2"
  if name == "llama4_text":
    source = LLAMA_SCRIPT + " (HF input; scale_query False for llama4); standalone_scripts/llama4_ckpt_unscanned.py; models/llama4.py"
    step = c.get("interleave_moe_layer_step", 1)
    S = c["intermediate_size"]  # one shared expert of the expert size
    base = [("pre_self_attention_layer_norm/scale", [E]), ("post_self_attention_layer_norm/scale", [E])] + attn
    Xl = c["num_local_experts"]
    moe = [("Llama4MoEBlock_0/MoeBlock_0/gate/kernel", [E, Xl]), ("Llama4MoEBlock_0/MoeBlock_0/wi_0", [Xl, E, S]),
           ("Llama4MoEBlock_0/MoeBlock_0/wi_1", [Xl, E, S]), ("Llama4MoEBlock_0/MoeBlock_0/wo", [Xl, S, E]),
           ("Llama4MoEBlock_0/shared_experts/wi_0/kernel", [E, S]),
           ("Llama4MoEBlock_0/shared_experts/wi_1/kernel", [E, S]),
           ("Llama4MoEBlock_0/shared_experts/wo/kernel", [S, E])]
    dense_mlp = [("mlp/wi_0/kernel", [E, c["intermediate_size_mlp"]]), ("mlp/wi_1/kernel", [E, c["intermediate_size_mlp"]]),
                 ("mlp/wo/kernel", [c["intermediate_size_mlp"], E])]
    # layer i is dense when (i + 1) % interleave_moe_layer_step != 0
    per_layer = [base + (dense_mlp if (i + 1) % step != 0 else moe) for i in range(c["num_hidden_layers"])]
    return source, per_layer, top, changes, "blocks4"
  return None


def tree(name, c, scanned):
  rules = family_rules(name, c)
  source, layer, top, changes, grouping = rules
  L = c["num_hidden_layers"]
  out = {}
  for p, s in top:
    out[p] = {"shape": s, "from": source}
  if name in FIXTURE_MAXTEXT_VOCAB:
    E = c["hidden_size"]
    out["token_embedder/embedding"] = {
        "shape": [FIXTURE_MAXTEXT_VOCAB[name], E],
        "from": (EMBED_CUT if name.startswith("gemma3") else EMBED_PAD) + "; " + source}
  if grouping == "pairs":
    if scanned:
      for p, s in layer:
        out["decoder/layers/" + p] = {"shape": s[:1] + [L // 2] + s[1:], "from": source}
    else:
      for i in range(L // 2):
        for p, s in layer:
          out[f"decoder/layers_{i}/" + p] = {"shape": s, "from": source}
    return out
  if grouping == "dense_moe":
    k = c["first_k_dense_replace"]
    for group, layers, params in (("dense_layers", range(k), layer["dense"]),
                                  ("moe_layers", range(k, L), layer["moe"])):
      if scanned:
        for p, s in params:
          out[f"decoder/{group}/" + p] = {"shape": s[:1] + [len(layers)] + s[1:], "from": source}
      else:
        for j, _ in enumerate(layers):
          for p, s in params:
            out[f"decoder/{group}_{j}/" + p] = {"shape": s, "from": source}
    return out
  if grouping == "blocks4":
    # inhomogeneous_layer_cycle_interval 4 (configs/models/llama4-17b-*.yml)
    for i, params in enumerate(layer):
      for p, s in params:
        if scanned:
          out[f"decoder/layers/layers_{i % 4}/" + p] = {"shape": s[:1] + [L // 4] + s[1:], "from": source}
        else:
          out[f"decoder/layers_{i}/" + p] = {"shape": s, "from": source}
    return out
  if grouping == "blocks2" and scanned:
    for b in range(2):
      for p, s in layer:
        out[f"decoder/layers/layers_{b}/" + p] = {"shape": s[:1] + [L // 2] + s[1:], "from": source}
    return out
  if grouping == "blocks6" and scanned:
    remainder = L % 6
    full = L - remainder
    for b in range(6 if full else 0):
      n = len(range(b, full, 6))
      for p, s in layer:
        out[f"decoder/layers/layers_{b}/" + p] = {"shape": s[:1] + [n] + s[1:], "from": source}
    for r in range(remainder):
      for p, s in layer:
        out[f"decoder/layers_remainder/layers_{r}/" + p] = {"shape": s, "from": source}
    return out
  if scanned:
    for p, s in layer:
      out["decoder/layers/" + p] = {"shape": s[:1] + [L] + s[1:], "from": source}
  else:
    for i in range(L):
      for p, s in layer:
        out[f"decoder/layers_{i}/" + p] = {"shape": s, "from": source}
  return out


def main():
  for name in sorted(os.listdir(HF)):
    path = os.path.join(HF, name, "config.json")
    if not os.path.exists(path):
      continue
    c = json.load(open(path))
    if "hidden_size" not in c:
      continue  # families whose config names differ (gpt2, ...): not a MaxText family
    if family_rules(name, c) is None:
      continue
    changes = family_rules(name, c)[3]
    doc = {
        "fixture": "tests/data/hf/" + name,
        "note": "arrays under params/params/ (plus MaxText's scalar 'step'); shapes for this "
                "fixture's config; written by generate.py from MaxText's code",
        "value_changes": changes,
        "maxtext_vocab": FIXTURE_MAXTEXT_VOCAB.get(name, c["vocab_size"]),
        "unscanned": tree(name, c, False),
        "scanned": tree(name, c, True),
    }
    with open(os.path.join(HERE, name + ".json"), "w") as f:
      json.dump(doc, f, indent=1, sort_keys=True)
      f.write("\n")
    print("wrote", name)


if __name__ == "__main__":
  main()
