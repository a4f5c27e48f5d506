//! The kernel table: one function pointer per (operation, type), chosen once from the CPU's instruction sets
//! (or forced with `FLASH_MOE_ISA`). Owns [`Kernels`], [`Isa`], the kernel signatures, and the length checks
//! every public kernel runs before touching memory.

use crate::attn::{self, AttnScoresFn, AttnSoftmaxFn, AttnValuesFn, KvRows};
use crate::dtype::DType;
use crate::{f16, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0, q8_1, q8_k};

/// An instruction set a kernel table can be built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, the reference (`*_ref`) kernels.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL/VNNI (plus AVX2); formats without a 512-bit kernel use the AVX2 one.
    Avx512,
    /// aarch64 NEON; the integer dots (GGUF formats and MLX affine int8) use `sdot` where the CPU has dotprod
    /// (detected when the table is built; the same bits as base NEON). Formats without a NEON kernel use the
    /// scalar ones.
    Neon,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    fn from_name(name: &str) -> Option<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon].into_iter().find(|isa| isa.name() == name)
    }

    /// Whether this CPU can run this instruction set's kernels (and this build has them).
    fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => crate::x86::has_avx2(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => crate::x86::has_avx512(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => crate::aarch64::has_neon(),
            _ => false,
        }
    }
}

/// Whether tables may use the CPU's integer dot-product extension (`sdot`, AVX-VNNI): unless `FLASH_MOE_NO_DOT_EXT`
/// is set (to compare speeds with a program built without it; the bits are the same either way).
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
fn dot_ext_allowed() -> bool {
    std::env::var_os("FLASH_MOE_NO_DOT_EXT").is_none()
}

/// The instruction set for a `FLASH_MOE_ISA` value (or its absence), and a warning when the request cannot be
/// met: then the best available one is used.
fn choose_isa(requested: Option<&str>) -> (Isa, Option<String>) {
    let best = *Kernels::available_isas().last().unwrap_or(&Isa::Scalar);
    let Some(requested) = requested else {
        return (best, None);
    };
    match Isa::from_name(requested.trim().to_ascii_lowercase().as_str()) {
        Some(isa) if isa.supported() => (isa, None),
        Some(isa) => (best, Some(format!("FLASH_MOE_ISA={} is not supported here; using {}", isa.name(), best.name()))),
        None => (
            best,
            Some(format!("unknown FLASH_MOE_ISA={requested:?} (scalar|avx2|avx512|neon); using {}", best.name())),
        ),
    }
}

/// Dot product of a weight row of `n` values with an activation row in the weight type's `vec_dot_type()`.
/// Panics unless `n` is a whole number of blocks and both rows are exactly `row_bytes(n)` long.
pub type VecDotFn = fn(n: usize, w_row: &[u8], x_row: &[u8]) -> f32;
/// Four dot products of one weight row of `n` values with four activation rows (for prompt batches: the
/// weight row is decoded once). `out[i]` is bit-identical to the same table's `VecDotFn` on `x_rows[i]`.
/// Panics as [`VecDotFn`] for any of the four rows.
pub type VecDotX4Fn = fn(n: usize, w_row: &[u8], x_rows: [&[u8]; 4], out: &mut [f32; 4]);
/// Four dot products of four weight rows of `n` values with one activation row (for single-token decode: the
/// activation is loaded once for four rows). `out[i]` is bit-identical to the same table's `VecDotFn` on
/// `w_rows[i]`. Panics as [`VecDotFn`] for any of the four rows.
pub type VecDotR4Fn = fn(n: usize, w_rows: [&[u8]; 4], x_row: &[u8], out: &mut [f32; 4]);
/// The dot products of four weight rows of `n` values with one to four activation rows (a tile of a matrix
/// product: each weight block decoded once for all the tokens, each activation block loaded once for the four
/// rows). `out[t][r]` (`t < x_rows.len()`) is bit-identical to the same table's `VecDotFn` on `w_rows[r]` and
/// `x_rows[t]`. Panics as [`VecDotFn`] for any of the rows, or unless there are 1 to 4 activation rows.
pub type VecDotTileFn = fn(n: usize, w_rows: [&[u8]; 4], x_rows: &[&[u8]], out: &mut [[f32; 4]; 4]);
/// Quantize or convert one f32 row into a row of the table entry's type.
pub type QuantizeFn = fn(x: &[f32], dst: &mut [u8]);
/// Dequantize one row of the table entry's type into f32.
pub type DequantizeFn = fn(src: &[u8], dst: &mut [f32]);

const N_TYPES: usize = DType::ALL.len();

/// A table of row kernels for one instruction set. Cheap to copy; build it once with [`Kernels::detect`].
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    isa: Isa,
    /// Indexed by [`DType::index`]; `None` for the activation-only types.
    pub(crate) dot: [Option<VecDotFn>; N_TYPES],
    /// The four-row dots, same indexing; always set together with `dot` (bit-identity needs the same ISA).
    pub(crate) dot_x4: [Option<VecDotX4Fn>; N_TYPES],
    /// The four-weight-row dots, same indexing; always set together with `dot`, as `dot_x4`.
    pub(crate) dot_r4: [Option<VecDotR4Fn>; N_TYPES],
    /// The tiles of four weight rows by one to four activation rows, same indexing; only for formats with such
    /// a kernel (set together with `dot`).
    pub(crate) dot_tile: [Option<VecDotTileFn>; N_TYPES],
    pub(crate) quantize: [QuantizeFn; N_TYPES],
    pub(crate) dequantize: [DequantizeFn; N_TYPES],
    pub(crate) attn_scores: AttnScoresFn,
    pub(crate) attn_values: AttnValuesFn,
    pub(crate) attn_softmax: AttnSoftmaxFn,
    /// Whether MLX affine weights take F32 activations (the accurate path) instead of [`DType::Q8_A`].
    affine_f32_acts: bool,
    /// Whether the table's integer dots form their exact sums with the CPU's dot-product extension: `sdot`
    /// (dotprod) in a NEON table, AVX-VNNI (`vpdpbusd` on 256-bit registers) in an AVX2 table's Q8_0 kernels. Set
    /// where the CPU has it (unless `FLASH_MOE_NO_DOT_EXT` is set); the bits are the same without it. The MLX
    /// affine int8 dots of NEON (`affine.rs`) follow it too.
    pub(crate) dot_ext: bool,
}

// The engine shares one table across its threads.
const _: () = {
    const fn shareable<T: Send + Sync + Copy>() {}
    shareable::<Kernels>()
};

/// Panics unless `n` values of `w` fill exactly `w_row` and their activations exactly `x_row`. Inlined into
/// every entry point (where `w` is a constant, so the check is a few compares); the message is built out of line.
#[inline(always)]
pub(crate) fn check_dot(w: DType, n: usize, w_row: &[u8], x_row: &[u8]) {
    let x = w.vec_dot_type();
    let whole = n.is_multiple_of(w.block_elems());
    let w_ok = (n / w.block_elems()).checked_mul(w.block_bytes()) == Some(w_row.len());
    let x_ok = (n / x.block_elems()).checked_mul(x.block_bytes()) == Some(x_row.len());
    if !(whole && w_ok && x_ok) {
        bad_dot(w, n, w_row.len(), x_row.len());
    }
}

/// Panics unless every row of `x_rows` fits [`check_dot`] with `w_row` (the four-row dots' entry points).
#[inline]
pub(crate) fn check_dot_x4(w: DType, n: usize, w_row: &[u8], x_rows: [&[u8]; 4]) {
    for x in x_rows {
        check_dot(w, n, w_row, x);
    }
}

/// Panics unless every row of `w_rows` fits [`check_dot`] with `x_row` (the four-weight-row dots' entry points).
#[inline]
pub(crate) fn check_dot_r4(w: DType, n: usize, w_rows: [&[u8]; 4], x_row: &[u8]) {
    for row in w_rows {
        check_dot(w, n, row, x_row);
    }
}

/// Panics unless a tile has 1 to 4 activation rows and every weight and activation row fits [`check_dot`] (the
/// tiles' entry points).
#[inline]
pub(crate) fn check_dot_tile(w: DType, n: usize, w_rows: [&[u8]; 4], x_rows: &[&[u8]]) {
    assert!((1..=4).contains(&x_rows.len()), "a tile has 1 to 4 activation rows, not {}", x_rows.len());
    check_dot_r4(w, n, w_rows, x_rows[0]);
    for &x in x_rows {
        check_dot(w, n, w_rows[0], x);
    }
}

/// The panic of [`check_dot`].
#[cold]
#[inline(never)]
fn bad_dot(w: DType, n: usize, w_len: usize, x_len: usize) -> ! {
    let x = w.vec_dot_type();
    assert!(n.is_multiple_of(w.block_elems()), "{n} is not a whole number of {} blocks", w.name());
    assert!(
        Some(w_len) == w.row_bytes(n),
        "{} row of {n} values needs {:?} bytes, got {w_len}",
        w.name(),
        w.row_bytes(n)
    );
    panic!("{} row of {n} values needs {:?} bytes, got {x_len}", x.name(), x.row_bytes(n));
}

/// The bytes of an f32 slice (the F32 row layout on the little-endian targets this crate builds for).
pub fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: u8 has alignment 1 and every byte of an f32 is initialized; the view covers exactly the
    // `size_of_val(v)` bytes of the borrowed slice and lives no longer than it.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// Defines a checked [`VecDotFn`] around a kernel that trusts its lengths.
macro_rules! checked_dot {
    ($name:ident, $w:expr, $inner:path) => {
        fn $name(n: usize, w_row: &[u8], x_row: &[u8]) -> f32 {
            $crate::dispatch::check_dot($w, n, w_row, x_row);
            $inner(n, w_row, x_row)
        }
    };
}

/// Defines a [`VecDotX4Fn`] that calls the single-row entry `$single` four times (trivially bit-identical to
/// it): the four-row dot of every format and instruction set without a shared-decode kernel. With
/// `<const SDOT: bool>` after the name it is generic over that parameter, which `$single` may use (the NEON
/// entries, whose `SDOT` picks the `sdot` variants).
macro_rules! x4_by_single {
    ($name:ident $(<const $g:ident: bool>)?, $single:path) => {
        pub(crate) fn $name$(<const $g: bool>)?(n: usize, w_row: &[u8], x_rows: [&[u8]; 4], out: &mut [f32; 4]) {
            for (o, x) in out.iter_mut().zip(x_rows) {
                *o = $single(n, w_row, x);
            }
        }
    };
}
pub(crate) use x4_by_single;

/// Defines a [`VecDotR4Fn`] that calls the single-row entry `$single` four times (trivially bit-identical to
/// it): the four-weight-row dot of every format and instruction set without a shared-activation kernel.
/// Generic over `SDOT` as [`x4_by_single`] can be.
macro_rules! r4_by_single {
    ($name:ident $(<const $g:ident: bool>)?, $single:path) => {
        pub(crate) fn $name$(<const $g: bool>)?(n: usize, w_rows: [&[u8]; 4], x_row: &[u8], out: &mut [f32; 4]) {
            for (o, w) in out.iter_mut().zip(w_rows) {
                *o = $single(n, w, x_row);
            }
        }
    };
}
pub(crate) use r4_by_single;

checked_dot!(dot_f32, DType::F32, f16::dot_f32_ref);
checked_dot!(dot_f16, DType::F16, f16::dot_f16_f32_ref);
checked_dot!(dot_bf16, DType::BF16, f16::dot_bf16_f32_ref);
checked_dot!(dot_q4_0, DType::Q4_0, q4_0::dot_q4_0_q8_0_ref);
checked_dot!(dot_q4_1, DType::Q4_1, q4_1::dot_q4_1_q8_1_ref);
checked_dot!(dot_q5_0, DType::Q5_0, q5_0::dot_q5_0_q8_0_ref);
checked_dot!(dot_q5_1, DType::Q5_1, q5_1::dot_q5_1_q8_1_ref);
checked_dot!(dot_q8_0, DType::Q8_0, q8_0::dot_q8_0_q8_0_ref);
checked_dot!(dot_q4_k, DType::Q4_K, q4_k::dot_q4_k_q8_k_ref);
checked_dot!(dot_q5_k, DType::Q5_K, q5_k::dot_q5_k_q8_k_ref);
checked_dot!(dot_q6_k, DType::Q6_K, q6_k::dot_q6_k_q8_k_ref);
x4_by_single!(dot_f32_x4, dot_f32);
x4_by_single!(dot_f16_x4, dot_f16);
x4_by_single!(dot_bf16_x4, dot_bf16);
x4_by_single!(dot_q4_0_x4, dot_q4_0);
x4_by_single!(dot_q4_1_x4, dot_q4_1);
x4_by_single!(dot_q5_0_x4, dot_q5_0);
x4_by_single!(dot_q5_1_x4, dot_q5_1);
x4_by_single!(dot_q8_0_x4, dot_q8_0);
x4_by_single!(dot_q4_k_x4, dot_q4_k);
x4_by_single!(dot_q5_k_x4, dot_q5_k);
x4_by_single!(dot_q6_k_x4, dot_q6_k);
r4_by_single!(dot_f32_r4, dot_f32);
r4_by_single!(dot_f16_r4, dot_f16);
r4_by_single!(dot_bf16_r4, dot_bf16);
r4_by_single!(dot_q4_0_r4, dot_q4_0);
r4_by_single!(dot_q4_1_r4, dot_q4_1);
r4_by_single!(dot_q5_0_r4, dot_q5_0);
r4_by_single!(dot_q5_1_r4, dot_q5_1);
r4_by_single!(dot_q8_0_r4, dot_q8_0);
r4_by_single!(dot_q4_k_r4, dot_q4_k);
r4_by_single!(dot_q5_k_r4, dot_q5_k);
r4_by_single!(dot_q6_k_r4, dot_q6_k);

impl Kernels {
    /// The scalar reference table.
    fn scalar() -> Kernels {
        // Order of DType::ALL: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q4_K, Q5_K, Q6_K, Q8_K.
        Kernels {
            isa: Isa::Scalar,
            dot: [
                Some(dot_f32),
                Some(dot_f16),
                Some(dot_bf16),
                Some(dot_q4_0),
                Some(dot_q4_1),
                Some(dot_q5_0),
                Some(dot_q5_1),
                Some(dot_q8_0),
                None,
                Some(dot_q4_k),
                Some(dot_q5_k),
                Some(dot_q6_k),
                None,
            ],
            dot_x4: [
                Some(dot_f32_x4),
                Some(dot_f16_x4),
                Some(dot_bf16_x4),
                Some(dot_q4_0_x4),
                Some(dot_q4_1_x4),
                Some(dot_q5_0_x4),
                Some(dot_q5_1_x4),
                Some(dot_q8_0_x4),
                None,
                Some(dot_q4_k_x4),
                Some(dot_q5_k_x4),
                Some(dot_q6_k_x4),
                None,
            ],
            dot_r4: [
                Some(dot_f32_r4),
                Some(dot_f16_r4),
                Some(dot_bf16_r4),
                Some(dot_q4_0_r4),
                Some(dot_q4_1_r4),
                Some(dot_q5_0_r4),
                Some(dot_q5_1_r4),
                Some(dot_q8_0_r4),
                None,
                Some(dot_q4_k_r4),
                Some(dot_q5_k_r4),
                Some(dot_q6_k_r4),
                None,
            ],
            dot_tile: [None; N_TYPES],
            quantize: [
                f16::quantize_f32_ref,
                f16::quantize_f16_ref,
                f16::quantize_bf16_ref,
                q4_0::quantize_q4_0_ref,
                q4_1::quantize_q4_1_ref,
                q5_0::quantize_q5_0_ref,
                q5_1::quantize_q5_1_ref,
                q8_0::quantize_q8_0_ref,
                q8_1::quantize_q8_1_ref,
                q4_k::quantize_q4_k_ref,
                q5_k::quantize_q5_k_ref,
                q6_k::quantize_q6_k_ref,
                q8_k::quantize_q8_k_ref,
            ],
            dequantize: [
                f16::dequant_f32_ref,
                f16::dequant_f16_ref,
                f16::dequant_bf16_ref,
                q4_0::dequant_q4_0_ref,
                q4_1::dequant_q4_1_ref,
                q5_0::dequant_q5_0_ref,
                q5_1::dequant_q5_1_ref,
                q8_0::dequant_q8_0_ref,
                q8_1::dequant_q8_1_ref,
                q4_k::dequant_q4_k_ref,
                q5_k::dequant_q5_k_ref,
                q6_k::dequant_q6_k_ref,
                q8_k::dequant_q8_k_ref,
            ],
            attn_scores: attn::attn_scores_ref,
            attn_values: attn::attn_values_ref,
            attn_softmax: attn::attn_softmax_ref,
            affine_f32_acts: false,
            dot_ext: false,
        }
    }

    /// The best instruction set of this CPU, unless the environment variable `FLASH_MOE_ISA`
    /// (`scalar|avx2|avx512|neon`) asks for another; an unknown or unsupported request falls back to the best
    /// available with a warning on stderr.
    pub fn detect() -> Kernels {
        let requested = std::env::var("FLASH_MOE_ISA").ok();
        let (isa, warning) = choose_isa(requested.as_deref());
        if let Some(warning) = warning {
            eprintln!("flash-moe: {warning}");
        }
        let f32_acts = std::env::var("FLASH_MOE_MLX_ACTS").is_ok_and(|v| v.eq_ignore_ascii_case("f32"));
        Kernels::build(isa).with_affine_f32_acts(f32_acts)
    }

    /// The same table with MLX affine weights multiplied by F32 activations (`on`: mlx's own arithmetic, the
    /// slower accurate path) or by int8 [`DType::Q8_A`] activations (the default). [`Kernels::detect`] turns it
    /// on when `FLASH_MOE_MLX_ACTS=f32`.
    pub fn with_affine_f32_acts(mut self, on: bool) -> Kernels {
        self.affine_f32_acts = on;
        self
    }

    /// The type activations are converted to for a dot product with weights of type `w`: `w.vec_dot_type()`,
    /// except F32 for the MLX affine types when [`Kernels::with_affine_f32_acts`] is on.
    pub fn act_type(&self, w: DType) -> DType {
        if self.affine_f32_acts && w.affine_bits().is_some() {
            DType::F32
        } else {
            w.vec_dot_type()
        }
    }

    /// The table for `isa`, or `None` when this CPU (or this build) lacks it.
    pub fn with_isa(isa: Isa) -> Option<Kernels> {
        isa.supported().then(|| Kernels::build(isa))
    }

    /// The instruction sets this CPU supports, from slowest to fastest; always starts with `Scalar`.
    pub fn available_isas() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon].into_iter().filter(|isa| isa.supported()).collect()
    }

    /// Builds the table of a supported `isa`.
    fn build(isa: Isa) -> Kernels {
        let scalar = Kernels::scalar();
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 => crate::x86::table(isa, scalar, crate::x86::has_avx_vnni() && dot_ext_allowed()),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => crate::aarch64::table(scalar, crate::aarch64::has_dotprod() && dot_ext_allowed()),
            _ => scalar,
        }
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The instruction set's name, with the dot-product extension its integer dots use: `avx2+vnni`, `neon+sdot`.
    pub fn name(&self) -> &'static str {
        match (self.isa, self.dot_ext) {
            (Isa::Avx2, true) => "avx2+vnni",
            (Isa::Neon, true) => "neon+sdot",
            (isa, _) => isa.name(),
        }
    }

    /// Whether this table's integer dots use the CPU's dot-product extension (`sdot` in a NEON table on a CPU
    /// with dotprod, AVX-VNNI in an AVX2 table on a CPU with it). For the tests and benchmarks that compare them
    /// with the base kernels; the engine has no use for it.
    #[doc(hidden)]
    pub fn uses_dot_ext(&self) -> bool {
        self.dot_ext
    }

    /// The same table with the base kernels in place of its dot-extension ones (unchanged if it has none), for
    /// the tests and benchmarks that compare the two. Both return the same bits; only their speed may differ.
    #[doc(hidden)]
    pub fn without_dot_ext(self) -> Kernels {
        if !self.dot_ext {
            return self;
        }
        let base = match self.isa {
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => crate::aarch64::table(Kernels::scalar(), false),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => crate::x86::table(Isa::Avx2, Kernels::scalar(), false),
            _ => return self,
        };
        base.with_affine_f32_acts(self.affine_f32_acts)
    }

    pub(crate) fn with_isa_tag(mut self, isa: Isa) -> Kernels {
        self.isa = isa;
        self
    }

    /// Records whether the table's integer dots use the dot-product extension (set by the table that picks them).
    pub(crate) fn with_dot_ext(mut self, on: bool) -> Kernels {
        self.dot_ext = on;
        self
    }

    /// The dot product kernel for weight rows of type `w` (activations in `w.vec_dot_type()`). Panics for the
    /// activation-only types Q8_1 and Q8_K.
    pub fn vec_dot(&self, w: DType) -> VecDotFn {
        match self.dot[w.index()] {
            Some(f) => f,
            None => panic!("{} is an activation-only type: no weight dot product", w.name()),
        }
    }

    /// The four-row dot kernel for weight rows of type `w`: one weight row against four activation rows (in
    /// `w.vec_dot_type()`), decoding the weight row once where the format has such a kernel (Q4_K, Q6_K, Q8_0
    /// and Q4_1 on AVX2 and AVX-512), else four single-row calls. Each `out[i]` is bit-identical to
    /// `self.vec_dot(w)(n, w_row, x_rows[i])`, so batched and token-by-token prompts give the same logits.
    /// Panics for the activation-only types Q8_1 and Q8_K.
    pub fn vec_dot_x4(&self, w: DType) -> VecDotX4Fn {
        match self.dot_x4[w.index()] {
            Some(f) => f,
            None => panic!("{} is an activation-only type: no weight dot product", w.name()),
        }
    }

    /// The four-weight-row dot kernel for weight rows of type `w`: four weight rows against one activation row
    /// (in `w.vec_dot_type()`), loading each activation block once for the four rows where the format has such
    /// a kernel (Q4_K, Q6_K, Q8_0 on AVX2 and AVX-512), else four single-row calls. Each `out[i]` is
    /// bit-identical to `self.vec_dot(w)(n, w_rows[i], x_row)`, so grouping rows never changes a result.
    /// Panics for the activation-only types Q8_1 and Q8_K.
    pub fn vec_dot_r4(&self, w: DType) -> VecDotR4Fn {
        match self.dot_r4[w.index()] {
            Some(f) => f,
            None => panic!("{} is an activation-only type: no weight dot product", w.name()),
        }
    }

    /// The tile kernel for weight rows of type `w` (four weight rows against one to four activation rows),
    /// where the table has one (Q4_K, Q6_K, Q8_0, Q5_0 and Q4_1 on AVX-512; Q4_K on AVX2; Q4_K, Q6_K and Q8_0 on
    /// NEON); `None` elsewhere, where `vec_dot_x4` and
    /// `vec_dot_r4` calls do the same work. Each `out[t][r]` is bit-identical to
    /// `self.vec_dot(w)(n, w_rows[r], x_rows[t])`.
    pub fn vec_dot_tile(&self, w: DType) -> Option<VecDotTileFn> {
        self.dot_tile[w.index()]
    }

    /// Attention scores of the query rows `q` (`[rows, head_dim]`) against every position of `keys`:
    /// `scores[r * ld + j] = dot_fma(q_r, k_j) * scale` (the arithmetic of `attn.rs`, the same bits on every
    /// instruction set). Panics unless the slices hold what the shapes say.
    pub fn attn_scores(&self, q: &[f32], keys: KvRows<'_>, scale: f32, scores: &mut [f32], ld: usize) {
        (self.attn_scores)(q, keys, scale, scores, ld)
    }

    /// Adds `p[r * ld + j] * values[j]` to row `r` of `out` (`[rows, head_dim]`) for the positions `j` in
    /// order (one `fma` each; the same bits on every instruction set).
    pub fn attn_values(&self, p: &[f32], ld: usize, values: KvRows<'_>, out: &mut [f32]) {
        (self.attn_values)(p, ld, values, out)
    }

    /// The softmax of a row of attention scores, in place (`attn.rs`: a fixed `exp`, an f64 sum in eight lanes;
    /// the same bits on every instruction set).
    pub fn attn_softmax(&self, x: &mut [f32]) {
        (self.attn_softmax)(x)
    }

    /// `sum(a[i] * b[i])` of two f32 slices of the same length (e.g. attention's q . k): exactly
    /// `self.vec_dot(DType::F32)` on the same values viewed as little-endian bytes. Panics unless
    /// `a.len() == b.len()`.
    pub fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "dot_f32 of slices of different lengths");
        self.vec_dot(DType::F32)(a.len(), f32_bytes(a), f32_bytes(b))
    }

    /// `out[r] = dot(row r of w_rows, x_row)` for a range of consecutive weight rows of `n` values each: the
    /// unit of work the engine hands to one thread. `w_rows` must hold exactly `out.len()` rows.
    pub fn gemv(&self, w: DType, n: usize, w_rows: &[u8], x_row: &[u8], out: &mut [f32]) {
        let dot = self.vec_dot(w);
        let row_bytes = w.row_bytes(n);
        assert!(row_bytes.is_some(), "{n} is not a whole number of {} blocks", w.name());
        let row_bytes = row_bytes.unwrap_or(0);
        assert!(
            row_bytes.checked_mul(out.len()) == Some(w_rows.len()),
            "{} rows of {n} {} values need {} x {row_bytes} bytes, got {}",
            out.len(),
            w.name(),
            out.len(),
            w_rows.len()
        );
        if row_bytes == 0 {
            out.fill(0.0);
            return;
        }
        for (o, row) in out.iter_mut().zip(w_rows.chunks_exact(row_bytes)) {
            *o = dot(n, row, x_row);
        }
    }

    /// Quantizes (or converts) the f32 row `x` into `dst`, which must be exactly `dtype.row_bytes(x.len())`
    /// bytes; `x.len()` must be a whole number of blocks.
    pub fn quantize_row(&self, dtype: DType, x: &[f32], dst: &mut [u8]) {
        let bytes = dtype.row_bytes(x.len());
        assert!(bytes.is_some(), "{} values are not a whole number of {} blocks", x.len(), dtype.name());
        assert!(
            Some(dst.len()) == bytes,
            "{} row of {} values needs {:?} bytes, got {}",
            dtype.name(),
            x.len(),
            bytes,
            dst.len()
        );
        if dtype == DType::Q8_A {
            // The MLX affine activations: one scalar quantizer for every table (not in the per-type tables).
            return crate::affine::quantize_q8_a_ref(x, dst);
        }
        (self.quantize[dtype.index()])(x, dst)
    }

    /// Dequantizes the row `src` of `dst.len()` values into `dst`; `src` must be exactly
    /// `dtype.row_bytes(dst.len())` bytes.
    pub fn dequantize_row(&self, dtype: DType, src: &[u8], dst: &mut [f32]) {
        let bytes = dtype.row_bytes(dst.len());
        assert!(bytes.is_some(), "{} values are not a whole number of {} blocks", dst.len(), dtype.name());
        assert!(
            Some(src.len()) == bytes,
            "{} row of {} values needs {:?} bytes, got {}",
            dtype.name(),
            dst.len(),
            bytes,
            src.len()
        );
        if dtype == DType::Q8_A {
            return crate::affine::dequant_q8_a_ref(src, dst);
        }
        (self.dequantize[dtype.index()])(src, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isa_request_is_honoured_or_falls_back_with_a_warning() {
        let best = *Kernels::available_isas().last().expect("scalar at least");
        assert_eq!(choose_isa(None), (best, None));
        assert_eq!(choose_isa(Some("scalar")), (Isa::Scalar, None));
        assert_eq!(choose_isa(Some(" Scalar\n")), (Isa::Scalar, None));
        let (isa, warning) = choose_isa(Some("sse9"));
        assert_eq!(isa, best);
        assert!(warning.is_some_and(|w| w.contains("unknown")));
        for isa in [Isa::Avx2, Isa::Avx512, Isa::Neon] {
            let (got, warning) = choose_isa(Some(isa.name()));
            if Kernels::available_isas().contains(&isa) {
                assert_eq!((got, warning), (isa, None));
            } else {
                assert_eq!(got, best);
                assert!(warning.is_some_and(|w| w.contains("not supported")));
            }
        }
    }
}
