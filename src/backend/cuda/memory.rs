//! What a CUDA session will hold in device memory, counted before anything is uploaded, so
//! that a model which cannot fit is refused at once with the sizes that matter (and what to
//! change) instead of failing half-way through the upload with "out of memory".

use std::fmt;

use super::launch::attention::MAX_ATTN_SPLITS;
use crate::format::{ModelConfig, ModelWeights};

/// Device bytes of one session, by what holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Every matrix as stored (the embedding and the LM head each once, tied or not: the
    /// session uploads both), the norm and bias vectors.
    pub weights: u64,
    /// K and V of every layer for `ctx` positions, in f32.
    pub kv_cache: u64,
    /// Activations for `max_batch` rows, the logits of `verify_rows` rows, attention split
    /// partials, rope tables and the step buffers.
    pub working: u64,
    pub ctx: usize,
}

impl MemoryPlan {
    pub fn new(
        config: &ModelConfig,
        weights: &ModelWeights,
        ctx: usize,
        max_batch: usize,
        verify_rows: usize,
    ) -> Self {
        let f32s = |n: usize| n as u64 * 4;
        let matrices = weights.bytes_per_token() + weights.embed.byte_len() as u64;
        let vectors: usize = weights
            .layers
            .iter()
            .map(|l| {
                let opt = |v: &Option<Vec<f32>>| v.as_ref().map_or(0, Vec::len);
                l.attn_norm.len()
                    + l.ffn_norm.len()
                    + opt(&l.bq)
                    + opt(&l.bk)
                    + opt(&l.bv)
                    + opt(&l.q_norm)
                    + opt(&l.k_norm)
            })
            .sum::<usize>()
            + weights.final_norm.len();
        let kv_cache = 2 * config.n_layers as u64 * f32s(ctx * config.kv_dim());
        // Per row: the residual, the normed input, q / k / v, the attention output and its
        // scratch, gate and up, and the split partials of attention (an accumulator, a max
        // and a sum per split and head). Then the verify rows' logits, the rope tables
        // (ctx x head_dim) and 4 MiB for the step buffers and allocation rounding.
        let rows = max_batch.max(1);
        let per_row = 2 * config.dim
            + 3 * config.q_dim()
            + 2 * config.kv_dim()
            + 2 * config.ffn_dim
            + MAX_ATTN_SPLITS * config.n_heads * (config.head_dim + 2);
        let working = f32s(rows * per_row)
            + f32s((verify_rows.min(rows) + 1) * config.vocab_size)
            + f32s(ctx * config.head_dim)
            + (4 << 20);
        MemoryPlan {
            weights: matrices + f32s(vectors),
            kv_cache,
            working,
            ctx,
        }
    }

    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.working
    }

    /// Refuses the plan when it needs more than `free` bytes of the device's `total`.
    pub fn check(&self, free: u64, total: u64) -> Result<(), DoesNotFit> {
        if self.total() <= free {
            return Ok(());
        }
        Err(DoesNotFit {
            plan: *self,
            free,
            total,
        })
    }
}

/// A session that would not fit in the device's free memory.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DoesNotFit {
    pub plan: MemoryPlan,
    pub free: u64,
    pub total: u64,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

impl fmt::Display for DoesNotFit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.plan;
        write!(
            f,
            "the model needs {} of GPU memory (weights {}, KV cache {} for a context of {} \
             tokens, working buffers {}) but the GPU has {} free of {}",
            mib(p.total()),
            mib(p.weights),
            mib(p.kv_cache),
            p.ctx,
            mib(p.working),
            mib(self.free),
            mib(self.total)
        )?;
        // Say what to change: the KV cache is the part a flag shrinks.
        if p.weights + p.working <= self.free && p.kv_cache > 0 {
            let per_token = p.kv_cache / p.ctx.max(1) as u64;
            let fits = (self.free - p.weights - p.working) / per_token.max(1);
            write!(f, "; a context of {fits} tokens would fit (--ctx)")
        } else {
            write!(
                f,
                "; use a smaller or more quantized model (--quant int8 or int4)"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> MemoryPlan {
        MemoryPlan {
            weights: 100 << 20,
            kv_cache: 400 << 20,
            working: 10 << 20,
            ctx: 4096,
        }
    }

    #[test]
    fn a_plan_that_fits_passes_and_one_that_does_not_says_what_to_change() {
        let p = plan();
        assert_eq!(p.total(), 510 << 20);
        assert!(p.check(510 << 20, 1 << 30).is_ok());
        let e = p.check(310 << 20, 1 << 30).unwrap_err().to_string();
        assert!(e.contains("needs 510.0 MiB"), "{e}");
        assert!(e.contains("weights 100.0 MiB"), "{e}");
        assert!(
            e.contains("KV cache 400.0 MiB for a context of 4096 tokens"),
            "{e}"
        );
        assert!(e.contains("310.0 MiB free of 1024.0 MiB"), "{e}");
        // 200 MiB left for the KV cache at 100 KiB a token: 2048 tokens.
        assert!(
            e.contains("a context of 2048 tokens would fit (--ctx)"),
            "{e}"
        );
        let e = p.check(50 << 20, 1 << 30).unwrap_err().to_string();
        assert!(e.contains("more quantized model"), "{e}");
    }
}
