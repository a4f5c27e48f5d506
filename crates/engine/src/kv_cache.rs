//! The KV cache of one attention layer: keys and values of every position, stored in f32 (the default), f16 or
//! Q8_0 (`-ctk`/`-ctv` like llama.cpp). A leaf module: the session owns one per attention layer, and the backends
//! read it.
//!
//! Values are stored rounded to the cache's type and read back as f32, so a run with an f16 cache computes
//! exactly what an f32 cache holding the same rounded values computes: every invariant (prefill == steps, streamed ==
//! resident) holds per KV type, and only the rounding of what is stored differs between types.

use kernels::{DType, KvRows};

use crate::{Error, Result};

/// How keys or values are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    #[default]
    F32,
    F16,
    /// 8-bit blocks of 32 values with an f16 scale (llama.cpp's Q8_0): about a quarter of f32.
    Q8_0,
}

impl KvType {
    pub fn parse(s: &str) -> Result<KvType> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            "q8_0" => Ok(KvType::Q8_0),
            _ => Err(Error::Invalid(format!("KV cache type '{s}': expected f32, f16 or q8_0"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
        }
    }

    fn dtype(self) -> DType {
        match self {
            KvType::F32 => DType::F32,
            KvType::F16 => DType::F16,
            KvType::Q8_0 => DType::Q8_0,
        }
    }

    /// Bytes of `n` values (`n` a whole number of blocks).
    pub fn bytes(self, n: usize) -> usize {
        self.dtype().row_bytes(n).unwrap_or(n * 4)
    }

    fn bytes_checked(self, n: usize) -> Option<usize> {
        n.checked_mul(self.dtype().block_bytes())?.checked_div(self.dtype().block_elems())
    }

    /// Whether a head of `head_dim` values can be stored (Q8_0 needs whole blocks of 32).
    pub fn fits(self, head_dim: usize) -> bool {
        self.dtype().row_bytes(head_dim).is_some()
    }
}

/// The storage types of keys and of values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvTypes {
    pub k: KvType,
    pub v: KvType,
}

impl KvTypes {
    /// Bytes per position of `kv_dim` keys and as many values.
    pub fn bytes_per_position(&self, kv_dim: usize) -> usize {
        self.k.bytes(kv_dim) + self.v.bytes(kv_dim)
    }
}

/// The kernel table for converting to and from the cache's types (chosen once per process).
fn kernels() -> &'static kernels::Kernels {
    static K: std::sync::OnceLock<kernels::Kernels> = std::sync::OnceLock::new();
    K.get_or_init(kernels::Kernels::detect)
}

/// One of the two halves of the cache.
enum Store {
    F32(Vec<f32>),
    /// Rows of blocks of the given type, one row of `head_dim` values per head.
    Quant(Vec<u8>, KvType),
}

impl Store {
    /// `None` where the memory cannot be had (a size that overflows, or an allocation the system refuses) instead
    /// of aborting the process. Zeroed pages are only committed as they are written.
    fn try_new(t: KvType, n: usize) -> Option<Store> {
        match t {
            KvType::F32 => Some(Store::F32(zeroed(n)?)),
            _ => Some(Store::Quant(zeroed(t.bytes_checked(n)?)?, t)),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Store::F32(v) => v.len() * 4,
            Store::Quant(v, _) => v.len(),
        }
    }
}

/// Keys and values of one layer, `[n_head_kv, n_ctx, head_dim]` each: head-major, so that attention reads each
/// head's positions as one sequential stream (position-major rows made each head a strided read of a fraction of
/// every row, which ran at a tenth of the memory's bandwidth once the cache outgrew the CPU's caches).
pub struct LayerKv {
    n_ctx: usize,
    kv_dim: usize,
    head_dim: usize,
    types: KvTypes,
    k: Store,
    v: Store,
}

impl LayerKv {
    /// A cache for `n_ctx` positions of `kv_dim` values, in heads of `head_dim` (each head one row of blocks);
    /// `None` where the memory cannot be allocated.
    pub fn try_new(n_ctx: usize, kv_dim: usize, head_dim: usize, types: KvTypes) -> Option<LayerKv> {
        assert!(types.k.fits(head_dim) && types.v.fits(head_dim), "KV type checked against the head size at load");
        let n = n_ctx.checked_mul(kv_dim)?;
        Some(LayerKv { n_ctx, kv_dim, head_dim, types, k: Store::try_new(types.k, n)?, v: Store::try_new(types.v, n)? })
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn types(&self) -> KvTypes {
        self.types
    }

    /// Stores keys and values (`[n, kv_dim]` f32) at positions `pos0..pos0 + n`, rounded to the cache's types.
    pub fn write(&mut self, pos0: usize, k: &[f32], v: &[f32]) {
        let (hd, kvd, n_ctx) = (self.head_dim, self.kv_dim, self.n_ctx);
        let n_head_kv = kvd / hd;
        for (store, src) in [(&mut self.k, k), (&mut self.v, v)] {
            for (i, pos) in src.chunks_exact(kvd).enumerate() {
                for (h, head) in pos.chunks_exact(hd).enumerate() {
                    let at = (h * n_ctx + pos0 + i) * hd;
                    match store {
                        Store::F32(buf) => buf[at..at + hd].copy_from_slice(head),
                        Store::Quant(buf, t) => {
                            let (b, head_bytes) = (t.bytes(at), t.bytes(hd));
                            kernels().quantize_row(t.dtype(), head, &mut buf[b..b + head_bytes]);
                        }
                    }
                }
            }
            debug_assert!(src.len() / kvd * kvd == src.len() && n_head_kv * hd == kvd);
        }
    }

    fn head<'a>(&'a self, store: &'a Store, pos: usize, head: usize, tmp: &'a mut [f32]) -> &'a [f32] {
        let rows = self.rows(store, head, pos..pos + 1, tmp);
        rows.data
    }

    /// Head `head`'s rows at the positions `pos`: contiguous in the cache (head-major), so an f32 cache is read in
    /// place and any other type is converted in one call.
    fn rows<'a>(
        &'a self,
        store: &'a Store,
        head: usize,
        pos: std::ops::Range<usize>,
        tmp: &'a mut [f32],
    ) -> KvRows<'a> {
        let (hd, n) = (self.head_dim, pos.len());
        let at = (head * self.n_ctx + pos.start) * hd;
        let data: &[f32] = match store {
            Store::F32(buf) => &buf[at..at + n * hd],
            Store::Quant(buf, t) => {
                kernels().dequantize_row(t.dtype(), &buf[t.bytes(at)..t.bytes(at + n * hd)], &mut tmp[..n * hd]);
                &tmp[..n * hd]
            }
        };
        KvRows { data, stride: hd, n, head_dim: hd }
    }

    /// The keys of KV head `head` at the positions `pos` as f32 rows: the cache itself when it stores f32, else
    /// converted into `tmp` (at least `pos.len() * head_dim` values).
    pub fn k_rows<'a>(&'a self, head: usize, pos: std::ops::Range<usize>, tmp: &'a mut [f32]) -> KvRows<'a> {
        self.rows(&self.k, head, pos, tmp)
    }

    /// The values of KV head `head` at the positions `pos`, as [`LayerKv::k_rows`].
    pub fn v_rows<'a>(&'a self, head: usize, pos: std::ops::Range<usize>, tmp: &'a mut [f32]) -> KvRows<'a> {
        self.rows(&self.v, head, pos, tmp)
    }

    /// Asks the CPU to bring the stored keys (`values` false) or values of head `head` at the positions `pos`
    /// into its caches: attention calls it a tile ahead of its reads, as a long context's cache streams from
    /// memory and the hardware prefetchers alone left the cores waiting on it.
    pub fn prefetch(&self, values: bool, head: usize, pos: std::ops::Range<usize>) {
        let hd = self.head_dim;
        let end = pos.end.min(self.n_ctx);
        let pos = pos.start.min(end)..end;
        let (at, end) = ((head * self.n_ctx + pos.start) * hd, (head * self.n_ctx + pos.end) * hd);
        match if values { &self.v } else { &self.k } {
            Store::F32(buf) => kernels::prefetch(kernels::f32_bytes(&buf[at..end])),
            Store::Quant(buf, t) => kernels::prefetch(&buf[t.bytes(at)..t.bytes(end)]),
        }
    }

    /// Whether keys and values are stored in f32 (read in place, with no conversion buffer).
    pub fn is_f32(&self) -> bool {
        matches!((&self.k, &self.v), (Store::F32(_), Store::F32(_)))
    }

    /// The keys of KV head `head` at position `pos`, as f32 (converted into `tmp`, of at least `head_dim`
    /// values, unless stored in f32).
    pub fn k_head<'a>(&'a self, pos: usize, head: usize, tmp: &'a mut [f32]) -> &'a [f32] {
        self.head(&self.k, pos, head, tmp)
    }

    /// The values of KV head `head` at position `pos`, as f32.
    pub fn v_head<'a>(&'a self, pos: usize, head: usize, tmp: &'a mut [f32]) -> &'a [f32] {
        self.head(&self.v, pos, head, tmp)
    }

    pub fn bytes(&self) -> usize {
        self.k.bytes() + self.v.bytes()
    }
}

/// `n` zeros, or `None` where the allocation fails (as `vec![T::default(); n]`, lazily committed, but without the
/// abort).
fn zeroed<T: Copy + Default>(n: usize) -> Option<Vec<T>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<T>(n).ok()?;
    // SAFETY: the layout's size is not zero. A non-null result is a fresh allocation of the global allocator with
    // exactly the layout a `Vec<T>` of capacity `n` uses, and all-zero bits are `n` valid values of the numeric
    // types used here (f32, u8), so the Vec built from it owns it with length and capacity `n`.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout).cast::<T>();
        (!p.is_null()).then(|| Vec::from_raw_parts(p, n, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32).map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    /// `x` as the cache's type stores it.
    fn rounded(t: KvType, x: &[f32]) -> Vec<f32> {
        let mut bytes = vec![0u8; t.bytes(x.len())];
        let mut out = vec![0.0f32; x.len()];
        kernels().quantize_row(t.dtype(), x, &mut bytes);
        kernels().dequantize_row(t.dtype(), &bytes, &mut out);
        out
    }

    /// Positions written one at a time and in batches read back, per head and per range of positions, as the
    /// values written (rounded to the cache's type), whatever the head, the range or the type.
    #[test]
    fn every_head_reads_back_what_was_written_at_its_positions() {
        let (n_ctx, hd, n_head_kv) = (70, 64, 3);
        let kv_dim = hd * n_head_kv;
        for t in [KvType::F32, KvType::F16, KvType::Q8_0] {
            let mut kv = LayerKv::try_new(n_ctx, kv_dim, hd, KvTypes { k: t, v: t }).expect("alloc");
            let (k, v) = (values(n_ctx * kv_dim, 1), values(n_ctx * kv_dim, 2));
            kv.write(0, &k[..kv_dim], &v[..kv_dim]);
            kv.write(1, &k[kv_dim..40 * kv_dim], &v[kv_dim..40 * kv_dim]);
            for p in 40..n_ctx {
                kv.write(p, &k[p * kv_dim..(p + 1) * kv_dim], &v[p * kv_dim..(p + 1) * kv_dim]);
            }
            let mut tmp = vec![0.0f32; n_ctx * hd];
            for h in 0..n_head_kv {
                for range in [0..n_ctx, 3..4, 17..59] {
                    for values in [false, true] {
                        let (rows, src) = match values {
                            false => (kv.k_rows(h, range.clone(), &mut tmp), &k),
                            true => (kv.v_rows(h, range.clone(), &mut tmp), &v),
                        };
                        assert_eq!((rows.n, rows.head_dim), (range.len(), hd));
                        for (j, p) in range.clone().enumerate() {
                            let want = rounded(t, &src[p * kv_dim + h * hd..p * kv_dim + (h + 1) * hd]);
                            assert_eq!(rows.row(j), &want[..], "{t:?} head {h} position {p} values {values}");
                        }
                    }
                }
                // A hint for any range, past the end or empty included (attention asks for the tile after the last).
                for range in [60..200, std::ops::Range { start: 90, end: 80 }, 0..n_ctx] {
                    kv.prefetch(false, h, range.clone());
                    kv.prefetch(true, h, range);
                }
                let want = rounded(t, &k[5 * kv_dim + h * hd..5 * kv_dim + (h + 1) * hd]);
                assert_eq!(kv.k_head(5, h, &mut tmp), &want[..]);
            }
        }
    }
}
