//! Streamed detokenization: ids arrive one at a time, text leaves only as complete UTF-8.
//!
//! A byte-level token may end in the middle of a multi-byte character (an emoji is often 2-4 tokens). The decoder
//! keeps the incomplete tail (at most 3 bytes of a valid prefix) until the next token completes it; bytes that can
//! never become valid UTF-8 are replaced by U+FFFD at once so output is never held back indefinitely.

use super::Tokenizer;
use crate::error::Result;

/// Which control tokens (`<|im_start|>`, `<|channel|>`, ...) a decoded stream shows as their text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ControlText {
    /// Every one (llama.cpp's `--special`; what [`StreamDecoder::new`] does).
    #[default]
    Shown,
    /// None: text for a reader (llama.cpp's default).
    Hidden,
    /// Only these ids: the markers a chat output parser reads (gpt-oss's channels, GLM's tool-call tags; see
    /// [`crate::chat::Chat::control_text`]).
    Only(Vec<u32>),
}

impl ControlText {
    /// Whether token `id` adds its text to the stream.
    pub fn shows(&self, tokenizer: &Tokenizer, id: u32) -> bool {
        match self {
            ControlText::Shown => true,
            ControlText::Hidden => !tokenizer.is_control(id),
            ControlText::Only(ids) => !tokenizer.is_control(id) || ids.contains(&id),
        }
    }
}

/// Turns a stream of ids into a stream of valid UTF-8 text.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    /// Bytes not yet returned: at most an incomplete UTF-8 sequence after each `push`.
    pending: Vec<u8>,
    control: ControlText,
}

impl StreamDecoder {
    /// A decoder that shows every token, control tokens as their text.
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// A decoder that shows the control tokens `control` names and drops the others.
    pub fn showing(control: ControlText) -> StreamDecoder {
        StreamDecoder { pending: Vec::new(), control }
    }

    /// Adds one token; returns the text that is now complete (possibly empty). A control token the decoder hides
    /// adds nothing (its id must still be in the vocabulary).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        let piece = tokenizer.piece(id)?;
        if self.control.shows(tokenizer, id) {
            self.pending.extend_from_slice(piece);
        }
        Ok(self.take_complete())
    }

    /// Whether token `id` adds its text to this stream (see [`ControlText`]).
    pub fn shows(&self, tokenizer: &Tokenizer, id: u32) -> bool {
        self.control.shows(tokenizer, id)
    }

    /// Adds raw bytes (what [`StreamDecoder::push`] does after looking the token up).
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        self.take_complete()
    }

    /// Ends the stream: whatever is held back, with invalid bytes replaced by U+FFFD.
    pub fn flush(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        // An incomplete sequence at the end: wait for more bytes.
                        None => {
                            rest = after;
                            break;
                        }
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                    }
                }
            }
        }
        let n_keep = rest.len();
        let n_drop = self.pending.len() - n_keep;
        self.pending.drain(..n_drop);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(chunks: &[&[u8]]) -> (Vec<String>, String) {
        let mut d = StreamDecoder::new();
        let outs = chunks.iter().map(|c| d.push_bytes(c)).collect();
        (outs, d.flush())
    }

    #[test]
    fn emoji_split_across_tokens() {
        let emoji = "😀".as_bytes(); // F0 9F 98 80
        let (outs, rest) = feed(&[b"hi ", &emoji[..1], &emoji[1..3], &emoji[3..], b"!"]);
        assert_eq!(outs, ["hi ", "", "", "😀", "!"]);
        assert_eq!(rest, "");
    }

    #[test]
    fn cjk_split_and_joined_with_ascii() {
        let text = "中文".as_bytes(); // 6 bytes
        let (outs, rest) = feed(&[&text[..2], &text[2..4], &text[4..], b"ok"]);
        assert_eq!(outs.concat(), "中文ok");
        assert_eq!(outs[0], "");
        assert_eq!(outs[1], "中");
        assert_eq!(rest, "");
    }

    #[test]
    fn invalid_bytes_are_replaced_not_held() {
        let (outs, rest) = feed(&[b"a\xFFb", b"\xF0\x9F"]);
        assert_eq!(outs, ["a\u{FFFD}b", ""]);
        assert_eq!(rest, "\u{FFFD}");
    }
}
