//! End-to-end speed measurement behind `tachyon bench`: time to first token, per-token
//! decode times, the weight bytes each token reads, and that rate as a fraction of a copy
//! bandwidth measured in the same run (so a figure reads as "how close to the memory
//! limit", on any machine).
//!
//! It drives the ordinary engine loop (greedy unless sampling parameters are given, stop
//! tokens off), timestamping each token as the engine hands it over, so it measures what
//! `generate` does and nothing else.

use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Serialize;

use super::sampler::Rng;
use super::{Engine, EngineError, Flow, GenerateParams, SamplingParams};
use crate::backend::StepProfile;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Random prompt length.
    pub prompt_tokens: usize,
    /// Tokens to generate (the first comes from the prompt's logits).
    pub new_tokens: usize,
    /// Tokens generated in the untimed warm-up run (0: none).
    pub warmup_tokens: usize,
    /// Seed of the random prompts.
    pub seed: u64,
    /// How each token is picked (greedy by default; the sampled figure is compared with it).
    pub sampling: SamplingParams,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            prompt_tokens: 128,
            new_tokens: 256,
            warmup_tokens: 8,
            seed: 0,
            sampling: SamplingParams::greedy(),
        }
    }
}

/// Timings of one run.
#[derive(Clone, Debug)]
pub struct Timings {
    pub prompt_tokens: usize,
    pub time_to_first_token: Duration,
    /// Time of each decoded token after the first (forward pass + sampling).
    pub per_token: Vec<Duration>,
}

impl Timings {
    /// Decoded tokens per second after the first token.
    pub fn decode_tokens_per_second(&self) -> f64 {
        let total: f64 = self.per_token.iter().map(Duration::as_secs_f64).sum();
        if total > 0.0 {
            self.per_token.len() as f64 / total
        } else {
            0.0
        }
    }

    /// The q-quantile (0..=1) of the per-token times in milliseconds (nearest rank).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let mut ms: Vec<f64> = self
            .per_token
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        if ms.is_empty() {
            return 0.0;
        }
        ms.sort_by(f64::total_cmp);
        let rank = (q.clamp(0.0, 1.0) * ms.len() as f64).ceil() as usize;
        ms[rank.clamp(1, ms.len()) - 1]
    }
}

/// A random prompt of `n` ids below `vocab` whose first token differs from `avoid`, so the
/// engine's prefix cache cannot reuse an earlier run.
pub fn random_prompt(n: usize, vocab: usize, seed: u64, avoid: Option<u32>) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    let vocab = vocab.max(1) as u64;
    let mut p: Vec<u32> = (0..n).map(|_| (rng.next_u64() % vocab) as u32).collect();
    if let (Some(first), Some(a)) = (p.first_mut(), avoid)
        && *first == a
    {
        *first = ((u64::from(a) + 1) % vocab) as u32;
    }
    p
}

/// Runs the warm-up, then the timed run, on `engine` (whose vocabulary is `vocab` ids).
pub fn measure(
    engine: &mut Engine,
    vocab: usize,
    opts: &BenchOptions,
) -> Result<Timings, EngineError> {
    let run = |max_tokens| GenerateParams {
        max_tokens,
        sampling: opts.sampling.clone(),
        stop_ids: Vec::new(),
    };
    let mut avoid = None;
    if opts.warmup_tokens > 0 {
        let warm = random_prompt(
            opts.prompt_tokens.clamp(1, 16),
            vocab,
            opts.seed ^ 0x5741_524d,
            None,
        );
        avoid = warm.first().copied();
        engine.generate(&warm, &run(opts.warmup_tokens), &mut |_| Flow::Continue)?;
    }
    let prompt = random_prompt(opts.prompt_tokens, vocab, opts.seed, avoid);
    let mut stamps = Vec::with_capacity(opts.new_tokens);
    let stats = engine.generate(&prompt, &run(opts.new_tokens), &mut |_| {
        stamps.push(Instant::now());
        Flow::Continue
    })?;
    let per_token = stamps.windows(2).map(|w| w[1] - w[0]).collect();
    Ok(Timings {
        prompt_tokens: prompt.len(),
        time_to_first_token: stats.time_to_first_token,
        per_token,
    })
}

/// How `p` picks tokens, for a report: "greedy", or each parameter that is on.
pub fn describe_sampling(p: &SamplingParams) -> String {
    if p.temperature <= 0.0 {
        return "greedy".into();
    }
    let mut parts = vec![format!("temperature {}", p.temperature)];
    if p.top_k > 0 {
        parts.push(format!("top-k {}", p.top_k));
    }
    if p.top_p < 1.0 {
        parts.push(format!("top-p {}", p.top_p));
    }
    if p.min_p > 0.0 {
        parts.push(format!("min-p {}", p.min_p));
    }
    if p.repetition_penalty != 1.0 {
        parts.push(format!(
            "repetition penalty {} (last {})",
            p.repetition_penalty, p.penalty_last_n
        ));
    }
    parts.join(", ")
}

/// Host memory copy bandwidth in GB/s (bytes read + written), copying `bytes` with every
/// thread of the current rayon pool; the median of `reps` copies after one untimed copy.
pub fn host_copy_bandwidth(bytes: usize, reps: usize) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let chunk = bytes
        .div_ceil(rayon::current_num_threads().max(1) * 4)
        .max(1);
    let mut copy = || {
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
    };
    copy();
    let mut secs: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            copy();
            t.elapsed().as_secs_f64()
        })
        .collect();
    secs.sort_by(f64::total_cmp);
    let median = secs[secs.len() / 2];
    std::hint::black_box(&dst);
    if median > 0.0 {
        2.0 * bytes as f64 / median / 1e9
    } else {
        0.0
    }
}

/// Everything `tachyon bench` prints, table or JSON.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// What ran: a model path or `random:SHAPE`.
    pub model: String,
    /// Weight format of the matrices, e.g. "BF16".
    pub weights: String,
    pub backend: String,
    /// The CPU thread count or the GPU name.
    pub device: String,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// How tokens were picked: "greedy" or the sampling parameters.
    pub sampling: String,
    pub ttft_ms: f64,
    pub decode_tok_s: f64,
    pub median_ms_per_token: f64,
    pub p99_ms_per_token: f64,
    /// Weight bytes read per decoded token (every matrix once, LM head included).
    pub weight_bytes_per_token: u64,
    /// `weight_bytes_per_token` times decode tokens per second.
    pub achieved_gb_s: f64,
    /// Copy bandwidth measured in this run (bytes read + written per second).
    pub copy_gb_s: f64,
    /// `achieved_gb_s` as a percentage of `copy_gb_s`.
    pub percent_of_copy: f64,
    /// The kernels of one decode step, on a backend that launches kernels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<StepProfile>,
}

impl BenchReport {
    pub fn new(
        model: String,
        weights: String,
        backend: String,
        device: String,
        t: &Timings,
        weight_bytes_per_token: u64,
        copy_gb_s: f64,
    ) -> BenchReport {
        let tok_s = t.decode_tokens_per_second();
        let achieved = weight_bytes_per_token as f64 * tok_s / 1e9;
        BenchReport {
            model,
            weights,
            backend,
            device,
            prompt_tokens: t.prompt_tokens,
            new_tokens: t.per_token.len() + 1,
            sampling: "greedy".into(),
            ttft_ms: t.time_to_first_token.as_secs_f64() * 1e3,
            decode_tok_s: tok_s,
            median_ms_per_token: t.quantile_ms(0.5),
            p99_ms_per_token: t.quantile_ms(0.99),
            weight_bytes_per_token,
            achieved_gb_s: achieved,
            copy_gb_s,
            percent_of_copy: if copy_gb_s > 0.0 {
                100.0 * achieved / copy_gb_s
            } else {
                0.0
            },
            profile: None,
        }
    }

    /// A two-column table for humans.
    pub fn table(&self) -> String {
        let rows = [
            ("model", self.model.clone()),
            ("weights", self.weights.clone()),
            ("backend", format!("{} ({})", self.backend, self.device)),
            ("prompt tokens", self.prompt_tokens.to_string()),
            ("new tokens", self.new_tokens.to_string()),
            ("sampling", self.sampling.clone()),
            ("time to first token", format!("{:.2} ms", self.ttft_ms)),
            ("decode", format!("{:.1} tok/s", self.decode_tok_s)),
            (
                "median per token",
                format!("{:.3} ms", self.median_ms_per_token),
            ),
            ("p99 per token", format!("{:.3} ms", self.p99_ms_per_token)),
            (
                "weights read per token",
                format!("{:.1} MB", self.weight_bytes_per_token as f64 / 1e6),
            ),
            ("achieved", format!("{:.1} GB/s", self.achieved_gb_s)),
            ("copy bandwidth", format!("{:.1} GB/s", self.copy_gb_s)),
            (
                "of copy bandwidth",
                format!("{:.1} %", self.percent_of_copy),
            ),
        ];
        let mut rows = rows.to_vec();
        if let Some(p) = &self.profile {
            rows.push(("kernels per token", p.launches().to_string()));
            if let Some(n) = p.graph_nodes {
                rows.push(("graph nodes per token", n.to_string()));
            }
        }
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out: String = rows
            .iter()
            .map(|(k, v)| format!("{k:<w$}  {v}\n"))
            .collect();
        if let Some(p) = self.profile.as_ref().filter(|p| p.micros() > 0.0) {
            out.push_str(&profile_table(p));
        }
        out
    }
}

/// Where a step's kernel time goes: per kernel, launches, microseconds per token and share
/// of the kernels' total (an eager run: the graph replays the same launches).
pub fn profile_table(p: &StepProfile) -> String {
    let total = p.micros();
    let w = p
        .kernels
        .iter()
        .map(|k| k.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut out = format!(
        "\n{:<w$}  {:>8}  {:>10}  {:>6}\n",
        "kernel", "launches", "us/token", "share"
    );
    let mut kernels: Vec<_> = p.kernels.iter().collect();
    kernels.sort_by(|a, b| b.micros.total_cmp(&a.micros));
    for k in kernels {
        out.push_str(&format!(
            "{:<w$}  {:>8}  {:>10.1}  {:>5.1}%\n",
            k.name,
            k.launches,
            k.micros,
            100.0 * k.micros / total
        ));
    }
    out.push_str(&format!(
        "{:<w$}  {:>8}  {:>10.1}  {:>5.1}%\n",
        "total",
        p.launches(),
        total,
        100.0
    ));
    let programmatic = p.programmatic_launches();
    if programmatic > 0 {
        out.push_str(&format!(
            "{programmatic} of the {} launches with programmatic dependent launch\n",
            p.launches()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_rate() {
        let t = Timings {
            prompt_tokens: 4,
            time_to_first_token: Duration::from_millis(5),
            per_token: (1..=100).map(Duration::from_millis).collect(),
        };
        assert_eq!(t.quantile_ms(0.5), 50.0);
        assert_eq!(t.quantile_ms(0.99), 99.0);
        assert_eq!(t.quantile_ms(1.0), 100.0);
        let want = 100.0 / (5050.0 / 1e3);
        assert!((t.decode_tokens_per_second() - want).abs() < 1e-9);
        let r = BenchReport::new(
            "m".into(),
            "BF16".into(),
            "cpu".into(),
            "2 threads".into(),
            &t,
            2_000_000_000,
            20.0,
        );
        assert_eq!(r.new_tokens, 101);
        assert!((r.achieved_gb_s - 2.0 * want).abs() < 1e-9);
        assert!((r.percent_of_copy - 10.0 * want).abs() < 1e-9);
    }

    #[test]
    fn prompts_avoid_the_previous_first_token() {
        let a = random_prompt(5, 10, 1, None);
        let b = random_prompt(5, 10, 1, a.first().copied());
        assert_ne!(a[0], b[0]);
        assert_eq!(a[1..], b[1..]);
        assert!(random_prompt(100, 3, 2, None).iter().all(|&t| t < 3));
    }

    #[test]
    fn sampling_is_described_by_what_is_on() {
        assert_eq!(describe_sampling(&SamplingParams::greedy()), "greedy");
        let p = SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.0,
            repetition_penalty: 1.1,
            ..SamplingParams::default()
        };
        assert_eq!(
            describe_sampling(&p),
            "temperature 0.8, top-k 40, top-p 0.95, repetition penalty 1.1 (last 64)"
        );
    }

    #[test]
    fn copy_bandwidth_is_positive() {
        assert!(host_copy_bandwidth(1 << 20, 3) > 0.0);
    }
}
