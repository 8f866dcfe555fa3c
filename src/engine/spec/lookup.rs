//! Prompt lookup: proposals copied from earlier in the text, no model needed.

/// Prompt-lookup proposals: when the last `n` tokens of the text so far occurred earlier
/// in it, propose the tokens that followed that earlier occurrence. Code edits and agent
/// loops repeat their context, so this often proposes long, correct runs for free.
#[derive(Clone, Debug)]
pub struct PromptLookup {
    /// Longest n-gram tried first (longer matches predict better).
    pub max_ngram: usize,
    /// Shortest n-gram accepted.
    pub min_ngram: usize,
}

impl Default for PromptLookup {
    fn default() -> Self {
        PromptLookup {
            max_ngram: 4,
            min_ngram: 2,
        }
    }
}

impl PromptLookup {
    /// Up to `max` proposed tokens continuing `history` (empty when nothing matches). The
    /// most recent earlier occurrence of the longest matching n-gram wins.
    pub fn propose(&self, history: &[u32], max: usize, out: &mut Vec<u32>) {
        out.clear();
        if max == 0 {
            return;
        }
        let len = history.len();
        for n in (self.min_ngram.max(1)..=self.max_ngram).rev() {
            if n >= len {
                continue;
            }
            let key = &history[len - n..];
            // Occurrences ending before the key itself, latest first.
            let found = (0..len - n).rev().find(|&j| &history[j..j + n] == key);
            if let Some(j) = found {
                let from = j + n;
                let to = (from + max).min(len);
                out.extend_from_slice(&history[from..to]);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_proposes_what_followed_the_latest_match() {
        let l = PromptLookup::default();
        let mut out = Vec::new();
        // "1 2 3 4 5 ... 1 2 3" -> "4 5 ..."
        l.propose(&[1, 2, 3, 4, 5, 6, 7, 1, 2, 3], 3, &mut out);
        assert_eq!(out, [4, 5, 6]);
        // The latest earlier occurrence wins.
        l.propose(&[1, 2, 8, 9, 1, 2, 7, 1, 2], 2, &mut out);
        assert_eq!(out, [7, 1]);
        // A proposal stops at the end of the history.
        l.propose(&[5, 6, 5, 6], 8, &mut out);
        assert_eq!(out, [5, 6]);
        // No match, or a match shorter than min_ngram: nothing.
        l.propose(&[1, 2, 3, 4], 4, &mut out);
        assert!(out.is_empty());
        l.propose(&[7, 1, 2, 7], 4, &mut out);
        assert!(out.is_empty());
        l.propose(&[], 4, &mut out);
        assert!(out.is_empty());
    }
}
