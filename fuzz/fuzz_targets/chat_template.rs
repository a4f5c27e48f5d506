//! Any bytes as template source, messages and extra variables: rendering stops within its fuel and output bounds. See
//! `engine::fuzz::chat_template`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    engine::fuzz::chat_template(data);
});
