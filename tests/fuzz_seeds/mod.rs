//! Recipes for the committed seed inputs of each fuzz target: small valid models to mutate
//! from, and the shapes of known attacks on model loaders (llama.cpp's GGUF heap overflows
//! from unchecked counts, sizes and offsets; a tensor offset past the end of the file; what
//! the safetensors format forbids; runaway templates). `tests/fuzz_regressions.rs` checks
//! the files match these recipes and replays them.
//!
//! File name prefixes say what the entry point must do: `accept-` Ok, `reject-` Err.

#![allow(dead_code)]

use tachyon::format::GgmlType;
use tachyon::format::gguf::{GgufBuilder, MetaValue};

/// (target, file name, bytes).
pub type Seed = (&'static str, String, Vec<u8>);

pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    out.extend(gguf());
    out.extend(safetensors());
    out.extend(tokenizer());
    out.extend(chat_template());
    out.extend(request());
    out
}

// ---------------------------------------------------------------- GGUF

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// GPT-2's map from bytes to printable characters.
fn byte_chars() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap_or('?')
            }
        })
        .collect()
}

fn strings(items: &[String]) -> MetaValue {
    MetaValue::Array(items.iter().map(|s| MetaValue::String(s.clone())).collect())
}

pub const DIM: u64 = 8;
pub const FFN: u64 = 16;

/// A one-layer llama model with a byte-level vocabulary and a ChatML template, as editable
/// lists: metadata, and tensors (name, ggml dims, type; data is zeros, norms ones).
pub struct TinyGguf {
    pub meta: Vec<(String, MetaValue)>,
    pub tensors: Vec<(String, Vec<u64>, GgmlType)>,
}

impl TinyGguf {
    pub fn new() -> TinyGguf {
        TinyGguf::with_dim(DIM)
    }

    /// The same model with hidden size `dim` (a multiple of 32 allows quantized vectors).
    pub fn with_dim(dim: u64) -> TinyGguf {
        let mut tokens: Vec<String> = byte_chars().iter().map(|c| c.to_string()).collect();
        tokens
            .extend(["he", "ll", "hell", "hello", "<|im_start|>", "<|im_end|>"].map(String::from));
        let n = tokens.len();
        let mut types = vec![MetaValue::I32(1); n];
        types[n - 2] = MetaValue::I32(3);
        types[n - 1] = MetaValue::I32(3);
        let merges: Vec<String> = ["h e", "l l", "he ll", "hell o"].map(String::from).to_vec();
        let meta: Vec<(&str, MetaValue)> = vec![
            ("general.architecture", MetaValue::String("llama".into())),
            ("llama.block_count", MetaValue::U32(1)),
            ("llama.embedding_length", MetaValue::U32(dim as u32)),
            ("llama.attention.head_count", MetaValue::U32(2)),
            ("llama.attention.head_count_kv", MetaValue::U32(1)),
            ("llama.feed_forward_length", MetaValue::U32(FFN as u32)),
            ("llama.context_length", MetaValue::U32(64)),
            ("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
            ("tokenizer.ggml.pre", MetaValue::String("smollm".into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            ("tokenizer.ggml.token_type", MetaValue::Array(types)),
            ("tokenizer.ggml.merges", strings(&merges)),
            ("tokenizer.ggml.eos_token_id", MetaValue::U32(n as u32 - 1)),
            ("tokenizer.chat_template", MetaValue::String(CHATML.into())),
        ];
        let (kv, q, f16, f32) = (dim / 2, dim, GgmlType::F16, GgmlType::F32);
        let tensors: Vec<(&str, Vec<u64>, GgmlType)> = vec![
            ("blk.0.attn_norm.weight", vec![dim], f32),
            ("blk.0.attn_q.weight", vec![dim, q], f16),
            ("blk.0.attn_k.weight", vec![dim, kv], f16),
            ("blk.0.attn_v.weight", vec![dim, kv], f16),
            ("blk.0.attn_output.weight", vec![q, dim], f16),
            ("blk.0.ffn_norm.weight", vec![dim], f32),
            ("blk.0.ffn_gate.weight", vec![dim, FFN], f16),
            ("blk.0.ffn_up.weight", vec![dim, FFN], f16),
            ("blk.0.ffn_down.weight", vec![FFN, dim], f16),
            ("output_norm.weight", vec![dim], f32),
            ("token_embd.weight", vec![dim, n as u64], f16),
        ];
        TinyGguf {
            meta: meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            tensors: tensors
                .into_iter()
                .map(|(k, d, t)| (k.to_string(), d, t))
                .collect(),
        }
    }

    /// Sets (or adds) a metadata value.
    pub fn set(mut self, key: &str, value: MetaValue) -> TinyGguf {
        match self.meta.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value,
            None => self.meta.push((key.to_string(), value)),
        }
        self
    }

    /// Sets (or adds) a tensor.
    pub fn tensor(mut self, name: &str, dims: &[u64], ty: GgmlType) -> TinyGguf {
        match self.tensors.iter_mut().find(|(k, _, _)| k == name) {
            Some(e) => (e.1, e.2) = (dims.to_vec(), ty),
            None => self.tensors.push((name.to_string(), dims.to_vec(), ty)),
        }
        self
    }

    pub fn without(mut self, name: &str) -> TinyGguf {
        self.tensors.retain(|(k, _, _)| k != name);
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut b = GgufBuilder::new();
        for (k, v) in &self.meta {
            b = b.meta(k.clone(), v.clone());
        }
        for (name, dims, ty) in &self.tensors {
            // Norms and rope factors hold ones (zeros would be refused); the rest zeros.
            b = if (name.contains("norm") || name.starts_with("rope_freqs")) && *ty == GgmlType::F32
            {
                let n: u64 = dims.iter().product();
                b.tensor_f32(name.clone(), dims, &vec![1.0; n as usize])
            } else {
                b.tensor_zeros(name.clone(), dims, *ty)
            };
        }
        b.build()
    }
}

/// A GGUF header with the given counts and nothing else (`n_tensors`, `n_kv`).
fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend_from_slice(&3u32.to_le_bytes());
    v.extend_from_slice(&n_tensors.to_le_bytes());
    v.extend_from_slice(&n_kv.to_le_bytes());
    v
}

fn put_str(v: &mut Vec<u8>, len: u64, s: &[u8]) {
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(s);
}

/// One key whose value is an array of `elem` claiming `count` elements (with 64 bytes).
fn array_claim(elem: u32, count: u64) -> Vec<u8> {
    let mut v = header(0, 1);
    put_str(&mut v, 1, b"a");
    v.extend_from_slice(&9u32.to_le_bytes());
    v.extend_from_slice(&elem.to_le_bytes());
    v.extend_from_slice(&count.to_le_bytes());
    v.extend_from_slice(&[0u8; 64]);
    v
}

/// One tensor info with the given dims, type and relative offset, plus `data` bytes.
fn tensor_claim(dims: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
    let mut b = GgufBuilder::new().tensor_raw("t", dims, ty, offset);
    if data > 0 {
        b = b.trailing_bytes(vec![0; data]);
    }
    b.build()
}

fn gguf() -> Vec<Seed> {
    let mut s: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| s.push((name.to_string(), bytes));
    add("accept-tiny-llama", TinyGguf::new().build());
    // Counts of key/value pairs and tensors far beyond what the file holds (CVE-2024-23605
    // was an unchecked n_kv).
    for (tag, n) in [("2p32", 1u64 << 32), ("2p63", 1 << 63), ("max", u64::MAX)] {
        add(
            &format!("reject-n-kv-{tag}"),
            [header(0, n), vec![0; 64]].concat(),
        );
        add(
            &format!("reject-n-tensors-{tag}"),
            [header(n, 0), vec![0; 64]].concat(),
        );
    }
    // String lengths: key, value, tensor name.
    for (tag, n) in [("2p32", 1u64 << 32), ("2p63", 1 << 63), ("max", u64::MAX)] {
        let mut v = header(0, 1);
        put_str(&mut v, n, b"key");
        add(&format!("reject-key-len-{tag}"), v);
        let mut v = header(0, 1);
        put_str(&mut v, 1, b"k");
        v.extend_from_slice(&8u32.to_le_bytes());
        put_str(&mut v, n, b"value");
        add(&format!("reject-string-len-{tag}"), v);
        let mut v = header(1, 0);
        put_str(&mut v, n, b"tensor");
        add(&format!("reject-tensor-name-len-{tag}"), v);
        // Array lengths, for one-byte, eight-byte, string and nested-array elements.
        for (elem, ename) in [(0u32, "u8"), (10, "u64"), (8, "string"), (9, "array")] {
            add(
                &format!("reject-array-{ename}-len-{tag}"),
                array_claim(elem, n),
            );
        }
    }
    // Tensor shapes whose element count or byte size overflows (CVE-2024-21802 was an
    // unchecked dims array).
    let f32 = GgmlType::F32 as u32;
    add(
        "reject-dims-product-2p64",
        tensor_claim(&[1 << 32, 1 << 32], f32, 0, 64),
    );
    add(
        "reject-dims-product-over-i64",
        tensor_claim(&[1 << 62, 4], f32, 0, 64),
    );
    add(
        "reject-bytes-overflow",
        tensor_claim(&[1 << 62], f32, 0, 64),
    );
    add("reject-n-dims-2p31", {
        let mut v = header(1, 0);
        put_str(&mut v, 1, b"t");
        v.extend_from_slice(&(1u32 << 31).to_le_bytes());
        v.extend_from_slice(&[1u8; 64]);
        v
    });
    add("reject-dim-zero", tensor_claim(&[8, 0], f32, 0, 64));
    add("reject-unknown-type", tensor_claim(&[32], 4, 0, 256));
    add("reject-type-id-max", tensor_claim(&[32], u32::MAX, 0, 256));
    // Offsets and sizes that wrap when the data section start or padding is added
    // (CVE-2025-53630 and the bypass of its fix were overflows in this arithmetic).
    add(
        "reject-offset-wraps",
        tensor_claim(&[8], f32, u64::MAX - 31, 64),
    );
    add(
        "reject-offset-plus-size-wraps",
        tensor_claim(&[1 << 60], f32, (1 << 63) + (1 << 62), 64),
    );
    add(
        "reject-sizes-sum-wraps",
        GgufBuilder::new()
            .tensor_raw("a", &[1 << 61], f32, 0)
            .tensor_raw("b", &[1 << 61], f32, 1 << 63)
            .trailing_bytes(vec![0; 64])
            .build(),
    );
    // The bypass of that fix: a row count of 2^42 + 1 whose byte size wrapped in 64 bits there.
    add(
        "reject-rows-2p42-plus-1",
        tensor_claim(&[1152, (1 << 42) + 1], GgmlType::Q8_0 as u32, 0, 4096),
    );
    // Alignment of 2^31, padding the data section start far past the end of the file.
    add("reject-alignment-2p31", {
        let mut v = header(1, 1);
        put_str(&mut v, 17, b"general.alignment");
        v.extend_from_slice(&4u32.to_le_bytes());
        v.extend_from_slice(&(1u32 << 31).to_le_bytes());
        put_str(&mut v, 1, b"t");
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&8u64.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&0u64.to_le_bytes());
        v.extend_from_slice(&[0; 64]);
        v
    });
    // A tensor whose data lies past the end of the file (CVE-2026-7482 leaked heap memory
    // through one), or runs one byte past it.
    add(
        "reject-offset-past-eof",
        tensor_claim(&[8], f32, 1 << 40, 64),
    );
    add("reject-data-one-byte-short", tensor_claim(&[8], f32, 0, 31));
    add(
        "reject-overlapping-tensors",
        GgufBuilder::new()
            .tensor_raw("a", &[16], f32, 0)
            .tensor_raw("b", &[16], f32, 32)
            .trailing_bytes(vec![0; 128])
            .build(),
    );
    add(
        "reject-duplicate-tensor",
        GgufBuilder::new()
            .tensor_raw("a", &[8], f32, 0)
            .tensor_raw("a", &[8], f32, 32)
            .trailing_bytes(vec![0; 64])
            .build(),
    );
    add(
        "reject-duplicate-key",
        GgufBuilder::new()
            .meta("k", MetaValue::U8(1))
            .meta("k", MetaValue::U8(2))
            .build(),
    );
    for a in [0u32, 3, 48] {
        add(
            &format!("reject-alignment-{a}"),
            TinyGguf::new()
                .set("general.alignment", MetaValue::U32(a))
                .build(),
        );
    }
    add(
        "reject-alignment-u64",
        TinyGguf::new()
            .set("general.alignment", MetaValue::U64(32))
            .build(),
    );
    // Well-formed files that disagree with their config.
    let t = TinyGguf::new;
    add(
        "accept-rope-freqs",
        t().tensor("rope_freqs.weight", &[2], GgmlType::F32).build(),
    );
    add(
        "reject-missing-tensor",
        t().without("blk.0.ffn_up.weight").build(),
    );
    add(
        "reject-missing-layer",
        t().set("llama.block_count", MetaValue::U32(2)).build(),
    );
    add(
        "reject-extra-tensor",
        t().tensor("blk.1.attn_norm.weight", &[DIM], GgmlType::F32)
            .build(),
    );
    add(
        "reject-wrong-shape",
        t().tensor("blk.0.attn_k.weight", &[DIM, DIM], GgmlType::F16)
            .build(),
    );
    add(
        "reject-3d-tensor",
        t().tensor("blk.0.attn_q.weight", &[DIM, 2, DIM / 2], GgmlType::F16)
            .build(),
    );
    add(
        "reject-rope-freqs-wrong-size",
        t().tensor("rope_freqs.weight", &[32], GgmlType::Q8_0)
            .build(),
    );
    add(
        "reject-vocab-2p40",
        t().set("llama.vocab_size", MetaValue::U64(1 << 40)).build(),
    );
    add(
        "reject-layers-2p32",
        t().set("llama.block_count", MetaValue::U64(1 << 32))
            .build(),
    );
    add(
        "reject-heads-zero",
        t().set("llama.attention.head_count", MetaValue::U32(0))
            .build(),
    );
    add(
        "reject-vocab-smaller-than-embedding",
        t().set("tokenizer.ggml.tokens", strings(&["a".to_string()]))
            .build(),
    );
    s.into_iter().map(|(n, b)| ("gguf", n, b)).collect()
}

// ---------------------------------------------------------------- safetensors

/// A safetensors file from (name, dtype, shape, data) entries laid out in order. The header's
/// keys are sorted by construction (BTreeMaps): serde_json's `Map` keeps insertion order
/// when a dependency enables its `preserve_order` feature, and the seeds must not change
/// with the dependency graph.
pub fn st_file(entries: &[(&str, &str, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    use serde_json::json;
    use std::collections::BTreeMap;
    let mut header = BTreeMap::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in entries {
        let start = data.len();
        data.extend_from_slice(bytes);
        let entry = BTreeMap::from([
            ("data_offsets", json!([start, data.len()])),
            ("dtype", json!(dtype)),
            ("shape", json!(shape)),
        ]);
        header.insert(name.to_string(), entry);
    }
    let h = serde_json::to_vec(&header).unwrap_or_default();
    [(h.len() as u64).to_le_bytes().to_vec(), h, data].concat()
}

/// A safetensors file with a raw JSON header.
fn st_raw(header: &str, data: usize) -> Vec<u8> {
    [
        (header.len() as u64).to_le_bytes().to_vec(),
        header.as_bytes().to_vec(),
        vec![0; data],
    ]
    .concat()
}

const HF_VOCAB: u64 = 16;

fn hf_config() -> String {
    format!(
        r#"{{"model_type":"qwen2","hidden_size":{DIM},"num_attention_heads":2,"num_key_value_heads":1,"num_hidden_layers":1,"intermediate_size":{FFN},"vocab_size":{HF_VOCAB},"tie_word_embeddings":true}}"#
    )
}

/// HF tensors: (name, dtype, shape, data).
pub type HfTensors = Vec<(String, &'static str, Vec<u64>, Vec<u8>)>;

/// The tensors of a one-layer qwen2 checkpoint (with q/k/v biases), F16 matrices.
pub fn hf_tensors() -> HfTensors {
    let f16 = |shape: Vec<u64>| -> (&'static str, Vec<u64>, Vec<u8>) {
        let n: u64 = shape.iter().product();
        ("F16", shape, vec![0; 2 * n as usize])
    };
    let ones = |n: u64| -> (&'static str, Vec<u64>, Vec<u8>) {
        (
            "F32",
            vec![n],
            (0..n).flat_map(|_| 1.0f32.to_le_bytes()).collect(),
        )
    };
    let p = "model.layers.0.";
    let (kv, q) = (DIM / 2, DIM);
    let list = vec![
        (
            "model.embed_tokens.weight".to_string(),
            f16(vec![HF_VOCAB, DIM]),
        ),
        (format!("{p}input_layernorm.weight"), ones(DIM)),
        (format!("{p}self_attn.q_proj.weight"), f16(vec![q, DIM])),
        (format!("{p}self_attn.k_proj.weight"), f16(vec![kv, DIM])),
        (format!("{p}self_attn.v_proj.weight"), f16(vec![kv, DIM])),
        (format!("{p}self_attn.q_proj.bias"), ones(q)),
        (format!("{p}self_attn.k_proj.bias"), ones(kv)),
        (format!("{p}self_attn.v_proj.bias"), ones(kv)),
        (format!("{p}self_attn.o_proj.weight"), f16(vec![DIM, q])),
        (format!("{p}post_attention_layernorm.weight"), ones(DIM)),
        (format!("{p}mlp.gate_proj.weight"), f16(vec![FFN, DIM])),
        (format!("{p}mlp.up_proj.weight"), f16(vec![FFN, DIM])),
        (format!("{p}mlp.down_proj.weight"), f16(vec![DIM, FFN])),
        ("model.norm.weight".to_string(), ones(DIM)),
    ];
    list.into_iter()
        .map(|(n, (d, s, b))| (n, d, s, b))
        .collect()
}

fn st_of(t: &[(String, &'static str, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let e: Vec<(&str, &str, Vec<u64>, Vec<u8>)> = t
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    st_file(&e)
}

/// The `safetensors` target's input: flags, config, optional index, one or two shards.
pub fn st_input(config: &str, index: Option<&str>, shards: &[Vec<u8>]) -> Vec<u8> {
    let mut flags = 0u8;
    if index.is_some() {
        flags |= 2;
    }
    if shards.len() == 2 {
        flags |= 1;
    }
    let mut v = vec![flags];
    v.extend_from_slice(&(config.len() as u16).to_le_bytes());
    v.extend_from_slice(config.as_bytes());
    if let Some(i) = index {
        v.extend_from_slice(&(i.len() as u16).to_le_bytes());
        v.extend_from_slice(i.as_bytes());
    }
    if shards.len() == 2 {
        v.extend_from_slice(&(shards[0].len() as u32).to_le_bytes());
    }
    for s in shards {
        v.extend_from_slice(s);
    }
    v
}

fn safetensors() -> Vec<Seed> {
    let cfg = hf_config();
    let good = hf_tensors();
    let mut s: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| s.push((name.to_string(), bytes));
    let one = |file: Vec<u8>| st_input(&cfg, None, &[file]);
    add("accept-tiny-qwen2", one(st_of(&good)));
    let (a, b) = good.split_at(5);
    add(
        "accept-two-shards",
        st_input(
            &cfg,
            Some(
                r#"{"weight_map":{"x":"model-00001-of-00002.safetensors","y":"model-00002-of-00002.safetensors"}}"#,
            ),
            &[st_of(a), st_of(b)],
        ),
    );
    add(
        "reject-same-tensor-in-two-shards",
        st_input(&cfg, None, &[st_of(&good), st_of(&good[..1])]),
    );
    add(
        "reject-index-path-traversal",
        st_input(
            &cfg,
            Some(r#"{"weight_map":{"x":"../../etc/passwd"}}"#),
            &[vec![]],
        ),
    );
    // Header sizes beyond the file or any limit.
    for (tag, n) in [
        ("2p32", 1u64 << 32),
        ("2p63", 1 << 63),
        ("max", u64::MAX),
        ("64mib-plus-1", (64 << 20) + 1),
    ] {
        let mut f = n.to_le_bytes().to_vec();
        f.extend_from_slice(b"{}");
        add(&format!("reject-header-len-{tag}"), one(f));
    }
    add(
        "reject-header-len-past-eof",
        one([100u64.to_le_bytes().to_vec(), b"{}".to_vec()].concat()),
    );
    add("reject-file-shorter-than-header-len", one(vec![1, 2, 3]));
    // What the format forbids: dtype x elements != byte span, overlaps, holes, offsets past
    // the end, shapes that overflow, trailing bytes.
    let t = |h: &str| one(st_raw(h, 16));
    add(
        "reject-span-mismatch",
        t(r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8]}}"#),
    );
    add(
        "reject-overlap",
        t(
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
        ),
    );
    add(
        "reject-hole",
        t(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#),
    );
    add(
        "reject-offsets-past-end",
        t(r#"{"a":{"dtype":"F32","shape":[1048576],"data_offsets":[0,4194304]}}"#),
    );
    add(
        "reject-offsets-reversed",
        t(r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[16,0]}}"#),
    );
    add(
        "reject-shape-overflow",
        t(
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,16]}}"#,
        ),
    );
    add(
        "reject-offset-2p64",
        t(r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[18446744073709551615,3]}}"#),
    );
    add(
        "reject-trailing-bytes",
        t(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#),
    );
    add(
        "reject-unknown-dtype",
        t(r#"{"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}"#),
    );
    add(
        "reject-metadata-not-strings",
        t(r#"{"__metadata__":{"a":1},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#),
    );
    add("reject-header-not-json", one(st_raw("not json at all", 0)));
    // Well-formed checkpoints that disagree with their config.
    let edit = |f: &dyn Fn(&mut HfTensors)| {
        let mut t = good.clone();
        f(&mut t);
        one(st_of(&t))
    };
    add(
        "reject-missing-tensor",
        edit(&|t| t.retain(|e| !e.0.ends_with("k_proj.bias"))),
    );
    add(
        "reject-extra-tensor",
        edit(&|t| {
            t.push((
                "model.layers.1.mlp.up_proj.weight".into(),
                "F16",
                vec![FFN, DIM],
                vec![0; (2 * FFN * DIM) as usize],
            ))
        }),
    );
    add(
        "reject-wrong-shape",
        edit(&|t| {
            t[2] = (
                t[2].0.clone(),
                "F16",
                vec![DIM, DIM / 2],
                vec![0; (DIM * DIM) as usize],
            )
        }),
    );
    add(
        "reject-wrong-dtype",
        edit(&|t| {
            t[2] = (
                t[2].0.clone(),
                "I16",
                vec![DIM, DIM],
                vec![0; (2 * DIM * DIM) as usize],
            )
        }),
    );
    add(
        "reject-3d-tensor",
        edit(&|t| {
            t[2] = (
                t[2].0.clone(),
                "F16",
                vec![DIM, 2, DIM / 2],
                vec![0; (DIM * DIM * 2) as usize],
            )
        }),
    );
    add(
        "reject-nan-norm",
        edit(&|t| {
            t[1] = (
                t[1].0.clone(),
                "F32",
                vec![DIM],
                (0..DIM).flat_map(|_| f32::NAN.to_le_bytes()).collect(),
            )
        }),
    );
    let huge = cfg.replace(
        r#""num_hidden_layers":1"#,
        r#""num_hidden_layers":4294967296"#,
    );
    add(
        "reject-config-layers-2p32",
        st_input(&huge, None, &[st_of(&good)]),
    );
    let huge = cfg.replace(r#""vocab_size":16"#, r#""vocab_size":9223372036854775808"#);
    add(
        "reject-config-vocab-2p63",
        st_input(&huge, None, &[st_of(&good)]),
    );
    s.into_iter().map(|(n, b)| ("safetensors", n, b)).collect()
}

// ---------------------------------------------------------------- tokenizer

/// The `tokenizer` target's input.
pub fn tok_input(
    flags: u8,
    pre: u8,
    ids: [u16; 3],
    tokens: &[&str],
    merges: &[&str],
    types: &str,
    text: &str,
) -> Vec<u8> {
    let mut v = vec![flags, pre];
    for id in ids {
        v.extend_from_slice(&id.to_le_bytes());
    }
    let body = [
        tokens.join("\u{1}"),
        merges.join("\u{1}"),
        types.to_string(),
        text.to_string(),
    ]
    .join("\0");
    v.extend_from_slice(body.as_bytes());
    v
}

fn tokenizer() -> Vec<Seed> {
    let bytes: Vec<String> = byte_chars().iter().map(|c| c.to_string()).collect();
    let mut byte_level: Vec<&str> = bytes.iter().map(String::as_str).collect();
    byte_level.extend(["he", "ll", "hell", "hello", "<|im_start|>", "<|im_end|>"]);
    let n = byte_level.len();
    let types: String = (0..n)
        .map(|i| if i >= n - 2 { '\u{3}' } else { '\u{1}' })
        .collect();
    let merges = ["h e", "l l", "he ll", "hell o"];
    let text = "hello <|im_start|>world 123 😀\n\tdone";
    let eos = (n - 1) as u16;
    let mut s: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| s.push((name.to_string(), bytes));
    // flags: bits 0-1 model (0 gpt2, 1 llama, 2 unsupported), 0x04 add_bos, 0x08 space
    // prefix, 0x10 scores, 0x20 types, 0x40 bos, 0x80 eos.
    for (pre, name) in [
        (1u8, "gpt2"),
        (3, "llama-bpe"),
        (4, "qwen2"),
        (6, "smollm"),
        (8, "deepseek-coder"),
        (9, "unknown-pre"),
    ] {
        add(
            &format!("accept-byte-level-{name}"),
            tok_input(
                0x20 | 0x80,
                pre,
                [0, eos, 0],
                &byte_level,
                &merges,
                &types,
                text,
            ),
        );
    }
    let spm = [
        "<unk>",
        "<s>",
        "</s>",
        "\u{2581}",
        "h",
        "e",
        "l",
        "o",
        "\u{2581}h",
        "he",
        "ll",
        "hell",
        "hello",
        "\u{2581}hello",
        "<0x0A>",
        "<0xF0>",
        "<0x9F>",
        "<0x98>",
        "<0x80>",
    ];
    let spm_types = "\u{2}\u{3}\u{3}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{6}\u{6}\u{6}\u{6}\u{6}";
    add(
        "accept-sentencepiece",
        tok_input(
            1 | 0x04 | 0x08 | 0x10 | 0x20 | 0x40 | 0x80,
            0,
            [1, 2, 0x8000],
            &spm,
            &[],
            spm_types,
            "hello hello\n😀",
        ),
    );
    add(
        "reject-empty-vocabulary",
        tok_input(0, 0, [0; 3], &[], &[], "", ""),
    );
    add(
        "reject-unsupported-model",
        tok_input(2, 0, [0; 3], &["a"], &[], "", "a"),
    );
    add(
        "reject-bos-out-of-range",
        tok_input(0x40, 0, [500, 0, 0], &byte_level, &[], "", text),
    );
    add(
        "reject-unk-out-of-range",
        tok_input(1 | 0x10, 0, [0, 0, 0x8000 | 999], &spm, &[], "", text),
    );
    add(
        "reject-merge-without-space",
        tok_input(0, 1, [0; 3], &byte_level, &["hello"], "", text),
    );
    add(
        "reject-scores-missing-for-llama",
        tok_input(1, 0, [0; 3], &spm, &[], "", text),
    );
    add(
        "reject-types-shorter-than-vocab",
        tok_input(0x20, 1, [0; 3], &byte_level, &merges, "\u{1}\u{3}", text),
    );
    s.into_iter().map(|(n, b)| ("tokenizer", n, b)).collect()
}

// ---------------------------------------------------------------- chat templates

/// The `chat_template` target's input: template, then role/content pairs; `generation`
/// asks for the generation prompt.
pub fn tpl_input(template: &str, messages: &[(&str, &str)], generation: bool) -> Vec<u8> {
    let mut parts = vec![template.to_string()];
    for (r, c) in messages {
        parts.push(r.to_string());
        parts.push(c.to_string());
    }
    if !generation {
        parts.push(String::new());
    }
    parts.join("\0").into_bytes()
}

fn chat_template() -> Vec<Seed> {
    let conv = [
        ("system", "Be brief."),
        ("user", "Hi <|im_end|> {{ 7*7 }}"),
        ("assistant", "Hello!"),
        ("user", "Bye"),
    ];
    let llama3 = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
    let ns = "{%- set ns = namespace(sys='', n=0) -%}{%- for m in messages -%}{%- if m.role == 'system' -%}{%- set ns.sys = m.content.strip() -%}{%- else -%}{%- set ns.n = ns.n + 1 -%}[{{ ns.n }}] {{ m.role|upper }}: {{ m.content|tojson }}{{ '\n' }}{%- endif -%}{%- endfor -%}{%- if ns.sys %}(system: {{ ns.sys.replace('Be', 'be').split(' ')|join('_') }}){%- endif -%}{{ raise_exception('no user') if ns.n == 0 else '' }}";
    let mut s: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| s.push((name.to_string(), bytes));
    add("accept-chatml", tpl_input(CHATML, &conv, true));
    add("accept-llama3", tpl_input(llama3, &conv, false));
    add("accept-namespace-methods", tpl_input(ns, &conv, true));
    add(
        "accept-macro-and-filters",
        tpl_input(
            "{% macro say(m) %}{{ m.role|title }}={{ m.content|length }}{% endmacro %}{% for m in messages|reverse %}{{ say(m) }}{{ loop.last and '' or ',' }}{% endfor %}{{ messages|map(attribute='role')|unique|list|tojson(indent=2) }}",
            &conv,
            true,
        ),
    );
    add(
        "reject-syntax-error",
        tpl_input("{% for m in messages %}{{ m.content }", &conv, true),
    );
    add(
        "reject-raise-exception",
        tpl_input(
            "{{ raise_exception('Conversation roles must alternate') }}",
            &conv,
            true,
        ),
    );
    add(
        "reject-include",
        tpl_input("{% include '/etc/passwd' %}", &conv, true),
    );
    add(
        "reject-import",
        tpl_input("{% import 'chat_template' as x %}{{ x }}", &conv, true),
    );
    add(
        "reject-extends-self",
        tpl_input("{% extends 'chat_template' %}", &conv, true),
    );
    add(
        "reject-runaway-loop",
        tpl_input(
            "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
            &conv,
            true,
        ),
    );
    add(
        "reject-output-bomb",
        tpl_input(
            "{% for i in range(10000) %}{{ 'x' * 10000 }}{% endfor %}",
            &conv,
            true,
        ),
    );
    add(
        "reject-string-repeat-bomb",
        tpl_input("{{ 'x' * 1000000000000 }}", &conv, true),
    );
    add(
        "reject-recursive-macro",
        tpl_input(
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            &conv,
            true,
        ),
    );
    add(
        "reject-self-call-through-caller",
        tpl_input(
            "{% macro f() %}{% call f() %}{% endcall %}{% endmacro %}{{ f() }}",
            &conv,
            true,
        ),
    );
    add(
        "reject-huge-range",
        tpl_input(
            "{% for i in range(1000000000000) %}{% endfor %}",
            &conv,
            true,
        ),
    );
    add(
        "reject-python-method-on-none",
        tpl_input("{{ none.strip() }}", &conv, true),
    );
    s.into_iter()
        .map(|(n, b)| ("chat_template", n, b))
        .collect()
}

// ---------------------------------------------------------------- requests

/// Request seeds: the endpoint byte (0 completions, 1 chat, 2 tokenize, 3 detokenize,
/// 4 WebSocket envelope) then the body, valid shapes to mutate from and the malformed and
/// out-of-range bodies the server must answer with a 400.
fn request() -> Vec<Seed> {
    let cases: &[(&str, u8, &str)] = &[
        (
            "accept-completion-minimal",
            0,
            r#"{"prompt":"def fib(n):"}"#,
        ),
        (
            "accept-completion-everything",
            0,
            r#"{"model":"m","prompt":"a\u00e9\ud83d\ude00 stop here","suffix":"x","max_tokens":8,"temperature":0.7,"top_p":0.9,"top_k":40,"min_p":0.05,"presence_penalty":0.5,"frequency_penalty":-0.5,"repetition_penalty":1.1,"stop":["stop","\ud83d\ude00"],"seed":-3,"stream":true,"stream_options":{"include_usage":true},"logprobs":5,"n":1,"ignore_eos":true}"#,
        ),
        (
            "accept-completion-token-ids",
            0,
            r#"{"prompt":[1,2,3],"max_tokens":1}"#,
        ),
        ("accept-completion-one-of-batch", 0, r#"{"prompt":[[1,2]]}"#),
        (
            "accept-completion-overlapping-stops",
            0,
            r#"{"prompt":"abcabcabd","stop":["abd","bca","cab"]}"#,
        ),
        (
            "accept-chat",
            1,
            r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"}]},{"role":"assistant"}],"logprobs":true,"top_logprobs":2,"stop":"\n\n"}"#,
        ),
        (
            "accept-tokenize",
            2,
            r#"{"prompt":"hello","add_special_tokens":false}"#,
        ),
        ("accept-detokenize", 3, r#"{"tokens":[0,1,4294967295]}"#),
        ("accept-ws-cancel", 4, r#"{"type":"cancel","id":{"a":[1]}}"#),
        ("reject-empty-body", 0, ""),
        ("reject-whitespace-body", 1, " \n\t "),
        ("reject-not-json", 0, "prompt=hello"),
        ("reject-truncated-json", 0, r#"{"prompt":"abc"#),
        ("reject-no-prompt", 0, r#"{"max_tokens":4}"#),
        ("reject-prompt-wrong-type", 0, r#"{"prompt":{"text":"x"}}"#),
        ("reject-empty-token-prompt", 0, r#"{"prompt":[]}"#),
        ("reject-negative-token-id", 0, r#"{"prompt":[1,-1]}"#),
        ("reject-token-id-over-u32", 0, r#"{"prompt":[4294967296]}"#),
        ("reject-batch-of-prompts", 0, r#"{"prompt":["a","b"]}"#),
        (
            "reject-nan-temperature",
            0,
            r#"{"prompt":"x","temperature":NaN}"#,
        ),
        (
            "reject-huge-temperature",
            0,
            r#"{"prompt":"x","temperature":1e300}"#,
        ),
        (
            "reject-negative-max-tokens",
            0,
            r#"{"prompt":"x","max_tokens":-1}"#,
        ),
        (
            "reject-zero-max-tokens",
            0,
            r#"{"prompt":"x","max_tokens":0}"#,
        ),
        (
            "reject-float-max-tokens",
            0,
            r#"{"prompt":"x","max_tokens":1.5}"#,
        ),
        ("reject-top-p-zero", 0, r#"{"prompt":"x","top_p":0}"#),
        ("reject-top-k-negative", 0, r#"{"prompt":"x","top_k":-2}"#),
        ("reject-n-two", 0, r#"{"prompt":"x","n":2}"#),
        ("reject-echo", 0, r#"{"prompt":"x","echo":true}"#),
        (
            "reject-too-many-logprobs",
            0,
            r#"{"prompt":"x","logprobs":1000}"#,
        ),
        (
            "reject-too-many-stops",
            0,
            r#"{"prompt":"x","stop":["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"]}"#,
        ),
        ("reject-lone-surrogate", 0, r#"{"prompt":"\ud800"}"#),
        ("reject-chat-no-messages", 1, r#"{"messages":[]}"#),
        (
            "reject-chat-image-part",
            1,
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
        ),
        (
            "reject-chat-top-logprobs-alone",
            1,
            r#"{"messages":[{"role":"user","content":"x"}],"top_logprobs":3}"#,
        ),
        (
            "reject-deep-nesting",
            0,
            &format!("{}{}", "[".repeat(4096), "]".repeat(4096)),
        ),
        ("reject-detokenize-negative", 3, r#"{"tokens":[-5]}"#),
        ("reject-ws-not-object", 4, "[1,2,3]"),
    ];
    cases
        .iter()
        .map(|(name, endpoint, body)| {
            let mut bytes = vec![*endpoint];
            bytes.extend_from_slice(body.as_bytes());
            ("request", name.to_string(), bytes)
        })
        .collect()
}
