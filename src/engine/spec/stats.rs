//! What speculation did during one generation: verify and plain steps, proposed and kept
//! tokens per proposer, the kept histogram and the step trace (what a replayed bench takes).

use std::time::Duration;

use super::Source;

/// Counts of one generation with speculation.
#[derive(Clone, Debug, Default)]
pub struct SpecStats {
    /// Target forward passes over a proposal (K+1 positions).
    pub verify_steps: usize,
    /// Target forward passes of one token (nothing was proposed).
    pub plain_steps: usize,
    pub proposed: usize,
    pub accepted: usize,
    pub lookup_steps: usize,
    pub lookup_proposed: usize,
    pub lookup_accepted: usize,
    pub draft_steps: usize,
    pub draft_proposed: usize,
    pub draft_accepted: usize,
    /// `histogram[a]`: verify steps that kept `a` proposed tokens.
    pub histogram: Vec<usize>,
    /// Every target step in order as (proposed, kept); (0, 0) for a plain step. What a
    /// replayed benchmark takes.
    pub trace: Vec<(usize, usize)>,
    /// Time in the draft model and in the target's verify passes.
    pub draft_time: Duration,
    pub verify_time: Duration,
    /// Set when speculation was asked for but could not run, with the reason.
    pub off: Option<&'static str>,
}

impl SpecStats {
    pub(super) fn record(&mut self, source: Source, proposed: usize, accepted: usize) {
        self.trace.push((proposed, accepted));
        self.verify_steps += 1;
        self.proposed += proposed;
        self.accepted += accepted;
        let (steps, p, a) = match source {
            Source::Lookup => (
                &mut self.lookup_steps,
                &mut self.lookup_proposed,
                &mut self.lookup_accepted,
            ),
            Source::Draft => (
                &mut self.draft_steps,
                &mut self.draft_proposed,
                &mut self.draft_accepted,
            ),
        };
        *steps += 1;
        *p += proposed;
        *a += accepted;
        if self.histogram.len() <= accepted {
            self.histogram.resize(accepted + 1, 0);
        }
        self.histogram[accepted] += 1;
    }

    /// Proposed tokens the target kept, per verify step.
    pub fn mean_accepted(&self) -> f64 {
        if self.verify_steps == 0 {
            0.0
        } else {
            self.accepted as f64 / self.verify_steps as f64
        }
    }

    /// Tokens a verify step produces: the kept proposals plus the target's own token.
    pub fn tokens_per_verify(&self) -> f64 {
        if self.verify_steps == 0 {
            0.0
        } else {
            1.0 + self.mean_accepted()
        }
    }

    /// Share of proposed tokens kept.
    pub fn acceptance_rate(&self) -> f64 {
        if self.proposed == 0 {
            0.0
        } else {
            self.accepted as f64 / self.proposed as f64
        }
    }

    /// Target forward passes of any kind.
    pub fn target_steps(&self) -> usize {
        self.verify_steps + self.plain_steps
    }

    /// The counts as JSON (`--stats-json`, the server's metrics).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "off": self.off,
            "verify_steps": self.verify_steps,
            "plain_steps": self.plain_steps,
            "proposed": self.proposed,
            "accepted": self.accepted,
            "mean_accepted_per_verify": self.mean_accepted(),
            "tokens_per_verify": self.tokens_per_verify(),
            "acceptance_rate": self.acceptance_rate(),
            "accepted_histogram": self.histogram,
            "lookup": { "steps": self.lookup_steps, "proposed": self.lookup_proposed, "accepted": self.lookup_accepted },
            "draft": { "steps": self.draft_steps, "proposed": self.draft_proposed, "accepted": self.draft_accepted },
            "draft_seconds": self.draft_time.as_secs_f64(),
            "verify_seconds": self.verify_time.as_secs_f64(),
        })
    }

    /// One line for stderr.
    pub fn summary(&self) -> String {
        if let Some(why) = self.off {
            return format!("speculation off: {why}");
        }
        format!(
            "speculation: {} verify + {} plain steps | {:.2} of {:.2} proposed tokens kept per verify ({:.0}%) | {:.2} tokens per verify | kept histogram {:?}",
            self.verify_steps,
            self.plain_steps,
            self.mean_accepted(),
            if self.verify_steps == 0 {
                0.0
            } else {
                self.proposed as f64 / self.verify_steps as f64
            },
            100.0 * self.acceptance_rate(),
            self.tokens_per_verify(),
            self.histogram,
        )
    }
}
