//! How soon a cancel stops a long prefill on the CPU backend (what a cancel-and-replace over
//! the WebSocket waits for before the replacement runs).
//!
//!     cargo bench --bench cancel_prefill
//!
//! SmolLM2-135M (models/, or TACHYON_MODELS_DIR) prefills a fresh 1,000-token prompt; a
//! second thread sets the cancel flag at a random moment in its second to fourth chunk
//! (where in the prompt does not matter: each chunk runs the same layers) and the time from
//! the flag to `generate_stream` returning is the cancel latency. CANCEL_BENCH_TRIALS sets
//! the number of runs (default 20). The engine checks the flag before the attention and the
//! MLP block of every layer of every prefill chunk, so the latency is about half a layer of
//! one 64-token chunk; the time of a whole chunk (what a cancel waited for when only chunks
//! were checked) is printed beside it. Exits with an error when the p99 is over the 20 ms
//! bound (on a machine busy with other work it can be: read the printed chunk time too).
//! Without the model it says so and exits successfully.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use tachyon::engine::{
    BackendChoice, EngineOptions, FinishReason, Flow, GenerateParams, ModelSpec, SamplingParams,
    SessionOptions, SpeculationOptions, StreamOptions, build,
};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const PROMPT_TOKENS: usize = 1000;
const TRIALS: usize = 20;
const BOUND: Duration = Duration::from_millis(20);

fn main() -> anyhow::Result<()> {
    let dir = std::env::var_os("TACHYON_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"));
    let path = dir.join(MODEL);
    if !path.is_file() {
        println!(
            "cancel_prefill: {} is missing (scripts/fetch-models.sh); skipped",
            path.display()
        );
        return Ok(());
    }
    let opts = EngineOptions {
        backend: BackendChoice::Cpu,
        session: SessionOptions {
            ctx: 2048,
            ..Default::default()
        },
        prefill_chunk: Some(SessionOptions::default().max_batch),
        ..Default::default()
    };
    let built = build(
        &ModelSpec::File(path),
        &opts,
        &SpeculationOptions::default(),
    )?;
    let mut engine = built.engine;
    let vocab = engine.vocab_size() as u32;
    let batch = SessionOptions::default().max_batch;
    let params = GenerateParams {
        max_tokens: 1,
        sampling: SamplingParams::greedy(),
        stop_ids: Vec::new(),
    };
    // A fresh prompt per run (its first token differs), so nothing comes from the cache.
    let mut prompt_no = 0u32;
    let mut prompt = move || {
        prompt_no += 1;
        (0..PROMPT_TOKENS as u32)
            .map(|i| {
                100 + (i.wrapping_mul(2_654_435_761) ^ prompt_no.wrapping_mul(40_503))
                    % (vocab - 100)
            })
            .collect::<Vec<u32>>()
    };

    let trials = std::env::var("CANCEL_BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(TRIALS)
        .max(1);
    // One chunk uncancelled (warm): what a cancel waited for when only chunks were checked.
    engine.generate(&prompt()[..batch], &params, &mut |_| Flow::Continue)?;
    let t = Instant::now();
    engine.generate(&prompt()[..batch], &params, &mut |_| Flow::Continue)?;
    let chunk = t.elapsed();
    println!(
        "one prefill chunk of {batch} tokens: {:.1} ms ({:.1} ms a layer of {})",
        ms(chunk),
        ms(chunk) / built.model.config.n_layers as f64,
        built.model.config.n_layers
    );

    let mut latencies = Vec::with_capacity(trials);
    let mut seed = 0x2545_f491_u64;
    for _ in 0..trials {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = chunk.mul_f64(1.0 + (seed % 1000) as f64 / 1000.0 * 2.0);
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let setter = {
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let at = Instant::now();
                cancel.store(true, Ordering::Relaxed);
                let _ = tx.send(at);
            })
        };
        let stream = StreamOptions {
            cancel: Some(&cancel),
            ..Default::default()
        };
        let stats = engine.generate_stream(&prompt(), &params, &stream, &mut |_| Flow::Continue)?;
        let returned = Instant::now();
        setter
            .join()
            .map_err(|_| anyhow::anyhow!("the cancel thread panicked"))?;
        let set_at = rx.recv()?;
        if stats.finish != FinishReason::Cancelled || stats.generated_tokens != 0 {
            anyhow::bail!(
                "the prefill ended before the cancel ({:?} after {:.0} ms)",
                stats.finish,
                ms(delay)
            );
        }
        latencies.push(returned.saturating_duration_since(set_at));
    }
    latencies.sort();
    let q = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let (p50, p99, max) = (q(0.5), q(0.99), latencies[latencies.len() - 1]);
    println!(
        "cancel mid-prefill, {trials} runs: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (bound {} ms; a whole chunk {:.1} ms)",
        ms(p50),
        ms(p99),
        ms(max),
        BOUND.as_millis(),
        ms(chunk)
    );
    if p99 > BOUND {
        anyhow::bail!(
            "the p99 cancel latency is over the {} ms bound",
            BOUND.as_millis()
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
