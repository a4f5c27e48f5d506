//! Any bytes as the text of a route trace: one that loads replays only experts of the model. See
//! `engine::fuzz::route_trace`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    engine::fuzz::route_trace(data);
});
