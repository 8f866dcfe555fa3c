//! A tiny random llama with SmolLM2's own tokenizer and chat template, written as a GGUF by
//! the project's GGUF writer at test time: the server tests' model where SmolLM2 itself is
//! too slow (the CUDA backend under the emulated device costs seconds per SmolLM2 token).
//!
//! The vocabulary is SmolLM2's first [`TINY_VOCAB`] tokens (its special tokens, the 256
//! byte tokens and the merges that make the rest, in SmolLM2's own order) with the merges
//! among them, so text tokenizes through SmolLM2's real byte-level BPE, pre-tokenizer and
//! chat template, only into more, shorter tokens. The vocabulary, not the layers, sets a
//! token's cost on the emulated device: the LM head's GEMV runs one emulated warp per row.
//! The weights are random (`tachyon::format::random`); the LM head rows of the special
//! tokens are zero, so their logit is exactly 0 where the best of the others is well above
//! it: greedy decoding never ends early on `<|im_end|>`, and a test asking for N tokens
//! gets N.

use std::path::{Path, PathBuf};

use tachyon::format::GgmlType;
use tachyon::format::gguf::{GgufBuilder, GgufFile, MetaValue};
use tachyon::format::random::{Shape, random_weights};
use tachyon::format::{ModelWeights, Weight};

/// Tokens kept of SmolLM2's 49,152. The emulated GEMV gives a matrix of R rows
/// `warps_per_row(R)` warps a row (src/backend/cuda/launch/matmul.rs): from 4,224 rows on
/// that is one, so 4,224 rows cost what 528 do and a twelfth of the full vocabulary.
pub const TINY_VOCAB: usize = 4224;

/// The tiny model's file name; its stem is the id the server reports (it starts with
/// "SmolLM2", as tests/openai_client.py checks).
pub const TINY_FILE: &str = "SmolLM2-tiny-random.gguf";

/// The shape: llama, GQA (2 query heads over 1 KV head of 16), 2 layers. Small matrices
/// get 8 emulated warps a row, so each layer costs about a third of the LM head.
fn shape() -> Shape {
    Shape::from_json(
        "tiny-smollm2",
        &serde_json::json!({"model_type": "llama", "hidden_size": 32,
            "num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 2,
            "intermediate_size": 64, "vocab_size": TINY_VOCAB, "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0, "max_position_embeddings": CONTEXT,
            "tie_word_embeddings": false}),
    )
    .unwrap_or_else(|e| panic!("tiny shape: {e}"))
}

/// The tiny model's context: SmolLM2's 8,192 (a client's default of 4,096 new tokens
/// fits, as tests/server.rs checks of the real model).
const CONTEXT: usize = 8192;

/// Hyper-parameter keys of SmolLM2's file that the tiny model replaces.
const REPLACED: &[&str] = &[
    "general.name",
    "general.file_type",
    "general.size_label",
    "general.quantization_version",
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.freq_base",
    "llama.rope.dimension_count",
    "llama.vocab_size",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.merges",
];

/// Builds the tiny model from SmolLM2's GGUF at `smollm2` into `dir` (once per content: the
/// file is written under a process-unique name and renamed, so test processes running at
/// once never see half a file) and returns its path.
pub fn build(smollm2: &Path, dir: &Path) -> PathBuf {
    let src = GgufFile::open(smollm2).unwrap_or_else(|e| panic!("{}: {e}", smollm2.display()));
    let bytes = encode(&src);
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path = dir.join(TINY_FILE);
    if std::fs::read(&path).is_ok_and(|have| have == bytes) {
        return path;
    }
    let tmp = dir.join(format!("{TINY_FILE}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &bytes).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
    std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

/// The tiny model's GGUF bytes.
fn encode(src: &GgufFile) -> Vec<u8> {
    let tokens = src
        .str_array("tokenizer.ggml.tokens")
        .expect("SmolLM2 has tokenizer.ggml.tokens");
    assert!(tokens.len() > TINY_VOCAB, "{} tokens", tokens.len());
    let kept: std::collections::HashSet<&str> = tokens[..TINY_VOCAB].iter().copied().collect();
    // A merge is kept when both halves and the token it makes are kept: SmolLM2's merges
    // make its tokens in id order, so these are exactly the merges of the kept tokens.
    let merges: Vec<MetaValue> = src
        .str_array("tokenizer.ggml.merges")
        .expect("SmolLM2 has tokenizer.ggml.merges")
        .into_iter()
        .filter(|m| {
            m.split_once(' ').is_some_and(|(a, b)| {
                kept.contains(a) && kept.contains(b) && kept.contains(format!("{a}{b}").as_str())
            })
        })
        .map(|m| MetaValue::String(m.to_string()))
        .collect();
    let types = src
        .i32_array("tokenizer.ggml.token_type")
        .expect("SmolLM2 has tokenizer.ggml.token_type");
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
    ] {
        if let Some(id) = src.get_u64(key) {
            assert!((id as usize) < TINY_VOCAB, "{key} = {id} is cut off");
        }
    }

    let shape = shape();
    let c = &shape.config;
    let mut b = GgufBuilder::new();
    for (k, v) in src.metadata() {
        if !REPLACED.contains(&k.as_str()) {
            b = b.meta(k.clone(), v.clone());
        }
    }
    let u32_of = |n: usize| MetaValue::U32(n as u32);
    b = b
        .meta(
            "general.name",
            MetaValue::String("SmolLM2 tiny random".into()),
        )
        .meta("llama.block_count", u32_of(c.n_layers))
        .meta("llama.context_length", u32_of(CONTEXT))
        .meta("llama.embedding_length", u32_of(c.dim))
        .meta("llama.feed_forward_length", u32_of(c.ffn_dim))
        .meta("llama.attention.head_count", u32_of(c.n_heads))
        .meta("llama.attention.head_count_kv", u32_of(c.n_kv_heads))
        .meta(
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(1e-5),
        )
        .meta("llama.rope.freq_base", MetaValue::F32(100000.0))
        .meta("llama.rope.dimension_count", u32_of(c.head_dim))
        .meta("llama.vocab_size", u32_of(TINY_VOCAB))
        .meta(
            "tokenizer.ggml.tokens",
            MetaValue::Array(
                tokens[..TINY_VOCAB]
                    .iter()
                    .map(|t| MetaValue::String(t.to_string()))
                    .collect(),
            ),
        )
        .meta(
            "tokenizer.ggml.token_type",
            MetaValue::Array(
                types[..TINY_VOCAB]
                    .iter()
                    .map(|&t| MetaValue::I32(t))
                    .collect(),
            ),
        )
        .meta("tokenizer.ggml.merges", MetaValue::Array(merges));

    let w = random_weights(&shape, GgmlType::BF16, 0x5e41_7e57)
        .unwrap_or_else(|e| panic!("tiny weights: {e}"));
    // Token types other than 1 (normal) are the special and control tokens.
    let special: Vec<usize> = (0..TINY_VOCAB).filter(|&i| types[i] != 1).collect();
    assert!(special.contains(&2), "<|im_end|> is not a special token");
    tensors(b, &w, &special).build()
}

/// The weights as GGUF tensors (dims innermost first), with the LM head rows of `silent`
/// zeroed.
fn tensors(mut b: GgufBuilder, w: &ModelWeights, silent: &[usize]) -> GgufBuilder {
    let matrix = |b: GgufBuilder, m: &Weight| {
        b.tensor(
            m.name.clone(),
            &[m.cols as u64, m.rows as u64],
            m.ty,
            m.bytes().to_vec(),
        )
    };
    let vector = |b: GgufBuilder, name: String, v: &[f32]| b.tensor_f32(name, &[v.len() as u64], v);
    b = matrix(b, &w.embed);
    for (i, l) in w.layers.iter().enumerate() {
        b = vector(b, format!("blk.{i}.attn_norm.weight"), &l.attn_norm);
        for m in [&l.wq, &l.wk, &l.wv, &l.wo] {
            b = matrix(b, m);
        }
        b = vector(b, format!("blk.{i}.ffn_norm.weight"), &l.ffn_norm);
        for m in [&l.w_gate, &l.w_up, &l.w_down] {
            b = matrix(b, m);
        }
    }
    // Five times the final norm's gain spreads the logits (standard deviation about 3
    // instead of 0.6): a sampled token at temperature 1 is then one of the likely few, and
    // the special tokens' logit of 0 has a chance of about 1e-7, so a sampled request ends
    // on `<|im_end|>` as rarely as it does on the real model.
    let final_norm: Vec<f32> = w.final_norm.iter().map(|g| 5.0 * g).collect();
    b = vector(b, "output_norm.weight".into(), &final_norm);
    let mut head = w.output.bytes().to_vec();
    let row = w.output.row_bytes();
    for &t in silent {
        head[t * row..(t + 1) * row].fill(0);
    }
    b.tensor(
        "output.weight",
        &[w.output.cols as u64, w.output.rows as u64],
        w.output.ty,
        head,
    )
}
