//! A fork-join pool built for the decode step: one forward pass runs a few hundred short
//! parallel loops (each matmul, each attention), and a general-purpose pool puts its
//! workers to sleep between them, so every loop pays a futex wake-up (tens of µs) and the
//! cores sit idle meanwhile. Here workers spin on one atomic word for a while after each
//! job (long enough to cover the serial gaps of a forward pass, a few ms), then park.
//!
//! Protocol: the caller publishes a job by storing `(epoch, n, next index)` packed in one
//! `u64`; everyone (caller included) claims task indices with `fetch_add` on that word and
//! runs the ones below `n`; the caller returns once `n` tasks report done. A claim that
//! reads a newer epoch than its claimant expected is still a valid claim of that epoch's
//! job, so no task is ever lost, and the job closure is only read by a thread holding an
//! unfinished task, so the caller's frame outlives every use of it.

use std::cell::UnsafeCell;
use std::hint::spin_loop;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const IDX_BITS: u32 = 20;
const IDX_MASK: u64 = (1 << IDX_BITS) - 1;
const EPOCH_MASK: u64 = (1 << (64 - 2 * IDX_BITS)) - 1;
/// Most tasks one job may have. Counts and indices share 20 bits each of the state word;
/// the headroom takes the one failed claim per thread and job.
pub const MAX_TASKS: usize = 1 << (IDX_BITS - 1);

/// How long an idle worker spins before parking.
const SPIN: Duration = Duration::from_millis(3);

fn pack(epoch: u64, n: usize) -> u64 {
    (epoch << (2 * IDX_BITS)) | ((n as u64) << IDX_BITS)
}

fn unpack(v: u64) -> (u64, usize, usize) {
    (
        v >> (2 * IDX_BITS),
        ((v >> IDX_BITS) & IDX_MASK) as usize,
        (v & IDX_MASK) as usize,
    )
}

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    state: AtomicU64,
    /// The running job's closure; written only while no task of any job is outstanding.
    job: UnsafeCell<Job>,
    done: AtomicUsize,
    sleepers: AtomicUsize,
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written by the submitting thread only between jobs (all tasks done, see
// `Pool::run`) and read by a thread only while it holds an unfinished task of that job.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Pool {
    shared: Arc<Shared>,
    /// Serializes submitters; a nested or concurrent `run` runs inline instead.
    submit: Mutex<u64>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool of `threads` (the caller counts as one, so `threads - 1` workers are spawned).
    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            state: AtomicU64::new(pack(0, 0)),
            job: UnsafeCell::new(std::ptr::null::<fn(usize)>() as Job),
            done: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads.max(1))
            .filter_map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("tachyon-cpu-{i}"))
                    .spawn(move || worker(&s))
                    .ok()
            })
            .collect();
        Pool {
            shared,
            submit: Mutex::new(0),
            workers,
        }
    }

    /// Threads that run tasks, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Run `f(0..n)` across the pool and return when every call has returned.
    pub fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        // A single task, no workers, or the pool busy (another thread's job, or a task
        // submitting from inside one): run here.
        let mut epoch = match self.submit.try_lock() {
            Ok(g) if n > 1 && n <= MAX_TASKS && !self.workers.is_empty() => g,
            _ => return (0..n).for_each(f),
        };
        let s = &*self.shared;
        *epoch = (*epoch + 1) & EPOCH_MASK;
        // SAFETY: no task is outstanding (the previous `run` waited for all of them), so no
        // thread reads `job` now; the lifetime is erased because this function does not
        // return before every task that can read it has finished.
        unsafe { *s.job.get() = std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        s.done.store(0, SeqCst);
        s.state.store(pack(*epoch, n), SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.lock.lock();
            s.wake.notify_all();
        }
        claim_tasks(s);
        while s.done.load(Acquire) < n {
            spin_loop();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        {
            let _g = s.lock.lock();
            s.stop.store(true, SeqCst);
            s.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Claim and run tasks until the current job has none left.
fn claim_tasks(s: &Shared) -> u64 {
    loop {
        let (epoch, n, idx) = unpack(s.state.fetch_add(1, AcqRel));
        if idx >= n {
            return epoch;
        }
        // SAFETY: task `idx` of this job is claimed and unfinished, so the submitter is
        // still inside `run` and the closure alive.
        let f = unsafe { &**s.job.get() };
        f(idx);
        s.done.fetch_add(1, Release);
    }
}

fn worker(s: &Shared) {
    let mut seen = unpack(s.state.load(Acquire)).0;
    while !s.stop.load(Acquire) {
        // Wait for a new epoch: spin a while, then park.
        let t0 = Instant::now();
        let mut spins = 0u32;
        while unpack(s.state.load(Acquire)).0 == seen && !s.stop.load(Relaxed) {
            spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) && t0.elapsed() > SPIN {
                park(s, seen);
                break;
            }
        }
        seen = claim_tasks(s);
    }
}

/// Sleep until the epoch moves past `seen` or the pool stops.
fn park(s: &Shared, seen: u64) {
    let Ok(mut g) = s.lock.lock() else { return };
    s.sleepers.fetch_add(1, SeqCst);
    while !s.stop.load(SeqCst) && unpack(s.state.load(SeqCst)).0 == seen {
        g = match s.wake.wait(g) {
            Ok(g) => g,
            Err(_) => break,
        };
    }
    s.sleepers.fetch_sub(1, SeqCst);
}

/// The process-wide pool, sized by rayon's thread count (`--threads`) at first use.
pub fn global() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(rayon::current_num_threads()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_once_across_many_jobs() {
        let pool = Pool::new(3);
        for n in [1usize, 2, 3, 7, 64, 1000] {
            for _ in 0..200 {
                let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
                pool.run(n, &|i| {
                    hits[i].fetch_add(1, Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "n = {n}");
            }
        }
    }

    #[test]
    fn jobs_after_workers_park_still_run() {
        let pool = Pool::new(2);
        let sum = AtomicUsize::new(0);
        pool.run(10, &|i| {
            sum.fetch_add(i, Relaxed);
        });
        std::thread::sleep(SPIN * 3);
        pool.run(10, &|i| {
            sum.fetch_add(i, Relaxed);
        });
        assert_eq!(sum.load(Relaxed), 90);
    }

    #[test]
    fn nested_and_concurrent_submitters_run_inline() {
        let pool = Arc::new(Pool::new(2));
        let total = AtomicUsize::new(0);
        pool.run(4, &|_| {
            pool.run(3, &|_| {
                total.fetch_add(1, Relaxed);
            });
        });
        assert_eq!(total.load(Relaxed), 12);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let p = pool.clone();
                std::thread::spawn(move || {
                    let c = AtomicUsize::new(0);
                    for _ in 0..100 {
                        p.run(16, &|_| {
                            c.fetch_add(1, Relaxed);
                        });
                    }
                    c.load(Relaxed)
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap_or(0), 1600);
        }
    }
}
