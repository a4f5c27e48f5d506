//! Building a [`Tokenizer`] from the tokenizer stored in GGUF metadata (`tokenizer.ggml.*`).
//!
//! Only `tokenizer.ggml.model = "gpt2"` (byte-level BPE with merges) is supported; the pre-tokenizer is chosen from
//! `tokenizer.ggml.pre` by llama.cpp's table in [`super::pre`]. Everything here is untrusted input: sizes are bounded
//! and every id is checked, so malformed metadata returns [`Error::Tokenizer`] and never panics.

use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::{byte_level_bytes, pre, Tokenizer};
use crate::error::{Error, Result};

/// Vocabulary entries allowed (the largest real vocabularies are ~260k).
pub const N_VOCAB_MAX: usize = 4 << 20;
/// Merges allowed.
pub const N_MERGES_MAX: usize = 8 << 20;
/// Bytes allowed in one token or merge string.
pub const TOKEN_BYTES_MAX: usize = 64 << 10;

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// The tokenizer keys of a GGUF file; the engine fills this from metadata keys of the same names
/// (`tokenizer.ggml.model`, `tokenizer.ggml.pre`, `tokenizer.ggml.tokens`, ..., `tokenizer.chat_template`).
#[derive(Debug, Clone, Default)]
pub struct GgufTokenizerData {
    /// `tokenizer.ggml.model`: "gpt2" is supported; "llama", "bert", ... are refused.
    pub model: String,
    /// `tokenizer.ggml.pre`: selects the pre-tokenizer regexes.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: `[n_vocab]` token texts (byte-level encoded for gpt2).
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: `[n_vocab]` 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: "left right", highest priority first.
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub eom_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    /// `tokenizer.chat_template`: a Jinja template.
    pub chat_template: Option<String>,
}

/// Token texts llama.cpp treats as end-of-generation wherever they appear in a vocabulary (`llama-vocab.cpp`).
pub(super) const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

fn err(msg: impl Into<String>) -> Error {
    Error::Tokenizer(msg.into())
}

/// Checks sizes and ids; everything after this may index `tokens` with the special ids.
fn validate(data: &GgufTokenizerData) -> Result<()> {
    let n_vocab = data.tokens.len();
    if n_vocab == 0 {
        return Err(err("GGUF tokenizer.ggml.tokens is empty"));
    }
    if n_vocab > N_VOCAB_MAX {
        return Err(err(format!("GGUF vocabulary has {n_vocab} tokens, more than the {N_VOCAB_MAX} allowed")));
    }
    if data.merges.len() > N_MERGES_MAX {
        return Err(err(format!("GGUF has {} merges, more than the {N_MERGES_MAX} allowed", data.merges.len())));
    }
    if let Some(types) = &data.token_types {
        if types.len() != n_vocab {
            return Err(err(format!(
                "GGUF tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {n_vocab}",
                types.len()
            )));
        }
    }
    if let Some((id, t)) = data.tokens.iter().enumerate().find(|(_, t)| t.len() > TOKEN_BYTES_MAX) {
        return Err(err(format!("GGUF token {id} is {} bytes long (at most {TOKEN_BYTES_MAX})", t.len())));
    }
    let ids = [
        ("bos", data.bos_id),
        ("eos", data.eos_id),
        ("eot", data.eot_id),
        ("eom", data.eom_id),
        ("pad", data.pad_id),
        ("unk", data.unk_id),
    ];
    for (name, id) in ids {
        if let Some(id) = id {
            if id as usize >= n_vocab {
                return Err(err(format!(
                    "GGUF tokenizer.ggml.{name}_token_id = {id} is outside the vocabulary (size {n_vocab})"
                )));
            }
        }
    }
    Ok(())
}

/// Splits "left right" at the first space after the first character, as llama.cpp does.
fn split_merge(merge: &str) -> Option<(&str, &str)> {
    let first = merge.chars().next()?;
    let pos = merge[first.len_utf8()..].find(' ')? + first.len_utf8();
    let (left, right) = (&merge[..pos], &merge[pos + 1..]);
    (!right.is_empty()).then_some((left, right))
}

pub(super) fn from_gguf(data: GgufTokenizerData) -> Result<Tokenizer> {
    match data.model.as_str() {
        "gpt2" => {}
        "llama" => {
            return Err(err(
                "GGUF tokenizer model 'llama' (SentencePiece) is not supported yet; only 'gpt2' (byte-level BPE) is",
            ))
        }
        other => {
            return Err(err(format!(
                "GGUF tokenizer model '{other}' is not supported; only 'gpt2' (byte-level BPE) is"
            )))
        }
    }
    validate(&data)?;
    let pre_name = data.pre.as_deref();
    let Some(pre_type) = pre::pre_type(pre_name) else {
        return Err(err(format!(
            "unknown GGUF pre-tokenizer tokenizer.ggml.pre = '{}'; supported: {}",
            pre_name.unwrap_or_default(),
            pre::supported_names()
        )));
    };
    let bpe = build_bpe(&data, pre_type.ignore_merges)?;
    let (pieces, added) = pieces_and_special_tokens(&data);
    let mut hf = tokenizers::Tokenizer::new(bpe);
    hf.with_pre_tokenizer(Some(pre_tokenizer(&pre_type)?));
    hf.with_decoder(Some(ByteLevel::new(false, false, false)));
    hf.add_special_tokens(&added);

    let bos_id = if pre_type.no_bos { None } else { data.bos_id };
    let add_bos = data.add_bos.unwrap_or(pre_type.add_bos) && bos_id.is_some();
    let mut eos_ids: Vec<u32> = [data.eos_id, data.eot_id, data.eom_id].into_iter().flatten().collect();
    for (id, text) in data.tokens.iter().enumerate() {
        if EOG_TEXTS.contains(&text.as_str()) {
            eos_ids.push(id as u32);
        }
    }
    Tokenizer::assemble(super::Parts {
        hf,
        pieces,
        bos_id,
        eos_id: data.eos_id,
        eos_ids,
        add_bos,
        add_eos: data.add_eos.unwrap_or(false) && data.eos_id.is_some(),
        chat_template: data.chat_template,
    })
}

/// The BPE model: vocabulary (llama.cpp keeps the last id of a text that appears twice) and checked merges.
fn build_bpe(data: &GgufTokenizerData, ignore_merges: bool) -> Result<BPE> {
    let mut vocab = Vocab::with_capacity(data.tokens.len());
    for (id, text) in data.tokens.iter().enumerate() {
        vocab.insert(text.clone(), id as u32);
    }
    let mut merges = Vec::with_capacity(data.merges.len());
    for (i, merge) in data.merges.iter().enumerate() {
        if merge.len() > TOKEN_BYTES_MAX {
            return Err(err(format!("GGUF merge {i} is {} bytes long (at most {TOKEN_BYTES_MAX})", merge.len())));
        }
        let Some((left, right)) = split_merge(merge) else {
            return Err(err(format!("GGUF merge {i} ({merge:?}) is not two tokens separated by a space")));
        };
        for part in [left, right] {
            if !vocab.contains_key(part) {
                return Err(err(format!(
                    "GGUF merge {i} ({merge:?}) refers to {part:?}, which is not in the vocabulary"
                )));
            }
        }
        merges.push((left.to_string(), right.to_string()));
    }
    BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| err(format!("GGUF BPE vocabulary: {e}")))
}

/// Each id's bytes (llama.cpp's `token_to_piece`), and the tokens matched in raw text before BPE: control tokens
/// (only with `parse_special`) and user-defined ones (always). Like llama.cpp, an end-of-generation text such as
/// `<|im_end|>` counts as control whatever its declared type.
fn pieces_and_special_tokens(data: &GgufTokenizerData) -> (Vec<Vec<u8>>, Vec<AddedToken>) {
    let mut pieces = Vec::with_capacity(data.tokens.len());
    let mut added = Vec::new();
    for (id, text) in data.tokens.iter().enumerate() {
        let declared = data.token_types.as_ref().and_then(|types| types.get(id).copied()).unwrap_or(token_type::NORMAL);
        let ty = if EOG_TEXTS.contains(&text.as_str()) { token_type::CONTROL } else { declared };
        match ty {
            token_type::CONTROL | token_type::USER_DEFINED => {
                if !text.is_empty() {
                    added.push(AddedToken::from(text.clone(), ty == token_type::CONTROL).normalized(false));
                }
                pieces.push(text.as_bytes().to_vec());
            }
            token_type::BYTE => pieces.push(byte_token(text).map_or_else(|| byte_level_bytes(text), |b| vec![b])),
            _ => pieces.push(byte_level_bytes(text)),
        }
    }
    (pieces, added)
}

/// The regex splits of `pre_type`, then GGUF's byte-to-char mapping.
fn pre_tokenizer(pre_type: &pre::PreType) -> Result<PreTokenizerWrapper> {
    let mut splits = Vec::with_capacity(pre_type.regexes.len() + 1);
    for re in pre_type.regexes {
        let split = Split::new(SplitPattern::Regex((*re).to_string()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| err(format!("pre-tokenizer '{}' regex {re:?}: {e}", pre_type.name)))?;
        splits.push(PreTokenizerWrapper::Split(split));
    }
    splits.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)));
    Ok(PreTokenizerWrapper::Sequence(Sequence::new(splits)))
}

/// The byte of a byte-type token "<0xAB>".
fn byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_merge_like_llama_cpp() {
        assert_eq!(split_merge("Ġ t"), Some(("Ġ", "t")));
        assert_eq!(split_merge("a b c"), Some(("a", "b c")));
        assert_eq!(split_merge("ab"), None);
        assert_eq!(split_merge("a "), None);
        assert_eq!(split_merge(""), None);
        assert_eq!(split_merge("é x"), Some(("é", "x")));
    }

    #[test]
    fn byte_tokens() {
        assert_eq!(byte_token("<0x0A>"), Some(10));
        assert_eq!(byte_token("<0xZZ>"), None);
        assert_eq!(byte_token("<0x0>"), None);
    }
}
