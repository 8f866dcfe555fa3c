//! Causal grouped-query attention over the KV cache, one (token, head) pair per task.

use std::cell::RefCell;

use super::ops::{scaled_dots, softmax, weighted_rows};
use super::pool;
use crate::backend::AttnShape;

/// One layer's cache: `ctx` positions of `kv_dim` values for K and for V, f32.
pub struct KvCache {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub kv_dim: usize,
}

/// The output shared by the tasks, each of which writes its own `head_dim` chunk.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint chunks (see `attention`), and the buffer outlives the job.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Write `k`, `v` (n rows) at positions `pos..pos+n`, then for each query row i (position
/// `pos + i`) and head h: `out = softmax(q.K^T / sqrt(d)) V` over the visible positions.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cache: &mut KvCache,
    s: AttnShape,
    pos: usize,
    n: usize,
    out: &mut [f32],
) {
    let kvd = cache.kv_dim;
    cache.k[pos * kvd..(pos + n) * kvd].copy_from_slice(&k[..n * kvd]);
    cache.v[pos * kvd..(pos + n) * kvd].copy_from_slice(&v[..n * kvd]);
    let (hd, nh) = (s.head_dim, s.n_heads);
    let group = nh / s.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let (kc, vc) = (&cache.k, &cache.v);
    let out = &mut out[..n * nh * hd];
    let out_ptr = OutPtr(out.as_mut_ptr());
    pool::global().run(n * nh, &|idx| {
        // SAFETY: task `idx` owns output chunk `idx` alone, and `out` holds n * nh chunks.
        let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.at(idx * hd), hd) };
        let (i, h) = (idx / nh, idx % nh);
        let p = pos + i;
        let first = s.window.map_or(0, |w| (p + 1).saturating_sub(w));
        let qh = &q[(i * nh + h) * hd..(i * nh + h + 1) * hd];
        let kvh = h / group;
        SCORES.with(|sc| {
            let mut sc = sc.borrow_mut();
            sc.resize(p + 1 - first, 0.0);
            scaled_dots(qh, kc, first * kvd + kvh * hd, kvd, scale, &mut sc);
            softmax(&mut sc);
            weighted_rows(&sc, vc, first * kvd + kvh * hd, kvd, o);
        });
    });
}
