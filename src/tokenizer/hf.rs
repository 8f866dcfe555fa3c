//! Tokenizers from Hugging Face model directories.
//!
//! `tokenizer.json` defines the encoder and is loaded by the `tokenizers` crate as is. What
//! it does not say, or says in other files, is gathered here: how pieces decode (read off
//! its `decoder`), the BOS/EOS tokens and `add_bos_token` (`tokenizer_config.json`, else the
//! post-processor), the chat template (`tokenizer_config.json` or `chat_template.jinja`) and
//! extra end-of-generation ids (`generation_config.json`, an int or a list).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::pieces::{PieceKind, PieceStyle, PieceTable, parse_byte_token};
use super::{Parts, Tokenizer, TokenizerError};

/// Largest `tokenizer.json` accepted (real ones are up to a few tens of MiB).
const MAX_TOKENIZER_JSON: u64 = 256 << 20;
/// Largest side file (configs, template) accepted.
const MAX_SIDE_FILE: u64 = 16 << 20;
/// Largest vocabulary id accepted.
const MAX_ID: u32 = 1 << 22;

pub(crate) fn load(dir: &Path) -> Result<Tokenizer, TokenizerError> {
    let json_path = dir.join("tokenizer.json");
    let text =
        read_bounded(&json_path, MAX_TOKENIZER_JSON)?.ok_or_else(|| TokenizerError::File {
            path: json_path.clone(),
            message: "not found".into(),
        })?;
    let json: Json = serde_json::from_str(&text).map_err(|e| file_error(&json_path, e))?;
    let inner: tokenizers::Tokenizer = text.parse().map_err(|e| file_error(&json_path, e))?;
    drop(text);
    let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let generation = read_json(&dir.join("generation_config.json"))?.unwrap_or(Json::Null);

    let (style, strip_leading_space) = piece_style(&json);
    let pieces = piece_table(&inner, style, strip_leading_space)?;

    let token = |key: &str| special_token_text(config.get(key)).and_then(|t| inner.token_to_id(&t));
    let gen_ids = |key: &str| id_list(generation.get(key));
    let gen_eos = gen_ids("eos_token_id");
    let eos = token("eos_token").or_else(|| gen_eos.first().copied());
    let bos = token("bos_token").or_else(|| gen_ids("bos_token_id").first().copied());
    let add_bos = match config.get("add_bos_token").and_then(Json::as_bool) {
        Some(v) => v,
        None => bos
            .and_then(|id| inner.id_to_token(id))
            .is_some_and(|piece| post_processor_adds(json.get("post_processor"), &piece)),
    };
    let chat_template = match chat_template(&config) {
        Some(t) => Some(t),
        None => read_bounded(&dir.join("chat_template.jinja"), MAX_SIDE_FILE)?,
    };
    let model = json
        .pointer("/model/type")
        .and_then(Json::as_str)
        .unwrap_or("BPE");
    let kind = match style {
        PieceStyle::ByteLevel => format!("byte-level {model} (tokenizer.json)"),
        PieceStyle::SentencePiece => format!("SentencePiece {model} (tokenizer.json)"),
        PieceStyle::Plain => format!("{model} (tokenizer.json)"),
    };
    Ok(Tokenizer::assemble(Parts {
        inner,
        pieces,
        kind,
        bos,
        eos,
        extra_stops: gen_eos.into_iter().filter(|&id| id < MAX_ID).collect(),
        add_bos,
        chat_template,
    }))
}

/// Reads a file of at most `limit` bytes; `Ok(None)` when it does not exist.
fn read_bounded(path: &Path, limit: u64) -> Result<Option<String>, TokenizerError> {
    let io_err = |source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let mut text = String::new();
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(io_err)?;
    if text.len() as u64 > limit {
        return Err(TokenizerError::File {
            path: path.to_path_buf(),
            message: format!("larger than {limit} bytes"),
        });
    }
    Ok(Some(text))
}

fn read_json(path: &Path) -> Result<Option<Json>, TokenizerError> {
    match read_bounded(path, MAX_SIDE_FILE)? {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| file_error(path, e)),
    }
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::File {
        path: PathBuf::from(path),
        message: e.to_string(),
    }
}

/// How pieces decode, from the decoder's component types: ByteLevel means GPT-2 bytes;
/// ByteFallback / Metaspace / a "▁" replacement mean SentencePiece, whose leading space is
/// dropped when the decoder strips it (Strip) or Metaspace prepends one.
fn piece_style(json: &Json) -> (PieceStyle, bool) {
    let mut types = Vec::new();
    collect_decoders(json.get("decoder"), &mut types, 0);
    let has = |t: &str| types.iter().any(|(ty, _)| ty == t);
    if has("ByteLevel") {
        return (PieceStyle::ByteLevel, false);
    }
    let byte_fallback = json
        .pointer("/model/byte_fallback")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    if has("ByteFallback")
        || has("Metaspace")
        || byte_fallback
        || types.iter().any(|(_, d)| replaces_metaspace(d))
    {
        let strip = types.iter().any(|(ty, d)| match ty.as_str() {
            "Strip" => d.get("start").and_then(Json::as_u64).unwrap_or(0) > 0,
            "Metaspace" => d
                .get("prepend_scheme")
                .and_then(Json::as_str)
                .map(|s| s != "never")
                .or_else(|| d.get("add_prefix_space").and_then(Json::as_bool))
                .unwrap_or(true),
            _ => false,
        });
        return (PieceStyle::SentencePiece, strip);
    }
    (PieceStyle::Plain, false)
}

fn replaces_metaspace(decoder: &Json) -> bool {
    decoder.get("type").and_then(Json::as_str) == Some("Replace")
        && decoder.pointer("/pattern/String").and_then(Json::as_str) == Some("\u{2581}")
}

/// Flattens a (possibly nested Sequence) decoder into (type, object) pairs.
fn collect_decoders(decoder: Option<&Json>, out: &mut Vec<(String, Json)>, depth: usize) {
    let Some(d) = decoder else { return };
    if depth > 8 {
        return;
    }
    if let Some(ty) = d.get("type").and_then(Json::as_str) {
        if ty == "Sequence" {
            for sub in d
                .get("decoders")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
            {
                collect_decoders(Some(sub), out, depth + 1);
            }
        } else {
            out.push((ty.to_string(), d.clone()));
        }
    }
}

fn piece_table(
    inner: &tokenizers::Tokenizer,
    style: PieceStyle,
    strip: bool,
) -> Result<PieceTable, TokenizerError> {
    let vocab = inner.get_vocab(true);
    let size = vocab.values().copied().max().map_or(0, |m| m as usize + 1);
    if size == 0 {
        return Err(TokenizerError::meta(
            "tokenizer.json has an empty vocabulary",
        ));
    }
    if size > MAX_ID as usize {
        return Err(TokenizerError::meta(format!(
            "tokenizer.json has token id {} (limit {MAX_ID})",
            size - 1
        )));
    }
    let added = inner.get_added_tokens_decoder();
    let mut pieces: Vec<Option<(&str, PieceKind)>> = vec![None; size];
    for (piece, &id) in &vocab {
        let kind = match added.get(&id) {
            Some(t) if t.special => PieceKind::Control,
            Some(_) => PieceKind::Added,
            None if style == PieceStyle::SentencePiece && parse_byte_token(piece).is_some() => {
                PieceKind::Byte
            }
            None => PieceKind::Normal,
        };
        pieces[id as usize] = Some((piece.as_str(), kind));
    }
    Ok(PieceTable::new(&pieces, style, strip))
}

/// `"<s>"` or `{"content": "<s>", ...}`.
fn special_token_text(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// An id or a list of ids.
fn id_list(v: Option<&Json>) -> Vec<u32> {
    let one = |j: &Json| j.as_u64().and_then(|n| u32::try_from(n).ok());
    match v {
        Some(Json::Array(items)) => items.iter().filter_map(one).collect(),
        Some(j) => one(j).into_iter().collect(),
        None => Vec::new(),
    }
}

/// Whether the post-processor's single-sequence template inserts `piece` (how Llama 3's
/// tokenizer.json says "add BOS" without a config flag).
fn post_processor_adds(pp: Option<&Json>, piece: &str) -> bool {
    let Some(pp) = pp else { return false };
    match pp.get("type").and_then(Json::as_str) {
        Some("Sequence") => pp
            .get("processors")
            .and_then(Json::as_array)
            .is_some_and(|ps| ps.iter().any(|p| post_processor_adds(Some(p), piece))),
        Some("TemplateProcessing") => {
            pp.get("single")
                .and_then(Json::as_array)
                .is_some_and(|items| {
                    items.iter().any(|item| {
                        item.pointer("/SpecialToken/id").and_then(Json::as_str) == Some(piece)
                    })
                })
        }
        _ => false,
    }
}

/// `chat_template` as a string, or the "default" entry of a list of named templates.
fn chat_template(config: &Json) -> Option<String> {
    match config.get("chat_template")? {
        Json::String(s) => Some(s.clone()),
        Json::Array(named) => {
            let template = |item: &Json| {
                item.get("template")
                    .and_then(Json::as_str)
                    .map(str::to_string)
            };
            named
                .iter()
                .find(|item| item.get("name").and_then(Json::as_str) == Some("default"))
                .or_else(|| named.first())
                .and_then(template)
        }
        _ => None,
    }
}
