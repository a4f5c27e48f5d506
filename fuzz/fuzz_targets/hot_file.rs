//! Any bytes as the text of a hot file: one that loads names only experts of the model. See `engine::fuzz::hot_file`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    engine::fuzz::hot_file(data);
});
