//! The `tachyon` command line: `generate`, `serve`, `bench`, `quantize` and `info`.

mod cli;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use tachyon::engine::constraint::{ConstraintLimits, ConstraintSpec, ConstraintVocab};
use tachyon::engine::{
    EngineOptions, Flow, GenerateParams, ModelSpec, SamplingParams, SessionOptions, StreamOptions,
    build,
};
use tachyon::format::{ModelSource, gguf_type_counts};
use tachyon::graph::Model;
use tachyon::tokenizer::{ChatMessage, ChatTemplate};

use cli::engine_args::{BackendArg, KvDtypeArg, QuantArg, SpeculationArgs, prefill_chunk};

#[derive(Parser)]
#[command(
    name = "tachyon",
    version,
    about = "Lowest-latency single-stream LLM inference"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion and stream it to stdout (stats go to stderr).
    Generate(GenerateArgs),
    /// Serve the OpenAI API (HTTP + SSE) and a WebSocket token stream.
    Serve(cli::serve::ServeArgs),
    /// Measure time to first token and decode speed (table, or --json).
    Bench(cli::bench::BenchArgs),
    /// Write a model as a GGUF in a quant mix (q4_k_m, q8_0, ...), from a GGUF, an HF
    /// directory or random weights of a real shape.
    Quantize(cli::quantize::QuantizeArgs),
    /// Describe a model file: architecture, hyper-parameters, tensors, tokenizer, template.
    Info {
        /// A .gguf file or an HF directory (config.json + safetensors + tokenizer.json).
        model: PathBuf,
    },
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// A .gguf file or an HF directory (config.json + safetensors + tokenizer.json).
    #[arg(long, short)]
    model: PathBuf,
    /// The prompt text (use --prompt-file for long prompts).
    #[arg(long, short, conflicts_with = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Wrap the prompt in the model's chat template (as the user turn).
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// 0 disables.
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// 1 disables.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// 0 disables.
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// 1 disables.
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// How many recent tokens the repeat penalty looks at.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Random seed (default: from the clock; printed on stderr).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// KV cache size in tokens (capped at the model's context length).
    #[arg(long, default_value_t = 4096)]
    ctx: usize,
    /// Prompt tokens per forward call during prefill (each call reads every weight once;
    /// activation buffers for that many rows are allocated per cached sequence). Default:
    /// 512.
    #[arg(long, value_parser = prefill_chunk)]
    prefill_chunk: Option<usize>,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// CPU: exact f32 dot products instead of 8-bit activation quantization (slower).
    #[arg(long)]
    precise: bool,
    /// GPU: the KV cache's element type (bf16 halves the bytes attention reads; f32 for
    /// checks against the CPU, which keeps f32).
    #[arg(long, value_enum, default_value_t = KvDtypeArg::Bf16)]
    kv_dtype: KvDtypeArg,
    /// GPU: quantize the activations of block-format (GGUF-quantized) matrices to int8 per
    /// 32 values and multiply with dp4a, instead of f32 activations (the CPU's default
    /// arithmetic; a product moves by about 0.5%, see BENCHMARKS.md).
    #[arg(long)]
    int8_acts: bool,
    /// Keep generating through end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Quantize F32/F16/BF16 matrices at load: int8 (Q8_0) or int4 (Q4_K, Q4_0 where rows
    /// are not whole 256-blocks). Block-format weights are kept as they are.
    #[arg(long, value_enum)]
    quant: Option<QuantArg>,
    #[command(flatten)]
    spec: SpeculationArgs,
    /// Write the run's statistics (tokens, timings, speculation counts) to this JSON file.
    #[arg(long)]
    stats_json: Option<PathBuf>,
    /// Constrain the output to JSON matching the JSON Schema in this file (the same
    /// constrained decoding as the server's `response_format`); `{}` allows any JSON.
    #[arg(long, value_name = "FILE", group = "constraint")]
    json_schema: Option<PathBuf>,
    /// Constrain the output to a Lark-style grammar read from this file (llguidance's
    /// dialect, as the server's `grammar` field: `start: ...`, /regex/ terminals, %json).
    #[arg(long, value_name = "FILE", group = "constraint")]
    grammar: Option<PathBuf>,
    /// Constrain the output to match this regular expression (Rust `regex` syntax), given
    /// on the command line.
    #[arg(long, value_name = "REGEX", group = "constraint")]
    grammar_regex: Option<String>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {}", cli::errors::one_line(&e));
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => generate(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Quantize(args) => cli::quantize::run(args),
        Command::Info { model } => info(&model),
        Command::Serve(args) => cli::serve::run(args),
    }
}

fn load(path: &Path) -> Result<Model> {
    Model::load(path).with_context(|| format!("loading {}", path.display()))
}

/// The constraint `--json-schema`, `--grammar` or `--grammar-regex` asks for (at most one:
/// clap's `constraint` group).
fn constraint_spec(a: &GenerateArgs) -> Result<Option<ConstraintSpec>> {
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    if let Some(p) = &a.json_schema {
        let schema = serde_json::from_str(&read(p)?)
            .with_context(|| format!("{} is not JSON", p.display()))?;
        return Ok(Some(ConstraintSpec::JsonSchema {
            schema,
            strict: true,
        }));
    }
    if let Some(p) = &a.grammar {
        return Ok(Some(ConstraintSpec::Lark(read(p)?)));
    }
    Ok(a.grammar_regex.clone().map(ConstraintSpec::Regex))
}

fn generate(a: GenerateArgs) -> Result<()> {
    let prompt_text = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => bail!("give a prompt with --prompt or --prompt-file"),
    };
    let opts = EngineOptions {
        backend: a.backend.into(),
        session: SessionOptions {
            ctx: a.ctx,
            precise: a.precise,
            kv_dtype: a.kv_dtype.into(),
            int8_acts: a.int8_acts,
            ..Default::default()
        },
        prefill_chunk: a.prefill_chunk,
        quant: a.quant.map(Into::into),
        threads: a.threads,
        tokenizer: true,
        progress: true,
    };
    let built = build(&ModelSpec::File(a.model.clone()), &opts, &a.spec.options())?;
    if let Some(n) = &built.notice {
        eprintln!("{n}");
    }
    let mut engine = built.engine;
    let load_time = built.load_time;
    let tok = built
        .model
        .tokenizer
        .as_ref()
        .context("the model has no tokenizer")?;
    let text = if a.chat {
        let src = tok
            .chat_template()
            .context("the model has no chat template; drop --chat")?;
        let tmpl = ChatTemplate::new(
            src,
            &tok.bos_token().unwrap_or_default(),
            &tok.eos_token().unwrap_or_default(),
        )?;
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage {
                role: "system".into(),
                content: s.clone(),
            });
        }
        msgs.push(ChatMessage {
            role: "user".into(),
            content: prompt_text,
        });
        tmpl.render(&msgs, true)?
    } else {
        prompt_text
    };
    // A chat template writes its own BOS when the model wants one.
    let prompt = tok.encode(&text, !a.chat)?;

    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let params = GenerateParams {
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repetition_penalty: a.repeat_penalty,
            presence_penalty: a.presence_penalty,
            frequency_penalty: a.frequency_penalty,
            penalty_last_n: a.repeat_last_n,
            seed,
        },
        stop_ids: if a.ignore_eos {
            Vec::new()
        } else {
            tok.stop_ids().to_vec()
        },
    };
    let constraint = match constraint_spec(&a)? {
        Some(spec) => {
            let vocab = ConstraintVocab::new(tok, engine.vocab_size(), ConstraintLimits::default())
                .context("building the constraint vocabulary")?;
            Some(vocab.compile(&spec).context("compiling the constraint")?)
        }
        None => None,
    };
    let stream_opts = StreamOptions {
        constraint: constraint.as_ref(),
        ..Default::default()
    };
    let mut stdout = std::io::stdout().lock();
    let mut decoder = tok.stream_decoder();
    let mut write_err = None;
    let stats = engine.generate_stream(&prompt, &params, &stream_opts, &mut |step| {
        let id = step.id;
        let piece = match decoder.push(id) {
            Ok(p) => p,
            Err(e) => {
                write_err = Some(anyhow::Error::from(e));
                return Flow::Stop;
            }
        };
        if let Err(e) = stdout
            .write_all(piece.as_bytes())
            .and_then(|_| stdout.flush())
        {
            write_err = Some(e.into());
            return Flow::Stop;
        }
        Flow::Continue
    })?;
    if let Some(e) = write_err {
        return Err(e);
    }
    stdout.write_all(decoder.finish().as_bytes())?;
    writeln!(stdout)?;
    stdout.flush()?;
    eprintln!(
        "[{} backend, {} threads, seed {seed}] load {:.2} s | prompt {} tokens ({} cached) | first token {:.1} ms | {} tokens at {:.1} tok/s | finish: {}",
        engine.backend_name(),
        rayon::current_num_threads(),
        load_time.as_secs_f64(),
        stats.prompt_tokens,
        stats.cached_tokens,
        stats.time_to_first_token.as_secs_f64() * 1e3,
        stats.generated_tokens,
        stats.decode_tokens_per_second(),
        stats.finish.as_str(),
    );
    if let Some(spec) = &stats.speculation {
        eprintln!("{}", spec.summary());
    }
    if let Some(path) = &a.stats_json {
        let json = serde_json::json!({
            "backend": engine.backend_name(),
            "model": a.model.display().to_string(),
            "draft_model": a.spec.draft_model.as_ref().map(|p| p.display().to_string()),
            "lookup": a.spec.lookup,
            "prompt_tokens": stats.prompt_tokens,
            "cached_tokens": stats.cached_tokens,
            "generated_tokens": stats.generated_tokens,
            "load_seconds": load_time.as_secs_f64(),
            "time_to_first_token_seconds": stats.time_to_first_token.as_secs_f64(),
            "decode_seconds": stats.decode_time.as_secs_f64(),
            "decode_tokens_per_second": stats.decode_tokens_per_second(),
            "finish": stats.finish.as_str(),
            "speculation": stats.speculation.as_ref().map(|s| s.to_json()),
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn info(path: &Path) -> Result<()> {
    let model = load(path)?;
    let c = &model.config;
    let size: u64 = if path.is_dir() {
        std::fs::read_dir(path)?
            .filter_map(|e| e.ok()?.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    } else {
        std::fs::metadata(path)?.len()
    };
    println!(
        "file:           {} ({:.1} MiB)",
        path.display(),
        size as f64 / (1 << 20) as f64
    );
    let (format, n_tensors, types) = match &model.source {
        ModelSource::Gguf(g) => (
            format!("GGUF v{}", g.version()),
            g.tensors().len(),
            gguf_type_counts(g),
        ),
        ModelSource::Safetensors(s) => ("safetensors".to_string(), s.len(), s.type_counts()),
    };
    println!("format:         {format}");
    println!("architecture:   {}", c.family.name());
    println!("layers:         {}", c.n_layers);
    println!("hidden size:    {}", c.dim);
    println!(
        "heads:          {} ({} kv heads, head size {})",
        c.n_heads, c.n_kv_heads, c.head_dim
    );
    println!("ffn size:       {}", c.ffn_dim);
    println!("vocab size:     {}", c.vocab_size);
    println!("context:        {}", c.max_ctx);
    println!("rms eps:        {:e}", c.rms_eps);
    println!(
        "rope:           base {}, {:?} pairs, dim {}{}{}",
        c.rope.theta,
        c.rope.style,
        c.rope.dim,
        if c.rope.linear_factor != 1.0 {
            format!(", linear scaling x{}", c.rope.linear_factor)
        } else {
            String::new()
        },
        if c.rope.freq_factors.is_some() {
            ", llama3 frequency scaling"
        } else {
            ""
        },
    );
    let mut flags = Vec::new();
    if c.qkv_bias {
        flags.push("q/k/v bias");
    }
    if c.qk_norm {
        flags.push("q/k norm");
    }
    flags.push(if model.weights.tied_output {
        "tied output"
    } else {
        "untied output"
    });
    println!("features:       {}", flags.join(", "));
    let types: Vec<String> = types.iter().map(|(t, n)| format!("{t} x{n}")).collect();
    println!("tensors:        {n_tensors} ({})", types.join(", "));
    println!(
        "weights/token:  {:.1} MiB read per decoded token",
        model.weight_bytes_per_token() as f64 / (1 << 20) as f64
    );
    println!("tokenizer:      {}", model.tokenizer.describe());
    match model.tokenizer.chat_template() {
        Some(t) => {
            println!("chat template:  {} bytes", t.len());
            for line in t.lines() {
                println!("    {line}");
            }
        }
        None => println!("chat template:  none"),
    }
    Ok(())
}
