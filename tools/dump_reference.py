#!/usr/bin/env python3
"""Write a reference dump for `kiln verify` / `kiln bringup` from a HuggingFace model folder.

Needs torch, transformers and safetensors (not needed by Kiln itself). Runs the model on the
CPU in float32 with eager attention and writes the schema of docs/reference_format.md:
input_ids, logits, hidden_states.i, act.<module>.in/.out (batch row 0) and greedy_ids.

    python3 tools/dump_reference.py MODEL_DIR -o ref.safetensors --prompt "Hello there"
    python3 tools/dump_reference.py MODEL_DIR -o ref.safetensors --ids 1 15 27 3
"""
import argparse
import re
import sys

# Decoder layers and their direct children ("model.layers.3", "model.layers.3.mlp",
# "transformer.h.0.attn"), and the top-level modules around them (embeddings, final norm, head).
LAYER_MODULE = re.compile(r"^(?:.*\.)?(?:layers|h|blocks)\.\d+(?:\.[A-Za-z_]\w*){0,2}$")
TOP_MODULE = re.compile(
    r"^(?:.*\.)?(?:embed_tokens|wte|wpe|word_embeddings|embed_in|norm|ln_f|final_layernorm|"
    r"final_layer_norm|lm_head|embed_out)$")
NEW_TOKENS = 12


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="HuggingFace model folder (config.json + weights)")
    parser.add_argument("-o", "--output", required=True, help="reference .safetensors to write")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="text to encode with the folder's tokenizer")
    source.add_argument("--ids", type=int, nargs="+", help="token ids of the prompt")
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS,
                        help="greedy tokens to append in greedy_ids (default 12)")
    return parser.parse_args()


def prompt_ids(args, torch):
    """[1, T] int64 ids from --ids, --prompt (with the folder's tokenizer) or a default text."""
    if args.ids:
        return torch.tensor([args.ids], dtype=torch.int64)
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    text = args.prompt if args.prompt is not None else "The capital of France is"
    return tokenizer(text, return_tensors="pt").input_ids.to(torch.int64)


def first_tensor(value, torch):
    """The first tensor of a module's positional inputs or outputs (tuples are common)."""
    if torch.is_tensor(value):
        return value
    if isinstance(value, (tuple, list)):
        return next((v for v in value if torch.is_tensor(v)), None)
    return None


def capture_modules(model, torch):
    """Registers forward hooks on every decoder layer, its direct children and the top-level
    modules; returns (captures {module: (input, output)}, hook handles). Only the first call
    of a module is kept (generation is done later, without hooks)."""
    captures, handles = {}, []
    for name, module in model.named_modules():
        if ".experts." in name or name.endswith(".experts"):
            continue  # one capture per MoE block, not per expert
        if not (LAYER_MODULE.match(name) or TOP_MODULE.match(name)):
            continue

        def hook(_module, args, kwargs, output, name=name):
            if name in captures:
                return
            given = first_tensor(args, torch)
            if given is None:  # called with keyword arguments only
                given = kwargs.get("hidden_states")
            captures[name] = (given, first_tensor(output, torch))

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    return captures, handles


def row0(tensor, torch):
    """Batch row 0 as contiguous float32, or None for non-float or 1-D values."""
    if tensor is None or not tensor.is_floating_point() or tensor.dim() < 2:
        return None
    return tensor[0].float().contiguous().clone()


def main():
    args = parse_args()
    try:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        sys.exit(f"dump_reference.py: needs torch, transformers and safetensors ({e})")

    model = AutoModelForCausalLM.from_pretrained(
        args.model_dir, attn_implementation="eager", dtype=torch.float32).float().eval()
    ids = prompt_ids(args, torch)  # [1, T]

    captures, handles = capture_modules(model, torch)
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    for handle in handles:
        handle.remove()

    tensors = {"input_ids": ids.contiguous(), "logits": out.logits.float().contiguous()}
    for i, hidden in enumerate(out.hidden_states or []):
        tensors[f"hidden_states.{i}"] = hidden.float().contiguous()
    for name, (given, produced) in captures.items():
        for suffix, value in (("in", given), ("out", produced)):
            row = row0(value, torch)
            if row is not None:
                tensors[f"act.{name}.{suffix}"] = row

    # Greedy continuation of row 0, every step a full forward pass over the whole sequence
    # (no cache), so that it checks Kiln's cached decode independently.
    sequence = ids[:1].clone()
    with torch.no_grad():
        for _ in range(args.new_tokens):
            last = model(input_ids=sequence, use_cache=False).logits[:, -1, :]
            sequence = torch.cat([sequence, last.argmax(-1, keepdim=True)], dim=1)
    tensors["greedy_ids"] = sequence[0].to(torch.int64).contiguous()

    save_file(tensors, args.output)
    print(f"{args.output}: {len(tensors)} tensors, {ids.shape[1]} prompt tokens, "
          f"{len(captures)} modules captured")


if __name__ == "__main__":
    main()
