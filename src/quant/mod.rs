//! Weight block formats: the GGUF type table, CPU dequantize references, and the
//! quantized dot products the CPU backend runs on (weights stay quantized in memory).

mod types;

pub use types::{GgmlType, QK_K};
