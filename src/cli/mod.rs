//! Subcommands that live in their own files (main.rs keeps the argument enum and dispatch).
//! The binary is the top layer and the only place clap types live: each command parses its
//! arguments here, then calls the library (load a `graph::Model`, build an engine session,
//! run `engine` / `server`). `backend` picks the backend (`--backend auto|cpu|cuda`),
//! `bench` and `spec_bench` drive `engine::bench`, `quantize` drives
//! `quant::model_quantizer`.

pub mod bench;
pub mod engine_args;
pub mod errors;
pub mod quantize;
pub mod replay;
pub mod serve;
pub mod spec_bench;
