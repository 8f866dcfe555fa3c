//! The same random weights written as an HF checkpoint (safetensors, rotate-half rope,
//! unpermuted Q/K) and as a GGUF file (the converter's Q/K row permutation for llama,
//! interleaved rope) must give the same logits. This checks the safetensors loader, the
//! config readers, both rope pairings and the permutation convention against each other,
//! for every supported family.

use std::collections::BTreeMap;
use std::path::Path;

use tachyon::engine::{Pick, Rows, SessionOptions, StepInput, cpu_session};
use tachyon::format::gguf::{GgufBuilder, MetaValue};
use tachyon::format::load_weights;
use tachyon::quant::model_quantizer::{QuantMix, quantize_to_gguf};

struct Shape {
    family: &'static str,
    dim: usize,
    n_heads: usize,
    n_kv: usize,
    ffn: usize,
    vocab: usize,
    layers: usize,
    tied: bool,
}

impl Shape {
    fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }
}

/// Deterministic pseudo-random values in [-scale, scale).
struct Rand(u64);
impl Rand {
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }
}

/// HF-named tensors: name -> (shape, values).
fn random_hf_tensors(s: &Shape, seed: u64) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut r = Rand(seed);
    let mut t = BTreeMap::new();
    let hd = s.head_dim();
    let (q, kv) = (s.n_heads * hd, s.n_kv * hd);
    let mut put = |name: String, shape: Vec<usize>, scale: f32, r: &mut Rand| {
        let n = shape.iter().product();
        let mut v = r.vec(n, scale);
        if name.ends_with("norm.weight") {
            v.iter_mut().for_each(|x| *x += 1.0);
        }
        t.insert(name, (shape, v));
    };
    put(
        "model.embed_tokens.weight".into(),
        vec![s.vocab, s.dim],
        1.0,
        &mut r,
    );
    for i in 0..s.layers {
        let p = format!("model.layers.{i}.");
        put(
            format!("{p}input_layernorm.weight"),
            vec![s.dim],
            0.1,
            &mut r,
        );
        put(
            format!("{p}self_attn.q_proj.weight"),
            vec![q, s.dim],
            0.3,
            &mut r,
        );
        put(
            format!("{p}self_attn.k_proj.weight"),
            vec![kv, s.dim],
            0.3,
            &mut r,
        );
        put(
            format!("{p}self_attn.v_proj.weight"),
            vec![kv, s.dim],
            0.3,
            &mut r,
        );
        if s.family == "qwen2" {
            put(format!("{p}self_attn.q_proj.bias"), vec![q], 0.5, &mut r);
            put(format!("{p}self_attn.k_proj.bias"), vec![kv], 0.5, &mut r);
            put(format!("{p}self_attn.v_proj.bias"), vec![kv], 0.5, &mut r);
        }
        if s.family == "qwen3" {
            put(format!("{p}self_attn.q_norm.weight"), vec![hd], 0.1, &mut r);
            put(format!("{p}self_attn.k_norm.weight"), vec![hd], 0.1, &mut r);
        }
        put(
            format!("{p}self_attn.o_proj.weight"),
            vec![s.dim, q],
            0.2,
            &mut r,
        );
        put(
            format!("{p}post_attention_layernorm.weight"),
            vec![s.dim],
            0.1,
            &mut r,
        );
        put(
            format!("{p}mlp.gate_proj.weight"),
            vec![s.ffn, s.dim],
            0.2,
            &mut r,
        );
        put(
            format!("{p}mlp.up_proj.weight"),
            vec![s.ffn, s.dim],
            0.2,
            &mut r,
        );
        put(
            format!("{p}mlp.down_proj.weight"),
            vec![s.dim, s.ffn],
            0.2,
            &mut r,
        );
    }
    put("model.norm.weight".into(), vec![s.dim], 0.1, &mut r);
    if !s.tied {
        put("lm_head.weight".into(), vec![s.vocab, s.dim], 0.3, &mut r);
    }
    t
}

/// A safetensors file written by hand from the format's definition: an 8-byte header length,
/// the JSON header, then the raw little-endian data.
fn write_safetensors(path: &Path, tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, (shape, v)) in tensors {
        let start = data.len();
        for x in v {
            data.extend_from_slice(&x.to_le_bytes());
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

/// The llama converter's row permutation of Q/K: within each head, row 2i takes old row i
/// and row 2i+1 takes old row i + head_dim/2, so interleaved rope equals rotate-half.
fn permute_rows(v: &[f32], n_heads: usize, rows: usize, cols: usize) -> Vec<f32> {
    let hd = rows / n_heads;
    let mut out = vec![0.0; v.len()];
    for h in 0..n_heads {
        for i in 0..hd / 2 {
            for (dst, src) in [(2 * i, i), (2 * i + 1, i + hd / 2)] {
                let (d, s) = ((h * hd + dst) * cols, (h * hd + src) * cols);
                out[d..d + cols].copy_from_slice(&v[s..s + cols]);
            }
        }
    }
    out
}

fn gguf_name(hf: &str) -> String {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (i, role) = rest.split_once('.').unwrap();
    let role = match role {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => panic!("unmapped {other}"),
    };
    format!("blk.{i}.{role}")
}

fn write_pair(s: &Shape, dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let tensors = random_hf_tensors(s, 0x5eed_0000 + s.dim as u64);
    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    write_safetensors(&hf.join("model.safetensors"), &tensors);
    let config = serde_json::json!({
        "model_type": s.family, "hidden_size": s.dim, "num_attention_heads": s.n_heads,
        "num_key_value_heads": s.n_kv, "num_hidden_layers": s.layers, "intermediate_size": s.ffn,
        "vocab_size": s.vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 256, "tie_word_embeddings": s.tied,
    });
    std::fs::write(hf.join("config.json"), config.to_string()).unwrap();

    let arch = s.family;
    let key = |k: &str| format!("{arch}.{k}");
    let mut b = GgufBuilder::new()
        .meta("general.architecture", MetaValue::String(arch.into()))
        .meta(key("block_count"), MetaValue::U32(s.layers as u32))
        .meta(key("embedding_length"), MetaValue::U32(s.dim as u32))
        .meta(key("feed_forward_length"), MetaValue::U32(s.ffn as u32))
        .meta(
            key("attention.head_count"),
            MetaValue::U32(s.n_heads as u32),
        )
        .meta(
            key("attention.head_count_kv"),
            MetaValue::U32(s.n_kv as u32),
        )
        .meta(
            key("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(1e-5),
        )
        .meta(key("rope.freq_base"), MetaValue::F32(10000.0))
        .meta(key("context_length"), MetaValue::U32(256))
        .meta(key("vocab_size"), MetaValue::U32(s.vocab as u32));
    let interleaved = matches!(s.family, "llama" | "mistral");
    for (name, (shape, v)) in &tensors {
        let (rows, cols) = if shape.len() == 2 {
            (shape[0], shape[1])
        } else {
            (1, shape[0])
        };
        let v = if interleaved && name.ends_with("q_proj.weight") {
            permute_rows(v, s.n_heads, rows, cols)
        } else if interleaved && name.ends_with("k_proj.weight") {
            permute_rows(v, s.n_kv, rows, cols)
        } else {
            v.clone()
        };
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        b = b.tensor_f32(gguf_name(name), &dims, &v);
    }
    let gguf = dir.join("model.gguf");
    std::fs::write(&gguf, b.build()).unwrap();
    (hf, gguf)
}

fn logits_of(path: &Path, tokens: &[u32]) -> Vec<Vec<f32>> {
    let (cfg, w, _) = load_weights(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let opts = SessionOptions {
        ctx: 64,
        max_batch: 8,
        precise: true,
        ..Default::default()
    };
    let mut s = cpu_session(&cfg, &w, &opts).unwrap();
    let mut out = Vec::new();
    // A batched prefill of all but the last token, then one decode step, to cover both paths.
    let mut l = vec![f32::NAN; cfg.vocab_size];
    s.step(
        StepInput {
            tokens: &tokens[..tokens.len() - 1],
            pos: 0,
        },
        Pick::Logits(&mut l),
        Rows::Last,
    )
    .unwrap();
    out.push(l.clone());
    l.fill(f32::NAN);
    s.step(
        StepInput {
            tokens: &tokens[tokens.len() - 1..],
            pos: tokens.len() - 1,
        },
        Pick::Logits(&mut l),
        Rows::Last,
    )
    .unwrap();
    out.push(l);
    out
}

/// `tachyon quantize` of the HF checkpoint to an F32 GGUF (llama.cpp names and metadata,
/// Q/K permuted for llama) must load back to the same model.
fn quantized_from_hf(hf: &Path, out: &Path) -> std::path::PathBuf {
    let (cfg, w, src) = load_weights(hf).unwrap();
    let q = out.join("from-hf-f32.gguf");
    quantize_to_gguf(
        &cfg,
        &w,
        Some(&src),
        QuantMix::Uniform(tachyon::format::GgmlType::F32),
        &q,
        |_, _| {},
    )
    .unwrap();
    q
}

fn check(s: Shape) {
    let dir = tempfile::tempdir().unwrap();
    let (hf, gguf) = write_pair(&s, dir.path());
    let tokens = [3u32, 17, 5, 38, 9, 1, 30];
    let a = logits_of(&hf, &tokens);
    let b = logits_of(&gguf, &tokens);
    let c = logits_of(&quantized_from_hf(&hf, dir.path()), &tokens);
    for (la, lb) in a.iter().zip(&b).chain(a.iter().zip(&c)) {
        let scale = la.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.1, "degenerate logits");
        for (i, (x, y)) in la.iter().zip(lb).enumerate() {
            assert!(x.is_finite() && y.is_finite(), "{}: NaN at {i}", s.family);
            assert!(
                (x - y).abs() <= 1e-4 * scale,
                "{}: logit {i}: hf {x} vs gguf {y}",
                s.family
            );
        }
    }
}

#[test]
fn llama_hf_and_gguf_agree() {
    check(Shape {
        family: "llama",
        dim: 64,
        n_heads: 4,
        n_kv: 2,
        ffn: 96,
        vocab: 48,
        layers: 2,
        tied: true,
    });
}

#[test]
fn mistral_hf_and_gguf_agree() {
    check(Shape {
        family: "mistral",
        dim: 64,
        n_heads: 8,
        n_kv: 8,
        ffn: 80,
        vocab: 40,
        layers: 2,
        tied: false,
    });
}

#[test]
fn qwen2_hf_and_gguf_agree() {
    check(Shape {
        family: "qwen2",
        dim: 96,
        n_heads: 6,
        n_kv: 2,
        ffn: 128,
        vocab: 56,
        layers: 2,
        tied: false,
    });
}

#[test]
fn qwen3_hf_and_gguf_agree() {
    check(Shape {
        family: "qwen3",
        dim: 64,
        n_heads: 4,
        n_kv: 1,
        ffn: 96,
        vocab: 40,
        layers: 3,
        tied: true,
    });
}

#[test]
fn hf_tensor_with_wrong_shape_is_refused_by_name() {
    let s = Shape {
        family: "llama",
        dim: 64,
        n_heads: 4,
        n_kv: 2,
        ffn: 96,
        vocab: 48,
        layers: 1,
        tied: true,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut t = random_hf_tensors(&s, 1);
    t.insert(
        "model.layers.0.mlp.up_proj.weight".into(),
        (vec![95, 64], vec![0.0; 95 * 64]),
    );
    let (hf, _) = write_pair(&s, dir.path());
    write_safetensors(&hf.join("model.safetensors"), &t);
    let err = load_weights(&hf).err().expect("must fail").to_string();
    assert!(err.contains("model.layers.0.mlp.up_proj.weight"), "{err}");
    t.remove("model.layers.0.mlp.up_proj.weight");
    write_safetensors(&hf.join("model.safetensors"), &t);
    let err = load_weights(&hf).err().expect("must fail").to_string();
    assert!(
        err.contains("model.layers.0.mlp.up_proj.weight") && err.contains("missing"),
        "{err}"
    );
}
