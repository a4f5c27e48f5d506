//! Large reads at load time (whole tensors, a layer's stacked experts) that bypass the page cache.
//!
//! A buffered read of a file as large as RAM fills the page cache with pages that the copy in RAM then has to push
//! out: the kernel reclaims (and compacts, for huge pages) while the load runs, and in a memory cgroup the page
//! cache is charged too. A direct (`O_DIRECT`) read moves the bytes from the disk into 4 KiB-aligned buffers with no
//! page cache at all; one thread reads the next chunk while the caller copies the last one to its place (the
//! tensor's offset in the file is rarely aligned as direct reads need, so a copy is needed anyway).
//!
//! Direct reads pay off only where the page cache would not survive the load: for a file that fits in memory twice
//! the page cache makes the next load of it fast, so loads that small stay buffered ([`direct_wanted`]).

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::mpsc::{channel, sync_channel};

use super::{FileStamp, ModelFile};
use crate::tensor::AlignedBuf;
use crate::{Error, Result};

/// Reads at least this long go direct (smaller ones are not worth a thread and two buffers).
pub const DIRECT_MIN: usize = 4 << 20;

/// The chunk of one direct read.
const CHUNK: usize = 8 << 20;

/// Chunks in flight between the reading thread and the copy.
const CHUNKS: usize = 3;

/// What direct reads need: offsets, lengths and buffers in whole blocks (the expert reads' 4 KiB).
const ALIGN: u64 = crate::experts::io::DIRECT_ALIGN as u64;

/// Whether a load of `bytes` should read directly: when the file's pages and the copy of them in memory would not
/// both fit in the memory this process may use (the cgroup limit or the available memory).
/// `FLASH_MOE_DIRECT_LOAD=0` or `=1` decides instead (to measure both ways).
pub fn direct_wanted(bytes: u64) -> bool {
    match std::env::var("FLASH_MOE_DIRECT_LOAD").ok().as_deref() {
        Some("0") => return false,
        Some("1") => return true,
        _ => {}
    }
    bytes.saturating_mul(2) > crate::experts::budget::memory_limit().0
}

/// Reads `dst.len()` bytes at `offset` of `mf` directly. `Ok(false)` where the file system refuses direct reads
/// (the caller reads buffered instead); an error for a short file, a failed read or a file changed since it was
/// opened.
pub fn read_direct(mf: &ModelFile, offset: u64, dst: &mut [u8]) -> Result<bool> {
    let Ok(f) = OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&mf.path) else { return Ok(false) };
    let meta = f.metadata().map_err(|e| Error::io(&mf.path, e))?;
    if let Some(change) = FileStamp::of(&meta).change_since(&mf.stamp) {
        return Err(Error::format(
            &mf.path,
            format!("changed since it was opened ({change}): the model file was replaced or rewritten"),
        ));
    }
    let len = dst.len() as u64;
    let end = offset.checked_add(len).filter(|&e| e <= mf.stamp.size).ok_or_else(|| {
        Error::format(&mf.path, format!("truncated: reading {len} bytes at offset {offset} goes past the end"))
    })?;
    let start = offset / ALIGN * ALIGN;
    let (free_tx, free_rx) = channel::<AlignedBuf>();
    let (full_tx, full_rx) = sync_channel::<(u64, AlignedBuf, usize)>(CHUNKS);
    for _ in 0..CHUNKS {
        let _ = free_tx.send(AlignedBuf::zeroed_aligned(CHUNK, ALIGN as usize));
    }
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> std::io::Result<()> {
            let mut pos = start;
            while pos < end {
                // The copying side stopped (an error): stop too.
                let Ok(mut buf) = free_rx.recv() else { return Ok(()) };
                let want = (end - pos).div_ceil(ALIGN) * ALIGN;
                let n = want.min(CHUNK as u64) as usize;
                let got = crate::experts::io::read_full(&f, &mut buf.as_mut_slice()[..n], pos)?;
                if full_tx.send((pos, buf, got)).is_err() {
                    return Ok(());
                }
                pos += n as u64;
            }
            Ok(())
        });
        let mut copied = 0u64;
        while copied < len {
            let Ok((pos, buf, got)) = full_rx.recv() else { break };
            // The part of [pos, pos + got) inside [offset, end).
            let from = offset.max(pos);
            let to = end.min(pos + got as u64);
            if to <= from {
                break;
            }
            dst[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&buf.as_slice()[(from - pos) as usize..(to - pos) as usize]);
            copied += to - from;
            let _ = free_tx.send(buf);
            if to < end && got % ALIGN as usize != 0 {
                break;
            }
        }
        drop(full_rx);
        drop(free_tx);
        match reader.join() {
            Ok(Ok(())) if copied == len => Ok(true),
            // The file system opened the file for direct reads but refuses them (some do): read buffered.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) && copied == 0 => Ok(false),
            Ok(Err(e)) => Err(Error::io(&mf.path, e)),
            Ok(Ok(())) => Err(Error::format(
                &mf.path,
                format!("truncated: reading {len} bytes at offset {offset} goes past the end"),
            )),
            Err(_) => Err(Error::Invalid(format!("reading {}: the reading thread failed", mf.path.display()))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `len` bytes that tell their offset, opened as a model file.
    fn pattern_file(name: &str, len: usize) -> (std::path::PathBuf, Vec<u8>, ModelFile) {
        let path = std::env::temp_dir().join(format!("flash-moe-bulk-{name}-{}.bin", std::process::id()));
        let bytes: Vec<u8> = (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3]).collect();
        std::fs::write(&path, &bytes).expect("write");
        let mf = ModelFile::open(&path).expect("open");
        (path, bytes, mf)
    }

    #[test]
    fn direct_reads_give_the_bytes_at_any_offset_and_length() {
        let len = 2 * CHUNK + 3 * 4096 + 123;
        let (path, bytes, mf) = pattern_file("ranges", len);
        let cases = [
            (0, len),
            (0, 1),
            (1, len - 1),
            (4095, 4097),
            (32, CHUNK),
            (CHUNK - 7, CHUNK + 14),
            (len - CHUNK - 5, CHUNK + 5),
            (len - 1, 1),
            (123_456, 2 * CHUNK - 200_000),
        ];
        for (offset, n) in cases {
            let mut dst = vec![0u8; n];
            match read_direct(&mf, offset as u64, &mut dst) {
                Ok(true) => assert!(dst == bytes[offset..offset + n], "bytes differ at offset {offset}, length {n}"),
                // A file system without direct reads (tmpfs): nothing to check here.
                Ok(false) => return,
                Err(e) => panic!("offset {offset}, length {n}: {e}"),
            }
        }
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_read_past_the_end_or_of_a_changed_file_is_an_error() {
        let (path, _, mf) = pattern_file("errors", CHUNK + 100);
        let mut dst = vec![0u8; 200];
        let e = read_direct(&mf, (CHUNK - 50) as u64 + 100, &mut dst).expect_err("past the end");
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = read_direct(&mf, u64::MAX - 10, &mut dst).expect_err("offset overflows");
        assert!(e.to_string().contains("truncated"), "{e}");
        std::fs::write(&path, vec![1u8; CHUNK + 100]).expect("rewrite");
        match read_direct(&mf, 0, &mut dst) {
            Ok(false) => {}
            Ok(true) => panic!("read a rewritten file"),
            Err(e) => assert!(e.to_string().contains("changed since it was opened"), "{e}"),
        }
        let _ = std::fs::remove_file(path);
    }
}
