//! AVX-512 VNNI kernels of Q4_K and Q6_K in block-total form, in four shapes sharing one body: one weight row
//! by one activation row (`vec_dot`), four weight rows by one (`vec_dot_r4`, decode), one by four
//! (`vec_dot_x4`) and four by four (`vec_dot_r4x4`, prompt batches).
//!
//! Block-total form: the integer dot product of each super-block is summed EXACTLY into one i32 (`isum`, and
//! for Q4_K the min term `msum`) before any float arithmetic, which is one fused multiply-add per block and
//! output, blocks in order: `acc = fma(isum, dx * d, acc)`, `accm = fma(msum, dx * dmin, accm)`, result
//! `acc - accm` (Q6_K: `acc`). This is the arithmetic of llama.cpp's repacked Q4_K kernels. Integer sums are
//! exact in any order, so every shape lays out its integer work as suits it (positions in lanes, the
//! reductions of four rows or tokens batched into one transpose) and still gives each output the bits of the
//! single-row kernel: the engine's batch-invariance rests on this.
//!
//! Integer work per 128 values of one row and one token: two `vpdpbusd` of unsigned quants with activation
//! bytes, from zero (a lane sums 4 products of one sub-block: |.| <= 4 * 63 * 127 < 2^15), the two packed into
//! i16 (`vpackssdw`, exact), and one `vpdpwssd` of those with the matching sub-block scales into the
//! accumulator. The scale vectors are built once per row and block and serve every token.

use super::avx512::{arr, load_i8_64};
use crate::q4_k::BlockQ4K;
use crate::q6_k::BlockQ6K;
use crate::q8_k::BlockQ8K;
use crate::shape::{lane, n_groups};
use std::arch::x86_64::*;

/// The weight blocks of row `r` and the activation blocks of token `t`, all of one length. Always inlined: called
/// out of line, its slices came back through the stack and the kernel's wide reloads of them stalled on store
/// forwarding, a tenth of a one-block row's time (the bundled model's rows are one block).
#[inline(always)]
fn rows_and_tokens<'a, W: crate::Block, const R: usize, const T: usize>(
    ws: [&'a [u8]; R],
    xs: [&'a [u8]; T],
) -> ([&'a [W]; R], [&'a [BlockQ8K]; T]) {
    // Plain loops: `array::map` and `from_fn` stay out of line here and bring the stack round trip back.
    let mut bx: [&[BlockQ8K]; T] = [&[]; T];
    for (b, x) in bx.iter_mut().zip(xs) {
        *b = crate::blocks::<BlockQ8K>(x);
    }
    let mut bw: [&[W]; R] = [&[]; R];
    for (b, w) in bw.iter_mut().zip(ws) {
        *b = crate::blocks::<W>(w);
    }
    let n = bx[0].len();
    assert!(bx.iter().all(|b| b.len() == n) && bw.iter().all(|b| b.len() == n), "rows of different lengths");
    (bw, bx)
}

/// Lane `i`: the sum of the 16 lanes of `v[i]` (exact: integers).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn reduce4(v: [__m512i; 4]) -> __m128i {
    // Per 128-bit lane L: [a0 + a2, b0 + b2, a1 + a3, b1 + b3], then [a_L, b_L, c_L, d_L].
    let ab = _mm512_add_epi32(_mm512_unpacklo_epi32(v[0], v[1]), _mm512_unpackhi_epi32(v[0], v[1]));
    let cd = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2], v[3]), _mm512_unpackhi_epi32(v[2], v[3]));
    let abcd = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
    let h = _mm256_add_epi32(_mm512_castsi512_si256(abcd), _mm512_extracti64x4_epi64::<1>(abcd));
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
}

/// Lane `i`: the sum of the 4 lanes of `v[i]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn reduce4_128(v: [__m128i; 4]) -> __m128i {
    let ab = _mm_add_epi32(_mm_unpacklo_epi32(v[0], v[1]), _mm_unpackhi_epi32(v[0], v[1]));
    let cd = _mm_add_epi32(_mm_unpacklo_epi32(v[2], v[3]), _mm_unpackhi_epi32(v[2], v[3]));
    _mm_add_epi32(_mm_unpacklo_epi64(ab, cd), _mm_unpackhi_epi64(ab, cd))
}

/// Integer totals of the (row, token) pairs of group `g`, `v[r][t]` holding a pair's 16 partial lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn group_totals<const R: usize, const T: usize>(g: usize, v: &[[__m512i; T]; R]) -> __m128i {
    let zero = _mm512_setzero_si512();
    reduce4(std::array::from_fn(|i| lane::<R, T>(g, i).map_or(zero, |(r, t)| v[r][t])))
}

/// 64 bytes of 4-bit quants as 64 values twice: their low nibbles, their high nibbles.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn nibbles_128(q: &[u8; 64]) -> [__m512i; 2] {
    let v = super::avx512::load_64(q);
    let m4 = _mm512_set1_epi8(0x0f);
    [_mm512_and_si512(v, m4), _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4)]
}

/// The 32 activation bytes at `a` and the 32 at `b` as one vector.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn join_i8(a: &[i8; 32], b: &[i8; 32]) -> __m512i {
    // SAFETY: reads exactly the 32 bytes of `a` and of `b`.
    let (a, b) = unsafe { (_mm256_loadu_si256(a.as_ptr().cast()), _mm256_loadu_si256(b.as_ptr().cast())) };
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b)
}

/// `acc` plus the dot products of two chunks of 64 unsigned quants `q` with their activations `x`, each
/// group of 4 values times its sub-block scale: the i16 lanes of `s` are laid out as `vpackssdw` lays out
/// the two chunks' sums (per 128 bits: 4 of `q[0]`'s, then 4 of `q[1]`'s).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_pair(acc: __m512i, q: &[__m512i; 2], x: &[__m512i; 2], s: __m512i) -> __m512i {
    let p0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[0], x[0]);
    let p1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[1], x[1]);
    _mm512_dpwssd_epi32(acc, _mm512_packs_epi32(p0, p1), s)
}

/// `vpermw` indices: lane `i` (of 32) takes `f(128-bit lane, position in it)`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn word_index(f: impl Fn(usize, usize) -> usize) -> __m512i {
    let v: [i16; 32] = std::array::from_fn(|i| f(i / 8, i % 8) as i16);
    // SAFETY: reads exactly the 64 bytes of `v`.
    unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
}

/// The metadata of the blocks of up to four Q4_K rows, unpacked together with ggml's mask trick (as
/// `scale_min_k4`): `sc[p]` the scales of rows 2p (i16 lanes 0..8) and 2p + 1 (lanes 8..16), `mins[p]` their
/// mins likewise; `d`, `dmin` the rows' f32 scales in lanes 0..R. Lanes of absent rows are zero.
struct Q4kMeta {
    sc: [__m512i; 2],
    mins: [__m256i; 2],
    d: __m128,
    dmin: __m128,
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4k_meta<const R: usize>(w: [&BlockQ4K; R]) -> Q4kMeta {
    // The first 16 bytes of a block, as u32 words: d | dmin << 16, then the packed scales u0, u1, u2.
    let head = |r: usize| {
        // SAFETY: BlockQ4K is 144 bytes with d, dmin and scales first (repr(C)); reads its first 16.
        unsafe { _mm_loadu_si128((w[r] as *const BlockQ4K).cast()) }
    };
    let v: [__m128i; 4] = std::array::from_fn(|r| if r < R { head(r) } else { _mm_setzero_si128() });
    let (lo01, lo23) = (_mm_unpacklo_epi32(v[0], v[1]), _mm_unpacklo_epi32(v[2], v[3]));
    let (hi01, hi23) = (_mm_unpackhi_epi32(v[0], v[1]), _mm_unpackhi_epi32(v[2], v[3]));
    // Word i of every row: lane r.
    let (dd, u0) = (_mm_unpacklo_epi64(lo01, lo23), _mm_unpackhi_epi64(lo01, lo23));
    let (u1, u2) = (_mm_unpacklo_epi64(hi01, hi23), _mm_unpackhi_epi64(hi01, hi23));
    let (k1, k2, k3) = (_mm_set1_epi32(0x3f3f3f3f), _mm_set1_epi32(0x0f0f0f0f), _mm_set1_epi32(0x03030303));
    let top = |u: __m128i| _mm_slli_epi32::<4>(_mm_and_si128(_mm_srli_epi32::<6>(u), k3));
    let sc_lo = _mm_and_si128(u0, k1);
    let sc_hi = _mm_or_si128(_mm_and_si128(u2, k2), top(u0));
    let m_lo = _mm_and_si128(u1, k1);
    let m_hi = _mm_or_si128(_mm_and_si128(_mm_srli_epi32::<4>(u2), k2), top(u1));
    // Rows 0, 1: [lo0, hi0, lo1, hi1], 8 bytes each; rows 2, 3 likewise.
    let sc = [_mm_unpacklo_epi32(sc_lo, sc_hi), _mm_unpackhi_epi32(sc_lo, sc_hi)]
        .map(|b| _mm512_zextsi256_si512(_mm256_cvtepu8_epi16(b)));
    let mins = [_mm_unpacklo_epi32(m_lo, m_hi), _mm_unpackhi_epi32(m_lo, m_hi)].map(|b| _mm256_cvtepu8_epi16(b));
    // [d0, dmin0, d1, dmin1, ..] -> d in the low half, dmin in the high one.
    let f = _mm256_permutevar8x32_ps(_mm256_cvtph_ps(dd), _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
    Q4kMeta { sc, mins, d: _mm256_castps256_ps128(f), dmin: _mm256_extractf128_ps::<1>(f) }
}

/// The scale vector of chunk pair `kk` of row `r` for [`dot_pair`]: the pair's chunks are the low and high
/// nibbles of `qs[64kk..64kk + 64]`, sub-blocks (4kk, 4kk + 2) and (4kk + 1, 4kk + 3) in their lanes 0..8 and
/// 8..16, so 128-bit lanes 0 and 1 of the packed sums take sub-blocks 4kk, 4kk + 1, lanes 2 and 3 4kk + 2,
/// 4kk + 3.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4k_pair_scale(m: &Q4kMeta, r: usize, kk: usize) -> __m512i {
    let idx = word_index(|lane, pos| 8 * (r % 2) + 4 * kk + usize::from(pos >= 4) + 2 * usize::from(lane >= 2));
    _mm512_permutexvar_epi16(idx, m.sc[r / 2])
}

/// The min terms `sum_j m[j] * (bsum[2j] + bsum[2j + 1])` of group `g` (see [`lane`]), from the mins of `m`
/// and each token's bsum pairs.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4k_min_totals<const R: usize, const T: usize>(m: &Q4kMeta, pairs: &[__m128i; T], g: usize) -> __m128i {
    if R == 4 {
        // Rows 0, 1 and 2, 3 against token g's pairs: two partial sums per row after the first `vphaddd`.
        let p = _mm256_broadcastsi128_si256(pairs[g]);
        let (a, b) = (_mm256_madd_epi16(m.mins[0], p), _mm256_madd_epi16(m.mins[1], p));
        let h = _mm256_hadd_epi32(a, b);
        let h = _mm256_hadd_epi32(h, h); // [r0, r2, r0, r2 | r1, r3, r1, r3]
        _mm_unpacklo_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
    } else {
        let mins = _mm256_castsi256_si128(m.mins[0]);
        reduce4_128(std::array::from_fn(|i| {
            lane::<R, T>(g, i).map_or(_mm_setzero_si128(), |(_, t)| _mm_madd_epi16(mins, pairs[t]))
        }))
    }
}

/// `dx[t] * w[r]` in the lanes of group `g`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn group_scale<const R: usize, const T: usize>(g: usize, w: __m128, dx: &[f32; T]) -> __m128 {
    if R == 4 {
        _mm_mul_ps(_mm_set1_ps(dx[g]), w)
    } else {
        let x: [f32; 4] = std::array::from_fn(|i| if i < T { dx[i] } else { 0.0 });
        _mm_mul_ps(_mm_setr_ps(x[0], x[1], x[2], x[3]), _mm_broadcastss_ps(w))
    }
}

/// The 8 sums `bsum[2j] + bsum[2j + 1]` of a Q8_K block (|.| <= 2 * 16 * 127).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn bsum_pairs(bx: &BlockQ8K) -> __m128i {
    // SAFETY: reads exactly the 32 bytes of the 16 i16 bsums.
    let bsums = unsafe { _mm256_loadu_si256(bx.bsums.as_ptr().cast()) };
    _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256::<1>(bsums))
}

/// Q4_K rows `bw` against Q8_K rows `bx`: `out[t][r]` in block-total form.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4k_dots<const R: usize, const T: usize>(bw: [&[BlockQ4K]; R], bx: [&[BlockQ8K]; T]) -> [[f32; R]; T] {
    let (mut acc, mut accm) = ([_mm_setzero_ps(); 4], [_mm_setzero_ps(); 4]);
    for b in 0..bx[0].len() {
        let w: [&BlockQ4K; R] = std::array::from_fn(|r| &bw[r][b]);
        let x: [&BlockQ8K; T] = std::array::from_fn(|t| &bx[t][b]);
        let meta = q4k_meta(w);
        let mut isum = [[_mm512_setzero_si512(); T]; R];
        for kk in 0..2 {
            // Chunk 2kk: sub-blocks 4kk and 4kk + 2 (values 128kk + 0..32, 64..96); 2kk + 1: 4kk + 1, 4kk + 3.
            let xs: [[__m512i; 2]; T] = std::array::from_fn(|t| {
                let q = &x[t].qs[128 * kk..128 * kk + 128];
                [join_i8(arr(&q[0..32]), arr(&q[64..96])), join_i8(arr(&q[32..64]), arr(&q[96..128]))]
            });
            for r in 0..R {
                let q = nibbles_128(arr(&w[r].qs[64 * kk..64 * kk + 64]));
                let s = q4k_pair_scale(&meta, r, kk);
                for t in 0..T {
                    isum[r][t] = dot_pair(isum[r][t], &q, &xs[t], s);
                }
            }
        }
        let pairs: [__m128i; T] = std::array::from_fn(|t| bsum_pairs(x[t]));
        let dx: [f32; T] = std::array::from_fn(|t| f32::from_le_bytes(x[t].d));
        for g in 0..n_groups::<R, T>() {
            let (dd, ddm) = (group_scale::<R, T>(g, meta.d, &dx), group_scale::<R, T>(g, meta.dmin, &dx));
            let msum = q4k_min_totals::<R, T>(&meta, &pairs, g);
            acc[g] = _mm_fmadd_ps(_mm_cvtepi32_ps(group_totals::<R, T>(g, &isum)), dd, acc[g]);
            accm[g] = _mm_fmadd_ps(_mm_cvtepi32_ps(msum), ddm, accm[g]);
        }
    }
    ungroup::<R, T>(std::array::from_fn(|g| _mm_sub_ps(acc[g], accm[g])))
}

/// `out[t][r]` from the lanes of the groups (see [`lane`]).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn ungroup<const R: usize, const T: usize>(v: [__m128; 4]) -> [[f32; R]; T] {
    let mut out = [[0f32; R]; T];
    for g in 0..n_groups::<R, T>() {
        let mut l = [0f32; 4];
        // SAFETY: writes exactly the 4 floats of `l`.
        unsafe { _mm_storeu_ps(l.as_mut_ptr(), v[g]) };
        for (i, &li) in l.iter().enumerate() {
            if let Some((r, t)) = lane::<R, T>(g, i) {
                out[t][r] = li;
            }
        }
    }
    out
}

/// The two 64-value chunks of half `h` of a Q6_K block as unsigned 6-bit quants (q + 32): values
/// 128h..128h+64 (low nibbles of `ql`, `qh` bits 0..4) and 128h+64..128h+128 (high nibbles, bits 4..8).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q6k_half(bw: &BlockQ6K, h: usize) -> [__m512i; 2] {
    let (m4, m2) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(3));
    let ql = super::avx512::load_64(arr(&bw.ql[64 * h..64 * h + 64]));
    // SAFETY: reads exactly the 32 bytes of this half's `qh`.
    let qh = _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(bw.qh[32 * h..32 * h + 32].as_ptr().cast()) });
    // Values l + 32t take bits 2t..2t+2 of qh[l]: the upper 32 bytes (t = 1, 3) shifted by 2 more.
    let qh = _mm512_mask_srli_epi16(qh, 0xffff_0000, qh, 2);
    let lo = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_slli_epi16::<4>(_mm512_and_si512(qh, m2)));
    let hi = _mm512_or_si512(
        _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
        _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srli_epi16::<4>(qh), m2)),
    );
    [lo, hi]
}

/// Q6_K rows `bw` against Q8_K rows `bx`: `out[t][r]` in block-total form.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q6k_dots<const R: usize, const T: usize>(bw: [&[BlockQ6K]; R], bx: [&[BlockQ8K]; T]) -> [[f32; R]; T] {
    let mut acc = [_mm_setzero_ps(); 4];
    for b in 0..bx[0].len() {
        let (w, x): ([&BlockQ6K; R], [&BlockQ8K; T]) =
            (std::array::from_fn(|r| &bw[r][b]), std::array::from_fn(|t| &bx[t][b]));
        // SAFETY (both): reads exactly the 16 bytes of the i8 scales.
        let sc8: [__m128i; R] = std::array::from_fn(|r| unsafe { _mm_loadu_si128(w[r].scales.as_ptr().cast()) });
        let sc: [__m256i; R] = std::array::from_fn(|r| _mm256_cvtepi8_epi16(sc8[r]));
        // The quants are stored as q + 32: each pair starts from -32 * sum_j sc[j] * bsum[j] (|32 sc| <= 4096).
        let neg32: [__m512i; R] = std::array::from_fn(|r| {
            _mm512_zextsi256_si512(_mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16::<5>(sc[r])))
        });
        // SAFETY: reads exactly the 32 bytes of the 16 i16 bsums.
        let bsums: [__m512i; T] =
            std::array::from_fn(|t| _mm512_zextsi256_si512(unsafe { _mm256_loadu_si256(x[t].bsums.as_ptr().cast()) }));
        let mut isum: [[__m512i; T]; R] = std::array::from_fn(|r| {
            std::array::from_fn(|t| _mm512_dpwssd_epi32(_mm512_setzero_si512(), bsums[t], neg32[r]))
        });
        for h in 0..2 {
            // Chunks 2h and 2h + 1 (values 128h..128h+64, 128h+64..128h+128), sub-blocks 8h + i and 8h + 4 + i
            // in lanes 4i..4i+4: 128-bit lane L of the packed sums takes sub-blocks 8h + L and 8h + 4 + L.
            let xs: [[__m512i; 2]; T] = std::array::from_fn(|t| {
                let q = &x[t].qs[128 * h..128 * h + 128];
                [load_i8_64(arr(&q[0..64])), load_i8_64(arr(&q[64..128]))]
            });
            let idx = word_index(|lane, pos| 8 * h + lane + 4 * usize::from(pos >= 4));
            for r in 0..R {
                let q = q6k_half(w[r], h);
                let s = _mm512_permutexvar_epi16(idx, _mm512_zextsi256_si512(sc[r]));
                for t in 0..T {
                    isum[r][t] = dot_pair(isum[r][t], &q, &xs[t], s);
                }
            }
        }
        let dx: [f32; T] = std::array::from_fn(|t| f32::from_le_bytes(x[t].d));
        let h: [i16; 4] = std::array::from_fn(|r| if r < R { i16::from_le_bytes(w[r].d) } else { 0 });
        let d = _mm_cvtph_ps(_mm_setr_epi16(h[0], h[1], h[2], h[3], 0, 0, 0, 0));
        for g in 0..n_groups::<R, T>() {
            let dd = group_scale::<R, T>(g, d, &dx);
            acc[g] = _mm_fmadd_ps(_mm_cvtepi32_ps(group_totals::<R, T>(g, &isum)), dd, acc[g]);
        }
    }
    ungroup::<R, T>(acc)
}

/// `out[..T]` of four weight rows of blocks `$W` against the `T` activation rows matched by `xs` through
/// `$dots` (`q4k_dots` or `q6k_dots`).
macro_rules! tile {
    ($W:ty, $dots:ident, $ws:expr, $xs:expr, $out:expr) => {
        match *$xs {
            [a] => {
                let (bw, bx) = rows_and_tokens::<$W, 4, 1>($ws, [a]);
                $out[0] = $dots::<4, 1>(bw, bx)[0];
            }
            [a, b] => {
                let (bw, bx) = rows_and_tokens::<$W, 4, 2>($ws, [a, b]);
                $out[..2].copy_from_slice(&$dots::<4, 2>(bw, bx));
            }
            [a, b, c] => {
                let (bw, bx) = rows_and_tokens::<$W, 4, 3>($ws, [a, b, c]);
                $out[..3].copy_from_slice(&$dots::<4, 3>(bw, bx));
            }
            [a, b, c, d] => {
                let (bw, bx) = rows_and_tokens::<$W, 4, 4>($ws, [a, b, c, d]);
                *$out = $dots::<4, 4>(bw, bx);
            }
            _ => panic!("a tile has 1 to 4 activation rows, not {}", $xs.len()),
        }
    };
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q4_k_q8_k(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (bw, bx) = rows_and_tokens::<BlockQ4K, 1, 1>([w], [x]);
    q4k_dots::<1, 1>(bw, bx)[0][0]
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q4_k_q8_k_r4(_n: usize, ws: [&[u8]; 4], x: &[u8], out: &mut [f32; 4]) {
    let (bw, bx) = rows_and_tokens::<BlockQ4K, 4, 1>(ws, [x]);
    *out = q4k_dots::<4, 1>(bw, bx)[0];
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q4_k_q8_k_x4(_n: usize, w: &[u8], xs: [&[u8]; 4], out: &mut [f32; 4]) {
    let (bw, bx) = rows_and_tokens::<BlockQ4K, 1, 4>([w], xs);
    *out = q4k_dots::<1, 4>(bw, bx).map(|o| o[0]);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q4_k_q8_k_tile(_n: usize, ws: [&[u8]; 4], xs: &[&[u8]], out: &mut [[f32; 4]; 4]) {
    tile!(BlockQ4K, q4k_dots, ws, xs, out);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q6_k_q8_k(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (bw, bx) = rows_and_tokens::<BlockQ6K, 1, 1>([w], [x]);
    q6k_dots::<1, 1>(bw, bx)[0][0]
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q6_k_q8_k_r4(_n: usize, ws: [&[u8]; 4], x: &[u8], out: &mut [f32; 4]) {
    let (bw, bx) = rows_and_tokens::<BlockQ6K, 4, 1>(ws, [x]);
    *out = q6k_dots::<4, 1>(bw, bx)[0];
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q6_k_q8_k_x4(_n: usize, w: &[u8], xs: [&[u8]; 4], out: &mut [f32; 4]) {
    let (bw, bx) = rows_and_tokens::<BlockQ6K, 1, 4>([w], xs);
    *out = q6k_dots::<1, 4>(bw, bx).map(|o| o[0]);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q6_k_q8_k_tile(_n: usize, ws: [&[u8]; 4], xs: &[&[u8]], out: &mut [[f32; 4]; 4]) {
    tile!(BlockQ6K, q6k_dots, ws, xs, out);
}
