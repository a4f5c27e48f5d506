//! Any bytes as a whole safetensors file: the length prefix check and `safetensors::parse_header` must return
//! `Ok` or `Err`, never panic, and every tensor they accept must lie inside the file with the right length.
#![no_main]

use std::path::Path;

use engine::formats::safetensors;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.safetensors");
    let file_len = data.len() as u64;
    let Some(prefix) = data.get(..8) else { return };
    let Ok(prefix) = <[u8; 8]>::try_from(prefix) else { return };
    let Ok(n) = safetensors::header_len(prefix, file_len, path) else { return };
    let header = &data[8..8 + n as usize];
    if let Ok(tensors) = safetensors::parse_header(header, file_len, path) {
        for t in &tensors {
            assert!(t.offset >= 8 + n && t.offset + t.len <= file_len, "{t:?}");
            assert_eq!((t.n_elems() * t.dtype.block_bytes()) as u64, t.len, "{t:?}");
        }
        for w in tensors.windows(2) {
            assert!(w[0].offset + w[0].len <= w[1].offset, "overlap: {w:?}");
        }
    }
});
