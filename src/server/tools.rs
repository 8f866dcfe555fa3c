//! OpenAI tool use on chat requests: `tools`, `tool_choice`, `parallel_tool_calls`, and the
//! messages of a tool loop (assistant `tool_calls`, `role: "tool"` results), read into what
//! the chat template and the constraint need.

use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::fields::{self, Fields};
use crate::engine::constraint::{ConstraintSpec, Tag, ToolSchema};
use crate::tokenizer::ChatMessage;

/// Most tools one request may declare.
pub const MAX_TOOLS: usize = 128;

/// How the model may use the tools.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    /// Text or calls, the model decides; a call, once opened, is constrained.
    Auto,
    /// Text only; the tools are not shown to the model.
    None,
    /// At least one call, constrained from the first token.
    Required,
    /// A call of this function, constrained from the first token.
    Named(String),
}

/// The tools of a chat request.
#[derive(Clone, Debug, PartialEq)]
pub struct Tools {
    /// The declared functions as sent (`{"type": "function", "function": {...}}`), for the
    /// chat template.
    pub defs: Vec<Value>,
    pub schemas: Vec<ToolSchema>,
    pub choice: ToolChoice,
    pub parallel: bool,
}

impl Tools {
    pub fn take(f: &mut Fields) -> Result<Tools, ApiError> {
        let raw = f.take_value("tools");
        let choice = f.take_value("tool_choice");
        let parallel = f.take::<bool>("parallel_tool_calls", "true or false")?;
        let mut defs = Vec::new();
        let mut schemas = Vec::new();
        if let Some(raw) = raw {
            let Value::Array(items) = raw else {
                return Err(ApiError::invalid(
                    "tools",
                    "tools must be an array of tools",
                ));
            };
            if items.len() > MAX_TOOLS {
                return Err(ApiError::invalid(
                    "tools",
                    format!("at most {MAX_TOOLS} tools, got {}", items.len()),
                ));
            }
            for (i, t) in items.into_iter().enumerate() {
                let (def, schema) = tool(t, i)?;
                if schemas.iter().any(|s: &ToolSchema| s.name == schema.name) {
                    return Err(ApiError::invalid(
                        "tools",
                        format!(
                            "tools[{i}]: the function name {:?} is declared twice",
                            schema.name
                        ),
                    ));
                }
                defs.push(def);
                schemas.push(schema);
            }
        }
        let choice = match choice {
            None if schemas.is_empty() => ToolChoice::None,
            None => ToolChoice::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                _ => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        "tool_choice must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    ));
                }
            },
            Some(v) => {
                let m = fields::object(v, "tool_choice", "tool_choice", &["type", "function"])?;
                if fields::string(&m, "type", "tool_choice", "tool_choice")?.as_deref()
                    != Some("function")
                {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        "tool_choice.type must be \"function\"",
                    ));
                }
                let func = m.get("function").cloned().unwrap_or(Value::Null);
                let func = fields::object(func, "tool_choice", "tool_choice.function", &["name"])?;
                let name = fields::string(&func, "name", "tool_choice", "tool_choice.function")?
                    .ok_or_else(|| {
                        ApiError::invalid("tool_choice", "tool_choice.function.name is required")
                    })?;
                if !schemas.iter().any(|s| s.name == name) {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        format!("tool_choice names {name:?}, which is not among the tools"),
                    ));
                }
                ToolChoice::Named(name)
            }
        };
        if schemas.is_empty() && matches!(choice, ToolChoice::Required | ToolChoice::Named(_)) {
            return Err(ApiError::invalid(
                "tool_choice",
                "tool_choice asks for a tool call but no tools are given",
            ));
        }
        Ok(Tools {
            defs,
            schemas,
            choice,
            parallel: parallel.unwrap_or(true),
        })
    }

    /// Whether the output may contain tool calls (tools given and the choice is not "none").
    pub fn constrains(&self) -> bool {
        !self.schemas.is_empty() && self.choice != ToolChoice::None
    }

    /// The tools the chat template shows the model (none with `tool_choice: "none"`).
    pub fn template_tools(&self) -> &[Value] {
        if self.constrains() { &self.defs } else { &[] }
    }

    /// The constraint of the calls, with the model's tool-call tags.
    pub fn spec(&self, open: Tag, close: Tag) -> Option<ConstraintSpec> {
        if !self.constrains() {
            return None;
        }
        let (tools, lazy) = match &self.choice {
            ToolChoice::Named(n) => (
                self.schemas
                    .iter()
                    .filter(|s| &s.name == n)
                    .cloned()
                    .collect(),
                false,
            ),
            ToolChoice::Required => (self.schemas.clone(), false),
            _ => (self.schemas.clone(), true),
        };
        Some(ConstraintSpec::ToolCalls {
            tools,
            // A named function is called once.
            parallel: self.parallel && !matches!(self.choice, ToolChoice::Named(_)),
            open,
            close,
            lazy,
        })
    }
}

/// One `tools[i]`: `{"type": "function", "function": {"name", "description", "parameters",
/// "strict"}}`.
fn tool(v: Value, i: usize) -> Result<(Value, ToolSchema), ApiError> {
    let what = format!("tools[{i}]");
    let m = fields::object(v, "tools", &what, &["type", "function"])?;
    if fields::string(&m, "type", "tools", &what)?.as_deref() != Some("function") {
        return Err(ApiError::invalid(
            "tools",
            format!("{what}.type must be \"function\""),
        ));
    }
    let func = m
        .get("function")
        .cloned()
        .ok_or_else(|| ApiError::invalid("tools", format!("{what}.function is required")))?;
    let fwhat = format!("{what}.function");
    let f = fields::object(
        func,
        "tools",
        &fwhat,
        &["name", "description", "parameters", "strict"],
    )?;
    let name = fields::string(&f, "name", "tools", &fwhat)?
        .ok_or_else(|| ApiError::invalid("tools", format!("{fwhat}.name is required")))?;
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ApiError::invalid(
            "tools",
            format!("{fwhat}.name must be 1-64 letters, digits, '_' or '-'"),
        ));
    }
    fields::string(&f, "description", "tools", &fwhat)?;
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Err(ApiError::invalid(
                "tools",
                format!("{fwhat}.parameters must be a JSON schema object"),
            ));
        }
    };
    let mut def = Map::new();
    def.insert("type".into(), json!("function"));
    def.insert("function".into(), Value::Object(f));
    Ok((Value::Object(def), ToolSchema { name, parameters }))
}

/// One chat message: the plain (role, text) form and the template's form.
pub fn message(v: Value, i: usize) -> Result<(ChatMessage, Value), ApiError> {
    const P: &str = "messages";
    let what = format!("messages[{i}]");
    let m = fields::object(
        v,
        P,
        &what,
        &["role", "content", "name", "tool_calls", "tool_call_id"],
    )?;
    let role = fields::string(&m, "role", P, &what)?
        .ok_or_else(|| ApiError::invalid(P, format!("{what}.role is required")))?;
    if !matches!(
        role.as_str(),
        "system" | "developer" | "user" | "assistant" | "tool"
    ) {
        return Err(ApiError::invalid(
            P,
            format!("{what}.role must be system, developer, user, assistant or tool"),
        ));
    }
    let content = match m.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut s = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => s.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            P,
                            format!(
                                "content part type {:?} is not supported (text only)",
                                kind.unwrap_or("(none)")
                            ),
                        ));
                    }
                }
            }
            s
        }
        Some(_) => {
            return Err(ApiError::invalid(
                P,
                format!("{what}.content must be a string or an array of text parts"),
            ));
        }
    };
    let name = fields::string(&m, "name", P, &what)?;
    let tool_call_id = fields::string(&m, "tool_call_id", P, &what)?;
    if role == "tool" && tool_call_id.is_none() {
        return Err(ApiError::invalid(
            P,
            format!("{what}: a tool message needs tool_call_id"),
        ));
    }
    if role != "tool" && tool_call_id.is_some() {
        return Err(ApiError::invalid(
            P,
            format!("{what}.tool_call_id belongs on tool messages"),
        ));
    }
    let mut tmpl = Map::new();
    tmpl.insert("role".into(), json!(role));
    tmpl.insert("content".into(), json!(content));
    if let Some(n) = &name {
        tmpl.insert("name".into(), json!(n));
    }
    if let Some(id) = &tool_call_id {
        tmpl.insert("tool_call_id".into(), json!(id));
    }
    match m.get("tool_calls") {
        None | Some(Value::Null) => {}
        Some(Value::Array(calls)) if role == "assistant" => {
            let mut out = Vec::with_capacity(calls.len());
            for (j, c) in calls.iter().enumerate() {
                out.push(past_call(c, &format!("{what}.tool_calls[{j}]"))?);
            }
            tmpl.insert("tool_calls".into(), Value::Array(out));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                P,
                format!("{what}.tool_calls must be an array, on assistant messages"),
            ));
        }
    }
    Ok((ChatMessage { role, content }, Value::Object(tmpl)))
}

/// A call the assistant made earlier, for the template: `arguments` parsed from its JSON
/// string into an object (templates write it with `tojson`).
fn past_call(c: &Value, what: &str) -> Result<Value, ApiError> {
    const P: &str = "messages";
    let m = fields::object(c.clone(), P, what, &["id", "type", "function"])?;
    let func = m.get("function").cloned().unwrap_or(Value::Null);
    let fwhat = format!("{what}.function");
    let f = fields::object(func, P, &fwhat, &["name", "arguments"])?;
    let name = fields::string(&f, "name", P, &fwhat)?
        .ok_or_else(|| ApiError::invalid(P, format!("{fwhat}.name is required")))?;
    let args = match f.get("arguments") {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(s)) => serde_json::from_str(s)
            .map_err(|_| ApiError::invalid(P, format!("{fwhat}.arguments is not valid JSON")))?,
        Some(_) => {
            return Err(ApiError::invalid(
                P,
                format!("{fwhat}.arguments must be a JSON string"),
            ));
        }
    };
    Ok(json!({
        "id": m.get("id").cloned().unwrap_or(Value::Null),
        "type": "function",
        "function": {"name": name, "arguments": args},
    }))
}
