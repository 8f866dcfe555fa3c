//! Subcommands that live in their own files (main.rs keeps the argument enum and dispatch).

pub mod backend;
pub mod bench;
pub mod quantize;
pub mod spec_bench;
