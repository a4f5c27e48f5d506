//! Entry points for fuzzing the tokenizer loaders with arbitrary bytes (called by the `fuzz/` cargo-fuzz targets).
//!
//! [`GgufTokenizerData::from_fuzz_bytes`] turns any byte string into tokenizer metadata that is close enough to
//! real to reach deep into [`Tokenizer::from_gguf`] (a byte-level base vocabulary, merges between known tokens,
//! special ids near the vocabulary size), and [`fuzz_gguf_tokenizer`] builds it and round-trips some text. Neither
//! may panic or hang on any input.

use super::gguf::token_type;
use super::pre::SUPPORTED;
use super::{GgufTokenizerData, StreamDecoder, Tokenizer};

/// Reads fuzz bytes front to back; returns zeros once they run out.
struct Bytes<'a> {
    data: &'a [u8],
}

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }

    fn id(&mut self, n_vocab: usize) -> Option<u32> {
        match self.u8() % 4 {
            0 => None,
            // Often just inside or just outside the vocabulary.
            1 => Some((n_vocab as u32).saturating_sub(1) + u32::from(self.u8() % 3)),
            _ => Some(u32::from(self.u16())),
        }
    }

    fn string(&mut self, len_max: usize) -> String {
        let len = (self.u8() as usize) % (len_max + 1);
        let n = len.min(self.data.len());
        let (s, rest) = self.data.split_at(n);
        self.data = rest;
        String::from_utf8_lossy(s).into_owned()
    }
}

impl GgufTokenizerData {
    /// Deterministic metadata from arbitrary bytes, for fuzzing [`Tokenizer::from_gguf`].
    pub fn from_fuzz_bytes(data: &[u8]) -> GgufTokenizerData {
        let mut b = Bytes { data };
        let model = match b.u8() % 8 {
            0 => "llama".to_string(),
            1 => b.string(8),
            _ => "gpt2".to_string(),
        };
        let names: Vec<&str> = SUPPORTED.iter().flat_map(|(_, n)| n.iter().copied()).collect();
        let pre = match b.u8() {
            0 => None,
            1 => Some(b.string(12)),
            k => Some(names[k as usize % names.len()].to_string()),
        };
        // The 256 byte-level chars, then tokens from the input.
        let mut tokens: Vec<String> = (0u32..=0xFF)
            .map(|c| if c < 0x21 { 0x100 + c } else { c })
            .filter_map(char::from_u32)
            .map(String::from)
            .collect();
        if b.u8() & 15 == 0 {
            tokens.clear();
        }
        let n_extra = b.u8() as usize;
        for _ in 0..n_extra {
            tokens.push(b.string(24));
        }
        let mut token_types = vec![token_type::NORMAL; tokens.len()];
        for _ in 0..(b.u8() % 8) {
            let i = b.u16() as usize;
            if let Some(t) = token_types.get_mut(i) {
                *t = i32::from(b.u8() % 8);
            }
        }
        let mut merges = Vec::new();
        for _ in 0..b.u8() {
            let merge = match b.u8() % 8 {
                0 => b.string(16),
                _ if tokens.is_empty() => String::new(),
                _ => {
                    let l = &tokens[b.u16() as usize % tokens.len()];
                    let r = &tokens[b.u16() as usize % tokens.len()];
                    format!("{l} {r}")
                }
            };
            merges.push(merge);
        }
        let n_vocab = tokens.len();
        GgufTokenizerData {
            model,
            pre,
            token_types: (b.u8() & 3 != 0).then_some(token_types),
            merges,
            bos_id: b.id(n_vocab),
            eos_id: b.id(n_vocab),
            eot_id: b.id(n_vocab),
            eom_id: b.id(n_vocab),
            pad_id: b.id(n_vocab),
            unk_id: b.id(n_vocab),
            add_bos: Some(b.u8() & 1 == 0),
            add_eos: None,
            chat_template: None,
            tokens,
        }
    }
}

/// Builds a tokenizer from fuzz bytes and, if that succeeds, encodes and decodes text taken from the same bytes.
/// Returns whether the tokenizer was built. Must never panic.
pub fn fuzz_gguf_tokenizer(data: &[u8]) -> bool {
    let split = data.len().min(usize::from(data.first().copied().unwrap_or(0)) * 8);
    let (meta, text) = data.split_at(split);
    let Ok(tokenizer) = Tokenizer::from_gguf(GgufTokenizerData::from_fuzz_bytes(meta)) else {
        return false;
    };
    let text = String::from_utf8_lossy(text);
    for parse_special in [false, true] {
        if let Ok(ids) = tokenizer.encode(&text, true, parse_special) {
            let _ = tokenizer.decode(&ids);
            let mut stream = StreamDecoder::new();
            for &id in &ids {
                let _ = stream.push(&tokenizer, id);
            }
            let _ = stream.flush();
        }
    }
    for id in [0, 1, u32::MAX, tokenizer.n_vocab() as u32] {
        let _ = tokenizer.token_bytes(id);
        let _ = tokenizer.is_eog(id);
    }
    true
}
