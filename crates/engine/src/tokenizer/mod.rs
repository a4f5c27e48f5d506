//! Text <-> token ids, chat templates and streamed detokenization.
//!
//! [`Tokenizer`] wraps the pure-Rust Hugging Face `tokenizers` crate (fancy-regex backend, no C code). It loads either
//! a `tokenizer.json` (+ `tokenizer_config.json` beside it) with [`Tokenizer::from_hf_file`], or the tokenizer embedded
//! in GGUF metadata with [`Tokenizer::from_gguf`] (byte-level BPE, pre-tokenizer chosen like llama.cpp). Encoding goes
//! through `tokenizers`; decoding uses a per-id byte table ([`Tokenizer::token_bytes`], llama.cpp's `token_to_piece`),
//! so it works for any id and never depends on how the vocabulary was built. [`StreamDecoder`] turns ids into text as
//! they are generated without ever emitting broken UTF-8; [`ChatTemplate`] renders Jinja chat templates.
//!
//! This module does no I/O beyond reading the tokenizer files it is pointed at, and knows nothing of GGUF parsing:
//! the engine's GGUF reader fills a [`GgufTokenizerData`].
//!
//! # Versus llama.cpp (tag b11434)
//! GGUF encoding gives the same ids as llama.cpp on its own vocabulary fixtures and on SmolLM2
//! (`tests/tokenizer_llama_cpp.rs`). Differences: decoding renders control tokens as their text (llama.cpp's
//! `token_to_piece(.., special = true)`) and never applies llama.cpp's `clean_spaces` post-processing; per-token
//! `lstrip`/`rstrip` attributes are not applied; only the `gpt2` tokenizer model is supported (SentencePiece
//! `llama`, WordPiece `bert`, ... are refused with an error naming the model).

mod chat;
mod fuzz;
mod gguf;
mod hf;
mod pre;
mod pyjson;
mod stream;

use std::path::Path;

pub use chat::{render_bytes_max, render_fuel, ChatMessage, ChatTemplate};
pub use fuzz::fuzz_gguf_tokenizer;
pub use gguf::{token_type, GgufTokenizerData, N_MERGES_MAX, N_VOCAB_MAX, TOKEN_BYTES_MAX};
pub use stream::{ControlText, StreamDecoder};

use crate::error::{Error, Result};

/// Input bytes allowed in one `encode` call (a bound on work per request).
pub const ENCODE_BYTES_MAX: usize = 256 << 20;

/// A loaded tokenizer. Immutable after loading; share it by reference.
pub struct Tokenizer {
    /// Splits special (control) tokens out of the text.
    hf: tokenizers::Tokenizer,
    /// Same model, but control tokens in the text are plain text (`parse_special = false`).
    hf_plain: tokenizers::Tokenizer,
    /// [n_vocab] the raw bytes each id decodes to.
    pieces: Vec<Vec<u8>>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    /// End-of-generation ids, the declared EOS first, no duplicates.
    eos_ids: Vec<u32>,
    add_bos: bool,
    /// Append EOS in `encode(.., add_special = true, ..)` (GGUF `add_eos_token`; rare).
    add_eos: bool,
    chat_template: Option<String>,
    /// [n_vocab] control (special) tokens: never plain text.
    control: Vec<bool>,
}

/// What the two loaders produce.
struct Parts {
    hf: tokenizers::Tokenizer,
    pieces: Vec<Vec<u8>>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    eos_ids: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_vocab", &self.pieces.len())
            .field("bos_id", &self.bos_id)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`; reads `tokenizer_config.json` (BOS/EOS, `add_bos_token`,
    /// `chat_template`), `chat_template.jinja` and `generation_config.json` (extra EOS ids) from the same directory
    /// when present.
    pub fn from_hf_file(path: &Path) -> Result<Tokenizer> {
        hf::from_hf_file(path)
    }

    /// A tokenizer from the bytes of a `tokenizer.json`, with the parsed `tokenizer_config.json` and
    /// `generation_config.json` (`null` when absent) and the text of `chat_template.jinja` that
    /// [`Tokenizer::from_hf_file`] reads beside it. Never panics, whatever the bytes hold.
    pub fn from_hf_json(
        json: &[u8],
        config: &serde_json::Value,
        generation: &serde_json::Value,
        chat_template_jinja: Option<String>,
    ) -> Result<Tokenizer> {
        hf::from_hf_json(json, config, generation, chat_template_jinja)
    }

    /// Builds the tokenizer stored in GGUF metadata. Never panics, whatever `data` holds.
    pub fn from_gguf(data: GgufTokenizerData) -> Result<Tokenizer> {
        gguf::from_gguf(data)
    }

    fn assemble(parts: Parts) -> Result<Tokenizer> {
        let Parts { hf, pieces, bos_id, eos_id, eos_ids: eog, add_bos, add_eos, chat_template } = parts;
        let n_vocab = pieces.len();
        let mut eos_ids = Vec::with_capacity(eog.len());
        for id in eog {
            if id as usize >= n_vocab {
                return Err(Error::TokenOutOfRange { id, n_vocab });
            }
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        let mut control = vec![false; n_vocab];
        let specials = hf.get_added_tokens_decoder().into_iter().filter(|(_, t)| t.special).map(|(id, _)| id);
        for id in specials.chain(eos_ids.iter().copied()) {
            if let Some(c) = control.get_mut(id as usize) {
                *c = true;
            }
        }
        let mut hf_plain = hf.clone();
        hf_plain.set_encode_special_tokens(true);
        Ok(Tokenizer { hf, hf_plain, pieces, bos_id, eos_id, eos_ids, add_bos, add_eos, chat_template, control })
    }

    /// Text to ids. `add_special` adds BOS (and EOS) when the model asks for it (GGUF `add_bos_token` /
    /// `add_eos_token`, or the Hugging Face post-processor); `parse_special` turns control-token text such as
    /// `<|im_start|>` into its id, otherwise it is tokenized as plain text. User-defined tokens are always matched,
    /// as in llama.cpp.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        if text.len() > ENCODE_BYTES_MAX {
            return Err(Error::Tokenizer(format!(
                "input is {} bytes, more than the {ENCODE_BYTES_MAX} one encode call accepts",
                text.len()
            )));
        }
        let hf = if parse_special { &self.hf } else { &self.hf_plain };
        // The GGUF tokenizer has no post-processor, so only a Hugging Face one can add anything here.
        let encoding = hf.encode_fast(text, add_special).map_err(|e| Error::Tokenizer(format!("encode: {e}")))?;
        let ids = encoding.get_ids();
        let mut out = Vec::with_capacity(ids.len() + 1);
        if let (true, true, Some(bos)) = (add_special, self.add_bos, self.bos_id) {
            if ids.first() != Some(&bos) {
                out.push(bos);
            }
        }
        out.extend_from_slice(ids);
        if let (true, true, Some(eos)) = (add_special, self.add_eos, self.eos_id) {
            out.push(eos);
        }
        Ok(out)
    }

    /// Ids to text: the bytes of every token (control tokens as their text), invalid UTF-8 replaced by U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.piece(id)?);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The raw bytes of one token after byte-level decoding (empty for an id outside the vocabulary).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.pieces.get(id as usize).cloned().unwrap_or_default()
    }

    /// Like [`Tokenizer::token_bytes`] without copying; an error for an id outside the vocabulary.
    pub fn piece(&self, id: u32) -> Result<&[u8]> {
        self.pieces.get(id as usize).map(Vec::as_slice).ok_or(Error::TokenOutOfRange { id, n_vocab: self.pieces.len() })
    }

    pub fn n_vocab(&self) -> usize {
        self.pieces.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Whether `encode(.., add_special = true, ..)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Every end-of-generation id: EOS, EOT, EOM and the `<|im_end|>`/`<|endoftext|>`-like tokens the vocabulary
    /// declares (llama.cpp's list), the declared EOS first.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether `id` is a control token (`<|im_start|>`, end-of-generation tokens, ...) rather than text.
    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    /// The control tokens whose text is one of `texts`.
    pub fn control_ids(&self, texts: &[&str]) -> Vec<u32> {
        let ids = self.control.iter().enumerate().filter(|&(_, &c)| c).map(|(id, _)| id as u32);
        ids.filter(|&id| self.piece(id).is_ok_and(|p| texts.iter().any(|t| t.as_bytes() == p))).collect()
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    pub fn bos_token(&self) -> Option<String> {
        self.bos_id.map(|id| String::from_utf8_lossy(&self.token_bytes(id)).into_owned())
    }

    /// The declared EOS token's text, else the first end-of-generation token's.
    pub fn eos_token(&self) -> Option<String> {
        let id = self.eos_id.or_else(|| self.eos_ids.first().copied())?;
        Some(String::from_utf8_lossy(&self.token_bytes(id)).into_owned())
    }
}

/// GPT-2's byte <-> printable-char table: bytes that are printable Latin-1 map to themselves, the rest, in order,
/// to U+0100, U+0101, ... (68 of them, so every mapped char is below U+0144).
fn byte_level_char_to_byte(c: char) -> Option<u8> {
    static TABLE: std::sync::OnceLock<[Option<u8>; 0x144]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let printable = |b: u8| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let mut table = [None; 0x144];
        let mut n_other = 0;
        for b in 0..=255u8 {
            if printable(b) {
                table[b as usize] = Some(b);
            } else {
                table[0x100 + n_other] = Some(b);
                n_other += 1;
            }
        }
        table
    });
    table.get(c as usize).copied().flatten()
}

/// A byte-level token's text to its bytes; a char outside the table is kept as its UTF-8 (llama.cpp marks it).
fn byte_level_bytes(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match byte_level_char_to_byte(c) {
            Some(b) => out.push(b),
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_is_gpt2s() {
        assert_eq!(byte_level_char_to_byte('Ġ'), Some(b' '));
        assert_eq!(byte_level_char_to_byte('Ċ'), Some(b'\n'));
        assert_eq!(byte_level_char_to_byte('A'), Some(b'A'));
        assert_eq!(byte_level_char_to_byte('\u{100}'), Some(0));
        assert_eq!(byte_level_char_to_byte(' '), None);
        let mut seen = [false; 256];
        for c in (0x21u32..0x200).filter_map(char::from_u32) {
            if let Some(b) = byte_level_char_to_byte(c) {
                assert!(!seen[b as usize], "byte {b} twice");
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
    }
}
