//! A request's constraint as the mask of a session's masked pick (`Pick::Masked`): the
//! session asks for the mask once it has queued the step's forward pass, so on a GPU the
//! matcher's work runs while the forward pass does. A matcher error is kept here for the
//! engine, which returns it in place of the session's "no mask" error.

use super::{Constraint, ConstraintError};
use crate::engine::session::{MaskUnavailable, StepMask};

pub struct ConstraintMask<'c> {
    constraint: &'c mut Constraint,
    error: Option<ConstraintError>,
}

impl<'c> ConstraintMask<'c> {
    pub fn new(constraint: &'c mut Constraint) -> ConstraintMask<'c> {
        ConstraintMask {
            constraint,
            error: None,
        }
    }

    /// Why the mask could not be computed, if it could not.
    pub fn take_error(&mut self) -> Option<ConstraintError> {
        self.error.take()
    }
}

impl StepMask for ConstraintMask<'_> {
    fn allowed(&mut self) -> Result<Option<&[u32]>, MaskUnavailable> {
        match self.constraint.compute_mask() {
            Ok(mask) => Ok(mask),
            Err(e) => {
                self.error = Some(e);
                Err(MaskUnavailable)
            }
        }
    }
}
