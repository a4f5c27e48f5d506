//! Weight matrices in memory: 64-byte aligned byte buffers holding rows of any [`DType`], plus, for an MLX
//! affine matrix, its scales and biases planes.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use kernels::{AffineFormat, AffineRow, DType};

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

/// The scales and biases of an MLX affine matrix: `[rows, cols / group]` values of the format's scale type each.
#[derive(Debug)]
pub struct Planes {
    pub format: AffineFormat,
    pub scales: AlignedBuf,
    pub biases: AlignedBuf,
}

/// Borrowed [`Planes`].
#[derive(Clone, Copy, Debug)]
pub struct PlanesRef<'a> {
    pub format: AffineFormat,
    pub scales: &'a [u8],
    pub biases: &'a [u8],
}

/// A matrix of `rows` rows of `cols` values of `dtype`, row-major (a torch `Linear` weight `[out, in]`, a GGUF
/// tensor with `ne = [cols, rows]`). For the MLX types `data` is the packed plane and `planes` holds the rest.
#[derive(Debug)]
pub struct QMat {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: AlignedBuf,
    pub planes: Option<Box<Planes>>,
}

/// The rows `rows` of a plane of `row_bytes`-byte rows, copied.
fn gather_rows(src: &[u8], row_bytes: usize, rows: &[usize]) -> AlignedBuf {
    let mut data = AlignedBuf::zeroed(rows.len() * row_bytes);
    for (i, &r) in rows.iter().enumerate() {
        data.as_mut_slice()[i * row_bytes..(i + 1) * row_bytes]
            .copy_from_slice(&src[r * row_bytes..(r + 1) * row_bytes]);
    }
    data
}

fn concat(a: &AlignedBuf, b: &AlignedBuf) -> AlignedBuf {
    let mut data = AlignedBuf::zeroed(a.len() + b.len());
    data.as_mut_slice()[..a.len()].copy_from_slice(a.as_slice());
    data.as_mut_slice()[a.len()..].copy_from_slice(b.as_slice());
    data
}

impl QMat {
    pub fn as_ref(&self) -> QMatRef<'_> {
        QMatRef {
            dtype: self.dtype,
            rows: self.rows,
            cols: self.cols,
            data: self.data.as_slice(),
            planes: self.planes.as_ref().map(|p| PlanesRef {
                format: p.format,
                scales: p.scales.as_slice(),
                biases: p.biases.as_slice(),
            }),
        }
    }

    pub fn row_bytes(&self) -> usize {
        row_bytes(self.dtype, self.cols)
    }

    /// A matrix of the given rows of this one, in that order (rows are whole blocks, and an affine row's scales
    /// and biases move with it, so any type can be reordered or split without touching a value).
    pub fn select_rows(&self, rows: &[usize]) -> QMat {
        for &r in rows {
            assert!(r < self.rows, "select_rows: row {r} of {}", self.rows);
        }
        let data = gather_rows(self.data.as_slice(), self.row_bytes(), rows);
        let planes = self.planes.as_ref().map(|p| {
            let pb = p.format.param_bytes(self.cols);
            Box::new(Planes {
                format: p.format,
                scales: gather_rows(p.scales.as_slice(), pb, rows),
                biases: gather_rows(p.biases.as_slice(), pb, rows),
            })
        });
        QMat { dtype: self.dtype, rows: rows.len(), cols: self.cols, data, planes }
    }

    /// The rows of `a` followed by those of `b` (same type, width and, for affine matrices, format).
    pub fn stack(a: &QMat, b: &QMat) -> QMat {
        assert!(a.dtype == b.dtype && a.cols == b.cols, "stack: matrices of different types or widths");
        let planes = match (&a.planes, &b.planes) {
            (None, None) => None,
            (Some(pa), Some(pb)) if pa.format == pb.format => Some(Box::new(Planes {
                format: pa.format,
                scales: concat(&pa.scales, &pb.scales),
                biases: concat(&pa.biases, &pb.biases),
            })),
            _ => panic!("stack: affine matrices of different formats"),
        };
        QMat { dtype: a.dtype, rows: a.rows + b.rows, cols: a.cols, data: concat(&a.data, &b.data), planes }
    }
}

/// A borrowed matrix: the view every kernel call takes.
#[derive(Clone, Copy, Debug)]
pub struct QMatRef<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    /// The rows (for the MLX types: the packed plane).
    pub data: &'a [u8],
    /// The scales and biases of an MLX affine matrix (`Some` exactly for the MLX types).
    pub planes: Option<PlanesRef<'a>>,
}

impl<'a> QMatRef<'a> {
    /// A matrix of a GGUF or float type.
    pub fn new(dtype: DType, rows: usize, cols: usize, data: &'a [u8]) -> QMatRef<'a> {
        assert!(dtype.affine_bits().is_none(), "QMatRef::new: an MLX matrix needs its planes (QMatRef::affine)");
        assert_eq!(data.len(), rows * row_bytes(dtype, cols), "QMatRef: data length");
        QMatRef { dtype, rows, cols, data, planes: None }
    }

    /// An MLX affine matrix: its packed plane `data` and its planes.
    pub fn affine(rows: usize, cols: usize, data: &'a [u8], planes: PlanesRef<'a>) -> QMatRef<'a> {
        let f = planes.format;
        assert_eq!(data.len(), rows * f.q_bytes(cols), "QMatRef: packed plane length");
        assert_eq!(planes.scales.len(), rows * f.param_bytes(cols), "QMatRef: scales length");
        assert_eq!(planes.biases.len(), rows * f.param_bytes(cols), "QMatRef: biases length");
        QMatRef { dtype: f.dtype(), rows, cols, data, planes: Some(planes) }
    }

    pub fn row_bytes(&self) -> usize {
        row_bytes(self.dtype, self.cols)
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Row `r` of an affine matrix with its scales and biases; panics for other matrices.
    pub fn affine_row(&self, r: usize) -> AffineRow<'a> {
        let p = self.planes.expect("affine_row of a matrix without planes");
        let pb = p.format.param_bytes(self.cols);
        AffineRow { q: self.row(r), scales: &p.scales[r * pb..(r + 1) * pb], biases: &p.biases[r * pb..(r + 1) * pb] }
    }

    /// Rows `start..start + n` as a matrix (one expert of a stacked expert tensor).
    pub fn rows_slice(&self, start: usize, n: usize) -> QMatRef<'a> {
        let rb = self.row_bytes();
        let planes = self.planes.map(|p| {
            let pb = p.format.param_bytes(self.cols);
            PlanesRef {
                format: p.format,
                scales: &p.scales[start * pb..(start + n) * pb],
                biases: &p.biases[start * pb..(start + n) * pb],
            }
        });
        QMatRef { dtype: self.dtype, rows: n, cols: self.cols, data: &self.data[start * rb..(start + n) * rb], planes }
    }

    /// Bytes of the matrix in all its planes.
    pub fn n_bytes(&self) -> usize {
        self.data.len() + self.planes.map_or(0, |p| p.scales.len() + p.biases.len())
    }
}

/// Bytes of one row; the loader has validated that `cols` is a whole number of blocks.
pub fn row_bytes(dtype: DType, cols: usize) -> usize {
    dtype.row_bytes(cols).expect("row length validated at load")
}
