//! Any bytes as GGUF tokenizer metadata plus text: `Tokenizer::from_gguf` must return `Ok` or `Err`, and a
//! tokenizer it accepts must encode, decode and stream-decode that text without panicking or hanging.
//! `GgufTokenizerData::from_fuzz_bytes` (crates/engine/src/tokenizer/fuzz.rs) shapes the bytes into metadata close
//! to real (byte-level base vocabulary, merges between known tokens, special ids near the vocabulary size).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = engine::tokenizer::fuzz_gguf_tokenizer(data);
});
