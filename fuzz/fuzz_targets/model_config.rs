//! Any bytes as `config.json` text for a fixture's weights: an accepted config loads and runs two tokens to finite
//! logits. See `engine::fuzz::model_config`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fixtures = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures"));
    engine::fuzz::model_config(data, fixtures);
});
