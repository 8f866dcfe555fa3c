//! Speculative verify passes as CUDA graphs, one per row count. A verify pass of K+1 rows
//! runs every layer's kernels once (about 8 per layer and the LM head: some 200-300
//! launches on a 24-28 layer model), which launched one by one cost the host 2-4 us each,
//! more than the GPU needs for the pass itself at these sizes. So the rows' token ids and
//! first position live in device memory, as a decode step's do; the first pass of each row
//! count runs eagerly from them (every scratch buffer then exists, and the pass is done),
//! then the same pass is captured with the argmax of each row. Every later pass of that
//! row count writes its ids and position (pinned memory, queued), replays the graph and
//! reads back the K+1 picks: one synchronization a verify step.
//!
//! The eager first pass and the replays run the same kernels with the same parameters (the
//! position read on the device, attention split for the whole cache), so a replayed pass
//! gives what the eager one gave. A graph holds at most `max_rows` row counts: a few
//! hundred nodes each, captured once per count and kept until the model's buffers change
//! ([`DeviceDecoder::forget_capture`]).

use cudarc::driver::{CudaEvent, CudaSlice, PinnedHostSlice};

use super::{DecodeStep, DeviceDecoder, StepGraph};
use crate::backend::BackendError;
use crate::backend::cuda::device::CudaDevice;
use crate::backend::cuda::launch::dev_err;

/// The verify passes captured so far and the inputs they read.
pub(super) struct VerifyGraphs {
    /// By row count. First field: fields drop in order, and a graph holds the addresses
    /// of the buffers below (and of the decoder's), so it goes before any of them.
    graphs: Vec<(usize, StepGraph)>,
    /// The rows' token ids (`max_rows`) and the first row's position, as the pass reads
    /// them.
    tokens: CudaSlice<u32>,
    pos: CudaSlice<i32>,
    /// Pinned staging of those uploads, and the landing place of the picks.
    tokens_host: PinnedHostSlice<u32>,
    pos_host: PinnedHostSlice<i32>,
    picks_host: PinnedHostSlice<u32>,
    /// Recorded behind the last upload: waited on before the staging is rewritten.
    uploaded: CudaEvent,
}

impl VerifyGraphs {
    /// Inputs for verify passes of up to `max_rows` rows, nothing captured yet.
    pub(super) fn new(dev: &CudaDevice, max_rows: usize) -> Result<VerifyGraphs, BackendError> {
        let rows = max_rows.max(1);
        let (s, ctx) = (dev.stream(), dev.context());
        let e = || dev_err("verify buffers");
        // SAFETY: pinned memory starts unset; the staging is written (the ids a pass reads,
        // the position) before each upload, and the picks are read only after their copy
        // finished, only as many as the pass picked.
        let (tokens_host, pos_host, picks_host) = unsafe {
            (
                ctx.alloc_pinned::<u32>(rows).map_err(e())?,
                ctx.alloc_pinned::<i32>(1).map_err(e())?,
                ctx.alloc_pinned::<u32>(rows).map_err(e())?,
            )
        };
        Ok(VerifyGraphs {
            graphs: Vec::new(),
            tokens: s.alloc_zeros::<u32>(rows).map_err(e())?,
            pos: s.alloc_zeros::<i32>(1).map_err(e())?,
            tokens_host,
            pos_host,
            picks_host,
            uploaded: ctx.new_event(None).map_err(e())?,
        })
    }

    /// Drops every captured pass (the model's buffers changed).
    pub(super) fn forget(&mut self) {
        self.graphs.clear();
    }

    /// The row counts captured so far, in capture order.
    pub(super) fn captured(&self) -> Vec<usize> {
        self.graphs.iter().map(|(n, _)| *n).collect()
    }
}

impl<M: DecodeStep> DeviceDecoder<M> {
    /// A verify pass of `tokens` at positions `pos..` (extending the KV cache) and the
    /// argmax of each row's logits on the device, into `out` (`tokens.len()` ids): a graph
    /// replay once this row count has run, see the module header. The caller checks the
    /// rows against the model's batch; the context is checked here.
    pub fn verify_argmax(
        &mut self,
        tokens: &[u32],
        pos: usize,
        out: &mut [u32],
    ) -> Result<(), BackendError> {
        let n = tokens.len();
        let ctx = self.model.ctx();
        let rows = self.verify.tokens.len().min(self.picks.rows_next.len());
        let at = i32::try_from(pos).ok().filter(|_| pos + n <= ctx);
        let (Some(at), true) = (at, (1..=rows).contains(&n) && out.len() == n) else {
            return Err(BackendError::Device(format!(
                "CUDA: a verify pass of {n} rows (at most {rows}) at position {pos} within a context of {ctx}, {} picks",
                out.len()
            )));
        };
        self.upload_rows(tokens, at)?;
        match self.verify.graphs.iter().find(|(k, _)| *k == n) {
            Some((_, g)) => g.0.launch().map_err(dev_err("replaying the verify pass"))?,
            None => {
                self.queue_verify(n)?;
                if self.use_graph {
                    // Capture the pass just run (recording queues no work). A failure
                    // leaves the decoder eager rather than broken.
                    match self.record(|d| d.queue_verify(n)) {
                        Ok(g) => self.verify.graphs.push((n, g)),
                        Err(e) => {
                            tracing::warn!(
                                "CUDA graph capture of a verify pass failed, running without graphs: {e}"
                            );
                            self.use_graph = false;
                        }
                    }
                }
            }
        }
        let s = self.stream();
        let e = || dev_err("reading the verify picks");
        s.memcpy_dtoh(
            &self.picks.rows_next.slice(..n),
            &mut self.verify.picks_host,
        )
        .map_err(e())?;
        s.synchronize()
            .map_err(dev_err("running the verify pass"))?;
        out.copy_from_slice(&self.verify.picks_host.as_slice().map_err(e())?[..n]);
        Ok(())
    }

    /// The row counts whose verify pass is captured, in capture order.
    pub fn captured_verify_rows(&self) -> Vec<usize> {
        self.verify.captured()
    }

    /// Writes the rows' ids and first position from pinned memory (queued, not waited
    /// for), once the last such upload has left the staging.
    fn upload_rows(&mut self, tokens: &[u32], pos: i32) -> Result<(), BackendError> {
        let s = self.stream();
        let v = &mut self.verify;
        let e = || dev_err("writing the verify inputs");
        v.uploaded.synchronize().map_err(e())?;
        v.tokens_host.as_mut_slice().map_err(e())?[..tokens.len()].copy_from_slice(tokens);
        v.pos_host.as_mut_slice().map_err(e())?[0] = pos;
        s.memcpy_htod(&v.tokens_host, &mut v.tokens).map_err(e())?;
        s.memcpy_htod(&v.pos_host, &mut v.pos).map_err(e())?;
        v.uploaded.record(&s).map_err(e())
    }

    /// Everything a verify pass of `n` rows queues: the forward pass reading the ids and
    /// position from the verify inputs, then each row's argmax into `picks.rows_next`.
    fn queue_verify(&mut self, n: usize) -> Result<(), BackendError> {
        let v = &self.verify;
        self.model
            .queue_rows(&mut self.backend, &v.tokens, n, &v.pos)?;
        let Some(logits) = self.model.rows_logits() else {
            return Err(BackendError::Device(
                "CUDA: the verify pass left no logits".into(),
            ));
        };
        let p = &mut self.picks;
        for row in 0..n {
            self.backend.argmax_row(
                logits,
                row,
                &mut p.rows_next,
                row,
                &mut p.part_val,
                &mut p.part_idx,
            )?;
        }
        Ok(())
    }
}
