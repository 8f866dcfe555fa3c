//! How the command line prints an error: the message and each cause once.
//!
//! `{:#}` on an `anyhow::Error` prints every cause after a colon. An error whose message
//! already quotes its source (`"{path}: {source}"` with a `#[source]` field, common with
//! `std::io::Error`) then shows that source twice. This printer skips a cause whose text
//! the line already holds.

/// The error and its causes on one line, each cause's text once.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("binding {addr}: {source}")]
    struct Quoting {
        addr: String,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_the_message_quotes_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let e = anyhow::Error::from(Quoting {
            addr: "127.0.0.1:80".into(),
            source: io,
        });
        assert_eq!(
            format!("{e:#}").matches("Address already in use").count(),
            2
        );
        let line = one_line(&e);
        assert_eq!(line, "binding 127.0.0.1:80: Address already in use");
    }

    #[test]
    fn distinct_causes_are_all_printed() {
        let e = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(one_line(&e), "outer: middle: inner");
    }
}
