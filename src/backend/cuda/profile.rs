//! Counting and timing the kernels of one decode step, for `tachyon bench --profile`: one GPU
//! run then says how many kernels a token launches, how many nodes its graph has, and where
//! its time goes, kernel by kernel.
//!
//! Every launch goes through `launch::launch`, which asks the device's [`KernelTally`]
//! whether it is recording (one relaxed atomic load when it is not: the decode path pays
//! nothing). While recording, each launch is noted by kernel name and, for a timed run,
//! bracketed by two events. The timed run is an eager run of the step: events inside a
//! graph would become nodes of it, and an eager step is what the graph replays, launch for
//! launch, less the launch overhead the graph removes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use cudarc::driver::{CudaEvent, CudaStream, DriverError, sys};

use crate::backend::{BackendError, KernelTime};

/// One launch while recording: its kernel, and the events around it when timed.
#[derive(Debug)]
struct Launch {
    name: &'static str,
    /// Launched with programmatic dependent launch (`launch::queue`).
    programmatic: bool,
    events: Option<(CudaEvent, CudaEvent)>,
}

/// The launches of the device while a profile records them (see the module comment).
#[derive(Debug, Default)]
pub(crate) struct KernelTally {
    on: AtomicBool,
    timed: AtomicBool,
    log: Mutex<Vec<Launch>>,
}

impl KernelTally {
    /// Starts recording every launch; `timed`: with events around each.
    pub(crate) fn start(&self, timed: bool) {
        if let Ok(mut log) = self.log.lock() {
            log.clear();
        }
        self.timed.store(timed, Ordering::Relaxed);
        self.on.store(true, Ordering::Release);
    }

    /// Runs `launch` (which queues one kernel named `name` on `stream`, `programmatic`: with
    /// programmatic dependent launch), noting it when recording.
    pub(crate) fn launched(
        &self,
        stream: &CudaStream,
        name: &'static str,
        programmatic: bool,
        launch: impl FnOnce() -> Result<(), DriverError>,
    ) -> Result<(), DriverError> {
        if !self.on.load(Ordering::Acquire) {
            return launch();
        }
        let events = if self.timed.load(Ordering::Relaxed) {
            let ctx = stream.context();
            let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
            let (start, end) = (ctx.new_event(flags)?, ctx.new_event(flags)?);
            start.record(stream)?;
            launch()?;
            end.record(stream)?;
            Some((start, end))
        } else {
            launch()?;
            None
        };
        if let Ok(mut log) = self.log.lock() {
            log.push(Launch {
                name,
                programmatic,
                events,
            });
        }
        Ok(())
    }

    /// Stops recording; the launches since [`KernelTally::start`], per kernel in the order
    /// each first ran. Call after the stream synchronized (the events must have completed).
    pub(crate) fn finish(&self) -> Result<Vec<KernelTime>, BackendError> {
        self.on.store(false, Ordering::Release);
        let log = match self.log.lock() {
            Ok(mut log) => std::mem::take(&mut *log),
            Err(_) => return Err(BackendError::Device("kernel tally poisoned".into())),
        };
        let mut out: Vec<KernelTime> = Vec::new();
        for l in log {
            let micros = match &l.events {
                Some((start, end)) => {
                    let ms = start.elapsed_ms(end).map_err(|e| {
                        BackendError::Device(format!("CUDA: timing kernel {}: {e}", l.name))
                    })?;
                    f64::from(ms) * 1e3
                }
                None => 0.0,
            };
            match out.iter_mut().find(|k| k.name == l.name) {
                Some(k) => {
                    k.launches += 1;
                    k.programmatic += usize::from(l.programmatic);
                    k.micros += micros;
                }
                None => out.push(KernelTime {
                    name: l.name,
                    launches: 1,
                    programmatic: usize::from(l.programmatic),
                    micros,
                }),
            }
        }
        Ok(out)
    }
}
