//! How many tokens to propose per step: the length that follows the acceptance rate.

/// Proposal length that follows the running acceptance: grows by one after a step that
/// accepted everything, shrinks after steps that accepted little, within `[1, max]`.
#[derive(Clone, Debug)]
pub struct AdaptiveLength {
    pub max: usize,
    current: usize,
}

impl AdaptiveLength {
    pub fn new(max: usize) -> AdaptiveLength {
        AdaptiveLength {
            max: max.max(1),
            current: max.max(1),
        }
    }

    pub fn current(&self) -> usize {
        self.current
    }

    /// Record a step that proposed `proposed` tokens and kept `accepted`.
    pub fn update(&mut self, proposed: usize, accepted: usize) {
        if proposed == 0 {
            return;
        }
        if accepted == proposed {
            self.current = (self.current + 1).min(self.max);
        } else if accepted * 2 < proposed {
            self.current = (accepted + 1).max(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_length_tracks_acceptance() {
        let mut a = AdaptiveLength::new(6);
        assert_eq!(a.current(), 6);
        a.update(6, 1);
        assert_eq!(a.current(), 2);
        a.update(2, 2);
        assert_eq!(a.current(), 3);
        a.update(3, 2);
        assert_eq!(a.current(), 3);
        for _ in 0..10 {
            a.update(a.current(), a.current());
        }
        assert_eq!(a.current(), 6);
        a.update(6, 0);
        assert_eq!(a.current(), 1);
    }
}
