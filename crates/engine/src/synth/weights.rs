//! Where the synthetic weights come from: a seeded PRNG, random rows quantized with the engine's reference
//! quantizers, and pools of quantized rows that expert tensors are assembled from.
//!
//! Every row is a pure function of (seed, tensor, row index), so the output does not depend on the number of
//! threads or on the chunking.
//!
//! # Why matrix rows come from a pool
//! The k-quant reference quantizers run at a few M values/s per core here (Q4_K searches 20 scales per 32
//! values; `small` at q4_k, fully random, came out at 13 MB/s): quantizing the 30 G values of a 30B model would
//! take about an hour on 2 cores, while the disk takes about 2 minutes. So only the norms and the router (F32, small) are fully random; each row of every
//! matrix (embeddings, attention, experts, output) is copied from a pool of [`POOL_ROWS`] fully random
//! quantized rows (one pool per type, row length and sigma), chosen by a hash of (tensor, row) and rotated by
//! a hashed number of whole blocks. Rotating blocks keeps every block valid; two experts share a given row
//! with probability 1 / (`POOL_ROWS` x blocks per row), so experts are distinct (a cache that served the
//! wrong expert would change the logits), at memcpy speed.

use kernels::{DType, Kernels};

/// Rows per expert row pool.
pub(crate) const POOL_ROWS: usize = 4096;

/// SplitMix64's finaliser: a fast, well-mixed 64-bit hash.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of a name, to derive per-tensor seeds.
pub(crate) fn hash_name(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3))
}

/// SplitMix64: one add and one [`mix64`] per 64 bits.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(mix64(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Approximately N(0, 1): the Irwin-Hall sum of four 16-bit uniforms, centred and scaled to unit variance
    /// (bounded by +-3.46; plenty for random weights, and ~10x cheaper than Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let r = self.next_u64();
        let s = (r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48);
        ((s as f32 + 2.0) / 65536.0 - 2.0) * 1.732_050_8
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// How the rows of one tensor are made.
pub(crate) enum RowSource<'a> {
    /// N(0, sigma) values, quantized to the tensor's type (the pools' rows).
    Gaussian { sigma: f32 },
    /// `1 + 0.1 N(0, 1)`: RMSNorm weights.
    Norm,
    /// Row `r` is N(0, sigma * scales[r]): the router, whose row scales make some experts more popular.
    Scaled { sigma: f32, scales: Vec<f32> },
    /// Copied from a pool of quantized rows.
    Pooled(&'a RowPool),
    /// Uniform in `lo..hi` (the DeltaNet decay rates).
    Uniform { lo: f32, hi: f32 },
}

impl RowSource<'_> {
    /// Fills `dst` (one row of `dtype`, `x.len()` values) with row `row` of the tensor seeded `seed`.
    pub fn fill_row(&self, k: &Kernels, dtype: DType, seed: u64, row: usize, x: &mut [f32], dst: &mut [u8]) {
        let row_seed = seed ^ mix64(row as u64);
        match self {
            RowSource::Pooled(pool) => pool.copy_row(row_seed, dst),
            RowSource::Gaussian { sigma } => gaussian(k, dtype, *sigma, row_seed, x, dst),
            RowSource::Scaled { sigma, scales } => gaussian(k, dtype, sigma * scales[row], row_seed, x, dst),
            RowSource::Uniform { lo, hi } => {
                let mut rng = Rng::new(row_seed);
                x.iter_mut().for_each(|v| *v = lo + (hi - lo) * ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32));
                k.quantize_row(dtype, x, dst);
            }
            RowSource::Norm => {
                let mut rng = Rng::new(row_seed);
                x.iter_mut().for_each(|v| *v = 1.0 + 0.1 * rng.normal());
                k.quantize_row(dtype, x, dst);
            }
        }
    }
}

fn gaussian(k: &Kernels, dtype: DType, sigma: f32, seed: u64, x: &mut [f32], dst: &mut [u8]) {
    let mut rng = Rng::new(seed);
    x.iter_mut().for_each(|v| *v = sigma * rng.normal());
    k.quantize_row(dtype, x, dst);
}

/// [`POOL_ROWS`] random quantized rows of one type and length.
pub(crate) struct RowPool {
    row_bytes: usize,
    block_bytes: usize,
    data: Vec<u8>, // [POOL_ROWS, row_bytes]
}

impl RowPool {
    /// A pool of N(0, sigma) rows of `cols` values in `dtype`, made on `n_threads` threads.
    pub fn new(k: &Kernels, dtype: DType, cols: usize, sigma: f32, seed: u64, n_threads: usize) -> RowPool {
        let row_bytes = dtype.row_bytes(cols).expect("pool rows are whole blocks");
        let mut data = vec![0u8; POOL_ROWS * row_bytes];
        let src = RowSource::Gaussian { sigma };
        fill_rows(k, &src, dtype, cols, seed, 0, &mut data, n_threads);
        RowPool { row_bytes, block_bytes: dtype.block_bytes(), data }
    }

    /// Copies pool row `h % POOL_ROWS`, rotated left by `(h >> 32) % n_blocks` blocks, into `dst`.
    fn copy_row(&self, h: u64, dst: &mut [u8]) {
        let h = mix64(h);
        let i = (h % POOL_ROWS as u64) as usize;
        let n_blocks = self.row_bytes / self.block_bytes;
        let cut = ((h >> 32) % n_blocks as u64) as usize * self.block_bytes;
        let src = &self.data[i * self.row_bytes..(i + 1) * self.row_bytes];
        let tail = self.row_bytes - cut;
        dst[..tail].copy_from_slice(&src[cut..]);
        dst[tail..].copy_from_slice(&src[..cut]);
    }
}

/// Fills `dst` (whole rows of `cols` values in `dtype`), the rows from `row0` on, splitting the rows over
/// `n_threads` scoped threads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fill_rows(
    k: &Kernels,
    src: &RowSource<'_>,
    dtype: DType,
    cols: usize,
    seed: u64,
    row0: usize,
    dst: &mut [u8],
    n_threads: usize,
) {
    let row_bytes = dtype.row_bytes(cols).expect("rows are whole blocks");
    assert_eq!(dst.len() % row_bytes, 0, "fill_rows: whole rows");
    let n_rows = dst.len() / row_bytes;
    // Pool copies run at memcpy speed: threads would cost more than they save.
    let n_threads = if matches!(src, RowSource::Pooled(_)) { 1 } else { n_threads.clamp(1, n_rows.max(1)) };
    let per = n_rows.div_ceil(n_threads).max(1);
    let work = |part: &mut [u8], first: usize| {
        let mut x = vec![0.0f32; cols];
        for (j, row) in part.chunks_mut(row_bytes).enumerate() {
            src.fill_row(k, dtype, seed, first + j, &mut x, row);
        }
    };
    if n_threads == 1 {
        work(dst, row0);
        return;
    }
    std::thread::scope(|s| {
        for (i, part) in dst.chunks_mut(per * row_bytes).enumerate() {
            let work = &work;
            s.spawn(move || work(part, row0 + i * per));
        }
    });
}

/// Router row scales for one layer: expert `e` of popularity rank `r` (a seeded permutation, so the popular
/// experts differ per layer) gets `(1 + r)^-skew`, normalised to unit root-mean-square. `skew = 0` gives every
/// expert the same scale. A larger scale widens the expert's logit distribution; as top-k keeps the upper tail
/// (k < n/2), wider experts are chosen more often.
pub(crate) fn router_scales(n_expert: usize, skew: f32, seed: u64) -> Vec<f32> {
    let mut rank: Vec<usize> = (0..n_expert).collect();
    let mut rng = Rng::new(seed);
    for i in (1..n_expert).rev() {
        let j = rng.below(i + 1);
        rank.swap(i, j);
    }
    let raw: Vec<f32> = rank.iter().map(|&r| (1.0 + r as f32).powf(-skew)).collect();
    let rms = (raw.iter().map(|s| s * s).sum::<f32>() / n_expert.max(1) as f32).sqrt();
    raw.iter().map(|s| s / rms).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_has_unit_variance() {
        let mut rng = Rng::new(7);
        let n = 200_000;
        let xs: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        let mean = xs.iter().sum::<f32>() / n as f32;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n as f32;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.02, "mean {mean} var {var}");
    }

    #[test]
    fn rows_do_not_depend_on_threads() {
        let k = Kernels::detect();
        let src = RowSource::Gaussian { sigma: 0.05 };
        let dtype = DType::Q4_K;
        let mut a = vec![0u8; 7 * dtype.row_bytes(256).expect("whole")];
        let mut b = a.clone();
        fill_rows(&k, &src, dtype, 256, 42, 3, &mut a, 1);
        fill_rows(&k, &src, dtype, 256, 42, 3, &mut b, 3);
        assert_eq!(a, b);
    }

    #[test]
    fn router_scales_unit_rms_and_skewed() {
        let flat = router_scales(16, 0.0, 1);
        assert!(flat.iter().all(|&s| (s - 1.0).abs() < 1e-6));
        let skewed = router_scales(16, 1.0, 1);
        let rms = (skewed.iter().map(|s| s * s).sum::<f32>() / 16.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-5);
        let max = skewed.iter().copied().fold(0.0, f32::max);
        let min = skewed.iter().copied().fold(f32::MAX, f32::min);
        assert!((max / min - 16.0).abs() < 1e-3);
    }
}
