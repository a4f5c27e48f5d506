//! Loading a Hugging Face `tokenizer.json` and the files beside it: `tokenizer_config.json` (BOS/EOS tokens,
//! `add_bos_token`, `chat_template`), `chat_template.jinja` (newer checkpoints) and `generation_config.json`
//! (`eos_token_id`, often a list).

use std::path::Path;

use serde_json::Value;

use super::gguf::EOG_TEXTS;
use super::{byte_level_bytes, Parts, Tokenizer};
use crate::error::{Error, Result};

/// Bytes allowed in each JSON file read here.
const JSON_BYTES_MAX: u64 = 512 << 20;

/// The bytes of an optional file beside the tokenizer (`None` when it does not exist); a regular file of at most
/// [`JSON_BYTES_MAX`] bytes, never a FIFO to wait on.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => crate::formats::read_regular(path, JSON_BYTES_MAX).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    let Some(bytes) = read_optional(path)? else { return Ok(None) };
    let value = serde_json::from_slice(&bytes).map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
    Ok(Some(value))
}

/// `"<s>"` or `{"content": "<s>", ...}`.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// A string, or a list of `{"name", "template"}` of which the one named "default" is used.
fn chat_template_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

pub(super) fn from_hf_file(path: &Path) -> Result<Tokenizer> {
    let json = crate::formats::read_regular(path, JSON_BYTES_MAX)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    let generation = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
    let jinja = dir.join("chat_template.jinja");
    let jinja = read_optional(&jinja)?
        .map(|b| String::from_utf8(b).map_err(|_| Error::format(&jinja, "not UTF-8 text")))
        .transpose()?;
    from_hf_json(&json, &config, &generation, jinja).map_err(|e| match e {
        Error::Tokenizer(msg) => Error::Tokenizer(format!("{}: {msg}", path.display())),
        e => e,
    })
}

/// A tokenizer from the bytes of a `tokenizer.json`, the parsed `tokenizer_config.json` and
/// `generation_config.json` (`null` when absent) and the text of `chat_template.jinja`. Never panics, whatever
/// the bytes hold (the `tokenizer_json` fuzz target calls it).
pub(super) fn from_hf_json(
    json: &[u8],
    config: &Value,
    generation: &Value,
    jinja: Option<String>,
) -> Result<Tokenizer> {
    // The tokenizers crate panics (an `expect` in its decoder deserializer) on some malformed JSON: the syntax is
    // checked here first, and a panic left in it becomes an error.
    let value: Value = serde_json::from_slice(json).map_err(|e| Error::Tokenizer(format!("not valid JSON: {e}")))?;
    let hf = std::panic::catch_unwind(|| serde_json::from_value::<tokenizers::Tokenizer>(value))
        .map_err(|_| Error::Tokenizer("tokenizer.json is malformed (the tokenizers library failed on it)".into()))?
        .map_err(|e| Error::Tokenizer(e.to_string()))?;

    let n_vocab = hf.get_vocab_size(true);
    let byte_level = hf.get_decoder().and_then(|d| serde_json::to_value(d).ok()).is_some_and(|d| {
        let text = d.to_string();
        text.contains("ByteLevel")
    });
    let added = hf.get_added_tokens_decoder();
    let mut pieces = Vec::with_capacity(n_vocab);
    for id in 0..n_vocab as u32 {
        let piece = match (added.get(&id), hf.id_to_token(id)) {
            (Some(token), _) => token.content.as_bytes().to_vec(),
            (None, Some(text)) if byte_level => byte_level_bytes(&text),
            (None, Some(text)) => sentencepiece_bytes(&text),
            (None, None) => Vec::new(),
        };
        pieces.push(piece);
    }

    let id_of = |text: Option<String>| text.and_then(|t| hf.token_to_id(&t));
    let bos_id = id_of(token_text(config.get("bos_token")));
    let eos_id = id_of(token_text(config.get("eos_token")));
    let mut eos_ids: Vec<u32> = eos_id.into_iter().collect();
    match generation.get("eos_token_id") {
        Some(Value::Number(n)) => eos_ids.extend(n.as_u64().and_then(|n| u32::try_from(n).ok())),
        Some(Value::Array(list)) => {
            eos_ids.extend(list.iter().filter_map(|n| n.as_u64().and_then(|n| u32::try_from(n).ok())))
        }
        _ => {}
    }
    for token in added.values() {
        if EOG_TEXTS.contains(&token.content.as_str()) {
            eos_ids.extend(hf.token_to_id(&token.content));
        }
    }
    eos_ids.retain(|&id| (id as usize) < n_vocab);

    let chat_template = chat_template_of(config.get("chat_template")).or(jinja);
    let add_bos = config.get("add_bos_token").and_then(Value::as_bool).unwrap_or(false) && bos_id.is_some();
    Tokenizer::assemble(Parts { hf, pieces, bos_id, eos_id, eos_ids, add_bos, add_eos: false, chat_template })
}

/// A SentencePiece-style token: `▁` is a space and `<0xAB>` is one byte.
fn sentencepiece_bytes(text: &str) -> Vec<u8> {
    if let Some(hex) = text.strip_prefix("<0x").and_then(|t| t.strip_suffix('>')) {
        if let (2, Ok(b)) = (hex.len(), u8::from_str_radix(hex, 16)) {
            return vec![b];
        }
    }
    text.replace('\u{2581}', " ").into_bytes()
}
