//! `tachyon quantize`: write a model (a GGUF file, an HF directory, or random weights of a
//! real shape) as a GGUF in a quant mix, for tachyon and llama.cpp-family tools alike.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use tachyon::format::GgmlType;
use tachyon::format::load_weights;
use tachyon::format::random::{self, Shape};
use tachyon::quant::model_quantizer::{QuantMix, quantize_to_gguf};

#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// INPUT OUTPUT: a .gguf file or an HF directory, and where to write the GGUF (with
    /// --random-weights, OUTPUT alone).
    #[arg(required = true, num_args = 1..=2, value_names = ["INPUT", "OUTPUT"])]
    paths: Vec<PathBuf>,
    /// q4_k_m, q5_k_m, or one type for every matrix: q8_0, q4_0, q4_1, q5_0, q5_1, q4_k,
    /// q5_k, q6_k, f16, bf16, f32.
    #[arg(long = "type", default_value = "q4_k_m")]
    ty: String,
    /// Quantize random BF16 weights of a real shape instead of a file (llama-3.2-1b,
    /// llama-3.1-8b, qwen2.5-1.5b, qwen2.5-0.5b, or a config.json).
    #[arg(long)]
    random_weights: Option<String>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    let mix = QuantMix::parse(&a.ty)?;
    let t0 = Instant::now();
    let (input, output) = match (a.paths.as_slice(), &a.random_weights) {
        ([input, output], None) => (Some(input), output),
        ([output], Some(_)) => (None, output),
        ([_, _], Some(_)) => bail!("--random-weights takes the place of INPUT: give OUTPUT alone"),
        _ => bail!("give INPUT and OUTPUT, or --random-weights SHAPE and OUTPUT"),
    };
    let (config, weights, source) = match (input, &a.random_weights) {
        (Some(path), None) => {
            let (c, w, s) =
                load_weights(path).with_context(|| format!("loading {}", path.display()))?;
            (c, w, Some(s))
        }
        (None, Some(spec)) => {
            let shape = Shape::resolve(spec)?;
            let w = random::random_weights(&shape, GgmlType::BF16, a.seed)?;
            (shape.config, w, None)
        }
        _ => bail!("give an input model or --random-weights SHAPE"),
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("quantizing {bar:40} {pos}/{len} tensors")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = quantize_to_gguf(&config, &weights, source.as_ref(), mix, output, |i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    })
    .with_context(|| format!("writing {}", output.display()))?;
    bar.finish_and_clear();
    let types: Vec<String> = report
        .types
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    eprintln!(
        "wrote {}: {} tensors ({}), {:.1} MiB of tensor data, in {:.1} s",
        output.display(),
        report.tensors,
        types.join(", "),
        report.bytes as f64 / (1u64 << 20) as f64,
        t0.elapsed().as_secs_f64()
    );
    if source.is_none() || input.is_some_and(|p| p.is_dir()) {
        eprintln!(
            "note: the output has no tokenizer (only a GGUF input carries one over): `bench` reads it, `generate` and `info` need one"
        );
    }
    Ok(())
}
