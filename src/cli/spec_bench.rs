//! `tachyon bench` with speculation: the draft/target acceptance measured on real prompts,
//! and that acceptance replayed on random weights of the same shapes.
//!
//! - Real run (`--model T --draft-model D [--lookup] --prompts FILE.jsonl`): every prompt is
//!   decoded greedily twice in one engine, plainly and with speculation; the texts must be
//!   identical. Reports tokens per verify step, acceptance and both speeds, and with
//!   `--record-acceptance OUT.json` writes each prompt's (proposed, kept) steps.
//! - Replay (`--random-weights SHAPE --draft-random-weights SHAPE --replay-acceptance
//!   OUT.json`): the same number of tokens per prompt, plainly and with the recorded steps
//!   forced, so a machine the real files cannot reach measures the speed-up with every real
//!   cost (draft steps, K+1-row verify passes, rollbacks) at the real acceptance. A record
//!   made with `--lookup` alone replays without a draft.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use tachyon::engine::bench::random_prompt;
use tachyon::engine::{
    Engine, EngineOptions, Flow, GenerateParams, GenerateStats, ModelSpec, RandomSpec,
    SamplingParams, SpecStats, Speculation, build,
};

use super::bench::BenchArgs;
use super::replay::ReplayProposer;

/// One line of a prompts file.
#[derive(Deserialize)]
struct PromptLine {
    name: String,
    prompt: String,
}

/// A recorded run: per prompt, the steps a replay forces.
#[derive(Serialize, Deserialize)]
pub struct AcceptanceRecord {
    pub target: String,
    pub draft: Option<String>,
    pub lookup: bool,
    pub draft_max: usize,
    pub prompts: Vec<PromptRecord>,
}

#[derive(Serialize, Deserialize)]
pub struct PromptRecord {
    pub name: String,
    pub prompt_tokens: usize,
    pub generated: usize,
    /// (proposed, kept) per target step; (0, 0) for a plain step.
    pub trace: Vec<(usize, usize)>,
    pub plain_seconds: f64,
    pub speculative_seconds: f64,
}

/// Totals over prompts.
#[derive(Default)]
struct Totals {
    tokens: usize,
    plain: Duration,
    spec: Duration,
    stats: SpecStats,
}

impl Totals {
    fn add(&mut self, plain: &GenerateStats, spec: &GenerateStats) {
        // Decode time covers the tokens after the first on both sides.
        self.tokens += plain.generated_tokens.saturating_sub(1);
        self.plain += plain.decode_time;
        self.spec += spec.decode_time;
        if let Some(s) = &spec.speculation {
            let t = &mut self.stats;
            t.verify_steps += s.verify_steps;
            t.plain_steps += s.plain_steps;
            t.proposed += s.proposed;
            t.accepted += s.accepted;
            for (i, &n) in s.histogram.iter().enumerate() {
                if t.histogram.len() <= i {
                    t.histogram.resize(i + 1, 0);
                }
                t.histogram[i] += n;
            }
        }
    }

    fn rate(&self, d: Duration) -> f64 {
        if d.is_zero() {
            0.0
        } else {
            self.tokens as f64 / d.as_secs_f64()
        }
    }

    /// The totals as a table, or as JSON with `json`.
    fn print(&self, label: &str, json: bool) {
        let (p, s) = (self.rate(self.plain), self.rate(self.spec));
        if json {
            let v = serde_json::json!({
                "label": label,
                "tokens": self.tokens,
                "plain_tokens_per_second": p,
                "speculative_tokens_per_second": s,
                "speedup": if p > 0.0 { s / p } else { 0.0 },
                "speculation": self.stats.to_json(),
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            return;
        }
        println!("{label}");
        println!("  tokens decoded:            {} per side", self.tokens);
        println!(
            "  verify steps:              {} (+{} plain steps)",
            self.stats.verify_steps, self.stats.plain_steps
        );
        println!(
            "  kept per verify:           {:.2} of {:.2} proposed ({:.0}%)",
            self.stats.mean_accepted(),
            if self.stats.verify_steps == 0 {
                0.0
            } else {
                self.stats.proposed as f64 / self.stats.verify_steps as f64
            },
            100.0 * self.stats.acceptance_rate()
        );
        println!(
            "  tokens per verify step:    {:.2}",
            self.stats.tokens_per_verify()
        );
        println!("  kept histogram:            {:?}", self.stats.histogram);
        println!("  plain decode:              {p:.1} tok/s");
        println!(
            "  speculative decode:        {s:.1} tok/s ({:.2}x)",
            if p > 0.0 { s / p } else { 0.0 }
        );
    }
}

fn greedy(max_tokens: usize, stop_ids: Vec<u32>) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop_ids,
    }
}

fn run(
    engine: &mut Engine,
    prompt: &[u32],
    params: &GenerateParams,
) -> Result<(Vec<u32>, GenerateStats)> {
    let mut out = Vec::new();
    let stats = engine.generate(prompt, params, &mut |t| {
        out.push(t);
        Flow::Continue
    })?;
    Ok((out, stats))
}

/// Whether `a` asks for a speculative bench.
pub fn wanted(a: &BenchArgs) -> bool {
    a.spec.enabled()
        || a.draft_random_weights.is_some()
        || a.prompts.is_some()
        || a.replay_acceptance.is_some()
}

pub fn bench(a: &BenchArgs) -> Result<()> {
    match &a.replay_acceptance {
        Some(path) => replay(a, path),
        None => measure(a),
    }
}

fn measure(a: &BenchArgs) -> Result<()> {
    let (Some(model_path), Some(prompts_path)) = (&a.model, &a.prompts) else {
        bail!("measuring acceptance needs --model (real weights) and --prompts FILE.jsonl");
    };
    if !a.spec.enabled() {
        bail!("give --draft-model and/or --lookup");
    }
    let text = std::fs::read_to_string(prompts_path)
        .with_context(|| format!("reading {}", prompts_path.display()))?;
    let prompts: Vec<PromptLine> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", prompts_path.display(), i + 1))
        })
        .collect::<Result<_>>()?;
    let opts = EngineOptions {
        tokenizer: true,
        ..a.engine_options(a.ctx.unwrap_or(4096))
    };
    let built = build(&a.target(), &opts, &a.spec.options())?;
    if let Some(n) = &built.notice {
        eprintln!("{n}");
    }
    let mut engine = built.engine;
    let mut spec = engine.take_speculation();
    let Some(tok) = built.model.tokenizer.as_ref() else {
        bail!("{} has no tokenizer", model_path.display());
    };
    let mut record = AcceptanceRecord {
        target: model_path.display().to_string(),
        draft: a.spec.draft_model.as_ref().map(|p| p.display().to_string()),
        lookup: a.spec.lookup,
        draft_max: usize::from(a.spec.draft_max),
        prompts: Vec::new(),
    };
    let mut totals = Totals::default();
    let table = !a.json;
    if table {
        println!(
            "{:<22} {:>7} {:>7} {:>9} {:>9} {:>10} {:>10}",
            "prompt", "prompt", "tokens", "tok/step", "kept %", "plain t/s", "spec t/s"
        );
    }
    for p in &prompts {
        let ids = tok.encode(&p.prompt, false)?;
        let params = greedy(a.new_tokens, tok.stop_ids().to_vec());
        let (want, plain) = run(&mut engine, &ids, &params)?;
        engine.set_speculation(spec.take());
        let got = run(&mut engine, &ids, &params);
        spec = engine.take_speculation();
        let (got, sp) = got?;
        if got != want {
            bail!(
                "{}: the speculative output differs from plain greedy decoding (a bug; please report it)",
                p.name
            );
        }
        let s = sp.speculation.clone().unwrap_or_default();
        let tps = |st: &GenerateStats| st.decode_tokens_per_second();
        if table {
            println!(
                "{:<22} {:>7} {:>7} {:>9.2} {:>9.0} {:>10.1} {:>10.1}",
                p.name,
                ids.len(),
                want.len(),
                s.tokens_per_verify(),
                100.0 * s.acceptance_rate(),
                tps(&plain),
                tps(&sp)
            );
        }
        totals.add(&plain, &sp);
        record.prompts.push(PromptRecord {
            name: p.name.clone(),
            prompt_tokens: ids.len(),
            generated: want.len(),
            trace: s.trace.clone(),
            plain_seconds: plain.decode_time.as_secs_f64(),
            speculative_seconds: sp.decode_time.as_secs_f64(),
        });
    }
    totals.print(
        &format!(
            "all {} prompts, {} backend, outputs identical to plain greedy:",
            prompts.len(),
            engine.backend_name()
        ),
        a.json,
    );
    if let Some(out) = &a.record_acceptance {
        std::fs::write(out, serde_json::to_string_pretty(&record)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("acceptance recorded in {}", out.display());
    }
    Ok(())
}

fn replay(a: &BenchArgs, path: &PathBuf) -> Result<()> {
    let record: AcceptanceRecord = serde_json::from_str(
        &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    let draft = match (&a.draft_random_weights, &a.spec.draft_model) {
        (Some(shape), _) => Some(ModelSpec::Random(RandomSpec {
            shape: shape.clone(),
            dtype: a.random_dtype.ggml(),
            seed: a.seed ^ 0xD4AF,
        })),
        (None, Some(p)) => Some(ModelSpec::File(p.clone())),
        (None, None) if record.draft.is_some() => {
            bail!(
                "the record was made with a draft model: give --draft-random-weights SHAPE or --draft-model"
            )
        }
        (None, None) => None,
    };
    let longest = record
        .prompts
        .iter()
        .map(|p| p.prompt_tokens + p.generated + 16)
        .max()
        .unwrap_or(0);
    // With a draft, the draft proposes every step (a step lookup proposed in the
    // recording costs a draft run here); a lookup-only record replays through lookup.
    let spec_opts = tachyon::engine::SpeculationOptions {
        lookup: draft.is_none(),
        ..a.spec.options_with(draft.clone())
    };
    let built = build(
        &a.target(),
        &a.engine_options(a.ctx.unwrap_or(longest.max(64))),
        &spec_opts,
    )?;
    if let Some(n) = &built.notice {
        eprintln!("{n}");
    }
    let (label, device) = (built.model.label, built.device);
    let vocab = built.model.config.vocab_size;
    let mut engine = built.engine;
    let steps = super::replay::Steps::default();
    let mut spec = engine.take_speculation().map(|s| Speculation {
        proposer: Box::new(ReplayProposer::new(s.proposer, steps.clone())),
        ..s
    });
    let mut totals = Totals::default();
    for (i, p) in record.prompts.iter().enumerate() {
        if p.generated < 2 {
            continue;
        }
        let ids = random_prompt(
            p.prompt_tokens.max(1),
            vocab,
            a.seed.wrapping_add(i as u64),
            None,
        );
        let params = greedy(p.generated, Vec::new());
        let (_, plain) = run(&mut engine, &ids, &params)?;
        if let Ok(mut s) = steps.lock() {
            *s = p.trace.iter().copied().collect::<VecDeque<_>>();
        }
        engine.set_speculation(spec.take());
        let r = run(&mut engine, &ids, &params);
        spec = engine.take_speculation();
        let (_, sp) = r?;
        totals.add(&plain, &sp);
    }
    totals.print(
        &format!(
            "replay of {} on {label}, {} backend, {}:",
            display(path),
            engine.backend_name(),
            device
        ),
        a.json,
    );
    Ok(())
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
