//! AVX2 kernels of Q4_K in block-total form (the arithmetic of `q4_k::dot_q4_k_q8_k_blocks_ref`, which the
//! AVX-512 family computes too), in four shapes: one weight row by one activation row (`vec_dot`), four weight
//! rows by one (`vec_dot_r4`, decode), one by four (`vec_dot_x4`) and four by one to four (`vec_dot_tile`,
//! prompt batches).
//!
//! Block-total form: each super-block's integer dot product is summed EXACTLY into one i32 (`isum`, and the min
//! term `msum`) before any float arithmetic; then one fused multiply-add per block and output, blocks in order:
//! `acc = fma(isum, dx * d, acc)`, `accm = fma(msum, dx * dmin, accm)`, result `acc - accm`. Integer sums are
//! exact in any order, so each shape lays out its integer work as suits it and still gives every output the
//! bits of the single-row kernel (the engine's batch invariance rests on this); the f32 steps run on four
//! (row or token) lanes at once, each lane the scalar IEEE operation.
//!
//! The tile interleaves its four rows on the fly, eight bytes of each per register (a 4 x 4 transpose of 64-bit
//! words per 32 bytes of quants, shared by the tokens): one `maddubs` against a token's eight activation bytes
//! broadcast to the four rows then serves four rows, four of them for a 32-value sub-block add up in i16 lanes
//! (|lane| <= 4 * 2 * 15 * 128 < 2^15, exact), and one `madd` applies the four rows' sub-block scales. Per 32
//! values and (row, token) that is 1 + 1/4 multiplies where the one-row kernels spend 2 (a `maddubs` and a
//! `madd` each), and no activation loads but broadcasts.

use super::avx2::{arr, f16_pair, hsum_epi32, load_32, load_i8_32, min_sum_k, scale_min_words, unpack_scales_mins_k};
use super::avx2_r4::{blocks_r4, bsum_pairs_k, min_sum_pairs};
use super::avx2_x4::blocks_x4;
use crate::blocks;
use crate::q4_k::BlockQ4K;
use crate::q8_k::BlockQ8K;
use std::arch::x86_64::*;

/// The 64 products of 32 bytes of quants (low nibbles: sub-block `2k`, high: `2k + 1`) with the 64 activation
/// bytes `q8`, each sub-block's times its scale `sc`, in eight i32 lanes (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pair_products(q4: __m256i, q8: [__m256i; 2], sc: [__m256i; 2]) -> __m256i {
    let m4 = _mm256_set1_epi8(0x0f);
    let q4l = _mm256_and_si256(q4, m4);
    let q4h = _mm256_and_si256(_mm256_srli_epi16::<4>(q4), m4);
    let pl = _mm256_madd_epi16(_mm256_maddubs_epi16(q4l, q8[0]), sc[0]);
    let ph = _mm256_madd_epi16(_mm256_maddubs_epi16(q4h, q8[1]), sc[1]);
    _mm256_add_epi32(pl, ph)
}

/// Quant pair `k`'s 32 weight bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pair_weights(bw: &BlockQ4K, k: usize) -> __m256i {
    load_32(arr(&bw.qs[32 * k..32 * k + 32]))
}

/// Quant pair `k`'s 64 activation bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pair_acts(bx: &BlockQ8K, k: usize) -> [__m256i; 2] {
    [load_i8_32(arr(&bx.qs[64 * k..64 * k + 32])), load_i8_32(arr(&bx.qs[64 * k + 32..64 * k + 64]))]
}

/// Sub-blocks `2k` and `2k + 1`'s scales in every i16 lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pair_scales(sc: &[i16; 8], k: usize) -> [__m256i; 2] {
    [_mm256_set1_epi16(sc[2 * k]), _mm256_set1_epi16(sc[2 * k + 1])]
}

/// The integer products of one block of one row and one token by sub-block scale, in eight i32 lanes whose
/// total is the block's exact `isum`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn isum_lanes(bw: &BlockQ4K, sc: &[i16; 8], bx: &BlockQ8K) -> __m256i {
    let mut sumi = _mm256_setzero_si256();
    for k in 0..4 {
        sumi = _mm256_add_epi32(sumi, pair_products(pair_weights(bw, k), pair_acts(bx, k), pair_scales(sc, k)));
    }
    sumi
}

/// Lane `i`: the total of the eight lanes of `v[i]` (exact: integers).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn totals4(v: [__m256i; 4]) -> __m128i {
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
}

/// Four f16 values (the `d` or `dmin` of four blocks) as f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn halves4(h: [[u8; 2]; 4]) -> __m128 {
    let word = |i: usize| u16::from_le_bytes(h[i]) as u64;
    _mm_cvtph_ps(_mm_set_epi64x(0, (word(0) | word(1) << 16 | word(2) << 32 | word(3) << 48) as i64))
}

/// One block's fused multiply-adds on four lanes: `acc = fma(isum, dx * d, acc)`, `accm = fma(msum, dx * dmin,
/// accm)`, lane by lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fold4(acc: &mut (__m128, __m128), (isum, msum): (__m128i, __m128i), dx: __m128, (d, dmin): (__m128, __m128)) {
    acc.0 = _mm_fmadd_ps(_mm_cvtepi32_ps(isum), _mm_mul_ps(dx, d), acc.0);
    acc.1 = _mm_fmadd_ps(_mm_cvtepi32_ps(msum), _mm_mul_ps(dx, dmin), acc.1);
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store4(acc: (__m128, __m128), out: &mut [f32; 4]) {
    // SAFETY: writes exactly the 16 bytes of `out`.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), _mm_sub_ps(acc.0, acc.1)) }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_q4_k_q8_k(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (mut acc, mut accm) = (0f32, 0f32);
    for (bw, bx) in blocks::<BlockQ4K>(w).iter().zip(blocks::<BlockQ8K>(x)) {
        let dx = f32::from_le_bytes(bx.d);
        let (d, dmin) = f16_pair(bw.d, bw.dmin);
        let (sc, mins) = unpack_scales_mins_k(&bw.scales);
        let isum = hsum_epi32(isum_lanes(bw, &sc, bx));
        acc = (isum as f32).mul_add(dx * d, acc);
        accm = (min_sum_k(mins, bx) as f32).mul_add(dx * dmin, accm);
    }
    acc - accm
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_q4_k_q8_k_r4(_n: usize, ws: [&[u8]; 4], x: &[u8], out: &mut [f32; 4]) {
    let bx = blocks::<BlockQ8K>(x);
    let bw = blocks_r4::<BlockQ4K>(bx.len(), ws);
    let mut acc = (_mm_setzero_ps(), _mm_setzero_ps());
    for (b, bx) in bx.iter().enumerate() {
        let pairs = bsum_pairs_k(bx);
        let mut sc = [[0i16; 8]; 4];
        let mut msum = [0i32; 4];
        for i in 0..4 {
            let mins;
            (sc[i], mins) = unpack_scales_mins_k(&bw[i][b].scales);
            msum[i] = min_sum_pairs(mins, pairs);
        }
        let mut sumi = [_mm256_setzero_si256(); 4];
        for k in 0..4 {
            let q8 = pair_acts(bx, k);
            for i in 0..4 {
                sumi[i] =
                    _mm256_add_epi32(sumi[i], pair_products(pair_weights(&bw[i][b], k), q8, pair_scales(&sc[i], k)));
            }
        }
        let d = halves4([0, 1, 2, 3].map(|i| bw[i][b].d));
        let dmin = halves4([0, 1, 2, 3].map(|i| bw[i][b].dmin));
        let msum = _mm_set_epi32(msum[3], msum[2], msum[1], msum[0]);
        fold4(&mut acc, (totals4(sumi), msum), _mm_set1_ps(f32::from_le_bytes(bx.d)), (d, dmin));
    }
    store4(acc, out);
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_q4_k_q8_k_x4(_n: usize, w: &[u8], xs: [&[u8]; 4], out: &mut [f32; 4]) {
    let bw = blocks::<BlockQ4K>(w);
    let bx = blocks_x4::<BlockQ8K>(bw.len(), xs);
    let mut acc = (_mm_setzero_ps(), _mm_setzero_ps());
    for (b, bw) in bw.iter().enumerate() {
        let (d, dmin) = f16_pair(bw.d, bw.dmin);
        let (sc, mins) = unpack_scales_mins_k(&bw.scales);
        let msum = [0, 1, 2, 3].map(|i| min_sum_k(mins, &bx[i][b]));
        let mut sumi = [_mm256_setzero_si256(); 4];
        for k in 0..4 {
            let (q4, scales) = (pair_weights(bw, k), pair_scales(&sc, k));
            for i in 0..4 {
                // (The nibble split inside is the same for the four tokens; the unrolled loop computes it once.)
                sumi[i] = _mm256_add_epi32(sumi[i], pair_products(q4, pair_acts(&bx[i][b], k), scales));
            }
        }
        let dx = _mm_set_ps(
            f32::from_le_bytes(bx[3][b].d),
            f32::from_le_bytes(bx[2][b].d),
            f32::from_le_bytes(bx[1][b].d),
            f32::from_le_bytes(bx[0][b].d),
        );
        let msum = _mm_set_epi32(msum[3], msum[2], msum[1], msum[0]);
        fold4(&mut acc, (totals4(sumi), msum), dx, (_mm_set1_ps(d), _mm_set1_ps(dmin)));
    }
    store4(acc, out);
}

/// `unpack_scales_mins_k` with both halves in vectors: the eight scales and the eight mins as i16 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scales_mins(scales: &[u8; 12]) -> (__m128i, __m128i) {
    let [sc_lo, sc_hi, m_lo, m_hi] = scale_min_words(scales);
    let v = _mm_set_epi32(m_hi as i32, m_lo as i32, sc_hi as i32, sc_lo as i32);
    (_mm_cvtepu8_epi16(v), _mm_cvtepu8_epi16(_mm_unpackhi_epi64(v, v)))
}

/// The sub-block scales of four rows (i16 lanes, from [`scales_mins`]), transposed: word `j / 2` holds
/// sub-blocks `j` of rows 0-3 in its i16 lanes (rows in order), for `j` even in the low 64 bits and odd in the
/// high ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn transposed_scales(v: [__m128i; 4]) -> [__m128i; 4] {
    let (a, b) = (_mm_unpacklo_epi16(v[0], v[1]), _mm_unpackhi_epi16(v[0], v[1]));
    let (c, d) = (_mm_unpacklo_epi16(v[2], v[3]), _mm_unpackhi_epi16(v[2], v[3]));
    // [s0j s1j s2j s3j] for j = 0, 1 | 2, 3 | 4, 5 | 6, 7.
    [_mm_unpacklo_epi32(a, c), _mm_unpackhi_epi32(a, c), _mm_unpacklo_epi32(b, d), _mm_unpackhi_epi32(b, d)]
}

/// Sub-block `j`'s scale of each of the four rows in the i16 lanes of that row's eight interleaved bytes
/// (lanes `4r..4r + 4`), from [`transposed_scales`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn row_scales(t: &[__m128i; 4], j: usize) -> __m256i {
    let v = _mm256_broadcastsi128_si256(t[j / 2]);
    // Row r's i16 is bytes 2r, 2r + 1 of the word (+ 8 for odd j); rows 0, 1 fill the low half, 2, 3 the high.
    const PICK: [[i8; 32]; 2] = {
        let mut p = [[0i8; 32]; 2];
        let mut odd = 0;
        while odd < 2 {
            let mut i = 0;
            while i < 32 {
                // Byte i belongs to i16 lane i / 2, which holds row i / 8.
                p[odd][i] = (2 * (i / 8) + i % 2 + 8 * odd) as i8;
                i += 1;
            }
            odd += 1;
        }
        p
    };
    // SAFETY: reads exactly the 32 bytes of one mask.
    let m = unsafe { _mm256_loadu_si256(PICK[j % 2].as_ptr().cast()) };
    _mm256_shuffle_epi8(v, m)
}

/// Eight activation bytes in every 64-bit word.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn broadcast8(b: &[i8]) -> __m256i {
    let b: &[i8; 8] = arr(&b[..8]);
    _mm256_set1_epi64x(i64::from_le_bytes(b.map(|v| v as u8)))
}

/// Four rows by `T` tokens. The min terms of the four rows for one token: each row's eight mins against the
/// token's bsum pairs, reduced exactly to one i32 per row.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile<const T: usize>(bw: [&[BlockQ4K]; 4], bx: [&[BlockQ8K]; T], out: &mut [[f32; 4]; 4]) {
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = [(_mm_setzero_ps(), _mm_setzero_ps()); T];
    for b in 0..bw[0].len() {
        let w = [&bw[0][b], &bw[1][b], &bw[2][b], &bw[3][b]];
        let mut sc = [_mm_setzero_si128(); 4];
        let mut mins = [_mm_setzero_si128(); 4];
        for r in 0..4 {
            (sc[r], mins[r]) = scales_mins(&w[r].scales);
        }
        let scales = &transposed_scales(sc);
        let mut isum = [_mm256_setzero_si256(); T];
        for k in 0..4 {
            let q = [0, 1, 2, 3].map(|r| load_32(arr(&w[r].qs[32 * k..32 * k + 32])));
            // wq[g]: bytes 8g..8g + 8 of rows 0, 1, 2, 3.
            let (a, c) = (_mm256_unpacklo_epi64(q[0], q[1]), _mm256_unpacklo_epi64(q[2], q[3]));
            let (e, f) = (_mm256_unpackhi_epi64(q[0], q[1]), _mm256_unpackhi_epi64(q[2], q[3]));
            let wq = [
                _mm256_permute2x128_si256::<0x20>(a, c),
                _mm256_permute2x128_si256::<0x20>(e, f),
                _mm256_permute2x128_si256::<0x31>(a, c),
                _mm256_permute2x128_si256::<0x31>(e, f),
            ];
            // Low nibbles (sub-block 2k) for every token, then high ones (2k + 1): fewer live registers.
            for half in 0..2 {
                let q = match half {
                    0 => wq.map(|v| _mm256_and_si256(v, m4)),
                    _ => wq.map(|v| _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4)),
                };
                let s = row_scales(scales, 2 * k + half);
                for t in 0..T {
                    let xq = &bx[t][b].qs[64 * k + 32 * half..64 * k + 32 * half + 32];
                    let mut p = _mm256_maddubs_epi16(q[0], broadcast8(&xq[..8]));
                    for g in 1..4 {
                        p = _mm256_add_epi16(p, _mm256_maddubs_epi16(q[g], broadcast8(&xq[8 * g..])));
                    }
                    isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(p, s));
                }
            }
        }
        let d = halves4(w.map(|w| w.d));
        let dmin = halves4(w.map(|w| w.dmin));
        let (m01, m23) = (_mm256_set_m128i(mins[1], mins[0]), _mm256_set_m128i(mins[3], mins[2]));
        for t in 0..T {
            // Row r's products lie in i32 lanes 2r and 2r + 1: pairwise sums, rows 0, 1 low and 2, 3 high.
            let h = _mm256_hadd_epi32(isum[t], isum[t]);
            let rows = _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b1000>(h));
            let pairs = _mm256_broadcastsi128_si256(bsum_pairs_k(&bx[t][b]));
            // [r0 r0 r2 r2 | r1 r1 r3 r3] partial sums, then [r0 r2 r0 r2 | r1 r3 r1 r3] totals.
            let m = _mm256_hadd_epi32(_mm256_madd_epi16(m01, pairs), _mm256_madd_epi16(m23, pairs));
            let m = _mm256_hadd_epi32(m, m);
            let msum = _mm_unpacklo_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256::<1>(m));
            fold4(&mut acc[t], (rows, msum), _mm_set1_ps(f32::from_le_bytes(bx[t][b].d)), (d, dmin));
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        store4(a, o);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_q4_k_q8_k_tile(_n: usize, ws: [&[u8]; 4], xs: &[&[u8]], out: &mut [[f32; 4]; 4]) {
    let n_blocks = ws[0].len() / std::mem::size_of::<BlockQ4K>();
    let bw = blocks_r4::<BlockQ4K>(n_blocks, ws);
    let x = |t: usize| {
        let b = blocks::<BlockQ8K>(xs[t]);
        assert!(b.len() == n_blocks, "activation rows must match the weight rows");
        b
    };
    match xs.len() {
        1 => tile::<1>(bw, [x(0)], out),
        2 => tile::<2>(bw, [x(0), x(1)], out),
        3 => tile::<3>(bw, [x(0), x(1), x(2)], out),
        4 => tile::<4>(bw, [x(0), x(1), x(2), x(3)], out),
        n => panic!("a tile takes one to four activation rows, got {n}"),
    }
}
