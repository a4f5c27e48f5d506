//! A synthetic byte-level BPE vocabulary of any size, shaped like Qwen's: the 256 byte tokens in GPT-2's
//! byte-to-unicode form, then made-up merges, then three control tokens (`<|endoftext|>`, `<|im_start|>`,
//! `<|im_end|>`).
//!
//! Merged tokens are built breadth first: level 2 is every `x + c` for `x` in {`Ġ` (space), `a`..`z`} and `c` in
//! `a`..`z`; level `k + 1` appends a letter to every level-`k` token. Every merge `"left right"` names two tokens
//! already in the vocabulary and its result is a new, distinct token, which both llama.cpp (`llama-vocab.cpp`
//! builds its rank table and asserts every token text is unique) and the `tokenizers` crate require.

use crate::tokenizer::token_type;
use crate::{Error, Result};

/// The token texts, their types, the merges (highest priority first) and the special ids.
pub(crate) struct Vocab {
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos_id: u32,
    pub eos_id: u32,
    pub pad_id: u32,
}

/// Control tokens at the end of the vocabulary: BOS and padding, (unused), EOS.
const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// GPT-2's byte -> char table (`bytes_to_unicode`).
pub(crate) fn byte_char(b: u8) -> char {
    let printable = |b: u8| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(0x100 + n).expect("0x100 + n is a valid char")
}

/// A vocabulary of exactly `n_vocab` tokens (at least 256 bytes + 3 specials).
pub(crate) fn build(n_vocab: usize) -> Result<Vocab> {
    let n_special = SPECIALS.len();
    if n_vocab < 256 + n_special {
        return Err(Error::Invalid(format!("a vocabulary needs at least {} tokens, got {n_vocab}", 256 + n_special)));
    }
    let n_merges = n_vocab - 256 - n_special;
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut merges = Vec::with_capacity(n_merges);
    let letters: Vec<char> = ('a'..='z').collect();
    let mut frontier: Vec<String> =
        std::iter::once(byte_char(b' ')).chain(letters.iter().copied()).map(String::from).collect();
    'levels: while merges.len() < n_merges {
        let mut next = Vec::with_capacity(frontier.len() * letters.len());
        for left in &frontier {
            for &c in &letters {
                if merges.len() == n_merges {
                    break 'levels;
                }
                merges.push(format!("{left} {c}"));
                let mut t = left.clone();
                t.push(c);
                tokens.push(t.clone());
                next.push(t);
            }
        }
        frontier = next;
    }
    let mut types = vec![token_type::NORMAL; tokens.len()];
    let first_special = tokens.len() as u32;
    for s in SPECIALS {
        tokens.push(s.to_string());
        types.push(token_type::CONTROL);
    }
    debug_assert_eq!(tokens.len(), n_vocab);
    Ok(Vocab { tokens, types, merges, bos_id: first_special, eos_id: first_special + 2, pad_id: first_special })
}

/// ChatML, as Qwen's models use.
pub(crate) const CHAT_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + \
     message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ \
     '<|im_start|>assistant\\n' }}{% endif %}";

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn tokens_unique_and_merges_closed() {
        for n in [259, 512, 5000, 40_000] {
            let v = build(n).expect("builds");
            assert_eq!(v.tokens.len(), n);
            let set: HashSet<&str> = v.tokens.iter().map(String::as_str).collect();
            assert_eq!(set.len(), n, "unique texts");
            for m in &v.merges {
                let (l, r) = m.split_once(' ').expect("two parts");
                assert!(set.contains(l) && set.contains(r) && set.contains(format!("{l}{r}").as_str()), "{m}");
            }
        }
        assert!(build(10).is_err());
    }
}
