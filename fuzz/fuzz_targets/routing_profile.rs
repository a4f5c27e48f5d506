//! Any bytes as the text of a routing profile: one that loads makes a cache plan that fits the cache. See
//! `engine::fuzz::routing_profile`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    engine::fuzz::routing_profile(data);
});
