//! The structured-output fields of a request: `response_format` (OpenAI's `text`,
//! `json_object`, `json_schema`), tachyon's `grammar` extension (Lark or regex) and
//! `logit_bias`. Parsing only; the schema or grammar is compiled against the vocabulary
//! when the request is submitted.

use serde_json::Value;

use super::error::ApiError;
use super::fields;
use crate::engine::constraint::{ConstraintSpec, MAX_LOGIT_BIAS};

/// `response_format`: `{"type": "text"}` (no constraint), `{"type": "json_object"}`, or
/// `{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}`.
pub fn response_format(v: Value) -> Result<Option<ConstraintSpec>, ApiError> {
    const P: &str = "response_format";
    let m = fields::object(v, P, P, &["type", "json_schema"])?;
    let kind = fields::string(&m, "type", P, P)?
        .ok_or_else(|| ApiError::invalid(P, "response_format.type is required"))?;
    match kind.as_str() {
        "text" | "json_object" if m.contains_key("json_schema") => Err(ApiError::invalid(
            P,
            format!("response_format.json_schema goes with type \"json_schema\", not {kind:?}"),
        )),
        "text" => Ok(None),
        "json_object" => Ok(Some(ConstraintSpec::JsonObject)),
        "json_schema" => {
            let js = m.get("json_schema").cloned().ok_or_else(|| {
                ApiError::invalid(
                    P,
                    "response_format.json_schema is required for type \"json_schema\"",
                )
            })?;
            let what = "response_format.json_schema";
            let js = fields::object(js, P, what, &["name", "schema", "strict", "description"])?;
            let name = fields::string(&js, "name", P, what)?.ok_or_else(|| {
                ApiError::invalid(P, "response_format.json_schema.name is required")
            })?;
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(ApiError::invalid(
                    P,
                    "response_format.json_schema.name must be 1-64 letters, digits, '_' or '-'",
                ));
            }
            let strict = match js.get("strict") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::invalid(
                        P,
                        "response_format.json_schema.strict must be true or false",
                    ));
                }
            };
            // OpenAI: a missing schema means any JSON object.
            let schema = match js.get("schema") {
                None | Some(Value::Null) => serde_json::json!({"type": "object"}),
                Some(s @ (Value::Object(_) | Value::Bool(_))) => s.clone(),
                Some(_) => {
                    return Err(ApiError::invalid(
                        P,
                        "response_format.json_schema.schema must be a JSON schema object",
                    ));
                }
            };
            Ok(Some(ConstraintSpec::JsonSchema { schema, strict }))
        }
        other => Err(ApiError::invalid(
            P,
            format!(
                "response_format.type must be \"text\", \"json_object\" or \"json_schema\", got {other:?}"
            ),
        )),
    }
}

/// `grammar` (a tachyon extension): a string is a Lark grammar; an object is
/// `{"type": "lark", "grammar": SRC}` or `{"type": "regex", "pattern": RX}`.
pub fn grammar(v: Value) -> Result<ConstraintSpec, ApiError> {
    const P: &str = "grammar";
    if let Value::String(src) = v {
        return Ok(ConstraintSpec::Lark(src));
    }
    let m = fields::object(v, P, P, &["type", "grammar", "pattern"])?;
    let kind = fields::string(&m, "type", P, P)?
        .ok_or_else(|| ApiError::invalid(P, "grammar.type is required (\"lark\" or \"regex\")"))?;
    match kind.as_str() {
        "lark" => {
            let src = fields::string(&m, "grammar", P, P)?.ok_or_else(|| {
                ApiError::invalid(P, "grammar.grammar is required for type \"lark\"")
            })?;
            if m.contains_key("pattern") {
                return Err(ApiError::invalid(
                    P,
                    "grammar.pattern goes with type \"regex\"",
                ));
            }
            Ok(ConstraintSpec::Lark(src))
        }
        "regex" => {
            let rx = fields::string(&m, "pattern", P, P)?.ok_or_else(|| {
                ApiError::invalid(P, "grammar.pattern is required for type \"regex\"")
            })?;
            if m.contains_key("grammar") {
                return Err(ApiError::invalid(
                    P,
                    "grammar.grammar goes with type \"lark\"",
                ));
            }
            Ok(ConstraintSpec::Regex(rx))
        }
        other => Err(ApiError::invalid(
            P,
            format!("grammar.type must be \"lark\" or \"regex\", got {other:?}"),
        )),
    }
}

/// `logit_bias`: `{"token id": bias}` with biases in [-100, 100], at most
/// [`MAX_LOGIT_BIAS`] entries. Sorted by id.
pub fn logit_bias(v: Value) -> Result<Vec<(u32, f32)>, ApiError> {
    const P: &str = "logit_bias";
    let Value::Object(m) = v else {
        return Err(ApiError::invalid(
            P,
            "logit_bias must be an object mapping token ids to biases, e.g. {\"50256\": -100}",
        ));
    };
    if m.len() > MAX_LOGIT_BIAS {
        return Err(ApiError::invalid(
            P,
            format!(
                "logit_bias has {} entries; the limit is {MAX_LOGIT_BIAS}",
                m.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(m.len());
    for (k, b) in &m {
        let shown: String = k.chars().take(32).collect();
        let id: u32 = k.trim().parse().map_err(|_| {
            ApiError::invalid(P, format!("logit_bias key {shown:?} is not a token id"))
        })?;
        let bias = b
            .as_f64()
            .filter(|b| (-100.0..=100.0).contains(b))
            .ok_or_else(|| {
                ApiError::invalid(
                    P,
                    format!("logit_bias for token {id} must be a number between -100 and 100"),
                )
            })?;
        out.push((id, bias as f32));
    }
    out.sort_by_key(|&(id, _)| id);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn response_formats() {
        assert_eq!(response_format(json!({"type": "text"})).unwrap(), None);
        assert_eq!(
            response_format(json!({"type": "json_object"})).unwrap(),
            Some(ConstraintSpec::JsonObject)
        );
        let s = response_format(json!({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "integer"}, "strict": true}})).unwrap();
        assert_eq!(
            s,
            Some(ConstraintSpec::JsonSchema {
                schema: json!({"type": "integer"}),
                strict: true
            })
        );
        for bad in [
            json!("json"),
            json!({"type": "xml"}),
            json!({"type": "json_schema"}),
            json!({"type": "json_schema", "json_schema": {"schema": {}}}),
            json!({"type": "json_schema", "json_schema": {"name": "a b"}}),
            json!({"type": "json_schema", "json_schema": {"name": "a", "schema": 5}}),
            json!({"type": "json_schema", "json_schema": {"name": "a", "strict": "yes"}}),
            json!({"type": "json_schema", "json_schema": {"name": "a", "extra": 1}}),
            json!({"type": "json_object", "extra": 1}),
        ] {
            let e = response_format(bad.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("response_format"), "{bad}");
        }
    }

    #[test]
    fn grammars_and_logit_bias() {
        assert_eq!(
            grammar(json!("start: \"a\"")).unwrap(),
            ConstraintSpec::Lark("start: \"a\"".into())
        );
        assert_eq!(
            grammar(json!({"type": "regex", "pattern": "[0-9]+"})).unwrap(),
            ConstraintSpec::Regex("[0-9]+".into())
        );
        assert!(grammar(json!({"type": "regex", "grammar": "x"})).is_err());
        assert!(grammar(json!({"type": "ebnf", "grammar": "x"})).is_err());
        assert!(grammar(json!(5)).is_err());
        assert_eq!(
            logit_bias(json!({"7": 1.5, "3": -100})).unwrap(),
            vec![(3, -100.0), (7, 1.5)]
        );
        for bad in [
            json!("garbage"),
            json!({"x": 1}),
            json!({"-1": 1}),
            json!({"5": 101}),
            json!({"5": "1"}),
        ] {
            assert_eq!(
                logit_bias(bad.clone()).unwrap_err().param.as_deref(),
                Some("logit_bias"),
                "{bad}"
            );
        }
    }
}
