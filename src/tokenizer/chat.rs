//! Chat templates: a model's Jinja template turns a conversation into its prompt text.
//!
//! Templates come from model files, so they are sandboxed: there is no loader (an
//! `{% include %}` or `{% import %}` finds nothing), no filesystem or network access, a fuel
//! limit bounds the instructions one render may run, recursion is capped, and output past
//! `MAX_OUTPUT_BYTES` stops rendering with an error. Not bounded: memory of values built
//! inside the template without being output (a string doubled in a loop); MiniJinja has no
//! hook for that. Whitespace handling matches Hugging Face's
//! (`trim_blocks` and `lstrip_blocks` on), as do `raise_exception`, `strftime_now`,
//! `tojson` and the Python string/dict methods templates call (see `template_fns`).

use std::io;

use minijinja::value::Kwargs;
use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

use super::TokenizerError;
use super::template_fns;

/// Most text one render may produce.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// Instruction budget of one render: real templates spend well under a hundred instructions
/// per message, so this still covers conversations of thousands of turns, and it stops a
/// runaway loop within about a tenth of a second (a few seconds under a sanitizer on a busy
/// machine, where a budget ten times larger took over a minute).
pub const FUEL: u64 = 2_000_000;
/// Deepest macro / include nesting allowed.
pub const MAX_RECURSION: usize = 64;
/// Longest template source accepted.
pub const MAX_SOURCE_BYTES: usize = 1 << 20;

const NAME: &str = "chat_template";

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template with the model's BOS/EOS pieces.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`; syntax errors are reported here.
    pub fn new(
        source: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, TokenizerError> {
        if source.len() > MAX_SOURCE_BYTES {
            return Err(TokenizerError::Template(format!(
                "template is {} bytes (limit {MAX_SOURCE_BYTES})",
                source.len()
            )));
        }
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        // Runaway recursion must end in an error, not a stack overflow, even on small
        // thread stacks; real templates nest a few levels at most.
        env.set_recursion_limit(MAX_RECURSION);
        env.set_unknown_method_callback(template_fns::call_method);
        env.add_function("raise_exception", template_fns::raise_exception);
        env.add_function("strftime_now", template_fns::strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(template_error)?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends with the opening of
    /// the assistant's turn.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.render_ctx(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
    }

    /// Renders messages given as JSON objects (tool use: assistant `tool_calls`, `tool`
    /// results with `tool_call_id`) with the declared `tools` in the template's `tools`
    /// variable (left undefined when there are none, as templates test `if tools`).
    pub fn render_with_tools(
        &self,
        messages: &[serde_json::Value],
        tools: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let tools = (!tools.is_empty()).then_some(tools);
        self.render_ctx(context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
    }

    fn render_ctx(&self, ctx: Value) -> Result<String, TokenizerError> {
        let template = self.env.get_template(NAME).map_err(template_error)?;
        let mut out = LimitedWriter {
            buf: Vec::new(),
            exceeded: false,
        };
        match template.render_captured_to(ctx, &mut out) {
            Ok(_) => {}
            Err(_) if out.exceeded => {
                return Err(TokenizerError::Template(format!(
                    "output exceeds {MAX_OUTPUT_BYTES} bytes"
                )));
            }
            Err(e) => return Err(template_error(e)),
        }
        String::from_utf8(out.buf)
            .map_err(|_| TokenizerError::Template("output is not UTF-8".into()))
    }
}

fn template_error(e: Error) -> TokenizerError {
    let mut message = e.to_string();
    if e.kind() == ErrorKind::OutOfFuel {
        message = format!("rendering ran too long (fuel limit {FUEL}): {message}");
    }
    TokenizerError::Template(message)
}

/// Collects output and refuses to grow past `MAX_OUTPUT_BYTES`, which stops rendering.
struct LimitedWriter {
    buf: Vec<u8>,
    exceeded: bool,
}

impl io::Write for LimitedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > MAX_OUTPUT_BYTES {
            self.exceeded = true;
            return Err(io::Error::other("chat template output limit reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `tojson` as Hugging Face defines it: Python's `json.dumps(x, ensure_ascii=False)`
/// spacing (", " and ": ", or `indent`), no HTML escaping. `indent` may be given by name,
/// as templates with tool definitions do (`tojson(indent=4)`).
fn tojson(value: Value, indent: Option<usize>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match indent {
        Some(n) => Some(n),
        None => kwargs.get::<Option<usize>>("indent")?,
    };
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let result = match indent {
        Some(n) => {
            let pad = vec![b' '; n.min(16)];
            let mut ser = serde_json::Serializer::with_formatter(
                &mut out,
                serde_json::ser::PrettyFormatter::with_indent(&pad),
            );
            value.serialize(&mut ser)
        }
        None => {
            let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonJson);
            value.serialize(&mut ser)
        }
    };
    result.map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let text = String::from_utf8(out)
        .map_err(|_| Error::new(ErrorKind::InvalidOperation, "tojson: not UTF-8"))?;
    Ok(Value::from_safe_string(text))
}

/// Compact JSON with Python's default separators.
struct PythonJson;

impl serde_json::ser::Formatter for PythonJson {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}
