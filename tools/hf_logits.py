#!/usr/bin/env python3
"""Reference logits from HF transformers for a random-weight checkpoint of a real shape.

Run on a GPU machine (torch + transformers + safetensors). It builds the model with
random weights (transformers' own initialization, seeded), saves it as an HF directory
tachyon can load (config.json with the classic rope_theta / rope_scaling keys,
model.safetensors), feeds a random prompt through it, and writes the logits at a few
positions to DIR/reference.json. Then, with tachyon built on that machine or carried there:

    python3 tools/hf_logits.py --shape llama-3.2-1b --out /tmp/ref-llama
    TACHYON_HF_REF=/tmp/ref-llama cargo test --release --test cuda_kernels \
        -- --ignored hf_reference

The Rust test decodes the same tokens one at a time on the CUDA backend and compares the
logits at each recorded position.
"""

import argparse
import json
import os

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

SHAPES = {
    "llama-3.2-1b": (LlamaConfig, LlamaForCausalLM, dict(
        hidden_size=2048, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=16,
        intermediate_size=8192, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
        max_position_embeddings=131072, tie_word_embeddings=True,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192))),
    "qwen2.5-1.5b": (Qwen2Config, Qwen2ForCausalLM, dict(
        hidden_size=1536, num_attention_heads=12, num_key_value_heads=2, num_hidden_layers=28,
        intermediate_size=8960, vocab_size=151936, rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=32768, tie_word_embeddings=True)),
    "tiny-llama": (LlamaConfig, LlamaForCausalLM, dict(
        hidden_size=256, num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=3,
        intermediate_size=688, vocab_size=1000, rms_norm_eps=1e-5, rope_theta=10000.0,
        max_position_embeddings=4096, tie_word_embeddings=False)),
}


def classic_rope_keys(path):
    """Transformers 5 writes rope settings under rope_parameters; tachyon reads either, but
    the classic keys keep the file readable by older loaders too."""
    with open(path) as f:
        cfg = json.load(f)
    rp = cfg.pop("rope_parameters", None)
    if rp:
        cfg["rope_theta"] = rp.get("rope_theta", cfg.get("rope_theta", 10000.0))
        if rp.get("rope_type", "default") != "default":
            cfg["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    a = ap.parse_args()
    cfg_cls, model_cls, kw = SHAPES[a.shape]
    dtype = getattr(torch, a.dtype)
    torch.manual_seed(a.seed)
    with torch.device("cuda"):
        model = model_cls(cfg_cls(**kw)).to(dtype).eval()
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, safe_serialization=True)
    classic_rope_keys(os.path.join(a.out, "config.json"))
    gen = torch.Generator().manual_seed(a.seed + 1)
    ids = torch.randint(0, kw["vocab_size"], (1, a.tokens), generator=gen)
    with torch.no_grad():
        logits = model(ids.cuda()).logits[0].float().cpu()
    positions = sorted({0, a.tokens // 2, a.tokens - 1})
    ref = {
        "shape": a.shape,
        "dtype": a.dtype,
        "tokens": ids[0].tolist(),
        "logits": {str(p): logits[p].tolist() for p in positions},
    }
    with open(os.path.join(a.out, "reference.json"), "w") as f:
        json.dump(ref, f)
    print(f"wrote {a.out}: {a.shape} {a.dtype}, {a.tokens} tokens, positions {positions}")


if __name__ == "__main__":
    main()
