//! What a request constrains its output to, and its translation into an llguidance grammar.

use llguidance::api::TopLevelGrammar;
use serde_json::{Value, json};

use super::{ConstraintError, ConstraintLimits};

/// One declared function of a tool call: its name and the JSON schema of its arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSchema {
    pub name: String,
    /// `{"type": "object", ...}`; a function without parameters takes `{}`.
    pub parameters: Value,
}

/// The shape a request's output must have.
#[derive(Clone, Debug, PartialEq)]
pub enum ConstraintSpec {
    /// Any JSON object.
    JsonObject,
    /// JSON matching `schema`. `strict`: a schema keyword the engine cannot enforce is an
    /// error; otherwise such keywords are ignored (the rest is still enforced).
    JsonSchema { schema: Value, strict: bool },
    /// A Lark-style grammar (llguidance's dialect: `start: ...`, regex terminals, `%json`).
    Lark(String),
    /// A regular expression (Rust `regex` syntax) the whole output must match.
    Regex(String),
    /// Tool calls in the Hermes / Qwen2.5 syntax: `open` + `{"name": ..., "arguments":
    /// {...}}` + `close`, one or (with `parallel`) several separated by newlines, with
    /// `name` one of `tools` and `arguments` matching that tool's schema.
    ToolCalls {
        tools: Vec<ToolSchema>,
        parallel: bool,
        /// The opening and closing tags: a single token id (`<[id]>` in the grammar, what
        /// the model was trained to emit) or text.
        open: Tag,
        close: Tag,
        /// `true` ("auto"): the output is free until the model emits the opening tag as
        /// its single token, and constrained from there; `false` ("required" / a named
        /// function): constrained from the first token.
        lazy: bool,
    },
}

/// A delimiter of a tool call.
#[derive(Clone, Debug, PartialEq)]
pub enum Tag {
    Token(u32),
    Text(String),
}

impl Tag {
    fn lark(&self) -> String {
        match self {
            Tag::Token(id) => format!("<[{id}]>"),
            Tag::Text(s) => lark_string(s),
        }
    }
}

/// A compiled-to-be grammar and, for lazy constraints, the token that switches it on.
pub(super) struct Grammar {
    pub grammar: TopLevelGrammar,
    pub trigger: Option<u32>,
}

impl ConstraintSpec {
    /// The llguidance grammar of this spec, within the size and nesting limits.
    pub(super) fn to_grammar(&self, limits: &ConstraintLimits) -> Result<Grammar, ConstraintError> {
        let max_bytes = limits.max_source_bytes;
        let check = |what: &'static str, bytes: usize| {
            if bytes > max_bytes {
                Err(ConstraintError::TooLarge {
                    what,
                    bytes,
                    limit: max_bytes,
                })
            } else {
                Ok(())
            }
        };
        let nesting = |what: &str, depth: usize| {
            if depth > limits.max_nesting {
                Err(ConstraintError::Compile(format!(
                    "the {what} nests deeper than {} levels",
                    limits.max_nesting
                )))
            } else {
                Ok(())
            }
        };
        let plain = |grammar| Grammar {
            grammar,
            trigger: None,
        };
        Ok(match self {
            ConstraintSpec::JsonObject => plain(TopLevelGrammar::from_json_schema(with_options(
                json!({"type": "object"}),
                false,
            )?)),
            ConstraintSpec::JsonSchema { schema, strict } => {
                check("JSON schema", json_len(schema))?;
                nesting("JSON schema", json_depth(schema))?;
                plain(TopLevelGrammar::from_json_schema(with_options(
                    schema.clone(),
                    *strict,
                )?))
            }
            ConstraintSpec::Lark(src) => {
                check("grammar", src.len())?;
                nesting("grammar", bracket_depth(src))?;
                plain(TopLevelGrammar::from_lark(src.clone()))
            }
            ConstraintSpec::Regex(rx) => {
                check("regex", rx.len())?;
                // llguidance rewrites the regex into its own syntax; check it parses as Rust
                // regex syntax first so a malformed one is reported as such.
                nesting("regex", bracket_depth(rx))?;
                regex_syntax::ParserBuilder::new()
                    .nest_limit(limits.max_nesting as u32)
                    .build()
                    .parse(rx)
                    .map_err(|e| ConstraintError::Compile(format!("invalid regex: {e}")))?;
                plain(TopLevelGrammar::from_regex(rx))
            }
            ConstraintSpec::ToolCalls {
                tools,
                parallel,
                open,
                close,
                lazy,
            } => {
                let bytes: usize = tools
                    .iter()
                    .map(|t| t.name.len() + json_len(&t.parameters))
                    .sum();
                check("tool definitions", bytes)?;
                for t in tools {
                    nesting("tool parameters schema", json_depth(&t.parameters))?;
                }
                let lark = tool_grammar(tools, *parallel, open, close, *lazy)?;
                let trigger = match (lazy, open) {
                    (true, Tag::Token(id)) => Some(*id),
                    (true, Tag::Text(_)) => {
                        return Err(ConstraintError::Compile(
                            "tool_choice \"auto\" needs the tool-call tag as one token".into(),
                        ));
                    }
                    (false, _) => None,
                };
                Grammar {
                    grammar: TopLevelGrammar::from_lark(lark),
                    trigger,
                }
            }
        })
    }
}

/// Levels of arrays and objects in `v` (a scalar is 0). Iterative: `v` may be deep.
fn json_depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        deepest = deepest.max(d);
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            Value::Object(m) => stack.extend(m.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    deepest
}

/// Deepest nesting of `(`, `[` and `{` in a grammar or regex text (quotes and escapes are
/// not interpreted: an over-estimate at worst).
fn bracket_depth(s: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for b in s.bytes() {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn json_len(v: &Value) -> usize {
    serde_json::to_string(v).map_or(usize::MAX, |s| s.len())
}

/// llguidance's JSON compile options: JSON on one line with `, ` and `: ` as separators,
/// the layout of Python's `json.dumps` (and of the tool calls in Qwen2.5's chat template),
/// and schema keywords the engine cannot enforce ignored when `lenient`. Free whitespace
/// would let a model pretty-print (a newline and indentation before every key spends the
/// token budget on layout, and blank lines can run on forever); separators without their
/// space push a model trained on spaced JSON to put the space inside the next string
/// (`"country":" Nigeria"`).
fn json_options(lenient: bool) -> Value {
    json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
        "lenient": lenient,
    })
}

/// The schema with [`json_options`] (unenforceable keywords an error only when `strict`).
fn with_options(mut schema: Value, strict: bool) -> Result<Value, ConstraintError> {
    match &mut schema {
        Value::Object(map) => {
            if map.contains_key("x-guidance") {
                return Err(ConstraintError::Compile(
                    "the schema may not carry engine options (\"x-guidance\")".into(),
                ));
            }
            map.insert("x-guidance".into(), json_options(!strict));
            Ok(schema)
        }
        // `true` accepts any JSON value, `false` none: both are valid schemas.
        Value::Bool(_) => Ok(schema),
        _ => Err(ConstraintError::Compile(
            "a JSON schema is an object (or true / false)".into(),
        )),
    }
}

/// The Lark grammar of tool calls: each call is `open "\n"? {"name": N, "arguments": A}
/// "\n"? close`, the object constrained by a schema that ties each name to its arguments.
/// Lazy grammars start after the opening tag (the trigger has been emitted already).
fn tool_grammar(
    tools: &[ToolSchema],
    parallel: bool,
    open: &Tag,
    close: &Tag,
    lazy: bool,
) -> Result<String, ConstraintError> {
    if tools.is_empty() {
        return Err(ConstraintError::Compile("no tools to call".into()));
    }
    let variants: Vec<Value> = tools
        .iter()
        .map(|t| {
            json!({
                "type": "object",
                "properties": {
                    "name": {"const": t.name},
                    "arguments": t.parameters,
                },
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    let mut schema = if variants.len() == 1 {
        variants.into_iter().next().unwrap_or(Value::Null)
    } else {
        json!({"anyOf": variants})
    };
    if let Value::Object(map) = &mut schema {
        map.insert("x-guidance".into(), json_options(true));
    }
    let schema = serde_json::to_string(&schema)
        .map_err(|e| ConstraintError::Compile(format!("tool schema: {e}")))?;
    let (open, close) = (open.lark(), close.lark());
    let rest = if parallel {
        format!("(\"\\n\"? {open} call_body)*")
    } else {
        String::new()
    };
    let start = if lazy {
        format!("start: call_body {rest}")
    } else {
        format!("start: {open} call_body {rest}")
    };
    Ok(format!(
        "{start}\ncall_body: \"\\n\"? args \"\\n\"? {close}\nargs: %json {schema}\n"
    ))
}

/// `s` as a Lark string literal.
fn lark_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}
