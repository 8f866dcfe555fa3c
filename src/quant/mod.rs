//! Weight block formats: the GGUF type table, CPU dequantize references, and the
//! quantized dot products the CPU backend runs on (weights stay quantized in memory).
//!
//! - [`dequantize`] / [`quantize`]: reference conversions, GGML-exact layouts.
//! - [`quantize_acts`] + [`dot_row`] / [`matvec_rows`]: the fast path. Activations are
//!   quantized to int8 once per mat-vec, then every weight row is dotted against them
//!   with integer SIMD kernels ([`kernel_isa`] says which family runs).
//! - [`dot_row_exact`]: f32 reference dot on dequantized weights (`--precise`).

mod acts;
pub mod at_load;
mod blocks;
mod dequant;
mod dot;
#[cfg(target_arch = "x86_64")]
mod dot_avx2;
mod dot_scalar;
mod error;
pub mod model_quantizer;
mod quantize_blocks;

#[cfg(test)]
mod tests;

pub use acts::{QuantizedActs, quantize_acts};
pub use dequant::{DequantizeWeight, dequantize};
pub use dot::{dot_row, dot_row_exact, kernel_isa, matvec_rows};
pub use error::QuantError;
pub use quantize_blocks::quantize;
