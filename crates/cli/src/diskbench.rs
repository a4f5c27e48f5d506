//! `flash-moe diskbench`: the disk's random-read bandwidth for expert-sized reads, measured with the same direct-I/O
//! path the expert cache uses (the physical limit of streaming: bytes missed / this bandwidth).

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use engine::experts::budget::parse_size;
use engine::experts::io::{IoPool, ReadReq, DIRECT_ALIGN};
use engine::tensor::AlignedBuf;

#[derive(Args)]
pub struct DiskbenchArgs {
    /// A large file on the disk to measure (the model file).
    pub file: PathBuf,
    /// Total bytes to read.
    #[arg(long, default_value = "2GiB")]
    pub bytes: String,
    /// Size of each read (about one expert's projection).
    #[arg(long, default_value = "1MiB")]
    pub chunk: String,
    /// Reads in flight (a layer's misses are all in flight together: top-k experts x 3 projections).
    #[arg(long = "in-flight", default_value_t = 16, allow_negative_numbers = true, value_parser = crate::args::at_least_one)]
    pub in_flight: usize,
    /// Read consecutive chunks (from the file's middle, wrapping at its end) instead of random ones: the
    /// bandwidth a warm start's coalesced reads can reach.
    #[arg(long)]
    pub sequential: bool,
}

pub fn main(a: DiskbenchArgs) -> Result<()> {
    let total = parse_size(&a.bytes).context("--bytes: not a size")?;
    let chunk = parse_size(&a.chunk).context("--chunk: not a size")? as usize;
    let chunk = chunk.div_ceil(DIRECT_ALIGN).max(1) * DIRECT_ALIGN;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&a.file)
        .with_context(|| format!("opening {} with O_DIRECT", a.file.display()))?;
    let meta = file.metadata()?;
    let size = meta.len();
    if size < (chunk as u64) * 4 {
        bail!("{}: too small to measure ({} bytes)", a.file.display(), size);
    }
    let file = Arc::new(file);
    let path = Arc::new(a.file.clone());
    let n_threads = a.in_flight.max(1);
    let io = IoPool::new(n_threads)?;
    let mut bufs: Vec<AlignedBuf> = (0..n_threads).map(|_| AlignedBuf::zeroed_aligned(chunk, DIRECT_ALIGN)).collect();
    let n_reads = (total / chunk as u64).max(1) as usize;
    let n_positions = (size - chunk as u64) / DIRECT_ALIGN as u64;
    let mut rng = 0x9E3779B97F4A7C15u64;
    let n_chunks = size / chunk as u64;
    let mut seq = n_chunks / 2;
    let t0 = Instant::now();
    let mut done = 0;
    while done < n_reads {
        let batch: Vec<ReadReq> = bufs
            .iter_mut()
            .take(n_reads - done)
            .map(|b| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                seq = (seq + 1) % n_chunks;
                let offset = if a.sequential { seq * chunk as u64 } else { (rng % n_positions) * DIRECT_ALIGN as u64 };
                ReadReq {
                    file: Arc::clone(&file),
                    path: Arc::clone(&path),
                    offset,
                    dst: b.as_ptr(),
                    len: chunk,
                    len_needed: chunk,
                    expected: engine::formats::FileStamp::of(&meta),
                }
            })
            .collect();
        let n = batch.len();
        io.submit(batch).wait().map_err(anyhow::Error::msg)?;
        done += n;
    }
    let secs = t0.elapsed().as_secs_f64();
    let bytes = (n_reads * chunk) as f64;
    println!(
        "disk {} reads: {} reads of {} KiB, {} in flight: {:.2} GB/s ({:.2} s)",
        if a.sequential { "sequential" } else { "random" },
        n_reads,
        chunk / 1024,
        n_threads,
        bytes / secs / 1e9,
        secs
    );
    Ok(())
}
