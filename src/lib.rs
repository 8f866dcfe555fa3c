//! tachyon: a single-stream, lowest-latency LLM inference engine.
//!
//! Layers, each importing only from the layers below it:
//! - `quant`: weight block formats and their CPU dequantize / dot-product references.
//! - `model`: GGUF and safetensors readers, model configs, the forward pass of each family.
//! - `tokenizer`: the `tokenizers`-crate wrapper, GGUF vocab import, streaming
//!   detokenizer, chat templates.
//! - `backend`: where the ops run: `cpu` (the reference) and `cuda`.
//! - `engine`: the single-stream generation loop and the sampler.
//! - `server`: the OpenAI-compatible HTTP/SSE and WebSocket front over one engine thread.
//! - `bench`: end-to-end speed measurement (`tachyon bench`).
//! - `fuzzing`: byte-level entry points over everything read from strangers (fuzz targets
//!   and their regression tests).

pub mod backend;
pub mod bench;
pub mod engine;
pub mod fuzzing;
pub mod model;
pub mod quant;
pub mod server;
pub mod tokenizer;
