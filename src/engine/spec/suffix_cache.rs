//! Proposals from earlier requests: an index of the token streams (prompt and output) of
//! the recent requests, so a keystroke request whose prompt extends the previous one gets
//! the previous completion as its draft, and an agent loop that repeats an earlier answer
//! gets it back for free. Lossless like every proposer: the target verifies each token.
//!
//! The index is an n-gram table: for each n in [`NGRAMS`], the hash of every n tokens of a
//! stored stream maps to the latest place they occurred (the stream and the position after
//! them). A lookup hashes the last n tokens of the text so far, longest n first, checks the
//! stored tokens really match (hashes collide), and proposes what followed them. Memory is
//! bounded: past `cap_tokens` stored tokens the oldest streams are dropped with their
//! table entries, so the table never holds more than `NGRAMS.len()` entries per token.

use std::collections::{HashMap, VecDeque};

/// The n-gram lengths indexed, longest first (a longer match predicts better).
pub const NGRAMS: [usize; 3] = [8, 4, 2];

/// Default bound on stored tokens (streams of the recent requests, oldest dropped first).
pub const DEFAULT_CAP_TOKENS: usize = 1 << 18;

/// Bytes one stored token may cost at most: the token, and one table entry per n-gram
/// length (key, stream, position, and the hash map's own overhead, counted generously).
pub const BYTES_PER_TOKEN: usize = 4 + NGRAMS.len() * 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Place {
    stream: u64,
    /// Position in the stream just after the n-gram: where the proposal starts.
    end: u32,
}

#[derive(Debug)]
pub struct SuffixCache {
    /// Stored streams, oldest first; `streams[i]` has id `first_id + i`.
    streams: VecDeque<Vec<u32>>,
    first_id: u64,
    tokens: usize,
    cap_tokens: usize,
    table: HashMap<u64, Place>,
}

fn hash(ngram: &[u32]) -> u64 {
    // FNV-1a over the ids, then the length, so n-grams of different lengths never share
    // a key by construction.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &t in ngram {
        for b in t.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^ (ngram.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Default for SuffixCache {
    fn default() -> Self {
        SuffixCache::new(DEFAULT_CAP_TOKENS)
    }
}

impl SuffixCache {
    /// An empty index that keeps at most `cap_tokens` tokens of streams.
    pub fn new(cap_tokens: usize) -> SuffixCache {
        SuffixCache {
            streams: VecDeque::new(),
            first_id: 0,
            tokens: 0,
            cap_tokens: cap_tokens.max(1),
            table: HashMap::new(),
        }
    }

    /// Tokens stored now (at most the cap).
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Table entries now (at most `NGRAMS.len()` per stored token).
    pub fn entries(&self) -> usize {
        self.table.len()
    }

    /// The most memory the index may take, in bytes.
    pub fn max_bytes(&self) -> usize {
        self.cap_tokens.saturating_mul(BYTES_PER_TOKEN)
    }

    fn stream(&self, id: u64) -> Option<&[u32]> {
        let i = usize::try_from(id.checked_sub(self.first_id)?).ok()?;
        self.streams.get(i).map(Vec::as_slice)
    }

    /// Adds one request's stream (its prompt and what was generated). A stream longer than
    /// the cap keeps its last `cap_tokens` tokens.
    pub fn record(&mut self, stream: &[u32]) {
        let stream = &stream[stream.len().saturating_sub(self.cap_tokens)..];
        if stream.len() <= NGRAMS[NGRAMS.len() - 1] {
            return;
        }
        // The same stream again (a retried request) adds nothing.
        if self.streams.back().is_some_and(|s| s.as_slice() == stream) {
            return;
        }
        while self.tokens + stream.len() > self.cap_tokens {
            self.evict_oldest();
        }
        let id = self.first_id + self.streams.len() as u64;
        // Later positions overwrite earlier ones: the latest occurrence wins. An n-gram at
        // the very end has nothing after it and is not indexed.
        for &n in &NGRAMS {
            for end in n..stream.len() {
                self.table.insert(
                    hash(&stream[end - n..end]),
                    Place {
                        stream: id,
                        end: end as u32,
                    },
                );
            }
        }
        self.tokens += stream.len();
        self.streams.push_back(stream.to_vec());
    }

    fn evict_oldest(&mut self) {
        let Some(old) = self.streams.pop_front() else {
            return;
        };
        let id = self.first_id;
        self.first_id += 1;
        self.tokens -= old.len();
        for &n in &NGRAMS {
            for end in n..old.len() {
                let key = hash(&old[end - n..end]);
                if self.table.get(&key).is_some_and(|p| p.stream == id) {
                    self.table.remove(&key);
                }
            }
        }
    }

    /// Up to `max` tokens that followed the longest (at least `min_ngram` long) n-gram of
    /// [`NGRAMS`] ending `history`, into `out` (cleared first). Returns the matched length
    /// (0: nothing proposed).
    pub fn propose(
        &self,
        history: &[u32],
        max: usize,
        min_ngram: usize,
        out: &mut Vec<u32>,
    ) -> usize {
        out.clear();
        if max == 0 {
            return 0;
        }
        for &n in NGRAMS.iter().filter(|&&n| n >= min_ngram) {
            if history.len() < n {
                continue;
            }
            let key = &history[history.len() - n..];
            let Some(place) = self.table.get(&hash(key)) else {
                continue;
            };
            let Some(stream) = self.stream(place.stream) else {
                continue;
            };
            let end = place.end as usize;
            if end < n || end > stream.len() || &stream[end - n..end] != key {
                continue; // a hash collision
            }
            out.extend_from_slice(&stream[end..(end + max).min(stream.len())]);
            if !out.is_empty() {
                return n;
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposes_what_followed_in_an_earlier_stream() {
        let mut c = SuffixCache::new(1000);
        let mut out = Vec::new();
        assert_eq!(c.propose(&[1, 2, 3], 4, 2, &mut out), 0);
        // Request 1: prompt 10..=17, output 18..=25.
        let first: Vec<u32> = (10..26).collect();
        c.record(&first);
        // Request 2's prompt extends request 1's prompt by one token: its last 8 tokens
        // are 11..=18, which request 1 continued with 19, 20, ...
        let second: Vec<u32> = (10..19).collect();
        assert_eq!(c.propose(&second, 4, 2, &mut out), 8);
        assert_eq!(out, [19, 20, 21, 22]);
        // A short history matches a shorter n-gram; min_ngram bounds it.
        assert_eq!(c.propose(&[99, 14, 15], 3, 2, &mut out), 2);
        assert_eq!(out, [16, 17, 18]);
        assert_eq!(c.propose(&[99, 14, 15], 3, 4, &mut out), 0);
        assert!(out.is_empty());
        // Proposals stop at the stream's end; nothing follows the last token.
        assert_eq!(c.propose(&[23, 24], 8, 2, &mut out), 2);
        assert_eq!(out, [25]);
        assert_eq!(c.propose(&[24, 25], 8, 2, &mut out), 0);
        // The latest stream wins for a shared n-gram.
        c.record(&[7, 14, 15, 40, 41]);
        c.propose(&[14, 15], 2, 2, &mut out);
        assert_eq!(out, [40, 41]);
    }

    #[test]
    fn memory_stays_under_the_cap_and_old_streams_go() {
        let mut c = SuffixCache::new(64);
        let mut out = Vec::new();
        for r in 0..100u32 {
            let s: Vec<u32> = (0..20).map(|i| r * 1000 + i).collect();
            c.record(&s);
            assert!(c.tokens() <= 64, "{} tokens", c.tokens());
            assert!(c.entries() <= NGRAMS.len() * c.tokens());
        }
        // The newest streams answer, the evicted ones do not (and left no stale entries
        // that would point at a missing stream).
        assert_eq!(c.propose(&[99_000, 99_001], 2, 2, &mut out), 2);
        assert_eq!(out, [99_002, 99_003]);
        assert_eq!(c.propose(&[0, 1], 2, 2, &mut out), 0);
        // A stream longer than the cap keeps its end.
        let long: Vec<u32> = (0..500).collect();
        c.record(&long);
        assert_eq!(c.tokens(), 64);
        assert_eq!(c.propose(&[490, 491], 3, 2, &mut out), 2);
        assert_eq!(out, [492, 493, 494]);
        assert!(c.max_bytes() >= 64 * 4);
    }
}
