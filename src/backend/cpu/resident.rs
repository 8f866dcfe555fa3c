//! Weights copied out of the file mapping into anonymous memory backed by 2 MiB pages.
//!
//! Decoding streams every weight byte once per token. Read through the file mapping, that
//! is one TLB miss per 4 KiB page (a quarter of a million per token for a 1 GB model), and
//! the page cache may be shared with, or evicted by, anything else on the machine. A
//! private copy on transparent huge pages cuts the TLB misses 512-fold; it costs one copy
//! at load (memory-bandwidth bound: a fraction of a second per GB) and the model's size in
//! resident memory, which the CPU backend needs anyway to decode at speed.

use std::collections::HashMap;
use std::sync::Arc;

use memmap2::{Advice, MmapMut};

use super::pool;
use crate::backend::BackendError;
use crate::format::Weight;

/// Matrices below this size stay in the file mapping: they cannot fill a huge page.
const MIN_BYTES: usize = 2 << 20;

/// Copies of the weights already made, by the address of their bytes (a tied embedding is
/// uploaded twice, as the input table and as the LM head, and copied once).
#[derive(Default)]
pub struct Resident {
    copies: HashMap<(usize, usize), Weight>,
}

impl Resident {
    /// `w` itself when small, else its copy in huge-page memory.
    pub fn place(&mut self, w: &Weight) -> Result<Weight, BackendError> {
        let bytes = w.bytes();
        if bytes.len() < MIN_BYTES {
            return Ok(w.clone());
        }
        let key = (bytes.as_ptr() as usize, bytes.len());
        if let Some(c) = self.copies.get(&key) {
            return Ok(c.clone());
        }
        let oom = || BackendError::OutOfMemory {
            what: format!("a resident copy of {}", w.name),
        };
        let mut map = MmapMut::map_anon(bytes.len()).map_err(|_| oom())?;
        // Only a hint: without transparent huge pages the copy still works, on 4 KiB pages.
        let _ = map.advise(Advice::HugePage);
        parallel_copy(&mut map, bytes);
        let map = map
            .make_read_only()
            .map_err(|e| BackendError::Device(format!("sealing {}: {e}", w.name)))?;
        let len = map.len();
        let copy = Weight::new(&w.name, w.ty, w.rows, w.cols, Arc::new(map), 0, len)
            .map_err(|e| BackendError::Device(e.to_string()))?;
        self.copies.insert(key, copy.clone());
        Ok(copy)
    }
}

/// `dst.copy_from_slice(src)` split across the pool: the copy is bound by page faults
/// (zeroing fresh pages) as much as by bandwidth, and both scale with threads.
fn parallel_copy(dst: &mut [u8], src: &[u8]) {
    const CHUNK: usize = 4 << 20;
    assert_eq!(dst.len(), src.len());
    let n = src.len().div_ceil(CHUNK);
    let dst = DstPtr(dst.as_mut_ptr());
    pool::global().run(n, &|i| {
        let (a, b) = (i * CHUNK, ((i + 1) * CHUNK).min(src.len()));
        // SAFETY: chunk i of `dst` (same length as `src`) is written by task i alone.
        let d = unsafe { std::slice::from_raw_parts_mut(dst.at(a), b - a) };
        d.copy_from_slice(&src[a..b]);
    });
}

/// The destination shared by the copy tasks, each writing its own chunk.
#[derive(Clone, Copy)]
struct DstPtr(*mut u8);
// SAFETY: the tasks write disjoint chunks, and the buffer outlives the job.
unsafe impl Send for DstPtr {}
unsafe impl Sync for DstPtr {}

impl DstPtr {
    fn at(self, i: usize) -> *mut u8 {
        self.0.wrapping_add(i)
    }
}
