//! Random-weight models of real shapes, so speed can be measured (and kernels checked) on
//! the shape of Llama-3.2-1B or Llama-3.1-8B without downloading a checkpoint.
//!
//! A shape is a built-in name or an HF `config.json`. The weights are deterministic in the
//! seed and served through the ordinary [`Weight`] views, so every backend loads them like a
//! file. Each matrix is made on first use of its bytes, in parallel, so an 8B shape costs
//! its generation time only where the bytes are read (a backend uploading them), not at load.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;
use serde_json::Value;

use super::ModelError;
use super::config::ModelConfig;
use super::weights::{ByteSource, LayerWeights, ModelWeights, Weight};
use crate::format::GgmlType;

/// The built-in shapes, as the fields of their HF `config.json` that tachyon reads.
const BUILTIN: &[(&str, &str)] = &[
    (
        "llama-3.2-1b",
        r#"{"model_type":"llama","hidden_size":2048,"num_attention_heads":32,
        "num_key_value_heads":8,"num_hidden_layers":16,"intermediate_size":8192,
        "vocab_size":128256,"rms_norm_eps":1e-5,"rope_theta":500000.0,
        "max_position_embeddings":131072,"tie_word_embeddings":true,
        "rope_scaling":{"factor":32.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
        "original_max_position_embeddings":8192,"rope_type":"llama3"}}"#,
    ),
    (
        "llama-3.1-8b",
        r#"{"model_type":"llama","hidden_size":4096,"num_attention_heads":32,
        "num_key_value_heads":8,"num_hidden_layers":32,"intermediate_size":14336,
        "vocab_size":128256,"rms_norm_eps":1e-5,"rope_theta":500000.0,
        "max_position_embeddings":131072,"tie_word_embeddings":false,
        "rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
        "original_max_position_embeddings":8192,"rope_type":"llama3"}}"#,
    ),
    (
        "qwen2.5-1.5b",
        r#"{"model_type":"qwen2","hidden_size":1536,"num_attention_heads":12,
        "num_key_value_heads":2,"num_hidden_layers":28,"intermediate_size":8960,
        "vocab_size":151936,"rms_norm_eps":1e-6,"rope_theta":1000000.0,
        "max_position_embeddings":32768,"tie_word_embeddings":true}"#,
    ),
    (
        "qwen2.5-0.5b",
        r#"{"model_type":"qwen2","hidden_size":896,"num_attention_heads":14,
        "num_key_value_heads":2,"num_hidden_layers":24,"intermediate_size":4864,
        "vocab_size":151936,"rms_norm_eps":1e-6,"rope_theta":1000000.0,
        "max_position_embeddings":32768,"tie_word_embeddings":true}"#,
    ),
];

/// Names of the built-in shapes.
pub fn builtin_shapes() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(name, _)| *name)
}

/// A model shape: the config and whether the LM head is the embedding.
#[derive(Clone, Debug)]
pub struct Shape {
    pub name: String,
    pub config: ModelConfig,
    pub tied_output: bool,
}

impl Shape {
    /// A built-in name (see [`builtin_shapes`]) or the path of an HF `config.json`.
    pub fn resolve(spec: &str) -> Result<Shape, ModelError> {
        if let Some((name, json)) = BUILTIN.iter().find(|(n, _)| *n == spec) {
            let v: Value = serde_json::from_str(json)
                .map_err(|e| ModelError::Config(format!("built-in shape {name}: {e}")))?;
            return Shape::from_json(name, &v);
        }
        let path = Path::new(spec);
        if !path.is_file() {
            let names: Vec<&str> = builtin_shapes().collect();
            return Err(ModelError::Config(format!(
                "{spec:?} is neither a built-in shape ({}) nor a config.json file",
                names.join(", ")
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
        Shape::from_json(spec, &v)
    }

    /// A shape from the fields of an HF `config.json`.
    pub fn from_json(name: &str, v: &Value) -> Result<Shape, ModelError> {
        Ok(Shape {
            name: name.to_string(),
            config: ModelConfig::from_hf_json(v)?,
            tied_output: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }
}

/// One matrix of random values, made on the first call to `bytes()`.
struct RandomTensor {
    ty: GgmlType,
    elems: usize,
    /// Values are uniform in [-scale, scale).
    scale: f32,
    seed: u64,
    bytes: OnceLock<Vec<u8>>,
}

impl RandomTensor {
    fn elem_bytes(ty: GgmlType) -> usize {
        match ty {
            GgmlType::F32 => 4,
            _ => 2,
        }
    }

    fn make(&self) -> Vec<u8> {
        let eb = Self::elem_bytes(self.ty);
        let mut out = vec![0u8; self.elems * eb];
        // Chunks of 64 Ki elements: enough parallel work for any core count, and element i
        // depends only on (seed, i), so the result does not depend on the thread count.
        const CHUNK: usize = 1 << 16;
        out.par_chunks_mut(CHUNK * eb)
            .enumerate()
            .for_each(|(c, chunk)| {
                for (j, dst) in chunk.chunks_exact_mut(eb).enumerate() {
                    let v = uniform(self.seed, (c * CHUNK + j) as u64) * self.scale;
                    match self.ty {
                        GgmlType::F32 => dst.copy_from_slice(&v.to_le_bytes()),
                        GgmlType::F16 => dst.copy_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                        _ => dst.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                    }
                }
            });
        out
    }
}

impl ByteSource for RandomTensor {
    fn bytes(&self) -> &[u8] {
        self.bytes.get_or_init(|| self.make())
    }

    fn byte_len(&self) -> usize {
        self.elems * Self::elem_bytes(self.ty)
    }
}

/// SplitMix64 of (seed, index): a stateless hash, so any element can be made independently.
fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [-1, 1), 24 random bits.
fn uniform(seed: u64, i: u64) -> f32 {
    (mix(seed, i) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// Makes the weights of `shape` with matrices in `ty` (F32, F16 or BF16).
///
/// Scales keep activations of order 1 through any depth: a matrix with `cols` inputs gets
/// values in ±1/sqrt(cols) (its outputs then have about 0.6x the RMS of its inputs), the
/// embedding ±1, norm gains 1 ± 0.1, biases ±0.1.
pub fn random_weights(shape: &Shape, ty: GgmlType, seed: u64) -> Result<ModelWeights, ModelError> {
    if !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        return Err(ModelError::Unsupported(format!(
            "random weights in {ty} (F32, F16 or BF16 only)"
        )));
    }
    let c = &shape.config;
    // Every tensor gets its own stream: the seed mixed with a running tensor number.
    let mut next = 0u64;
    let mut stream = || {
        next += 1;
        mix(seed, next)
    };
    let mut matrix =
        |name: String, rows: usize, cols: usize, scale: f32| -> Result<Weight, ModelError> {
            let elems = rows
                .checked_mul(cols)
                .ok_or_else(|| ModelError::Config(format!("{name}: shape overflows")))?;
            let src = Arc::new(RandomTensor {
                ty,
                elems,
                scale,
                seed: stream(),
                bytes: OnceLock::new(),
            });
            let len = src.byte_len();
            Weight::new(&name, ty, rows, cols, src, 0, len)
        };
    let mut vec_seed = mix(seed, u64::MAX);
    let mut vector = |len: usize, center: f32, spread: f32| -> Vec<f32> {
        vec_seed = mix(vec_seed, 1);
        (0..len)
            .map(|i| center + spread * uniform(vec_seed, i as u64))
            .collect()
    };
    let (d, q, kv, f) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim);
    let inv_sqrt = |n: usize| 1.0 / (n as f32).sqrt();
    let mut layers = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let n = |s: &str| format!("blk.{i}.{s}");
        layers.push(LayerWeights {
            attn_norm: vector(d, 1.0, 0.1),
            wq: matrix(n("attn_q.weight"), q, d, inv_sqrt(d))?,
            wk: matrix(n("attn_k.weight"), kv, d, inv_sqrt(d))?,
            wv: matrix(n("attn_v.weight"), kv, d, inv_sqrt(d))?,
            bq: c.qkv_bias.then(|| vector(q, 0.0, 0.1)),
            bk: c.qkv_bias.then(|| vector(kv, 0.0, 0.1)),
            bv: c.qkv_bias.then(|| vector(kv, 0.0, 0.1)),
            q_norm: c.qk_norm.then(|| vector(c.head_dim, 1.0, 0.1)),
            k_norm: c.qk_norm.then(|| vector(c.head_dim, 1.0, 0.1)),
            wo: matrix(n("attn_output.weight"), d, q, inv_sqrt(q))?,
            ffn_norm: vector(d, 1.0, 0.1),
            w_gate: matrix(n("ffn_gate.weight"), f, d, inv_sqrt(d))?,
            w_up: matrix(n("ffn_up.weight"), f, d, inv_sqrt(d))?,
            w_down: matrix(n("ffn_down.weight"), d, f, inv_sqrt(f))?,
        });
    }
    let embed = matrix("token_embd.weight".into(), c.vocab_size, d, 1.0)?;
    let output = if shape.tied_output {
        embed.clone()
    } else {
        matrix("output.weight".into(), c.vocab_size, d, inv_sqrt(d))?
    };
    Ok(ModelWeights {
        embed,
        layers,
        final_norm: vector(d, 1.0, 0.1),
        output,
        tied_output: shape.tied_output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_resolve_to_their_real_shapes() {
        let s = Shape::resolve("llama-3.2-1b").unwrap();
        assert_eq!(
            (s.config.dim, s.config.n_layers, s.config.kv_dim()),
            (2048, 16, 512)
        );
        assert!(s.tied_output && s.config.rope.freq_factors.is_some());
        let s = Shape::resolve("llama-3.1-8b").unwrap();
        assert_eq!(
            (s.config.dim, s.config.head_dim, s.config.ffn_dim),
            (4096, 128, 14336)
        );
        assert!(!s.tied_output);
        let s = Shape::resolve("qwen2.5-1.5b").unwrap();
        assert!(s.config.qkv_bias && s.tied_output);
        assert_eq!(s.config.n_heads / s.config.n_kv_heads, 6);
        let s = Shape::resolve("qwen2.5-0.5b").unwrap();
        assert_eq!(s.config.n_heads / s.config.n_kv_heads, 7);
        assert!(Shape::resolve("no-such-shape").is_err());
    }

    #[test]
    fn weights_are_deterministic_lazy_and_bounded() {
        let shape = Shape::resolve("qwen2.5-0.5b").unwrap();
        let a = random_weights(&shape, GgmlType::BF16, 7).unwrap();
        let b = random_weights(&shape, GgmlType::BF16, 7).unwrap();
        let c = random_weights(&shape, GgmlType::BF16, 8).unwrap();
        // The byte count is known without making the bytes (0.5B: about 0.99 GB of BF16).
        assert_eq!(a.bytes_per_token(), b.bytes_per_token());
        let (wa, wb, wc) = (&a.layers[3].wk, &b.layers[3].wk, &c.layers[3].wk);
        assert_eq!(wa.bytes(), wb.bytes());
        assert_ne!(wa.bytes(), wc.bytes());
        assert_ne!(
            a.layers[3].wk.bytes(),
            a.layers[3].wv.bytes(),
            "tensors get distinct streams"
        );
        let all = wa.float_values().unwrap();
        let row = &all[5 * wa.cols..6 * wa.cols];
        let bound = 1.0 / (wa.cols as f32).sqrt() * 1.01;
        assert!(row.iter().all(|v| v.abs() <= bound) && row.iter().any(|v| v.abs() > bound / 2.0));
        assert!(a.tied_output);
        assert_eq!(
            a.layers[0].bq.as_ref().map(Vec::len),
            Some(shape.config.q_dim())
        );
    }
}
