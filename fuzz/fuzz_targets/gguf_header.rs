//! Any bytes as a whole GGUF file: `gguf::parse` must return `Ok` or `Err`, never panic, hang or allocate more
//! than the input can justify, and every tensor it accepts must lie inside the file.
#![no_main]

use std::path::Path;

use engine::formats::gguf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let file_len = data.len() as u64;
    if let Ok((md, tensors)) = gguf::parse(data, file_len, Path::new("fuzz.gguf")) {
        assert!(md.alignment.is_power_of_two());
        assert!(md.data_offset % md.alignment == 0);
        for t in &tensors {
            assert!(t.offset >= md.data_offset && t.offset + t.len <= file_len, "{t:?}");
            let row = t.shape.last().copied().unwrap_or(1);
            let rows: usize = t.shape.iter().rev().skip(1).product();
            assert_eq!(t.dtype.row_bytes(row).map(|b| (b * rows) as u64), Some(t.len), "{t:?}");
        }
        for (_, v) in md.iter() {
            let _ = v.to_string();
        }
    }
});
