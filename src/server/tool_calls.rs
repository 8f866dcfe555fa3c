//! The model's tool-call syntax (Hermes / Qwen2.5: `<tool_call>\n{"name": ..., "arguments":
//! {...}}\n</tool_call>`) parsed back into OpenAI's `tool_calls`, whole or as a stream.
//! Both paths cut the text at the same places, so streamed calls assemble to the
//! non-streamed ones.

use serde_json::{Value, json};

pub const OPEN: &str = "<tool_call>";
pub const CLOSE: &str = "</tool_call>";

/// One parsed call.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments object as a JSON string.
    pub arguments: String,
}

impl ToolCall {
    pub fn to_value(&self) -> Value {
        json!({"id": self.id, "type": "function",
               "function": {"name": self.name, "arguments": self.arguments}})
    }
}

/// The call between the tags, if it is `{"name": string, "arguments": object}`. The
/// arguments keep the model's own text when it wrote them as an object in place, else
/// they are re-serialized.
fn parse_call(inner: &str, id: String) -> Option<ToolCall> {
    let v: Value = serde_json::from_str(inner.trim()).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let args = v.get("arguments")?;
    if !args.is_object() {
        return None;
    }
    let arguments = serde_json::to_string(args).ok()?;
    Some(ToolCall {
        id,
        name,
        arguments,
    })
}

fn call_id(base: &str, index: usize) -> String {
    format!("call_{base}_{index}")
}

/// Splits a whole output into its text and its calls. Text after the first call is
/// dropped (the constraint allows none); a block that does not parse stays text.
pub fn parse(text: &str, id_base: &str) -> (String, Vec<ToolCall>) {
    let Some(first) = text.find(OPEN) else {
        return (text.to_string(), Vec::new());
    };
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find(CLOSE) else { break };
        match parse_call(&after[..end], call_id(id_base, calls.len())) {
            Some(c) => calls.push(c),
            None => return (text.to_string(), Vec::new()),
        }
        rest = &after[end + CLOSE.len()..];
    }
    if calls.is_empty() {
        return (text.to_string(), Vec::new());
    }
    (text[..first].trim_end().to_string(), calls)
}

/// What a streamed piece of output becomes.
#[derive(Debug, PartialEq)]
pub enum Piece {
    Text(String),
    Call(usize, ToolCall),
}

/// Incremental [`parse`]: text flows out until an opening tag may be starting (a partial
/// tag is held back); a call comes out whole once its closing tag arrives.
pub struct CallStream {
    id_base: String,
    buf: String,
    in_calls: bool,
    calls: usize,
    /// Whitespace held back before a possible tag (the whole parse trims it).
    pending_ws: String,
}

impl CallStream {
    pub fn new(id_base: &str) -> CallStream {
        CallStream {
            id_base: id_base.to_string(),
            buf: String::new(),
            in_calls: false,
            calls: 0,
            pending_ws: String::new(),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Feeds released text; returns what can be sent now.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            if !self.in_calls {
                if let Some(i) = self.buf.find(OPEN) {
                    let before: String = self.buf[..i].to_string();
                    let mut t = std::mem::take(&mut self.pending_ws);
                    t.push_str(&before);
                    let t = t.trim_end().to_string();
                    if !t.is_empty() {
                        out.push(Piece::Text(t));
                    }
                    self.buf.drain(..i);
                    self.in_calls = true;
                    continue;
                }
                // Hold back a suffix that may start the tag, and trailing whitespace.
                let keep = (1..OPEN.len())
                    .rev()
                    .find(|&k| {
                        self.buf.len() >= k
                            && self.buf.is_char_boundary(self.buf.len() - k)
                            && OPEN.starts_with(&self.buf[self.buf.len() - k..])
                    })
                    .unwrap_or(0);
                let cut = self.buf.len() - keep;
                // Trailing whitespace waits (with any held before it): a call after it
                // would trim it away. Whitespace alone releases nothing.
                let mut t = std::mem::take(&mut self.pending_ws);
                t.push_str(&self.buf[..cut]);
                let ws_start = t.trim_end().len();
                self.pending_ws = t[ws_start..].to_string();
                t.truncate(ws_start);
                if !t.is_empty() {
                    out.push(Piece::Text(t));
                }
                self.buf.drain(..cut);
                return out;
            }
            // In calls: one whole block at a time.
            let Some(start) = self.buf.find(OPEN) else {
                return out;
            };
            let after = start + OPEN.len();
            let Some(end) = self.buf[after..].find(CLOSE) else {
                return out;
            };
            let inner = self.buf[after..after + end].to_string();
            if let Some(c) = parse_call(&inner, call_id(&self.id_base, self.calls)) {
                out.push(Piece::Call(self.calls, c));
                self.calls += 1;
            }
            self.buf.drain(..after + end + CLOSE.len());
        }
    }

    /// The end of the output: held-back text (not a call after all) comes out.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        if !self.in_calls {
            let mut t = std::mem::take(&mut self.pending_ws);
            t.push_str(&std::mem::take(&mut self.buf));
            if !t.is_empty() && self.calls == 0 {
                out.push(Piece::Text(t));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "Let me see.\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";

    #[test]
    fn whole_output_parses_into_calls() {
        let (text, calls) = parse(OUT, "x");
        assert_eq!(text, "Let me see.");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "add");
        assert_eq!(calls[0].arguments, r#"{"a":1,"b":2}"#);
        assert_eq!(calls[1].id, "call_x_1");
        let (text, calls) = parse("plain <tool_ text", "x");
        assert_eq!((text.as_str(), calls.len()), ("plain <tool_ text", 0));
        let (_, calls) = parse("<tool_call>\n{\"name\": 5}\n</tool_call>", "x");
        assert!(calls.is_empty());
    }

    #[test]
    fn streaming_in_any_pieces_gives_the_same_calls_and_text() {
        let (text, calls) = parse(OUT, "x");
        for step in [1, 2, 3, 5, 7, 64] {
            let mut s = CallStream::new("x");
            let mut pieces = Vec::new();
            let chars: Vec<char> = OUT.chars().collect();
            for chunk in chars.chunks(step) {
                pieces.extend(s.push(&chunk.iter().collect::<String>()));
            }
            pieces.extend(s.finish());
            let mut got_text = String::new();
            let mut got_calls = Vec::new();
            for p in pieces {
                match p {
                    Piece::Text(t) => got_text.push_str(&t),
                    Piece::Call(_, c) => got_calls.push(c),
                }
            }
            assert_eq!(got_text, text, "step {step}");
            assert_eq!(got_calls, calls, "step {step}");
        }
        let mut s = CallStream::new("x");
        let mut t = String::new();
        for p in s.push("no calls <tool here").into_iter().chain(s.finish()) {
            if let Piece::Text(x) = p {
                t.push_str(&x);
            }
        }
        assert_eq!(t, "no calls <tool here");
    }
}
