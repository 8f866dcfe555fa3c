//! Subcommands that live in their own files (main.rs keeps the argument enum and dispatch).

pub mod bench;
pub mod engine_args;
pub mod errors;
pub mod quantize;
pub mod replay;
pub mod serve;
pub mod spec_bench;
