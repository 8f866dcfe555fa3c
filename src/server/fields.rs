//! Reading a request body field by field, so every error names the field and says what it
//! must be (never a Rust type), and no field is accepted and ignored: a field outside the
//! endpoint's list is a 400 naming it.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::error::ApiError;

/// Fields other servers' clients send that change nothing about a generation, accepted and
/// not used: `model` (one model is served whatever the name), `user` and `metadata`
/// (caller bookkeeping).
pub const HARMLESS: [&str; 3] = ["model", "user", "metadata"];

/// OpenAI fields tachyon knows and does not implement: named as such in the 400.
const NOT_IMPLEMENTED: [&str; 14] = [
    "functions",
    "function_call",
    "audio",
    "modalities",
    "prediction",
    "service_tier",
    "store",
    "reasoning_effort",
    "web_search_options",
    "prompt_cache_key",
    "safety_identifier",
    "verbosity",
    "background",
    "stream_options.include_obfuscation",
];

/// A request body as a JSON object whose fields are taken one by one.
pub struct Fields {
    map: Map<String, Value>,
}

impl Fields {
    /// Parses `body` as one JSON object.
    pub fn parse(body: &[u8]) -> Result<Fields, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "the request body is empty; send a JSON object",
            ));
        }
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        match v {
            Value::Object(map) => Ok(Fields { map }),
            _ => Err(ApiError::bad_request(
                "the request body must be a JSON object",
            )),
        }
    }

    pub fn from_map(map: Map<String, Value>) -> Fields {
        Fields { map }
    }

    /// Refuses any field not in `allowed` (nor harmless): not-implemented OpenAI fields
    /// and unknown ones (a typo such as `max_token`) alike, each named.
    pub fn check_known(&self, allowed: &[&str], what: &str) -> Result<(), ApiError> {
        for key in self.map.keys() {
            if allowed.contains(&key.as_str()) || HARMLESS.contains(&key.as_str()) {
                continue;
            }
            let shown: String = key.chars().take(64).collect();
            let msg = if NOT_IMPLEMENTED.contains(&key.as_str()) {
                format!("{shown} is not supported by this server")
            } else {
                format!("unknown parameter {shown:?} in {what}")
            };
            return Err(ApiError::invalid_owned(shown, msg));
        }
        Ok(())
    }

    /// Takes `key` if present and not null, as `T`; `expect` says what it must be.
    pub fn take<T: DeserializeOwned>(
        &mut self,
        key: &'static str,
        expect: &str,
    ) -> Result<Option<T>, ApiError> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|_| ApiError::invalid(key, format!("{key} must be {expect}"))),
        }
    }

    /// Takes `key` as a raw JSON value (null counts as absent).
    pub fn take_value(&mut self, key: &str) -> Option<Value> {
        match self.map.remove(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }
}

/// A nested object's fields, refusing unknown keys: `what` names it in errors (e.g.
/// "response_format"), `param` is the parameter errors point at.
pub fn object(
    v: Value,
    param: &'static str,
    what: &str,
    allowed: &[&str],
) -> Result<Map<String, Value>, ApiError> {
    let Value::Object(map) = v else {
        return Err(ApiError::invalid(
            param,
            format!("{what} must be an object"),
        ));
    };
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        let shown: String = k.chars().take(64).collect();
        return Err(ApiError::invalid(
            param,
            format!("unknown field {shown:?} in {what}"),
        ));
    }
    Ok(map)
}

/// `map[key]` as a string, if present.
pub fn string(
    map: &Map<String, Value>,
    key: &str,
    param: &'static str,
    what: &str,
) -> Result<Option<String>, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(
            param,
            format!("{what}.{key} must be a string"),
        )),
    }
}
