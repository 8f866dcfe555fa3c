//! BPE merges for a SentencePiece vocabulary, derived from the pieces and their scores.
//!
//! SentencePiece's BPE repeatedly joins the adjacent pair whose joined text is the
//! highest-scoring piece in the vocabulary. A BPE model with one merge `(left, right)` for
//! every way of cutting a piece into two other pieces, ranked by the joined piece's score,
//! makes the same choices, which lets us reuse the `tokenizers` crate's BPE.

use std::collections::HashMap;

/// Merges for `pieces` in rank order. `mergeable[i]` says whether piece `i` may be built by
/// merging (and used as a half of a merge); control and byte tokens are not.
pub fn derive(pieces: &[String], scores: &[f32], mergeable: &[bool]) -> Vec<(String, String)> {
    let lookup: HashMap<&str, usize> = pieces
        .iter()
        .enumerate()
        .filter(|(i, _)| mergeable.get(*i).copied().unwrap_or(false))
        .map(|(i, p)| (p.as_str(), i))
        .collect();
    // (score, id of the joined piece, cut position, left, right)
    let mut found: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    for (&piece, &id) in &lookup {
        for (cut, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(cut);
            if lookup.contains_key(left) && lookup.contains_key(right) {
                let score = scores.get(id).copied().unwrap_or(0.0);
                found.push((score, id, cut, left, right));
            }
        }
    }
    // Highest score first; ties by id, then by cut, so the order does not depend on hashing.
    found.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    found
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_string(), r.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_joined_scores() {
        let pieces: Vec<String> = ["a", "b", "c", "ab", "bc", "abc", "<s>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [-1.0, -1.0, -1.0, -3.0, -2.0, -4.0, 0.0];
        let mergeable = [true, true, true, true, true, true, false];
        let m = derive(&pieces, &scores, &mergeable);
        let m: Vec<(&str, &str)> = m.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        assert_eq!(m, vec![("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]);
    }
}
