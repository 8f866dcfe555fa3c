//! Stop strings: generated text passes through here before it reaches a client. Text that
//! could be the start of a stop string is held back until the next token shows whether it
//! is one, so a stop string spanning several tokens never leaks, and the text before the
//! first match is exactly what a non-streamed response returns.

pub struct StopMatcher {
    stops: Vec<String>,
    /// Released-later text: a suffix that is a prefix of some stop string.
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would match everywhere).
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string has been found; nothing more comes out after that.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds newly decoded text; returns the text that can be released now.
    pub fn push(&mut self, text: &str) -> String {
        if self.stopped {
            return String::new();
        }
        if self.stops.is_empty() {
            return text.to_string();
        }
        self.held.push_str(text);
        // The earliest match wins; text from it on is dropped.
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.stopped = true;
            self.held.truncate(at);
            return std::mem::take(&mut self.held);
        }
        let keep = self.partial_suffix_len();
        let release = self.held.len() - keep;
        let rest = self.held.split_off(release);
        std::mem::replace(&mut self.held, rest)
    }

    /// The end of generation: what is still held was not a stop string after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of `held` (on a character boundary) that is a proper
    /// prefix of a stop string.
    fn partial_suffix_len(&self) -> usize {
        let h = &self.held;
        let longest = self.stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let from = h.len().saturating_sub(longest.saturating_sub(1));
        (from..h.len())
            .filter(|&i| h.is_char_boundary(i))
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&h[i..])))
            .map_or(0, |i| h.len() - i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out: Vec<String> = pieces.iter().map(|p| m.push(p)).collect();
        if !m.stopped() {
            out.push(m.finish());
        }
        (out, m.stopped())
    }

    #[test]
    fn stop_spanning_tokens_never_leaks() {
        let (out, stopped) = run(&["\n\ndef"], &["x = 1", "\n", "\nd", "ef", " f():"]);
        assert!(stopped);
        assert_eq!(out.concat(), "x = 1");
        // The newline was held back while it could start the stop string.
        assert_eq!(out[0], "x = 1");
        assert_eq!(out[1], "");
        assert_eq!(out[2], "");
    }

    #[test]
    fn partial_match_that_fails_is_released() {
        let (out, stopped) = run(&["STOP"], &["ab S", "TO", "x", " end"]);
        assert!(!stopped);
        assert_eq!(out[0], "ab ");
        assert_eq!(out[1], "");
        assert_eq!(out[2], "STOx");
        assert_eq!(out.concat(), "ab STOx end");
        // Held text that never completes comes out at the end.
        let (out, stopped) = run(&["STOP"], &["abc ST"]);
        assert!(!stopped);
        assert_eq!(out, vec!["abc ".to_string(), "ST".to_string()]);
    }

    #[test]
    fn earliest_of_several_stops_and_multibyte_text() {
        let (out, _) = run(&["b", "é!"], &["aé", "!b"]);
        assert_eq!(out.concat(), "a");
        let (out, stopped) = run(&["日本"], &["x日", "y日", "本z"]);
        assert!(stopped);
        assert_eq!(out.concat(), "x日y");
        assert!(
            out.iter()
                .all(|s| std::str::from_utf8(s.as_bytes()).is_ok())
        );
        // No stops: everything passes straight through.
        let (out, stopped) = run(&[], &["a", "b"]);
        assert_eq!((out.concat(), stopped), ("ab".to_string(), false));
        let (out, stopped) = run(&[""], &["a"]);
        assert_eq!((out.concat(), stopped), ("a".to_string(), false));
    }
}
