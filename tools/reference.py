#!/usr/bin/env python3
"""Independent numpy reference for tachyon's greedy decoding.

Reads a GGUF file (llama or qwen2 architecture) with the `gguf` Python package,
dequantizes the weights to float32 with `gguf.quants.dequantize`, runs a plain
transformer forward pass in numpy (float32 matmuls, float64 for the RMSNorm and
softmax reductions and for RoPE), and writes greedy continuations as a JSON
golden file.  It shares no code with the Rust engine: the tokenizer is built
with the HuggingFace `tokenizers` package from the GGUF vocabulary, and the
model code below is written from the architecture description only.

Example:
    python3 tools/reference.py models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --prompts-file tools/prompts.json --n-tokens 32 \
        --out tests/goldens/smollm2-135m-q4_1.json
"""

import os

# Be considerate on shared machines: single-threaded BLAS unless told otherwise.
# (Must be set before numpy is imported.)
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import hashlib
import json
import shlex
import sys
import time

import numpy as np
import gguf
from gguf import GGUFReader
from gguf.quants import dequantize

try:
    from importlib.metadata import version as _pkg_version
except ImportError:  # pragma: no cover
    _pkg_version = None


# --------------------------------------------------------------------------
# GGUF helpers
# --------------------------------------------------------------------------

def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


class Weights:
    """Lazy float32 dequantization with a cache (numpy shape = reversed GGUF dims)."""

    def __init__(self, reader):
        self.reader = reader
        self.tensors = {t.name: t for t in reader.tensors}
        self.cache = {}

    def has(self, name):
        return name in self.tensors

    def get(self, name):
        w = self.cache.get(name)
        if w is None:
            t = self.tensors[name]
            w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
            expect = tuple(int(d) for d in reversed(t.shape))
            if w.ndim == 1 and len(expect) == 1:
                pass
            assert w.shape == expect, (name, w.shape, expect)
            w = np.ascontiguousarray(w)
            self.cache[name] = w
        return w

    def rows(self, name, ids):
        """Dequantize only the requested rows of a 2-D tensor (e.g. embeddings)."""
        if name in self.cache:
            return self.cache[name][ids]
        t = self.tensors[name]
        raw = t.data[np.asarray(ids)]  # rows are whole quant blocks
        w = dequantize(raw, t.tensor_type).astype(np.float32, copy=False)
        assert w.shape == (len(ids), int(t.shape[0])), (name, w.shape)
        return w


# --------------------------------------------------------------------------
# Tokenizer (HuggingFace `tokenizers`, built from the GGUF vocabulary)
# --------------------------------------------------------------------------

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
                 r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


def build_tokenizer(reader):
    from tokenizers import Tokenizer, Regex, AddedToken, models, pre_tokenizers, decoders

    model = field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise SystemExit(f"unsupported tokenizer model {model!r} (only byte-level BPE 'gpt2')")
    pre = field(reader, "tokenizer.ggml.pre")
    tokens = field(reader, "tokenizer.ggml.tokens")
    merges = field(reader, "tokenizer.ggml.merges")
    types = field(reader, "tokenizer.ggml.token_type")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate tokens in vocabulary"
    merges = [tuple(m.split(" ")) for m in merges]
    assert all(len(m) == 2 for m in merges)

    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    if pre == "qwen2":
        splits = [pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated")]
    elif pre == "smollm":
        # llama.cpp: "\p{N}" isolated first, then the GPT-2 regex
        # (same as HF's Digits(individual_digits=True) + ByteLevel(use_regex=True)).
        splits = [pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
                  pre_tokenizers.Split(Regex(GPT2_PATTERN), behavior="isolated")]
    elif pre in ("gpt2", "default", None):
        splits = [pre_tokenizers.Split(Regex(GPT2_PATTERN), behavior="isolated")]
    else:
        raise SystemExit(f"unsupported pre-tokenizer {pre!r}")
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    # control (3) and user-defined (4) tokens are matched verbatim, like llama.cpp does
    specials = [tokens[i] for i, t in enumerate(types) if t in (3, 4)]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    for s in specials:
        assert tok.token_to_id(s) == vocab[s]
    add_bos = bool(field(reader, "tokenizer.ggml.add_bos_token", False))
    bos = field(reader, "tokenizer.ggml.bos_token_id")
    return tok, (bos if add_bos else None)


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

class Model:
    def __init__(self, path, dtype=np.float32):
        self.dt = dtype  # activation / matmul dtype (weights are always the exact f32 dequant)
        self.reader = GGUFReader(path)
        r = self.reader
        self.arch = arch = field(r, "general.architecture")
        if arch not in ("llama", "qwen2"):
            raise SystemExit(f"unsupported architecture {arch!r}")
        self.n_layer = int(field(r, f"{arch}.block_count"))
        self.dim = int(field(r, f"{arch}.embedding_length"))
        self.n_ff = int(field(r, f"{arch}.feed_forward_length"))
        self.n_head = int(field(r, f"{arch}.attention.head_count"))
        self.n_kv = int(field(r, f"{arch}.attention.head_count_kv", self.n_head))
        self.eps = float(field(r, f"{arch}.attention.layer_norm_rms_epsilon"))
        self.rope_base = float(field(r, f"{arch}.rope.freq_base", 10000.0))
        self.n_ctx = int(field(r, f"{arch}.context_length"))
        self.head_dim = self.dim // self.n_head
        self.n_rot = int(field(r, f"{arch}.rope.dimension_count", self.head_dim))
        # GGUF llama: Q/K rows permuted by the converter -> rotate adjacent pairs.
        # qwen2: NEOX style -> rotate (i, i + n_rot/2).
        self.neox = arch == "qwen2"
        assert self.n_head % self.n_kv == 0
        assert self.n_rot % 2 == 0 and self.n_rot <= self.head_dim
        self.w = Weights(r)
        self.out_name = "output.weight" if self.w.has("output.weight") else "token_embd.weight"
        for name in ("scale", "type"):
            if field(r, f"{arch}.rope.scaling.{name}") not in (None, "none", 1.0):
                raise SystemExit(f"rope scaling ({arch}.rope.scaling.{name}) not supported")

    def hparams(self):
        return dict(arch=self.arch, n_layer=self.n_layer, dim=self.dim, n_ff=self.n_ff,
                    n_head=self.n_head, n_kv_head=self.n_kv, head_dim=self.head_dim,
                    n_rot=self.n_rot, rope_base=self.rope_base, rms_eps=self.eps,
                    rope_style="neox" if self.neox else "normal(adjacent pairs)",
                    output=self.out_name, dtype=np.dtype(self.dt).name)

    def preload(self):
        for t in self.reader.tensors:
            if t.name != "token_embd.weight" or self.out_name == "token_embd.weight":
                self.w.get(t.name)

    # -- pieces -------------------------------------------------------------

    def rmsnorm(self, x, weight):
        x64 = x.astype(np.float64)
        ms = np.mean(x64 * x64, axis=-1, keepdims=True)
        return (x64 / np.sqrt(ms + self.eps) * weight.astype(np.float64)).astype(self.dt)

    def rope(self, x, positions):
        """x: (T, n_heads, head_dim); positions: (T,) ints."""
        half = self.n_rot // 2
        inv = self.rope_base ** (-2.0 * np.arange(half, dtype=np.float64) / self.n_rot)
        ang = np.asarray(positions, dtype=np.float64)[:, None] * inv[None, :]  # (T, half)
        cos = np.cos(ang)[:, None, :]
        sin = np.sin(ang)[:, None, :]
        x64 = x.astype(np.float64)
        out = x64.copy()
        if self.neox:
            a = x64[..., :half]
            b = x64[..., half:self.n_rot]
            out[..., :half] = a * cos - b * sin
            out[..., half:self.n_rot] = a * sin + b * cos
        else:
            a = x64[..., 0:self.n_rot:2]
            b = x64[..., 1:self.n_rot:2]
            out[..., 0:self.n_rot:2] = a * cos - b * sin
            out[..., 1:self.n_rot:2] = a * sin + b * cos
        return out.astype(self.dt)

    def linear(self, x, name, bias=None):
        w = self.w.get(name)
        if self.dt is not np.float32:
            w = w.astype(self.dt)  # exact: dequantized values are float32
        y = x @ w.T
        if bias is not None and self.w.has(bias):
            y = y + self.w.get(bias)
        return y.astype(self.dt, copy=False)

    # -- forward ------------------------------------------------------------

    def new_cache(self):
        return [dict(k=np.zeros((0, self.n_kv, self.head_dim), self.dt),
                     v=np.zeros((0, self.n_kv, self.head_dim), self.dt))
                for _ in range(self.n_layer)]

    def forward(self, ids, cache):
        """Run tokens `ids` after the cached positions; returns last-position logits."""
        T = len(ids)
        pos0 = cache[0]["k"].shape[0]
        positions = np.arange(pos0, pos0 + T)
        hd, nh, nkv = self.head_dim, self.n_head, self.n_kv
        group = nh // nkv
        scale = 1.0 / np.sqrt(hd)
        x = self.w.rows("token_embd.weight", list(ids))  # (T, dim)
        # causal mask: query at pos0+t sees keys 0..pos0+t
        S = pos0 + T
        mask = np.arange(S)[None, :] > positions[:, None]  # (T, S) True = masked

        for l in range(self.n_layer):
            p = f"blk.{l}."
            h = self.rmsnorm(x, self.w.get(p + "attn_norm.weight"))
            q = self.linear(h, p + "attn_q.weight", p + "attn_q.bias").reshape(T, nh, hd)
            k = self.linear(h, p + "attn_k.weight", p + "attn_k.bias").reshape(T, nkv, hd)
            v = self.linear(h, p + "attn_v.weight", p + "attn_v.bias").reshape(T, nkv, hd)
            q = self.rope(q, positions)
            k = self.rope(k, positions)
            c = cache[l]
            c["k"] = np.concatenate([c["k"], k], axis=0)
            c["v"] = np.concatenate([c["v"], v], axis=0)
            K = c["k"].astype(np.float64)  # (S, nkv, hd)
            V = c["v"].astype(np.float64)
            attn = np.empty((T, nh, hd), self.dt)
            for hq in range(nh):
                hk = hq // group
                s = (q[:, hq, :].astype(np.float64) @ K[:, hk, :].T) * scale  # (T, S)
                s = np.where(mask, -np.inf, s)
                s = s - s.max(axis=-1, keepdims=True)
                e = np.exp(s)
                pr = e / e.sum(axis=-1, keepdims=True)
                attn[:, hq, :] = (pr @ V[:, hk, :]).astype(self.dt)
            x = x + self.linear(attn.reshape(T, nh * hd), p + "attn_output.weight")
            h = self.rmsnorm(x, self.w.get(p + "ffn_norm.weight"))
            g = self.linear(h, p + "ffn_gate.weight").astype(np.float64)
            u = self.linear(h, p + "ffn_up.weight").astype(np.float64)
            act = (g / (1.0 + np.exp(-g)) * u).astype(self.dt)
            x = x + self.linear(act, p + "ffn_down.weight")

        out = self.rmsnorm(x[-1:], self.w.get("output_norm.weight"))
        return self.linear(out, self.out_name)[0]  # (n_vocab,)


# --------------------------------------------------------------------------
# Greedy generation
# --------------------------------------------------------------------------

def argmax_lowest(logits):
    return int(np.argmax(logits))  # numpy returns the first (lowest id) maximum


def top_k(logits, k):
    # sort by logit descending, ties by id ascending
    order = np.lexsort((np.arange(len(logits)), -logits.astype(np.float64)))[:k]
    return [[int(i), round(float(logits[i]), 4)] for i in order]


def top2(logits):
    """(best id, runner-up id, best - runner-up logit); ties -> lowest id first."""
    i = argmax_lowest(logits)
    rest = logits.copy()
    rest[i] = -np.inf
    j = argmax_lowest(rest)
    return i, j, float(logits[i]) - float(logits[j])


def generate(model, prompt_ids, n_tokens):
    cache = model.new_cache()
    logits = model.forward(prompt_ids, cache)
    first_top = top_k(logits, 10)
    gen, runner_up, margins = [], [], []
    for step in range(n_tokens):
        nxt, second, m = top2(logits)
        gen.append(nxt)
        runner_up.append(second)
        margins.append(round(m, 4))
        if step + 1 < n_tokens:
            logits = model.forward([nxt], cache)
    return gen, runner_up, first_top, margins


def to_json(obj, indent=0):
    """JSON with objects spread over lines but lists of numbers kept on one line."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {to_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, dict) for v in obj):
        return "[\n" + ",\n".join(inner + to_json(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="path to a .gguf file (llama or qwen2 arch)")
    ap.add_argument("--prompt", action="append", default=[], help="prompt text (repeatable)")
    ap.add_argument("--prompts-file", help="JSON file holding a list of prompt strings")
    ap.add_argument("--n-tokens", type=int, default=32)
    ap.add_argument("--out", help="write the golden JSON here (default: stdout)")
    ap.add_argument("--f64", action="store_true",
                    help="do all activation math and matmuls in float64 (slow; a check on "
                         "float32 rounding, not what the goldens use)")
    args = ap.parse_args()

    prompts = []
    if args.prompts_file:
        with open(args.prompts_file, encoding="utf-8") as f:
            prompts.extend(json.load(f))
    prompts.extend(args.prompt)
    if not prompts:
        ap.error("no prompts given (--prompt or --prompts-file)")

    t0 = time.time()
    model = Model(args.model, np.float64 if args.f64 else np.float32)
    tok, bos = build_tokenizer(model.reader)
    print(f"[ref] {os.path.basename(args.model)}: {model.hparams()}", file=sys.stderr)
    model.preload()
    t_load = time.time() - t0
    print(f"[ref] dequantized weights in {t_load:.1f}s", file=sys.stderr)

    eos = field(model.reader, "tokenizer.ggml.eos_token_id")
    cases = []
    for text in prompts:
        t1 = time.time()
        ids = tok.encode(text, add_special_tokens=False).ids
        if bos is not None:
            ids = [int(bos)] + ids
        assert tok.decode(ids, skip_special_tokens=False) == text or bos is not None, \
            f"tokenizer round-trip failed for {text!r}"
        gen, runner_up, first_top, margins = generate(model, ids, args.n_tokens)
        out_text = tok.decode(gen, skip_special_tokens=False)
        cases.append(dict(prompt=text, prompt_ids=ids, generated_ids=gen,
                          generated_text=out_text, first_step_top=first_top,
                          margins=margins, runner_up_ids=runner_up))
        print(f"[ref] {len(ids)} prompt tokens, {len(gen)} generated in {time.time()-t1:.1f}s, "
              f"min margin {min(margins):.4f}: {text!r} -> {out_text!r}", file=sys.stderr)

    versions = {}
    for pkg in ("numpy", "gguf", "tokenizers"):
        try:
            versions[pkg] = _pkg_version(pkg)
        except Exception:
            versions[pkg] = "?"
    argv = [os.path.relpath(sys.argv[0])] + sys.argv[1:]
    golden = {
        "model": os.path.basename(args.model),
        "sha256": sha256_file(args.model),
        "generator": f"tools/reference.py (numpy {versions['numpy']}, gguf {versions['gguf']}, "
                     f"tokenizers {versions['tokenizers']})",
        "command": "python3 " + shlex.join(argv),
        "n_tokens": args.n_tokens,
        "eos_token_id": None if eos is None else int(eos),
        "hparams": model.hparams(),
        "cases": cases,
    }
    text = to_json(golden) + "\n"
    assert json.loads(text) == golden
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    print(f"[ref] total {time.time()-t0:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
