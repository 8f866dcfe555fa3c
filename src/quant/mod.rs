//! Weight block formats: the GGUF type table, CPU dequantize references, and the
//! quantized dot products the CPU backend runs on (weights stay quantized in memory).
//!
//! - [`dequantize`] / [`quantize`]: reference conversions, GGML-exact layouts.

mod blocks;
mod dequant;
mod error;
mod quantize;
mod types;

#[cfg(test)]
mod tests;

pub use dequant::dequantize;
pub use error::QuantError;
pub use quantize::quantize;
pub use types::{GgmlType, QK_K};
