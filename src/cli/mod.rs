//! Subcommands that live in their own files (main.rs keeps the argument enum and dispatch).

pub mod backend;
pub mod bench;
pub mod quantize;
pub mod spec_bench;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use tachyon::quant::at_load::LoadQuant;

/// `--quant int8|int4`: the library parses the names, clap lists them in the help.
pub fn load_quant_parser() -> impl TypedValueParser<Value = LoadQuant> {
    PossibleValuesParser::new(LoadQuant::NAMES).try_map(|s| s.parse::<LoadQuant>())
}
