//! After a device fault. A GPU that faults (an illegal address, a failed launch, an
//! uncorrectable ECC error) fails every later call in its context, so the session that saw
//! the fault, and a draft model's on the same device, can run nothing more. The request that
//! hit the fault ends with its error; then the engine drops both sessions (the driver resets
//! a primary context once its last reference is released) and rebuilds them with a
//! [`Restart`], which uploads the weights again from the host copy. If that fails too, the
//! engine keeps a [`FailedSession`] in their place: every later request is refused at once
//! with what happened, and the server reports itself failed, so an orchestrator replaces
//! it instead of sending it traffic.

use super::session::{Pick, Rows, Session, StepInput, StepOutput};
use super::spec::Speculation;
use crate::backend::BackendError;

/// What a rebuilt engine runs: the target's session and the speculation (with the draft's
/// session) as they were first built.
pub struct Rebuilt {
    pub session: Box<dyn Session>,
    pub speculation: Option<Speculation>,
}

/// Builds the engine's sessions again on a fresh device context. Called on the engine's
/// thread after every handle on the faulted context was dropped.
pub type Restart = Box<dyn FnMut() -> Result<Rebuilt, String> + Send>;

/// Holds the place of a session that faulted: the same limits, no steps.
pub(crate) struct FailedSession {
    backend: &'static str,
    ctx: usize,
    max_batch: usize,
    vocab: usize,
    why: String,
}

impl FailedSession {
    /// Takes `old`'s limits (so requests are still checked as before) and drops it.
    pub(crate) fn replacing(old: &dyn Session, why: String) -> FailedSession {
        FailedSession {
            backend: old.backend_name(),
            ctx: old.ctx(),
            max_batch: old.max_batch(),
            vocab: old.vocab_size(),
            why,
        }
    }
}

impl Session for FailedSession {
    fn backend_name(&self) -> &'static str {
        self.backend
    }

    fn ctx(&self) -> usize {
        self.ctx
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn step(
        &mut self,
        _input: StepInput<'_>,
        _pick: Pick<'_>,
        _rows: Rows,
    ) -> Result<StepOutput, BackendError> {
        Err(BackendError::DeviceFault(self.why.clone()))
    }
}
