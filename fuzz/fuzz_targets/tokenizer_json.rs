//! Any bytes as a `tokenizer.json` and text: an accepted tokenizer encodes, decodes and stream-decodes the text. See
//! `engine::fuzz::tokenizer_json`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    engine::fuzz::tokenizer_json(data);
});
