//! tachyon: a single-stream, lowest-latency LLM inference engine.
//!
//! Layers, each importing only from the layers below it (`tests/layering.rs` keeps it so):
//! - `format`: GGUF (read, write) and safetensors files, the GGUF type table, model
//!   configs with their `Rope`, `Weight` views and random weights. No backend, no engine.
//! - `tokenizer`: the `tokenizers`-crate wrapper, GGUF vocab import, streaming
//!   detokenizer, chat templates (reads `format`'s GGUF metadata).
//! - `quant`: block formats, their CPU dequantize / dot-product references, the block
//!   encoders, the model quantizer (`tachyon quantize`) and `--quant` at load.
//! - `backend`: where the ops run: `cpu` (the reference) and `cuda`.
//! - `graph`: a loaded model and the forward pass, written against `backend::Ops`.
//! - `engine`: the single-stream generation loop, the sampler, speculation, `bench`.
//! - `server`: the OpenAI-compatible HTTP/SSE and WebSocket front over one engine thread.
//! - `fuzzing`: byte-level entry points over everything read from strangers (fuzz targets
//!   and their regression tests); it may reach every layer, nothing imports it.
//!
//! The binary (`src/main.rs`, `src/cli/`) sits on top and is the only place clap types live.

pub mod backend;
pub mod engine;
pub mod format;
pub mod fuzzing;
pub mod graph;
pub mod quant;
pub mod server;
pub mod tokenizer;
