//! `tachyon quantize`: re-encode a model's weights into GGUF quant types and write a GGUF
//! file that llama.cpp-family tools read (llama.cpp tensor names and metadata keys).
//!
//! Mixes follow llama.cpp's rules in spirit: `q4_k_m` / `q5_k_m` store most matrices in
//! Q4_K / Q5_K and give the LM head, plus `attn_v` and `ffn_down` in the first and last
//! eighth of the layers and every third one between, Q6_K. A K-quant needs rows that are
//! whole 256-element super-blocks; other rows fall back to Q5_0 / Q5_1 / Q8_0 as llama.cpp
//! does. Norms and biases stay F32.
//!
//! HF llama / mistral checkpoints use rotate-half rope; GGUF llama stores Q and K with
//! each head's rows interleaved for pairwise rope, so those two matrices are permuted.

use std::collections::BTreeMap;
use std::io::BufWriter;
use std::path::Path;

use rayon::prelude::*;

use crate::format::GgmlType;
use crate::format::config::{Family, ModelConfig, RopeStyle};
use crate::format::gguf::MetaValue;
use crate::format::gguf::writer::{TensorSpec, write_gguf};
use crate::format::weights::{ModelWeights, Weight};
use crate::format::{ModelError, ModelSource};
use crate::quant::{self, DequantizeWeight};

/// How to pick each tensor's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantMix {
    /// Every matrix in one type.
    Uniform(GgmlType),
    /// K-quant mix: `base` for most matrices, Q6_K for the sensitive ones.
    KMix { base: GgmlType },
}

impl QuantMix {
    /// `q4_k_m`, `q5_k_m`, or a single type name (`q8_0`, `q4_0`, `q4_k`, `f16`, `bf16`...).
    pub fn parse(s: &str) -> Result<QuantMix, ModelError> {
        let lower = s.to_ascii_lowercase();
        match lower.as_str() {
            "q4_k_m" => {
                return Ok(QuantMix::KMix {
                    base: GgmlType::Q4K,
                });
            }
            "q5_k_m" => {
                return Ok(QuantMix::KMix {
                    base: GgmlType::Q5K,
                });
            }
            _ => {}
        }
        GgmlType::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(&lower))
            .map(QuantMix::Uniform)
            .ok_or_else(|| {
                let names: Vec<&str> = GgmlType::ALL.iter().map(|t| t.name()).collect();
                ModelError::Unsupported(format!(
                    "quant type {s:?} (known: q4_k_m, q5_k_m, {})",
                    names.join(", ")
                ))
            })
    }

    /// llama.cpp's `general.file_type` code for this mix.
    fn file_type(self) -> u32 {
        match self {
            QuantMix::KMix {
                base: GgmlType::Q5K,
            } => 17,
            QuantMix::KMix { .. } => 15,
            QuantMix::Uniform(t) => match t {
                GgmlType::F32 => 0,
                GgmlType::F16 => 1,
                GgmlType::Q4_0 => 2,
                GgmlType::Q4_1 => 3,
                GgmlType::Q8_0 => 7,
                GgmlType::Q5_0 => 8,
                GgmlType::Q5_1 => 9,
                GgmlType::Q4K => 14,
                GgmlType::Q5K => 16,
                GgmlType::Q6K => 18,
                GgmlType::BF16 => 32,
            },
        }
    }
}

/// llama.cpp's choice of layers that get more bits in the K mixes.
fn more_bits(layer: usize, n_layers: usize) -> bool {
    // Past the first clause, `layer >= n_layers / 8`, so the subtraction cannot underflow.
    layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2
}

/// The type a matrix with rows of `cols` elements can take, falling back as llama.cpp does
/// when the rows are not whole blocks of the wanted type.
fn fit(ty: GgmlType, cols: usize) -> GgmlType {
    if cols.is_multiple_of(ty.block_len()) {
        return ty;
    }
    let fallback = match ty {
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    if cols.is_multiple_of(fallback.block_len()) {
        fallback
    } else {
        GgmlType::F16
    }
}

/// Where a tensor's values come from.
enum Values<'a> {
    Matrix {
        w: &'a Weight,
        permute_heads: Option<usize>,
    },
    Vector(&'a [f32]),
}

struct Planned<'a> {
    spec: TensorSpec,
    values: Values<'a>,
}

fn push_mat<'a>(
    plan: &mut Vec<Planned<'a>>,
    (spec, heads): (TensorSpec, Option<usize>),
    w: &'a Weight,
) {
    plan.push(Planned {
        spec,
        values: Values::Matrix {
            w,
            permute_heads: heads,
        },
    });
}

/// What was written.
#[derive(Debug)]
pub struct QuantizeReport {
    pub tensors: usize,
    pub bytes: u64,
    pub types: BTreeMap<&'static str, usize>,
}

/// Rows of `w` as f32, with the rows of each of `heads` heads reordered from rotate-half
/// to interleaved pairs when `permute_heads` is set.
fn matrix_values(w: &Weight, permute_heads: Option<usize>) -> Result<Vec<f32>, ModelError> {
    let v = w.to_f32()?;
    let Some(heads) = permute_heads else {
        return Ok(v);
    };
    let hd = w.rows / heads.max(1);
    if heads == 0 || !hd.is_multiple_of(2) || hd * heads != w.rows {
        return Err(ModelError::Tensor {
            name: w.name.clone(),
            msg: format!(
                "{} rows do not split into {heads} heads of an even size",
                w.rows
            ),
        });
    }
    let mut out = vec![0f32; v.len()];
    let c = w.cols;
    for h in 0..heads {
        for i in 0..hd / 2 {
            for a in 0..2 {
                let dst = h * hd + 2 * i + a;
                let src = h * hd + a * hd / 2 + i;
                out[dst * c..(dst + 1) * c].copy_from_slice(&v[src * c..(src + 1) * c]);
            }
        }
    }
    Ok(out)
}

/// Quantize `values` (rows x cols) to `ty`, rows in parallel.
fn encode(ty: GgmlType, values: &[f32], cols: usize) -> Vec<u8> {
    let rows_per_chunk = (1 << 16) / cols.max(1) + 1;
    let parts: Vec<Vec<u8>> = values
        .par_chunks(rows_per_chunk * cols)
        .map(|c| quant::quantize(ty, c))
        .collect();
    parts.concat()
}

fn hf_metadata(cfg: &ModelConfig, arch: &str) -> Vec<(String, MetaValue)> {
    let k = |s: &str| format!("{arch}.{s}");
    let u = |v: usize| MetaValue::U32(v as u32);
    let mut m = vec![
        (
            "general.architecture".to_string(),
            MetaValue::String(arch.to_string()),
        ),
        (k("context_length"), u(cfg.max_ctx)),
        (k("embedding_length"), u(cfg.dim)),
        (k("block_count"), u(cfg.n_layers)),
        (k("feed_forward_length"), u(cfg.ffn_dim)),
        (k("attention.head_count"), u(cfg.n_heads)),
        (k("attention.head_count_kv"), u(cfg.n_kv_heads)),
        (
            k("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(cfg.rms_eps),
        ),
        (k("rope.freq_base"), MetaValue::F32(cfg.rope.theta)),
        (k("rope.dimension_count"), u(cfg.rope.dim)),
        (k("vocab_size"), u(cfg.vocab_size)),
    ];
    if cfg.head_dim * cfg.n_heads != cfg.dim {
        m.push((k("attention.key_length"), u(cfg.head_dim)));
        m.push((k("attention.value_length"), u(cfg.head_dim)));
    }
    if cfg.rope.linear_factor != 1.0 {
        m.push((k("rope.scaling.type"), MetaValue::String("linear".into())));
        m.push((
            k("rope.scaling.factor"),
            MetaValue::F32(cfg.rope.linear_factor),
        ));
    }
    m
}

/// Write `weights` (described by `cfg`, read from `source`) to `out` as a GGUF in `mix`.
/// A GGUF source keeps its metadata (tokenizer and chat template included); an HF source
/// gets the hyper-parameters only, so the result has no tokenizer.
pub fn quantize_to_gguf(
    cfg: &ModelConfig,
    weights: &ModelWeights,
    source: Option<&ModelSource>,
    mix: QuantMix,
    out: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<QuantizeReport, ModelError> {
    let arch = match cfg.family {
        Family::Llama | Family::Mistral => "llama",
        Family::Qwen2 => "qwen2",
        Family::Qwen3 => "qwen3",
    };
    // GGUF llama pairs rope dimensions (2i, 2i+1); a source in rotate-half order needs its
    // Q and K rows permuted.
    let permute = arch == "llama" && cfg.rope.style == RopeStyle::Neox;
    let n = cfg.n_layers;
    let matrix_ty = |name: &str, layer: Option<usize>, w: &Weight| -> GgmlType {
        let want = match mix {
            QuantMix::Uniform(t) => t,
            QuantMix::KMix { base } => {
                let sensitive = name == "output.weight"
                    || (matches!(name, "attn_v.weight" | "ffn_down.weight")
                        && layer.is_some_and(|l| more_bits(l, n)));
                if sensitive { GgmlType::Q6K } else { base }
            }
        };
        fit(want, w.cols)
    };
    let mat = |name: String,
               short: &str,
               layer: Option<usize>,
               w: &Weight,
               heads: Option<usize>|
     -> (TensorSpec, Option<usize>) {
        let spec = TensorSpec {
            name,
            ty: matrix_ty(short, layer, w),
            rows: w.rows as u64,
            cols: w.cols as u64,
            vector: false,
        };
        (spec, if permute { heads } else { None })
    };
    let vec_spec = |name: String, v: &[f32]| TensorSpec {
        name,
        ty: GgmlType::F32,
        rows: 1,
        cols: v.len() as u64,
        vector: true,
    };
    let mut plan: Vec<Planned> = Vec::new();
    push_mat(
        &mut plan,
        mat(
            "token_embd.weight".into(),
            "token_embd.weight",
            None,
            &weights.embed,
            None,
        ),
        &weights.embed,
    );
    plan.push(Planned {
        spec: vec_spec("output_norm.weight".into(), &weights.final_norm),
        values: Values::Vector(&weights.final_norm),
    });
    if !weights.tied_output {
        push_mat(
            &mut plan,
            mat(
                "output.weight".into(),
                "output.weight",
                None,
                &weights.output,
                None,
            ),
            &weights.output,
        );
    }
    if let Some(f) = &cfg.rope.freq_factors {
        plan.push(Planned {
            spec: vec_spec("rope_freqs.weight".into(), f),
            values: Values::Vector(f),
        });
    }
    for (i, l) in weights.layers.iter().enumerate() {
        let name = |s: &str| format!("blk.{i}.{s}");
        plan.push(Planned {
            spec: vec_spec(name("attn_norm.weight"), &l.attn_norm),
            values: Values::Vector(&l.attn_norm),
        });
        push_mat(
            &mut plan,
            mat(
                name("attn_q.weight"),
                "attn_q.weight",
                Some(i),
                &l.wq,
                Some(cfg.n_heads),
            ),
            &l.wq,
        );
        push_mat(
            &mut plan,
            mat(
                name("attn_k.weight"),
                "attn_k.weight",
                Some(i),
                &l.wk,
                Some(cfg.n_kv_heads),
            ),
            &l.wk,
        );
        push_mat(
            &mut plan,
            mat(name("attn_v.weight"), "attn_v.weight", Some(i), &l.wv, None),
            &l.wv,
        );
        for (s, b) in [
            ("attn_q.bias", &l.bq),
            ("attn_k.bias", &l.bk),
            ("attn_v.bias", &l.bv),
            ("attn_q_norm.weight", &l.q_norm),
            ("attn_k_norm.weight", &l.k_norm),
        ] {
            if let Some(b) = b {
                plan.push(Planned {
                    spec: vec_spec(name(s), b),
                    values: Values::Vector(b),
                });
            }
        }
        push_mat(
            &mut plan,
            mat(
                name("attn_output.weight"),
                "attn_output.weight",
                Some(i),
                &l.wo,
                None,
            ),
            &l.wo,
        );
        plan.push(Planned {
            spec: vec_spec(name("ffn_norm.weight"), &l.ffn_norm),
            values: Values::Vector(&l.ffn_norm),
        });
        push_mat(
            &mut plan,
            mat(
                name("ffn_gate.weight"),
                "ffn_gate.weight",
                Some(i),
                &l.w_gate,
                None,
            ),
            &l.w_gate,
        );
        push_mat(
            &mut plan,
            mat(
                name("ffn_up.weight"),
                "ffn_up.weight",
                Some(i),
                &l.w_up,
                None,
            ),
            &l.w_up,
        );
        push_mat(
            &mut plan,
            mat(
                name("ffn_down.weight"),
                "ffn_down.weight",
                Some(i),
                &l.w_down,
                None,
            ),
            &l.w_down,
        );
    }
    if permute && (cfg.qkv_bias || cfg.qk_norm) {
        return Err(ModelError::Unsupported(
            "permuting Q/K biases or norms for GGUF llama".into(),
        ));
    }

    let mut metadata: Vec<(String, MetaValue)> = match source {
        Some(ModelSource::Gguf(g)) => g
            .metadata()
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "general.file_type" | "general.quantization_version" | "general.alignment"
                )
            })
            .cloned()
            .collect(),
        _ => hf_metadata(cfg, arch),
    };
    metadata.push(("general.file_type".into(), MetaValue::U32(mix.file_type())));
    metadata.push(("general.quantization_version".into(), MetaValue::U32(2)));

    let specs: Vec<TensorSpec> = plan.iter().map(|p| p.spec.clone()).collect();
    let file = std::fs::File::create(out).map_err(|e| ModelError::io(out, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let total = plan.len();
    let mut failure: Option<ModelError> = None;
    let result = write_gguf(&mut w, &metadata, &specs, |i| {
        progress(i, total);
        let p = &plan[i];
        let values = match &p.values {
            Values::Vector(v) => v.to_vec(),
            Values::Matrix { w, permute_heads } => match matrix_values(w, *permute_heads) {
                Ok(v) => v,
                Err(e) => {
                    let msg = e.to_string();
                    failure = Some(e);
                    return Err(std::io::Error::other(msg));
                }
            },
        };
        Ok(encode(p.spec.ty, &values, p.spec.cols as usize))
    });
    progress(total, total);
    if let Some(e) = failure {
        return Err(e);
    }
    result.map_err(|e| ModelError::io(out, e))?;
    let mut types = BTreeMap::new();
    let mut bytes = 0;
    for s in &specs {
        *types.entry(s.ty.name()).or_insert(0) += 1;
        bytes += s.bytes().unwrap_or(0);
    }
    Ok(QuantizeReport {
        tensors: specs.len(),
        bytes,
        types,
    })
}
