//! Weight matrices in memory: 64-byte aligned byte buffers holding rows of any [`DType`].

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use kernels::DType;

const ALIGN: usize = 64;

/// A zero-initialised byte buffer aligned to 64 bytes (a cache line; also what O_DIRECT reads want at 512).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    align: usize,
    /// Mapped with mmap (large buffers: zero pages cost nothing until touched) rather than allocated.
    mapped: bool,
}

/// Buffers at least this large are mapped directly, so untouched parts (an expert cache's empty slots) take no
/// memory: the allocator would zero them with memset for a large alignment.
const MMAP_MIN: usize = 1 << 20;

/// Mappings at least this large ask for transparent huge pages.
const HUGE_MIN: usize = 2 << 20;

/// Whether to ask for huge pages (`FLASH_MOE_HUGEPAGES=0` turns it off, to measure what they buy).
fn huge_pages_wanted() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FLASH_MOE_HUGEPAGES").is_none_or(|v| v != "0"))
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    pub fn zeroed(len: usize) -> AlignedBuf {
        Self::zeroed_aligned(len, ALIGN)
    }

    /// A zeroed buffer with a given power-of-two alignment (4096 for direct I/O).
    pub fn zeroed_aligned(len: usize, align: usize) -> AlignedBuf {
        if len == 0 {
            return AlignedBuf { ptr: NonNull::dangling(), len: 0, align: ALIGN, mapped: false };
        }
        if len >= MMAP_MIN && align <= 4096 {
            // SAFETY: an anonymous private mapping; no file or existing memory is involved.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                if len >= HUGE_MIN && huge_pages_wanted() {
                    // Weights and expert slots are read front to back on every token: 2 MiB pages cut the TLB
                    // misses (costly under virtualisation, where a miss walks two page tables); measured +25% on a
                    // single-thread sequential read here. Best effort: without THP the kernel ignores it.
                    // SAFETY: advice on exactly the mapping just made.
                    unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
                }
                if let Some(ptr) = NonNull::new(p as *mut u8) {
                    return AlignedBuf { ptr, len, align: 4096, mapped: true };
                }
            }
            let layout = Layout::from_size_align(len, align.max(ALIGN)).expect("buffer layout");
            std::alloc::handle_alloc_error(layout);
        }
        let align = align.max(ALIGN);
        let layout = Layout::from_size_align(len, align).expect("buffer layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else { std::alloc::handle_alloc_error(layout) };
        AlignedBuf { ptr, len, align, mapped: false }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The base pointer, for code that hands disjoint parts of the buffer to other threads (the expert cache).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes (or dangling with len 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: the mapping of exactly this address and length made in `zeroed_aligned`.
            unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len) };
        } else if self.len != 0 {
            let layout = Layout::from_size_align(self.len, self.align).expect("buffer layout");
            // SAFETY: allocated in `zeroed_aligned` with exactly this layout.
            unsafe { dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

/// A matrix of `rows` rows of `cols` values of `dtype`, row-major (a torch `Linear` weight `[out, in]`, a GGUF
/// tensor with `ne = [cols, rows]`).
#[derive(Debug)]
pub struct QMat {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: AlignedBuf,
}

impl QMat {
    pub fn as_ref(&self) -> QMatRef<'_> {
        QMatRef { dtype: self.dtype, rows: self.rows, cols: self.cols, data: self.data.as_slice() }
    }

    pub fn row_bytes(&self) -> usize {
        row_bytes(self.dtype, self.cols)
    }

    /// A matrix of the given rows of this one, in that order (rows are whole blocks, so any type can be
    /// reordered or split without touching a value).
    pub fn select_rows(&self, rows: &[usize]) -> QMat {
        let rb = self.row_bytes();
        let mut data = AlignedBuf::zeroed(rows.len() * rb);
        let src = self.data.as_slice();
        for (i, &r) in rows.iter().enumerate() {
            assert!(r < self.rows, "select_rows: row {r} of {}", self.rows);
            data.as_mut_slice()[i * rb..(i + 1) * rb].copy_from_slice(&src[r * rb..(r + 1) * rb]);
        }
        QMat { dtype: self.dtype, rows: rows.len(), cols: self.cols, data }
    }

    /// The rows of `a` followed by those of `b` (same type and width).
    pub fn stack(a: &QMat, b: &QMat) -> QMat {
        assert!(a.dtype == b.dtype && a.cols == b.cols, "stack: matrices of different types or widths");
        let mut data = AlignedBuf::zeroed(a.data.len() + b.data.len());
        data.as_mut_slice()[..a.data.len()].copy_from_slice(a.data.as_slice());
        data.as_mut_slice()[a.data.len()..].copy_from_slice(b.data.as_slice());
        QMat { dtype: a.dtype, rows: a.rows + b.rows, cols: a.cols, data }
    }
}

/// A borrowed matrix: the view every kernel call takes.
#[derive(Clone, Copy, Debug)]
pub struct QMatRef<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> QMatRef<'a> {
    pub fn new(dtype: DType, rows: usize, cols: usize, data: &'a [u8]) -> QMatRef<'a> {
        assert_eq!(data.len(), rows * row_bytes(dtype, cols), "QMatRef: data length");
        QMatRef { dtype, rows, cols, data }
    }

    pub fn row_bytes(&self) -> usize {
        row_bytes(self.dtype, self.cols)
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Rows `start..start + n` as a matrix (one expert of a stacked expert tensor).
    pub fn rows_slice(&self, start: usize, n: usize) -> QMatRef<'a> {
        let rb = self.row_bytes();
        QMatRef { dtype: self.dtype, rows: n, cols: self.cols, data: &self.data[start * rb..(start + n) * rb] }
    }
}

/// Bytes of one row; the loader has validated that `cols` is a whole number of blocks.
pub fn row_bytes(dtype: DType, cols: usize) -> usize {
    dtype.row_bytes(cols).expect("row length validated at load")
}
