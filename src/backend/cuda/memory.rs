//! What a CUDA session will hold in device memory, counted before anything is uploaded, so
//! that a model which cannot fit is refused at once with the sizes that matter (and what to
//! change) instead of failing half-way through the upload with "out of memory".

use std::fmt;

use super::launch::attention::max_split_rows;
use crate::backend::{AttnShape, KvDtype};
use crate::format::{ModelConfig, ModelWeights};

/// Device bytes of one session, by what holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Every matrix as stored (the embedding and the LM head each once, tied or not: the
    /// session uploads both), the norm and bias vectors.
    pub weights: u64,
    /// K and V of every layer for `ctx` positions, in the cache's element type
    /// (`--kv-dtype`), for each of `slots` sequences.
    pub kv_cache: u64,
    /// Activations for `max_batch` rows, the logits of `verify_rows` rows, attention split
    /// partials, rope tables and the step buffers.
    pub working: u64,
    pub ctx: usize,
    pub slots: usize,
}

impl MemoryPlan {
    /// `sm_count`: the device's SMs, which size the attention partials (see
    /// `max_split_rows`).
    pub fn new(
        config: &ModelConfig,
        weights: &ModelWeights,
        (ctx, slots): (usize, usize),
        max_batch: usize,
        verify_rows: usize,
        kv_dtype: KvDtype,
        sm_count: usize,
    ) -> Self {
        let f32s = |n: usize| n as u64 * 4;
        // The products' matrices in their device layout (repack.rs: a few percent more for
        // the K formats, and each array's alignment), the embedding table as stored.
        let on_device = |w: &crate::format::Weight| {
            super::repack::layout(w.ty, w.rows, w.cols)
                .map_or(w.byte_len(), |l| l.total.max(w.byte_len())) as u64
        };
        let matrices = on_device(&weights.output)
            + weights
                .layers
                .iter()
                .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down])
                .map(on_device)
                .sum::<u64>()
            + weights.embed.byte_len() as u64;
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
        let kv_cache = (slots as u64)
            .saturating_mul(2 * config.n_layers as u64)
            .saturating_mul((config.kv_dim() * kv_dtype.bytes()) as u64)
            .saturating_mul(ctx as u64);
        // Per row: the residual, the normed input, q / k / v, the attention output and its
        // scratch, gate and up. Then the split partials of attention (an accumulator, a max
        // and a sum per split and head, for the most splits a call makes), the verify rows'
        // logits, the rope tables (ctx x head_dim) and 4 MiB for the step buffers and
        // allocation rounding.
        let rows = max_batch.max(1);
        let per_row =
            2 * config.dim + 3 * config.q_dim() + 2 * config.kv_dim() + 2 * config.ffn_dim;
        let split_rows = max_split_rows(sm_count, kv_dtype, &AttnShape::of(config), rows);
        let partials = split_rows * config.n_heads * (config.head_dim + 2);
        let working = f32s(rows * per_row + partials)
            + f32s((verify_rows.min(rows) + 1) * config.vocab_size)
            + f32s(ctx.min(config.max_ctx) * config.head_dim)
            + (4 << 20);
        MemoryPlan {
            weights: matrices + f32s(vectors),
            kv_cache,
            working,
            ctx,
            slots,
        }
    }

    pub fn total(&self) -> u64 {
        self.weights
            .saturating_add(self.kv_cache)
            .saturating_add(self.working)
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
        let caches = match p.slots {
            1 => String::new(),
            n => format!("{n} slots of "),
        };
        write!(
            f,
            "the model needs {} of GPU memory (weights {}, KV cache {} for {caches}a context of \
             {} tokens, working buffers {}) but the GPU has {} free of {}",
            mib(p.total()),
            mib(p.weights),
            mib(p.kv_cache),
            p.ctx,
            mib(p.working),
            mib(self.free),
            mib(self.total)
        )?;
        // Say what to change: the KV cache is the part a flag shrinks. The context offered
        // keeps a tenth of the room spare (allocation rounding, what the count misses).
        let fixed = p.weights + p.working;
        let per_token = p.kv_cache / (p.ctx.max(1) * p.slots.max(1)) as u64;
        let fits = if fixed < self.free && per_token > 0 {
            (self.free - fixed) / 10 * 9 / (per_token * p.slots.max(1) as u64)
        } else {
            0
        };
        if fits >= 16 {
            let slots = if p.slots > 1 {
                " (or fewer --slots)"
            } else {
                ""
            };
            write!(f, "; a context of {fits} tokens would fit (--ctx){slots}")
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
            slots: 1,
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
        // 200 MiB left for the KV cache at 100 KiB a token, nine tenths of it: 1843 tokens.
        assert!(
            e.contains("a context of 1843 tokens would fit (--ctx)"),
            "{e}"
        );
        let two = MemoryPlan {
            slots: 2,
            kv_cache: 800 << 20,
            ..p
        };
        let e = two.check(310 << 20, 1 << 30).unwrap_err().to_string();
        assert!(e.contains("for 2 slots of a context of 4096 tokens"), "{e}");
        assert!(
            e.contains("921 tokens would fit (--ctx) (or fewer --slots)"),
            "{e}"
        );
        let e = p.check(50 << 20, 1 << 30).unwrap_err().to_string();
        assert!(e.contains("more quantized model"), "{e}");
    }
}
