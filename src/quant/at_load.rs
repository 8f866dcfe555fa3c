//! `--quant int8|int4`: quantize an unquantized checkpoint's matrices (F32/F16/BF16, e.g. HF
//! safetensors) at load time, in memory, into GGML block formats that every backend runs
//! directly (the CPU's quantized dot products, the GPU's kernels/gemv_qpack.cu):
//!
//! - int8: Q8_0, 8-bit codes with one f16 scale per 32 weights (W8A16 with groups of 32,
//!   finer than per-channel scales: a little more memory, less error).
//! - int4: Q4_K (4-bit codes, 6-bit scales and mins per 32 weights under an f16 pair per
//!   256) where rows are whole 256-element blocks, else Q4_0 (4-bit, one scale per 32):
//!   groups of 32 rather than 128.
//!
//! Each row is quantized once, from its f32 values; matrices already in a block format are
//! kept as they are. A tied LM head stays tied (the embedding is quantized once).

use std::sync::Arc;

use rayon::prelude::*;

use crate::format::GgmlType;
use crate::format::ModelError;
use crate::format::weights::{HostBytes, ModelWeights, Weight};
use crate::quant::{self, DequantizeWeight};

/// The `--quant` choices. Parsed from their names (`int8`, `int4`) with `FromStr`; the
/// command line lists [`LoadQuant::NAMES`] as the possible values (clap lives in the CLI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadQuant {
    Int8,
    Int4,
}

/// A `--quant` value that is not one of [`LoadQuant::NAMES`].
#[derive(Debug, thiserror::Error)]
#[error("unknown quantization {0:?}: expected int8 or int4")]
pub struct UnknownLoadQuant(pub String);

impl std::str::FromStr for LoadQuant {
    type Err = UnknownLoadQuant;

    fn from_str(s: &str) -> Result<LoadQuant, UnknownLoadQuant> {
        match s {
            "int8" => Ok(LoadQuant::Int8),
            "int4" => Ok(LoadQuant::Int4),
            _ => Err(UnknownLoadQuant(s.to_string())),
        }
    }
}

impl LoadQuant {
    /// The names `FromStr` accepts, in the order the help lists them.
    pub const NAMES: [&'static str; 2] = ["int8", "int4"];

    /// The block format for a matrix with rows of `cols` elements.
    pub fn format_for(self, cols: usize) -> GgmlType {
        match self {
            LoadQuant::Int8 => GgmlType::Q8_0,
            LoadQuant::Int4 if cols.is_multiple_of(GgmlType::Q4K.block_len()) => GgmlType::Q4K,
            LoadQuant::Int4 => GgmlType::Q4_0,
        }
    }
}

/// `w` quantized to `q`'s format (a copy in memory); block formats are returned as they are.
pub fn quantize_matrix(w: &Weight, q: LoadQuant) -> Result<Weight, ModelError> {
    if w.ty.is_quantized() {
        return Ok(w.clone());
    }
    let ty = q.format_for(w.cols);
    if !w.cols.is_multiple_of(ty.block_len()) {
        // Rows shorter than a block or not a whole number of them: keep the matrix as is.
        return Ok(w.clone());
    }
    let rows: Vec<Vec<u8>> = (0..w.rows)
        .into_par_iter()
        .map(|r| {
            let mut vals = vec![0f32; w.cols];
            w.dequantize_row(r, &mut vals)?;
            Ok(quant::quantize(ty, &vals))
        })
        .collect::<Result<_, ModelError>>()?;
    let bytes: Vec<u8> = rows.concat();
    let len = bytes.len();
    Weight::new(
        &w.name,
        ty,
        w.rows,
        w.cols,
        Arc::new(HostBytes(bytes)),
        0,
        len,
    )
}

/// Every matrix of `w` quantized to `q` (norms and biases stay f32).
pub fn quantize_weights(w: &ModelWeights, q: LoadQuant) -> Result<ModelWeights, ModelError> {
    let embed = quantize_matrix(&w.embed, q)?;
    let output = if w.tied_output {
        embed.clone()
    } else {
        quantize_matrix(&w.output, q)?
    };
    let mut layers = Vec::with_capacity(w.layers.len());
    for l in &w.layers {
        let mut l2 = l.clone();
        for m in [
            &mut l2.wq,
            &mut l2.wk,
            &mut l2.wv,
            &mut l2.wo,
            &mut l2.w_gate,
            &mut l2.w_up,
            &mut l2.w_down,
        ] {
            *m = quantize_matrix(m, q)?;
        }
        layers.push(l2);
    }
    Ok(ModelWeights {
        embed,
        layers,
        final_norm: w.final_norm.clone(),
        output,
        tied_output: w.tied_output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::random::{Shape, random_weights};

    fn tiny() -> Shape {
        let cfg = serde_json::json!({"model_type": "llama", "hidden_size": 256, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 96,
            "vocab_size": 300, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": 64, "tie_word_embeddings": true});
        Shape::from_json("tiny", &cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn formats_follow_the_row_length_and_ties_stay_tied() {
        let shape = tiny();
        let w = random_weights(&shape, GgmlType::BF16, 3).unwrap_or_else(|e| panic!("{e}"));
        let q4 = quantize_weights(&w, LoadQuant::Int4).unwrap_or_else(|e| panic!("{e}"));
        // Rows of 256 take Q4_K; w_down's rows of 96 take Q4_0.
        assert_eq!(q4.layers[0].wq.ty, GgmlType::Q4K);
        assert_eq!(q4.layers[0].w_down.ty, GgmlType::Q4_0);
        assert!(q4.tied_output && q4.output.bytes().as_ptr() == q4.embed.bytes().as_ptr());
        let q8 = quantize_weights(&w, LoadQuant::Int8).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            q8.layers
                .iter()
                .all(|l| l.w_up.ty == GgmlType::Q8_0 && l.w_down.ty == GgmlType::Q8_0)
        );
        // Values: each row within its format's rounding of the source row.
        for (src, q, bound) in [
            (&w.layers[1].wv, &q8.layers[1].wv, 0.01),
            (&w.layers[1].wv, &q4.layers[1].wv, 0.15),
        ] {
            let (a, b) = (
                src.to_f32().unwrap_or_default(),
                q.to_f32().unwrap_or_default(),
            );
            let err = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f32>()
                .sqrt()
                / a.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!(
                err.is_finite() && err < bound,
                "{}: relative error {err}",
                q.ty
            );
        }
    }
}
