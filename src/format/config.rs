//! The hyper-parameters every supported family maps to, read from GGUF metadata or from an
//! HF `config.json`.

use serde_json::Value;

use super::ModelError;
use super::gguf::GgufFile;

/// Model families tachyon runs. They share one decoder graph (see `llama.rs`); the
/// differences are flags on [`ModelConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Family {
    fn parse(name: &str) -> Option<Family> {
        match name {
            "llama" => Some(Family::Llama),
            "mistral" => Some(Family::Mistral),
            "qwen2" => Some(Family::Qwen2),
            "qwen3" => Some(Family::Qwen3),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
        }
    }
}

/// Which elements RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(x[2i], x[2i+1])`. GGUF llama files use this: their converter
    /// permuted the Q/K rows so that this pairing is equivalent to HF's rotate-half.
    Interleaved,
    /// Pairs `(x[i], x[i + d/2])` (GPT-NeoX, HF `rotate_half`).
    Neox,
}

/// Rotary embedding parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub style: RopeStyle,
    pub theta: f32,
    /// Number of leading dimensions of each head that are rotated (the head size for all
    /// families supported today).
    pub dim: usize,
    /// Linear position scaling: positions are divided by this (1.0 = none).
    pub linear_factor: f32,
    /// Llama 3 style per-frequency divisors, `dim / 2` of them (None = all 1).
    pub freq_factors: Option<Vec<f32>>,
}

impl Rope {
    /// Rotated pairs per head (`dim / 2`): the width of one row of the angle tables.
    pub fn half(&self) -> usize {
        self.dim / 2
    }

    /// The inverse frequency of pair `i`: `theta^(-2i/dim) / freq_factor[i]`.
    pub fn inv_freqs(&self) -> Vec<f32> {
        (0..self.half())
            .map(|i| {
                let f = base_inv_freq(self.theta, self.dim, i);
                let div = self.freq_factors.as_ref().map_or(1.0, |ff| ff[i] as f64);
                (f / div) as f32
            })
            .collect()
    }

    /// The rotary angle tables for positions `0..cos.len() / half`: `cos[p * half + i]` and
    /// `sin[p * half + i]` of `p / linear_factor * inv_freq[i]`, computed in f64 and rounded
    /// once. Every backend's table is this (the CPU's `rope_table`, the CUDA device tables),
    /// so all of them rotate by identical angles. `cos` and `sin` are the same length, a
    /// multiple of [`Rope::half`].
    pub fn fill_angles(&self, cos: &mut [f32], sin: &mut [f32]) {
        let inv = self.inv_freqs();
        let half = inv.len().max(1);
        for (p, (c, s)) in cos.chunks_mut(half).zip(sin.chunks_mut(half)).enumerate() {
            let pos = p as f64 / self.linear_factor as f64;
            for ((c, s), f) in c.iter_mut().zip(s.iter_mut()).zip(&inv) {
                let a = pos * *f as f64;
                *c = a.cos() as f32;
                *s = a.sin() as f32;
            }
        }
    }

    /// [`Rope::fill_angles`] into new tables for positions `0..ctx`: (cos, sin, half).
    pub fn angles(&self, ctx: usize) -> (Vec<f32>, Vec<f32>, usize) {
        let half = self.half();
        let mut cos = vec![0.0; ctx * half];
        let mut sin = vec![0.0; ctx * half];
        self.fill_angles(&mut cos, &mut sin);
        (cos, sin, half)
    }
}

/// The unscaled inverse frequency of pair `i` of a `dim`-wide rotation: `theta^(-2i/dim)`.
fn base_inv_freq(theta: f32, dim: usize, i: usize) -> f64 {
    (theta as f64).powf(-2.0 * i as f64 / dim as f64)
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    pub n_layers: usize,
    pub dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub rms_eps: f32,
    pub max_ctx: usize,
    pub rope: Rope,
    /// Q/K/V projections carry a bias (qwen2).
    pub qkv_bias: bool,
    /// Per-head RMSNorm on q and k before rope (qwen3).
    pub qk_norm: bool,
    /// Attention only sees this many previous positions (mistral), when set.
    pub sliding_window: Option<usize>,
}

/// Upper bounds that keep a hostile config from asking for absurd allocations. They are far
/// above any model tachyon targets.
const MAX_LAYERS: usize = 1024;
const MAX_DIM: usize = 1 << 17;
const MAX_HEADS: usize = 1024;
const MAX_VOCAB: usize = 1 << 22;
const MAX_CTX: usize = 1 << 24;

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Read the hyper-parameters from GGUF metadata (`{arch}.*` keys).
    pub fn from_gguf(g: &GgufFile) -> Result<ModelConfig, ModelError> {
        let arch = g
            .architecture()
            .ok_or_else(|| ModelError::Config("general.architecture missing".into()))?;
        let family = Family::parse(arch).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "architecture {arch:?} (supported: llama, mistral, qwen2, qwen3)"
            ))
        })?;
        let key = |k: &str| format!("{arch}.{k}");
        let req = |k: &str| -> Result<usize, ModelError> {
            let full = key(k);
            let v = g
                .get_u64(&full)
                .ok_or_else(|| ModelError::Config(format!("{full} missing or not an integer")))?;
            usize::try_from(v).map_err(|_| ModelError::Config(format!("{full} = {v} is too large")))
        };
        let opt = |k: &str| g.get_u64(&key(k)).and_then(|v| usize::try_from(v).ok());

        let n_layers = req("block_count")?;
        let dim = req("embedding_length")?;
        let n_heads = req("attention.head_count")?;
        let n_kv_heads = opt("attention.head_count_kv").unwrap_or(n_heads);
        let ffn_dim = req("feed_forward_length")?;
        let head_dim = match opt("attention.key_length") {
            Some(h) => h,
            None if n_heads > 0 => dim / n_heads,
            None => 0,
        };
        let vocab_size = match opt("vocab_size") {
            Some(v) => v,
            None => g.get_array("tokenizer.ggml.tokens").map_or(0, |a| a.len()),
        };
        let rms_eps = g
            .get_f32(&key("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5);
        let theta = g.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0);
        let rope_dim = opt("rope.dimension_count").unwrap_or(head_dim);
        let linear_factor = match g.get_str(&key("rope.scaling.type")) {
            Some("linear") => g.get_f32(&key("rope.scaling.factor")).unwrap_or(1.0),
            Some("none") | None => 1.0,
            Some(other) => {
                return Err(ModelError::Unsupported(format!(
                    "rope scaling type {other:?}"
                )));
            }
        };
        let style = match family {
            Family::Llama | Family::Mistral => RopeStyle::Interleaved,
            Family::Qwen2 | Family::Qwen3 => RopeStyle::Neox,
        };
        let cfg = ModelConfig {
            family,
            n_layers,
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim,
            vocab_size,
            rms_eps,
            max_ctx: opt("context_length").unwrap_or(2048),
            rope: Rope {
                style,
                theta,
                dim: rope_dim,
                linear_factor,
                freq_factors: None,
            },
            qkv_bias: family == Family::Qwen2,
            qk_norm: family == Family::Qwen3,
            sliding_window: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read an HF `config.json`.
    pub fn from_hf_json(v: &Value) -> Result<ModelConfig, ModelError> {
        let model_type = v
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| ModelError::Config("config.json: model_type missing".into()))?;
        let family = Family::parse(model_type).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "model_type {model_type:?} (supported: llama, mistral, qwen2, qwen3)"
            ))
        })?;
        let int = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .and_then(|x| usize::try_from(x).ok())
        };
        let req = |k: &str| {
            int(k).ok_or_else(|| {
                ModelError::Config(format!("config.json: {k} missing or not an integer"))
            })
        };
        let float = |k: &str| v.get(k).and_then(Value::as_f64);

        let dim = req("hidden_size")?;
        let n_heads = req("num_attention_heads")?;
        let n_kv_heads = int("num_key_value_heads").unwrap_or(n_heads);
        let head_dim = match int("head_dim") {
            Some(h) => h,
            None if n_heads > 0 => dim / n_heads,
            None => 0,
        };
        // Transformers 5 nests rope settings under `rope_parameters`; older files keep
        // `rope_theta` / `rope_scaling` at the top level.
        let rope_params = v.get("rope_parameters");
        let theta = float("rope_theta")
            .or_else(|| {
                rope_params
                    .and_then(|r| r.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10_000.0) as f32;
        let scaling = v
            .get("rope_scaling")
            .filter(|s| !s.is_null())
            .or(rope_params);
        let mut rope = Rope {
            style: RopeStyle::Neox,
            theta,
            dim: head_dim,
            linear_factor: 1.0,
            freq_factors: None,
        };
        if let Some(s) = scaling {
            let kind = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            let f = |k: &str| s.get(k).and_then(Value::as_f64);
            match kind {
                "default" => {}
                "linear" => rope.linear_factor = f("factor").unwrap_or(1.0) as f32,
                "llama3" => {
                    let need = |k: &str| {
                        f(k).ok_or_else(|| {
                            ModelError::Config(format!("config.json: rope_scaling.{k} missing"))
                        })
                    };
                    rope.freq_factors = Some(llama3_freq_factors(
                        theta,
                        head_dim,
                        need("factor")?,
                        need("low_freq_factor")?,
                        need("high_freq_factor")?,
                        need("original_max_position_embeddings")?,
                    ));
                }
                other => {
                    return Err(ModelError::Unsupported(format!(
                        "rope scaling type {other:?}"
                    )));
                }
            }
        }
        // Tied output needs no flag: the loader uses lm_head.weight when present, else the
        // embedding.
        let cfg = ModelConfig {
            family,
            n_layers: req("num_hidden_layers")?,
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: req("intermediate_size")?,
            vocab_size: req("vocab_size")?,
            rms_eps: float("rms_norm_eps").unwrap_or(1e-6) as f32,
            max_ctx: int("max_position_embeddings").unwrap_or(2048),
            rope,
            qkv_bias: family == Family::Qwen2
                || v.get("attention_bias").and_then(Value::as_bool) == Some(true),
            qk_norm: family == Family::Qwen3,
            sliding_window: if family == Family::Mistral {
                int("sliding_window")
            } else {
                None
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reject configs that are inconsistent or absurd before anything is allocated from them.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        let in_range = |name: &str, v: usize, max: usize| -> Result<(), ModelError> {
            if v == 0 || v > max {
                return Err(ModelError::Config(format!(
                    "{name} = {v} is out of range 1..={max}"
                )));
            }
            Ok(())
        };
        in_range("layers", self.n_layers, MAX_LAYERS)?;
        in_range("hidden size", self.dim, MAX_DIM)?;
        in_range("heads", self.n_heads, MAX_HEADS)?;
        in_range("kv heads", self.n_kv_heads, MAX_HEADS)?;
        in_range("head size", self.head_dim, MAX_DIM)?;
        in_range("ffn size", self.ffn_dim, MAX_DIM * 8)?;
        in_range("vocab size", self.vocab_size, MAX_VOCAB)?;
        in_range("context length", self.max_ctx, MAX_CTX)?;
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} heads is not a multiple of {} kv heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2)
            || !self.rope.dim.is_multiple_of(2)
            || self.rope.dim > self.head_dim
        {
            return bad(format!(
                "rope dimension {} must be even and at most the head size {}",
                self.rope.dim, self.head_dim
            ));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return bad(format!(
                "rms epsilon {} must be finite and positive",
                self.rms_eps
            ));
        }
        if !(self.rope.theta.is_finite() && self.rope.theta > 1.0) {
            return bad(format!(
                "rope base {} must be finite and above 1",
                self.rope.theta
            ));
        }
        if !(self.rope.linear_factor.is_finite() && self.rope.linear_factor > 0.0) {
            return bad(format!(
                "rope scaling factor {} must be positive",
                self.rope.linear_factor
            ));
        }
        if let Some(ff) = &self.rope.freq_factors
            && (ff.len() != self.rope.dim / 2 || ff.iter().any(|f| !(f.is_finite() && *f > 0.0)))
        {
            return bad(format!(
                "rope frequency factors: need {} positive values, got {}",
                self.rope.dim / 2,
                ff.len()
            ));
        }
        Ok(())
    }
}

/// Llama 3.1 rope scaling as per-frequency divisors: long wavelengths are slowed down by
/// `factor`, short ones kept, and the band between is interpolated smoothly.
pub fn llama3_freq_factors(
    theta: f32,
    head_dim: usize,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    original_ctx: f64,
) -> Vec<f32> {
    let low_wavelen = original_ctx / low_freq_factor;
    let high_wavelen = original_ctx / high_freq_factor;
    (0..head_dim / 2)
        .map(|i| {
            let freq = base_inv_freq(theta, head_dim, i);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let scaled = if wavelen < high_wavelen {
                freq
            } else if wavelen > low_wavelen {
                freq / factor
            } else {
                let smooth = (original_ctx / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * freq / factor + smooth * freq
            };
            (freq / scaled) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let ff = llama3_freq_factors(500_000.0, 64, 32.0, 1.0, 4.0, 8192.0);
        assert_eq!(ff.len(), 32);
        assert!((ff[0] - 1.0).abs() < 1e-6, "highest frequency untouched");
        assert!(
            (ff[31] - 32.0).abs() < 1e-3,
            "lowest frequency divided by factor"
        );
        assert!(ff.windows(2).all(|w| w[1] >= w[0] - 1e-6), "monotone");
    }

    #[test]
    fn hf_config_parses_llama32_shape() {
        let v: Value = serde_json::from_str(
            r#"{"model_type":"llama","hidden_size":2048,"num_attention_heads":32,
            "num_key_value_heads":8,"num_hidden_layers":16,"intermediate_size":8192,
            "vocab_size":128256,"rms_norm_eps":1e-5,"rope_theta":500000.0,
            "max_position_embeddings":131072,"tie_word_embeddings":true,
            "rope_scaling":{"factor":32.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"}}"#,
        )
        .unwrap();
        let c = ModelConfig::from_hf_json(&v).unwrap();
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.kv_dim(), 512);
        assert_eq!(c.rope.style, RopeStyle::Neox);
        assert_eq!(c.rope.freq_factors.as_ref().map(Vec::len), Some(32));
    }

    #[test]
    fn hf_config_rejects_bad_values() {
        for bad in [
            r#"{"model_type":"gpt2"}"#,
            r#"{"model_type":"llama","hidden_size":0,"num_attention_heads":1,"num_hidden_layers":1,"intermediate_size":1,"vocab_size":1}"#,
            r#"{"model_type":"llama","hidden_size":64,"num_attention_heads":3,"num_key_value_heads":2,"num_hidden_layers":1,"intermediate_size":1,"vocab_size":1}"#,
            r#"{"model_type":"llama","hidden_size":64,"num_attention_heads":4,"num_hidden_layers":99999,"intermediate_size":1,"vocab_size":1}"#,
        ] {
            let v: Value = serde_json::from_str(bad).unwrap();
            assert!(ModelConfig::from_hf_json(&v).is_err(), "{bad}");
        }
    }
}
