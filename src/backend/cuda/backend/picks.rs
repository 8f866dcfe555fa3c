//! The on-device picks of `CudaBackend`: argmax and the sampled draw over a logits row (the
//! kernels of `kernels/sample*.cu`, through `launch/sample.rs`), with or without a token
//! mask. The decode graph and the verify passes queue these after their forward pass.

use cudarc::driver::CudaSlice;

use super::CudaBackend;
use crate::backend::BackendError;
use crate::backend::cuda::buffers::CudaAct;
use crate::backend::cuda::launch::penalty::no_advance;
use crate::backend::cuda::launch::sample::{self, SampleFilters};

impl CudaBackend {
    /// Index of the largest of the `n` first values of `logits` row 0, on the device: the
    /// token id lands in `out[0]` (lowest index on ties, NaN never chosen).
    pub fn argmax(
        &mut self,
        logits: &CudaAct,
        out: &mut CudaSlice<u32>,
        part_val: &mut CudaSlice<f32>,
        part_idx: &mut CudaSlice<i32>,
    ) -> Result<(), BackendError> {
        self.argmax_row(logits, 0, out, 0, part_val, part_idx)
    }

    /// [`CudaBackend::argmax`] of row `row` of `logits` into `out[slot]`. Rows picked one
    /// after another on the stream may share the partial buffers.
    pub fn argmax_row(
        &mut self,
        logits: &CudaAct,
        row: usize,
        out: &mut CudaSlice<u32>,
        slot: usize,
        part_val: &mut CudaSlice<f32>,
        part_idx: &mut CudaSlice<i32>,
    ) -> Result<(), BackendError> {
        sample::argmax_row(
            &self.dev,
            logits,
            row,
            None,
            out,
            slot,
            part_val,
            part_idx,
            no_advance(),
        )
    }

    /// [`CudaBackend::argmax`] among the tokens `mask` allows (vocabulary/32 words in device
    /// memory, bit `i % 32` of word `i / 32` allows token `i`): a refused token is no
    /// candidate, so `out[0]` is `TACHYON_NO_TOKEN` when no allowed logit is a number.
    pub fn argmax_masked(
        &mut self,
        logits: &CudaAct,
        mask: &CudaSlice<u32>,
        out: &mut CudaSlice<u32>,
        part_val: &mut CudaSlice<f32>,
        part_idx: &mut CudaSlice<i32>,
    ) -> Result<(), BackendError> {
        sample::argmax_row(
            &self.dev,
            logits,
            0,
            Some(mask),
            out,
            0,
            part_val,
            part_idx,
            no_advance(),
        )
    }

    /// [`CudaBackend::sample`] among the tokens `mask` allows (as
    /// [`CudaBackend::argmax_masked`]): the CPU sampler's distribution over them.
    pub fn sample_masked(
        &mut self,
        logits: &CudaAct,
        mask: &CudaSlice<u32>,
        work: &mut CudaSlice<f32>,
        out: &mut CudaSlice<u32>,
        rng: &mut CudaSlice<u64>,
        filters: SampleFilters,
    ) -> Result<(), BackendError> {
        sample::sample(
            &self.dev,
            logits,
            Some(mask),
            work,
            out,
            rng,
            filters,
            no_advance(),
            None,
        )
    }

    /// Draws a token from row 0 of `logits` into `out[0]` with the CPU sampler's filters
    /// (top-k, softmax at `temperature`, min-p, top-p; see `SampleParams`), the uniform
    /// number coming from the SplitMix64 state in `rng[0]`, which the draw advances.
    /// `work` is zeroed scratch of [`Self::sample_work_len`] words, reused from draw to draw.
    /// Penalties are not applied.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &mut self,
        logits: &CudaAct,
        work: &mut CudaSlice<f32>,
        out: &mut CudaSlice<u32>,
        rng: &mut CudaSlice<u64>,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
    ) -> Result<(), BackendError> {
        let filters = SampleFilters {
            temperature,
            top_k,
            top_p,
            min_p,
        };
        sample::sample(
            &self.dev,
            logits,
            None,
            work,
            out,
            rng,
            filters,
            no_advance(),
            None,
        )
    }

    /// Partial slots `argmax` needs for a vocabulary of `n`.
    pub fn argmax_parts(n: usize) -> usize {
        sample::argmax_parts(n)
    }

    /// Words of zeroed scratch (`work`) `sample` needs for a vocabulary of `n`.
    pub fn sample_work_len(n: usize) -> usize {
        sample::sample_work_len(n)
    }
}
