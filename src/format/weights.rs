//! Weight tensors as views into mapped model files, and the per-layer weight set of the
//! decoder. Matrices stay in their file format (quantized or not); only the small vectors
//! (norms, biases) are converted to f32 at load.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

use crate::format::GgmlType;

use super::ModelError;
use super::config::ModelConfig;

/// Something that owns the bytes of a model file (a memory map).
pub trait ByteSource: Send + Sync {
    fn bytes(&self) -> &[u8];

    /// Length of [`ByteSource::bytes`], without touching the bytes: a source that makes
    /// its bytes on first use (random weights) answers this without making them.
    fn byte_len(&self) -> usize {
        self.bytes().len()
    }
}

impl ByteSource for super::gguf::GgufFile {
    fn bytes(&self) -> &[u8] {
        super::gguf::GgufFile::bytes(self)
    }
}

impl ByteSource for memmap2::Mmap {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// Bytes already in memory (tests, fuzzing).
impl ByteSource for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// Bytes held in memory: weights made by a program (tests, conversions) rather than mapped
/// from a file.
pub struct HostBytes(pub Vec<u8>);

impl ByteSource for HostBytes {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A 2-D weight matrix of `rows` x `cols` elements in format `ty`, row-major (each row is
/// `cols` contiguous elements: the layout of GGUF and of safetensors `[out, in]`).
#[derive(Clone)]
pub struct Weight {
    pub name: String,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    src: Arc<dyn ByteSource>,
    offset: usize,
    len: usize,
}

impl std::fmt::Debug for Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Weight({} {} [{}, {}])",
            self.name, self.ty, self.rows, self.cols
        )
    }
}

impl Weight {
    /// A view of `len` bytes at `offset` of `src`, checked against the source and the shape.
    pub fn new(
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        src: Arc<dyn ByteSource>,
        offset: usize,
        len: usize,
    ) -> Result<Weight, ModelError> {
        let bad = |m: String| ModelError::Tensor {
            name: name.to_string(),
            msg: m,
        };
        if !cols.is_multiple_of(ty.block_len()) {
            return Err(bad(format!(
                "row length {cols} is not a multiple of the {ty} block length {}",
                ty.block_len()
            )));
        }
        let want = (rows as u64)
            .checked_mul(cols as u64)
            .and_then(|n| ty.bytes_for(n))
            .ok_or_else(|| bad(format!("shape [{rows}, {cols}] overflows")))?;
        if want != len as u64 {
            return Err(bad(format!(
                "holds {len} bytes, its {ty} shape [{rows}, {cols}] needs {want}"
            )));
        }
        if offset
            .checked_add(len)
            .is_none_or(|end| end > src.byte_len())
        {
            return Err(bad(format!(
                "bytes {offset}..+{len} lie past the end of the file"
            )));
        }
        Ok(Weight {
            name: name.to_string(),
            ty,
            rows,
            cols,
            src,
            offset,
            len,
        })
    }

    /// The raw bytes of the whole matrix.
    pub fn bytes(&self) -> &[u8] {
        &self.src.bytes()[self.offset..self.offset + self.len]
    }

    /// Bytes of the whole matrix, without touching them.
    pub fn byte_len(&self) -> usize {
        self.len
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.len / self.rows.max(1)
    }

    /// The raw bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.bytes()[r * rb..(r + 1) * rb]
    }

    /// The whole tensor as f32, for a float format (F32, F16, BF16: norms, biases, rope
    /// factors); a block format is an error here (`quant::DequantizeWeight` reads those).
    pub fn float_values(&self) -> Result<Vec<f32>, ModelError> {
        // `Weight::new` checked the byte length against the shape.
        let mut out = vec![0.0; self.rows * self.cols];
        if !self.ty.widen_floats(self.bytes(), &mut out) {
            return Err(ModelError::Tensor {
                name: self.name.clone(),
                msg: format!("is {}; expected F32, F16 or BF16", self.ty),
            });
        }
        Ok(out)
    }
}

/// Where the loader finds tensors by their role; GGUF and HF name them differently.
pub trait TensorLookup {
    /// The tensor with this GGUF-style name (`blk.3.attn_q.weight`), as a 2-D view
    /// (1-D tensors come back as one row).
    fn find(&self, gguf_name: &str) -> Result<Option<Weight>, ModelError>;

    /// The name the file itself would use for this tensor (for error messages).
    fn file_name(&self, gguf_name: &str) -> String {
        gguf_name.to_string()
    }

    /// Every tensor in the file, by the file's own names.
    fn tensor_names(&self) -> Vec<String>;

    /// Tensors a file may carry that no family uses and that change nothing when ignored
    /// (e.g. precomputed rope tables); every other unused tensor is refused.
    fn is_ignorable(&self, _file_name: &str) -> bool {
        false
    }
}

/// Vector tensors (norms, biases, rope factors) are converted to f32 at load; converters
/// always keep them in a float format, so a quantized one means a broken file.
fn is_float(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// The rope frequency divisors stored in `rope_freqs.weight` (Llama 3.1 style scaling),
/// checked against the config before any conversion: `rope.dim / 2` float values.
pub fn rope_freq_factors(
    cfg: &ModelConfig,
    src: &dyn TensorLookup,
) -> Result<Option<Vec<f32>>, ModelError> {
    let Some(w) = src.find(ROPE_FREQS)? else {
        return Ok(None);
    };
    let want = cfg.rope.dim / 2;
    if (w.rows, w.cols) != (1, want) || !is_float(w.ty) {
        return Err(ModelError::Tensor {
            name: w.name.clone(),
            msg: format!(
                "{} [{}, {}], the config needs {want} float values",
                w.ty, w.rows, w.cols
            ),
        });
    }
    w.float_values().map(Some)
}

/// GGUF name of the rope frequency factors tensor.
const ROPE_FREQS: &str = "rope_freqs.weight";

/// Weights of one decoder layer.
#[derive(Clone)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Weight,
    pub wk: Weight,
    pub wv: Weight,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub wo: Weight,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Weight,
    pub w_up: Weight,
    pub w_down: Weight,
}

/// All weights of a decoder-only model.
#[derive(Clone)]
pub struct ModelWeights {
    pub embed: Weight,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>,
    /// The LM head; the embedding matrix itself when the model ties them.
    pub output: Weight,
    pub tied_output: bool,
}

impl ModelWeights {
    /// Bytes of weights read per decoded token: every matrix once (the LM head included),
    /// the embedding row aside.
    pub fn bytes_per_token(&self) -> u64 {
        let mut total = self.output.byte_len() as u64;
        for l in &self.layers {
            for m in [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down] {
                total += m.byte_len() as u64;
            }
        }
        total
    }

    /// Find every tensor the config calls for and check its shape, so a model whose tensors
    /// disagree with its config is refused here, naming the tensor.
    ///
    /// Checked for every tensor before anything is converted or uploaded: present (optional
    /// ones only where the family has them), the shape the config asks for, a float format for
    /// vectors; and no tensor in the file that the model would not use.
    pub fn load(cfg: &ModelConfig, src: &dyn TensorLookup) -> Result<ModelWeights, ModelError> {
        // File names of every tensor asked for, to find the ones nobody asked for.
        let used = RefCell::new(HashSet::new());
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<Weight, ModelError> {
            used.borrow_mut().insert(src.file_name(name));
            let w = src
                .find(name)?
                .ok_or_else(|| ModelError::MissingTensor(src.file_name(name)))?;
            if (w.rows, w.cols) != (rows, cols) {
                return Err(ModelError::Tensor {
                    name: w.name.clone(),
                    msg: format!(
                        "shape [{}, {}], the config needs [{rows}, {cols}]",
                        w.rows, w.cols
                    ),
                });
            }
            Ok(w)
        };
        let vector = |name: &str, len: usize| -> Result<Vec<f32>, ModelError> {
            let w = matrix(name, 1, len)?;
            if !is_float(w.ty) {
                return Err(ModelError::Tensor {
                    name: w.name.clone(),
                    msg: format!("is {}; vectors must be F32, F16 or BF16", w.ty),
                });
            }
            let v = w.float_values()?;
            if v.iter().any(|x| !x.is_finite()) {
                return Err(ModelError::Tensor {
                    name: w.name.clone(),
                    msg: "holds NaN or infinity".into(),
                });
            }
            Ok(v)
        };
        let optional =
            |name: &str, len: usize, wanted: bool| -> Result<Option<Vec<f32>>, ModelError> {
                if wanted {
                    vector(name, len).map(Some)
                } else {
                    Ok(None)
                }
            };
        let (d, q, kv, f) = (cfg.dim, cfg.q_dim(), cfg.kv_dim(), cfg.ffn_dim);
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            layers.push(LayerWeights {
                attn_norm: vector(&n("attn_norm.weight"), d)?,
                wq: matrix(&n("attn_q.weight"), q, d)?,
                wk: matrix(&n("attn_k.weight"), kv, d)?,
                wv: matrix(&n("attn_v.weight"), kv, d)?,
                bq: optional(&n("attn_q.bias"), q, cfg.qkv_bias)?,
                bk: optional(&n("attn_k.bias"), kv, cfg.qkv_bias)?,
                bv: optional(&n("attn_v.bias"), kv, cfg.qkv_bias)?,
                q_norm: optional(&n("attn_q_norm.weight"), cfg.head_dim, cfg.qk_norm)?,
                k_norm: optional(&n("attn_k_norm.weight"), cfg.head_dim, cfg.qk_norm)?,
                wo: matrix(&n("attn_output.weight"), d, q)?,
                ffn_norm: vector(&n("ffn_norm.weight"), d)?,
                w_gate: matrix(&n("ffn_gate.weight"), f, d)?,
                w_up: matrix(&n("ffn_up.weight"), f, d)?,
                w_down: matrix(&n("ffn_down.weight"), d, f)?,
            });
        }
        let embed = matrix("token_embd.weight", cfg.vocab_size, d)?;
        let (output, tied_output) = match src.find("output.weight")? {
            Some(_) => (matrix("output.weight", cfg.vocab_size, d)?, false),
            None => (embed.clone(), true),
        };
        let final_norm = vector("output_norm.weight", d)?;
        let mut used = used.into_inner();
        if cfg.rope.freq_factors.is_some() && src.find(ROPE_FREQS)?.is_some() {
            used.insert(src.file_name(ROPE_FREQS));
        }
        let mut extra: Vec<String> = src
            .tensor_names()
            .into_iter()
            .filter(|n| !used.contains(n) && !src.is_ignorable(n))
            .collect();
        if !extra.is_empty() {
            extra.sort_unstable();
            let more = if extra.len() > 1 {
                format!(" (and {} more)", extra.len() - 1)
            } else {
                String::new()
            };
            return Err(ModelError::Tensor {
                name: extra.swap_remove(0),
                msg: format!(
                    "is not used by a {} model of {} layers{more}; refusing a file that does not match its config",
                    cfg.family.name(),
                    cfg.n_layers
                ),
            });
        }
        Ok(ModelWeights {
            embed,
            layers,
            final_norm,
            output,
            tied_output,
        })
    }
}
