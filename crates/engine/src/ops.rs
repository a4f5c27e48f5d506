//! The compute context and the operations the layers are written in.
//!
//! [`Cpu`] bundles the kernel table (chosen once from the CPU's features) and the thread pool. [`matmul`] is the
//! one place where rows of a weight matrix are spread over threads; every output element is one kernel call on
//! the same bytes whatever the batch size or thread count, so prefill of n tokens gives bit-identical results to
//! n single-token steps.

use kernels::{DType, Kernels};

use crate::pool::ThreadPool;
use crate::tensor::QMatRef;

/// Kernels plus threads: what every forward pass needs.
pub struct Cpu {
    pub kernels: Kernels,
    pub pool: ThreadPool,
}

impl Cpu {
    pub fn new(n_threads: usize) -> Cpu {
        Cpu { kernels: Kernels::detect(), pool: ThreadPool::new(n_threads) }
    }

    pub fn with_kernels(kernels: Kernels, n_threads: usize) -> Cpu {
        Cpu { kernels, pool: ThreadPool::new(n_threads) }
    }
}

/// Activation rows converted to the type a weight type's dot product takes (`Kernels::act_type`: the weight
/// type's `vec_dot_type`, or F32 for MLX weights when the table asks for it).
#[derive(Default)]
pub struct QuantActs {
    dtype: Option<DType>,
    cols: usize,
    n_rows: usize,
    row_bytes: usize,
    data: Vec<u8>, // [n_rows, row_bytes]
}

impl QuantActs {
    /// Converts `x` (`[n_rows, cols]`) for dot products with weights of type `weight`, reusing the buffer.
    pub fn quantize(&mut self, k: &Kernels, weight: DType, x: &[f32], cols: usize) {
        assert!(cols > 0 && x.len().is_multiple_of(cols), "QuantActs: {} values are not rows of {cols}", x.len());
        let dtype = k.act_type(weight);
        let row_bytes = dtype.row_bytes(cols).expect("activation row length is a whole number of blocks");
        let n_rows = x.len() / cols;
        self.data.resize(n_rows * row_bytes, 0);
        for (src, dst) in x.chunks_exact(cols).zip(self.data.chunks_exact_mut(row_bytes)) {
            k.quantize_row(dtype, src, dst);
        }
        self.dtype = Some(dtype);
        self.cols = cols;
        self.n_rows = n_rows;
        self.row_bytes = row_bytes;
    }

    /// [`QuantActs::quantize`] with the rows spread over `cpu`'s threads when there are many (a prompt batch):
    /// each row is converted by the same kernel either way.
    pub fn quantize_on(&mut self, cpu: &Cpu, weight: DType, x: &[f32], cols: usize) {
        let n_rows = x.len().checked_div(cols).unwrap_or(0);
        if n_rows < PAR_ROWS_MIN || cpu.pool.n_threads() == 1 {
            return self.quantize(&cpu.kernels, weight, x, cols);
        }
        assert!(x.len().is_multiple_of(cols), "QuantActs: {} values are not rows of {cols}", x.len());
        let k = &cpu.kernels;
        let dtype = k.act_type(weight);
        let row_bytes = dtype.row_bytes(cols).expect("activation row length is a whole number of blocks");
        self.data.resize(n_rows * row_bytes, 0);
        let dst = SharedBytes(self.data.as_mut_ptr());
        cpu.pool.for_chunks(n_rows, cpu.pool.chunk_size(n_rows, 1), &|rows| {
            for r in rows {
                // SAFETY: rows are partitioned among the threads, row r's bytes lie within `data` (resized above),
                // and the buffer outlives the pool call.
                let out = unsafe { std::slice::from_raw_parts_mut(dst.get().add(r * row_bytes), row_bytes) };
                k.quantize_row(dtype, &x[r * cols..(r + 1) * cols], out);
            }
        });
        self.dtype = Some(dtype);
        self.cols = cols;
        self.n_rows = n_rows;
        self.row_bytes = row_bytes;
    }

    /// Whether the buffer already holds rows for weights of type `weight` (so q, k and v share one conversion).
    pub fn is_for(&self, k: &Kernels, weight: DType, cols: usize) -> bool {
        self.dtype == Some(k.act_type(weight)) && self.cols == cols
    }

    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// The activation type the rows hold (`None` before the first `quantize`).
    pub fn dtype(&self) -> Option<DType> {
        self.dtype
    }

    pub fn row(&self, t: usize) -> &[u8] {
        &self.data[t * self.row_bytes..(t + 1) * self.row_bytes]
    }

    /// Rows `rows` of `src`, in that order (a row is converted on its own, so a gathered row is the same bytes as
    /// the row converted alone).
    pub fn gather(&mut self, src: &QuantActs, rows: &[usize]) {
        let rb = src.row_bytes;
        self.data.clear();
        for &r in rows {
            self.data.extend_from_slice(src.row(r));
        }
        (self.dtype, self.cols, self.n_rows, self.row_bytes) = (src.dtype, src.cols, rows.len(), rb);
    }
}

/// `f(i, &mut items[i])` for every item, spread over `cpu`'s threads when `parallel` (and there are several);
/// `init` makes each chunk's scratch.
pub fn for_each_on<T: Send, S>(
    cpu: &Cpu,
    items: &mut [T],
    parallel: bool,
    init: &(dyn Fn() -> S + Sync),
    f: &(dyn Fn(usize, &mut T, &mut S) + Sync),
) {
    let n = items.len();
    if !parallel || n < 2 || cpu.pool.n_threads() == 1 {
        let mut scratch = init();
        for (i, item) in items.iter_mut().enumerate() {
            f(i, item, &mut scratch);
        }
        return;
    }
    struct Items<T>(*mut T);
    // SAFETY: each index is handed to exactly one thread, within the borrow of `items` (the pool call returns
    // before it ends), and T: Send.
    unsafe impl<T: Send> Sync for Items<T> {}
    impl<T> Items<T> {
        fn get(&self) -> *mut T {
            self.0
        }
    }
    let base = Items(items.as_mut_ptr());
    cpu.pool.for_chunks(n, cpu.pool.chunk_size(n, 1), &|range| {
        let mut scratch = init();
        for i in range {
            // SAFETY: i < n, and the chunks are disjoint (see `Items`).
            f(i, unsafe { &mut *base.get().add(i) }, &mut scratch);
        }
    });
}

/// `f(rows, out_rows)` over `out` (`[n, dim]`) split into ranges of rows, spread over `cpu`'s threads from
/// `PAR_ROWS_MIN` rows (one call with every row otherwise): for row-wise work whose result per row does not depend
/// on the split.
pub fn for_row_chunks_on(
    cpu: &Cpu,
    out: &mut [f32],
    dim: usize,
    f: &(dyn Fn(std::ops::Range<usize>, &mut [f32]) + Sync),
) {
    let n_rows = out.len().checked_div(dim).unwrap_or(0);
    if n_rows < PAR_ROWS_MIN || cpu.pool.n_threads() == 1 {
        return f(0..n_rows, out);
    }
    let dst = SharedOut(out.as_mut_ptr());
    cpu.pool.for_chunks(n_rows, cpu.pool.chunk_size(n_rows, 1), &|rows| {
        // SAFETY: rows are partitioned among the threads and lie within `out`, which outlives the pool call.
        let o = unsafe { std::slice::from_raw_parts_mut(dst.get().add(rows.start * dim), rows.len() * dim) };
        f(rows, o);
    });
}

/// Rows from which the row-wise operations (activation conversion, norms) spread over the threads.
pub const PAR_ROWS_MIN: usize = 16;

/// A byte buffer's base pointer, for disjoint rows written by several threads (as [`SharedOut`]).
#[derive(Clone, Copy)]
struct SharedBytes(*mut u8);
// SAFETY: as SharedOut: only disjoint rows are written, within the borrow the pointer was made from.
unsafe impl Send for SharedBytes {}
// SAFETY: as above.
unsafe impl Sync for SharedBytes {}

impl SharedBytes {
    fn get(self) -> *mut u8 {
        self.0
    }
}

/// A raw pointer to an output buffer whose disjoint parts are written by several threads.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: used only to write disjoint elements from several threads, within the lifetime of the borrow it
// was made from (the pool call returns before that borrow ends).
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// A method (not a field access) so closures capture the whole `Sync` wrapper.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// `out[t, r] = dot(w[r], x[t])` for every token `t` and row `r`: `out` is `[x.n_rows(), w.rows]`.
pub fn matmul(cpu: &Cpu, w: QMatRef<'_>, x: &QuantActs, out: &mut [f32]) {
    matmul_many(cpu, &mut [(w, out)], x);
}

/// Several matrices of one type and width times the same activations, in one pass over the thread pool (q, k
/// and v; an expert's gate and up): fewer, larger jobs when decoding.
pub fn matmul_many(cpu: &Cpu, mats: &mut [(QMatRef<'_>, &mut [f32])], x: &QuantActs) {
    const MAX: usize = 4;
    assert!(!mats.is_empty() && mats.len() <= MAX, "matmul_many: 1 to {MAX} matrices");
    // Fixed-size tables: no allocation in the decode loop.
    let mut outs = [SharedOut(std::ptr::null_mut()); MAX];
    let mut ws = [mats[0].0; MAX];
    for (i, (w, out)) in mats.iter_mut().enumerate() {
        check_job(cpu, *w, x, out);
        outs[i] = SharedOut(out.as_mut_ptr());
        ws[i] = *w;
    }
    let xs = [x; MAX];
    matmul_pass(cpu, &ws[..mats.len()], &xs[..mats.len()], &outs[..mats.len()]);
}

/// Matrices one [`matmul_jobs`] pass takes (a fixed table: no allocation); more go in several passes.
pub const MATMUL_JOBS_MAX: usize = 32;

/// Products of different matrices with their own activations (`out = w x` for each `(w, x, out)`), in one pass
/// over the thread pool: the selected experts of a MoE layer, each on its own tokens, share one dispatch instead of
/// two each. Every output is the same kernel call as in [`matmul`], so grouping never changes a bit.
pub fn matmul_jobs(cpu: &Cpu, jobs: &mut [(QMatRef<'_>, &QuantActs, &mut [f32])]) {
    for part in jobs.chunks_mut(MATMUL_JOBS_MAX) {
        let mut outs = [SharedOut(std::ptr::null_mut()); MATMUL_JOBS_MAX];
        let mut ws = [part[0].0; MATMUL_JOBS_MAX];
        let mut xs = [part[0].1; MATMUL_JOBS_MAX];
        for (i, (w, x, out)) in part.iter_mut().enumerate() {
            check_job(cpu, *w, x, out);
            outs[i] = SharedOut(out.as_mut_ptr());
            ws[i] = *w;
            xs[i] = *x;
        }
        let n = part.len();
        matmul_pass(cpu, &ws[..n], &xs[..n], &outs[..n]);
    }
}

fn check_job(cpu: &Cpu, w: QMatRef<'_>, x: &QuantActs, out: &[f32]) {
    assert!(x.is_for(&cpu.kernels, w.dtype, w.cols), "matmul: activations were quantized for another type or width");
    assert_eq!(out.len(), x.n_rows() * w.rows, "matmul: output size");
}

/// The rows of all of `ws` (each times its own `xs`, into `outs`, checked by the caller) as one range split over the
/// pool.
fn matmul_pass(cpu: &Cpu, ws: &[QMatRef<'_>], xs: &[&QuantActs], outs: &[SharedOut]) {
    let mut starts = [usize::MAX; MATMUL_JOBS_MAX + 1];
    let mut total = 0;
    for (i, w) in ws.iter().enumerate() {
        starts[i] = total;
        total += w.rows;
    }
    starts[ws.len()] = total;
    let starts = &starts[..=ws.len()];
    let chunk = cpu.pool.chunk_size(total, 16);
    cpu.pool.for_chunks(total, chunk, &|range| {
        // A chunk of the concatenated rows may span several matrices: split it at the boundaries.
        let mut r = range.start;
        while r < range.end {
            let m = starts.partition_point(|&s| s <= r) - 1;
            let end = range.end.min(starts[m + 1]);
            rows_times_tokens(cpu, ws[m], xs[m], r - starts[m]..end - starts[m], outs[m]);
            r = end;
        }
    });
}

/// How far ahead of the four rows at hand their successors are prefetched: the next group of four (on the `small`
/// shape at one thread, decode 65.7 tok/s with 4, 63.6 with 8, 52.8 without).
const PREFETCH_ROWS_AHEAD: usize = 4;

/// Prefetches the four rows of `w` from `r` (those below `end`): an expert's rows are a few blocks each, too short
/// a stream for the hardware prefetchers, so without this every group of rows starts with cache misses.
#[inline]
fn prefetch_rows(w: QMatRef<'_>, rb: usize, r: usize, end: usize) {
    // The rows are contiguous: one span.
    if r < end {
        kernels::prefetch(&w.data[r * rb..end.min(r + 4) * rb]);
    }
}

/// Rows `range` of `w` times every token of `x`, into `out` (`[n_tokens, w.rows]`).
fn rows_times_tokens(cpu: &Cpu, w: QMatRef<'_>, x: &QuantActs, range: std::ops::Range<usize>, outp: SharedOut) {
    if w.planes.is_some() {
        return affine_rows_times_tokens(cpu, w, x, range, outp);
    }
    // Every kernel below gives each output bit-identical to `vec_dot`, so how rows and tokens are grouped never
    // changes a result.
    let dot = cpu.kernels.vec_dot(w.dtype);
    let dot_x4 = cpu.kernels.vec_dot_x4(w.dtype);
    let dot_r4 = cpu.kernels.vec_dot_r4(w.dtype);
    let (cols, rows, n_tokens) = (w.cols, w.rows, x.n_rows());
    // SAFETY (every write): (t, r) is written by exactly one thread (rows are partitioned), t * rows + r is
    // within the output, whose length the caller checked, and the output outlives the pool call.
    let put = |t: usize, r: usize, v: f32| unsafe { *outp.get().add(t * rows + r) = v };
    let rb = w.row_bytes();
    let row = |r: usize| &w.data[r * rb..(r + 1) * rb];
    // Where the table has a tile kernel, four rows at a time go through it with the tokens four at a time (the
    // last group may be shorter): each weight block decoded once per group, each activation block loaded once
    // per four rows.
    let n_x4 = n_tokens / 4 * 4;
    let mut rows_x4 = range.clone();
    // (One token goes to the four-row kernel below: the same products without the tile's bookkeeping.)
    if let Some(tile) = cpu.kernels.vec_dot_tile(w.dtype).filter(|_| n_tokens > 1) {
        let mut xs: [&[u8]; 4] = [&[]; 4];
        while rows_x4.start + 4 <= rows_x4.end {
            let r = rows_x4.start;
            prefetch_rows(w, rb, r + PREFETCH_ROWS_AHEAD, rows_x4.end);
            let rows4 = [row(r), row(r + 1), row(r + 2), row(r + 3)];
            for t in (0..n_tokens).step_by(4) {
                let n_t = (n_tokens - t).min(4);
                for (i, x_i) in xs[..n_t].iter_mut().enumerate() {
                    *x_i = x.row(t + i);
                }
                let mut v = [[0.0f32; 4]; 4];
                tile(cols, rows4, &xs[..n_t], &mut v);
                for (i, vi) in v[..n_t].iter().enumerate() {
                    for (j, &vij) in vi.iter().enumerate() {
                        put(t + i, r + j, vij);
                    }
                }
            }
            rows_x4.start += 4;
        }
    }
    // Otherwise (and for the last rows % 4), tokens in groups of four share one decode of each weight row.
    if n_x4 > 0 {
        for r in rows_x4.clone() {
            let wr = row(r);
            for t in (0..n_x4).step_by(4) {
                let mut v = [0.0f32; 4];
                dot_x4(cols, wr, [x.row(t), x.row(t + 1), x.row(t + 2), x.row(t + 3)], &mut v);
                for (i, &vi) in v.iter().enumerate() {
                    put(t + i, r, vi);
                }
            }
        }
    }
    // The remaining tokens (all of them when decoding): four weight rows share each activation load.
    if n_x4 < n_tokens {
        let mut r = rows_x4.start;
        while r + 4 <= rows_x4.end {
            prefetch_rows(w, rb, r + PREFETCH_ROWS_AHEAD, rows_x4.end);
            let rows4 = [row(r), row(r + 1), row(r + 2), row(r + 3)];
            for t in n_x4..n_tokens {
                let mut v = [0.0f32; 4];
                dot_r4(cols, rows4, x.row(t), &mut v);
                for (i, &vi) in v.iter().enumerate() {
                    put(t, r + i, vi);
                }
            }
            r += 4;
        }
        for r in r..rows_x4.end {
            for t in n_x4..n_tokens {
                put(t, r, dot(cols, row(r), x.row(t)));
            }
        }
    }
}

/// [`rows_times_tokens`] for an MLX affine matrix: the same grouping of tokens and rows, through the affine
/// kernels of the activations' type (int8 [`DType::Q8_A`], the default `vec_dot_type`, or F32), whose
/// four-row versions are bit-identical to their single dot as well.
fn affine_rows_times_tokens(cpu: &Cpu, w: QMatRef<'_>, x: &QuantActs, range: std::ops::Range<usize>, outp: SharedOut) {
    let f = w.planes.expect("an affine matrix").format;
    let k = &cpu.kernels;
    let (dot, dot_x4, dot_r4) = match x.dtype() {
        Some(DType::Q8_A) => (k.affine_dot_q8(f), k.affine_dot_q8_x4(f), k.affine_dot_q8_r4(f)),
        Some(DType::F32) => (k.affine_dot(f), k.affine_dot_x4(f), k.affine_dot_r4(f)),
        t => panic!("affine matmul: activations in {t:?}"),
    };
    let (cols, rows, n_tokens) = (w.cols, w.rows, x.n_rows());
    // SAFETY (every write): as in `rows_times_tokens`.
    let put = |t: usize, r: usize, v: f32| unsafe { *outp.get().add(t * rows + r) = v };
    let n_x4 = n_tokens / 4 * 4;
    if n_x4 > 0 {
        for r in range.clone() {
            let wr = w.affine_row(r);
            for t in (0..n_x4).step_by(4) {
                let mut v = [0.0f32; 4];
                dot_x4(f, cols, wr, [x.row(t), x.row(t + 1), x.row(t + 2), x.row(t + 3)], &mut v);
                for (i, &vi) in v.iter().enumerate() {
                    put(t + i, r, vi);
                }
            }
        }
    }
    if n_x4 < n_tokens {
        let mut r = range.start;
        while r + 4 <= range.end {
            let rows4 = [w.affine_row(r), w.affine_row(r + 1), w.affine_row(r + 2), w.affine_row(r + 3)];
            for t in n_x4..n_tokens {
                let mut v = [0.0f32; 4];
                dot_r4(f, cols, rows4, x.row(t), &mut v);
                for (i, &vi) in v.iter().enumerate() {
                    put(t, r + i, vi);
                }
            }
            r += 4;
        }
        for r in r..range.end {
            for t in n_x4..n_tokens {
                put(t, r, dot(f, cols, w.affine_row(r), x.row(t)));
            }
        }
    }
}

/// Row `r` of `w` as f32 (an embedding lookup), for every weight type.
pub fn dequantize_row(k: &Kernels, w: QMatRef<'_>, r: usize, out: &mut [f32]) {
    match w.planes {
        Some(p) => k.affine_dequantize(p.format)(p.format, w.affine_row(r), out),
        None => k.dequantize_row(w.dtype, w.row(r), out),
    }
}

/// Quantizes `x` (`[n, w.cols]`) into `scratch` and multiplies.
pub fn matmul_f32(cpu: &Cpu, w: QMatRef<'_>, x: &[f32], scratch: &mut QuantActs, out: &mut [f32]) {
    scratch.quantize_on(cpu, w.dtype, x, w.cols);
    matmul(cpu, w, scratch, out);
}

/// Multiplies by `w` the rows that `xq` already holds for some weight type, re-quantizing from `x` only when
/// `w` needs another activation type (q, k and v usually share one conversion).
pub fn matmul_reuse(cpu: &Cpu, w: QMatRef<'_>, x: &[f32], xq: &mut QuantActs, out: &mut [f32]) {
    if !xq.is_for(&cpu.kernels, w.dtype, w.cols) {
        xq.quantize_on(cpu, w.dtype, x, w.cols);
    }
    matmul(cpu, w, xq, out);
}

/// [`rms_norm_into`] with the rows spread over `cpu`'s threads when there are many (the same arithmetic per row).
pub fn rms_norm_into_on(cpu: &Cpu, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let dim = w.len();
    assert_eq!(out.len(), x.len(), "rms_norm: output size");
    for_row_chunks_on(cpu, out, dim, &|rows, o| rms_norm_into(&x[rows.start * dim..rows.end * dim], w, eps, o));
}

/// [`rms_norm`] in place with the rows spread over `cpu`'s threads when there are many.
pub fn rms_norm_on(cpu: &Cpu, x: &mut [f32], w: &[f32], eps: f32) {
    for_row_chunks_on(cpu, x, w.len(), &|_, o| rms_norm(o, w, eps));
}

/// RMSNorm of each row of `x` (`[n, dim]`) in place: `x * w / sqrt(mean(x^2) + eps)`.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let dim = w.len();
    for row in x.chunks_exact_mut(dim) {
        let ss: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let scale = (1.0 / ((ss / dim as f64) + eps as f64).sqrt()) as f32;
        for (v, &g) in row.iter_mut().zip(w) {
            *v = (*v * scale) * g;
        }
    }
}

/// `out = rms_norm(x) * w` row by row, leaving `x` untouched.
pub fn rms_norm_into(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    out.copy_from_slice(x);
    rms_norm(out, w, eps);
}

/// Softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `gate = silu(gate) * up`, element-wise (the SwiGLU of a feed-forward block).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

/// `x += y`.
pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Named activation taps for finding the first tensor that diverges from a reference: with `FLASH_MOE_TAPS=1`
/// every tap prints its name (llama.cpp's graph names, e.g. `attn_norm-3`), sum and first values to stderr.
pub fn tap(name: &str, layer: Option<usize>, x: &[f32]) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*ON.get_or_init(|| std::env::var_os("FLASH_MOE_TAPS").is_some_and(|v| !v.is_empty() && v != "0")) {
        return;
    }
    let sum: f64 = x.iter().map(|&v| v as f64).sum();
    let name = match layer {
        Some(l) => format!("{name}-{l}"),
        None => name.to_string(),
    };
    if let Some(dir) = std::env::var_os("FLASH_MOE_TAPS_DIR") {
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        // Unnumbered taps repeat in every layer: keep the first.
        let path = std::path::Path::new(&dir).join(format!("{name}.f32"));
        if !path.exists() {
            let _ = std::fs::write(path, bytes);
        }
    }
    let head: Vec<String> = x.iter().take(3).map(|v| format!("{v:.6}")).collect();
    eprintln!("tap {name:<16} n {:>8} sum {sum:>14.6} [{}]", x.len(), head.join(", "));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one() {
        let mut x = vec![1.0, 2.0, 3.0, -1.0];
        softmax(&mut x);
        let s: f32 = x.iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert!(x[2] > x[1] && x[1] > x[0] && x[0] > x[3]);
    }

    /// Products grouped in one pass (over several passes past MATMUL_JOBS_MAX, with a matrix of no rows among them)
    /// equal each one alone, bit for bit, at 1 and 3 threads.
    #[test]
    fn matmul_jobs_equal_single_products() {
        let k = Kernels::detect();
        let (cols, dt) = (256, DType::Q4_K);
        let row_bytes = dt.row_bytes(cols).expect("whole blocks");
        let mut seed = 1u32;
        let mut rnd = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let n_mats = MATMUL_JOBS_MAX + 5;
        let shapes: Vec<(usize, usize)> = (0..n_mats).map(|j| ((j * 7) % 13, 1 + j % 4)).collect(); // (rows, tokens)
        let weights: Vec<Vec<u8>> = shapes
            .iter()
            .map(|&(rows, _)| {
                let mut w = vec![0u8; rows * row_bytes];
                for r in 0..rows {
                    let x: Vec<f32> = (0..cols).map(|_| rnd()).collect();
                    k.quantize_row(dt, &x, &mut w[r * row_bytes..(r + 1) * row_bytes]);
                }
                w
            })
            .collect();
        let acts: Vec<QuantActs> = shapes
            .iter()
            .map(|&(_, n)| {
                let x: Vec<f32> = (0..n * cols).map(|_| rnd()).collect();
                let mut q = QuantActs::default();
                q.quantize(&k, dt, &x, cols);
                q
            })
            .collect();
        let mats: Vec<QMatRef<'_>> =
            shapes.iter().zip(&weights).map(|(&(rows, _), w)| QMatRef::new(dt, rows, cols, w)).collect();
        for threads in [1, 3] {
            let cpu = Cpu::with_kernels(k, threads);
            let alone: Vec<Vec<f32>> = mats
                .iter()
                .zip(&acts)
                .map(|(w, x)| {
                    let mut out = vec![0.0; x.n_rows() * w.rows];
                    matmul(&cpu, *w, x, &mut out);
                    out
                })
                .collect();
            let mut outs: Vec<Vec<f32>> = alone.iter().map(|o| vec![f32::NAN; o.len()]).collect();
            let mut jobs: Vec<_> =
                mats.iter().zip(&acts).zip(outs.iter_mut()).map(|((w, x), o)| (*w, x, &mut o[..])).collect();
            matmul_jobs(&cpu, &mut jobs);
            for (j, (a, b)) in alone.iter().zip(&outs).enumerate() {
                assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "matrix {j}, {threads} threads");
            }
        }
    }

    #[test]
    fn rms_norm_unit_rows() {
        let mut x = vec![3.0, 4.0, 0.0, 0.0];
        rms_norm(&mut x, &[1.0, 1.0], 1e-12);
        assert!((x[0] - 0.6 * 2f32.sqrt()).abs() < 1e-6 && (x[1] - 0.8 * 2f32.sqrt()).abs() < 1e-6);
        assert_eq!(&x[2..], &[0.0, 0.0]);
    }
}
