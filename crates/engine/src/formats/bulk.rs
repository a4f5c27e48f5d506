//! Large reads at load time (whole tensors, a layer's stacked experts) that bypass the page cache.
//!
//! A buffered read of a file as large as RAM fills the page cache with pages that the copy in RAM then has to push
//! out: the kernel reclaims (and compacts, for huge pages) while the load runs, and in a memory cgroup the page
//! cache is charged too. A direct (`O_DIRECT`) read moves the bytes from the disk into 4 KiB-aligned buffers with no
//! page cache at all; one thread reads the next chunk while the caller copies the last one to its place (the
//! tensor's offset in the file is rarely aligned as direct reads need, so a copy is needed anyway).
//!
//! Direct reads pay off only where the page cache would not survive the load: for a file that fits in memory twice
//! the page cache makes the next load of it fast, so loads that small stay buffered ([`direct_wanted`]); and a range
//! whose pages the page cache mostly holds already (another program read the file) is copied from there
//! ([`better_buffered`]).

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

/// `FLASH_MOE_DIRECT_LOAD`: `Some(false)` for `0`, `Some(true)` for `1` (direct reads forced, even of pages the
/// page cache holds), else `None`.
fn forced() -> Option<bool> {
    match std::env::var("FLASH_MOE_DIRECT_LOAD").ok().as_deref() {
        Some("0") => Some(false),
        Some("1") => Some(true),
        _ => None,
    }
}

/// Whether a load of `bytes` should read directly: when the file's pages and the copy of them in memory would not
/// both fit in the memory this process may use (the cgroup limit or the available memory).
/// `FLASH_MOE_DIRECT_LOAD=0` or `=1` decides instead (to measure both ways).
pub fn direct_wanted(bytes: u64) -> bool {
    forced().unwrap_or_else(|| bytes.saturating_mul(2) > crate::experts::budget::memory_limit().0)
}

/// Whether a direct read of `len` bytes at `offset` of `mf` should give way to a buffered one: where most of its
/// pages are in the page cache already (another program, or an earlier run, read the file), copying them from
/// memory beats reading them from the disk again, and adds no page cache. Not when direct reads are forced.
pub fn better_buffered(mf: &ModelFile, offset: u64, len: u64) -> bool {
    forced() != Some(true) && cached_fraction(&mf.file, offset, len) >= 0.5
}

/// The fraction of the pages of `len` bytes at `offset` of `file` that the page cache holds (`mincore` over a
/// mapping that nothing reads); 0 where it cannot be told.
fn cached_fraction(file: &std::fs::File, offset: u64, len: u64) -> f64 {
    use std::os::fd::AsRawFd;
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as u64,
        _ => return 0.0,
    };
    let start = offset / page * page;
    let Some(map_len) = offset.checked_add(len).map(|end| end - start).filter(|&l| l > 0) else { return 0.0 };
    let (Ok(map_len), Ok(at)) = (usize::try_from(map_len), libc::off_t::try_from(start)) else { return 0.0 };
    let mut resident = vec![0u8; map_len.div_ceil(page as usize)];
    // SAFETY: a read-only shared mapping of an open file, never dereferenced: `mincore` only asks the kernel which
    // of its pages are resident, writing one byte per page into `resident` (sized for them); it is unmapped before
    // returning. A mapping past the file's end is refused by the kernel or reported as not resident.
    let ok = unsafe {
        let p = libc::mmap(std::ptr::null_mut(), map_len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), at);
        if p == libc::MAP_FAILED {
            return 0.0;
        }
        let r = libc::mincore(p, map_len, resident.as_mut_ptr());
        libc::munmap(p, map_len);
        r == 0
    };
    if !ok {
        return 0.0;
    }
    resident.iter().filter(|&&b| b & 1 == 1).count() as f64 / resident.len() as f64
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

    /// A file just written is in the page cache (a read of it would go buffered); once its pages are dropped it is
    /// not, and a read brings them back. (A file system without a page cache to drop, such as tmpfs, keeps them:
    /// then only the first and last cases are checked.)
    #[test]
    fn the_page_cache_is_asked_before_reading_direct() {
        let len = 3 * DIRECT_MIN + 5;
        let (path, _, mf) = pattern_file("cached", len);
        mf.file.sync_all().expect("sync");
        assert!(cached_fraction(&mf.file, 0, len as u64) > 0.9, "a file just written is in the page cache");
        assert!(cached_fraction(&mf.file, 4095, 2 * DIRECT_MIN as u64) > 0.9);
        assert_eq!(cached_fraction(&mf.file, len as u64 + (1 << 20), 1 << 20), 0.0, "past the end");
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;
        // SAFETY: advice on an open file's range; no memory is involved.
        let dropped = unsafe { libc::posix_fadvise(mf.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) } == 0
            && cached_fraction(&mf.file, 0, len as u64) < 0.5;
        if dropped {
            assert!(!better_buffered(&mf, 0, len as u64));
            let mut dst = vec![0u8; len];
            mf.file.read_exact_at(&mut dst, 0).expect("read");
            assert!(cached_fraction(&mf.file, 0, len as u64) > 0.9, "a buffered read fills the page cache");
        }
        assert!(better_buffered(&mf, 0, len as u64) || forced() == Some(true));
        let _ = std::fs::remove_file(path);
    }
}
