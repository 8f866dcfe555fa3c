//! Weight block formats over `format`'s GGUF type table: CPU dequantize references, the
//! quantized dot products the CPU backend runs on (weights stay quantized in memory), and the
//! two quantizers built on the block encoders.
//!
//! The path through it: a matrix's bytes in a block format ([`crate::format::Weight`]) are
//! either dotted directly against int8-quantized activations ([`matvec_rows`], the decode hot
//! path), or widened to f32 by [`dequantize`] (the reference every fast path and GPU kernel
//! is checked against; [`DequantizeWeight`] does it for a whole `Weight`). Going the other
//! way, [`quantize`] (`quantize_blocks.rs`) encodes f32 rows into blocks, which
//! [`model_quantizer`] uses to write a quantized GGUF (`tachyon quantize`) and [`at_load`]
//! to quantize an unquantized checkpoint in memory (`--quant int8|int4`).
//!
//! - [`dequantize`] / [`quantize`]: reference conversions, GGML-exact layouts.
//! - [`quantize_acts`] + [`dot_row`] / [`matvec_rows`]: the fast path. Activations are
//!   quantized to int8 once per mat-vec, then every weight row is dotted against them
//!   with integer SIMD kernels ([`kernel_isa`] says which family runs).
//! - [`matmul_rows`]: the same for a tile of up to [`TILE`] activation rows (prefill),
//!   decoding each weight block once for the whole tile.
//! - [`dot_row_exact`]: f32 reference dot on dequantized weights (`--precise`).

mod acts;
pub mod at_load;
mod blocks;
mod decoded;
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

pub use acts::{INT8_ACT_MAX_ROWS, QuantizedActs, quantize_acts, round_trip_int8};
pub use decoded::DecodedRows;
pub use dequant::{DequantizeWeight, dequantize};
pub use dot::{TILE, dot_row, dot_row_exact, kernel_isa, matmul_rows, matvec_rows};
pub use error::QuantError;
pub use quantize_blocks::quantize;
