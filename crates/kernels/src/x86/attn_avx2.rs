//! AVX2 versions of the attention core (`attn.rs`), bit-identical to its references. Scores: eight positions
//! per register, their keys transposed (8 x 8 blocks) so that each lane runs one score's `fma` chain over the
//! head's elements, for up to eight query rows per pass over a block. Values: eight head elements per register,
//! each lane the `fma` chain of one output element over the positions, for up to four rows at once. Softmax: the
//! fixed `exp` on eight lanes, the f64 sum's eight lanes in two registers.

use crate::attn::{self, check_attn, KvRows, EXP_MIN, EXP_POLY, LN2_HI, LN2_LO, LOG2E};
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Longest head the packed-key buffer holds; longer heads (none known) take the reference.
pub(crate) const MAX_HEAD_DIM: usize = 512;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load8(s: &[f32]) -> __m256 {
    assert!(s.len() >= 8);
    // SAFETY: reads the first 8 floats of `s` (checked above).
    unsafe { _mm256_loadu_ps(s.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store8(s: &mut [f32], v: __m256) {
    assert!(s.len() >= 8);
    // SAFETY: writes the first 8 floats of `s` (checked above).
    unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
}

/// `t[i]` = element `i` of each of the eight rows `r`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// Packs keys `j0..j0 + 8 * B` (`B` blocks of eight) transposed into the first `hd * 8 * B` elements of `buf`:
/// `kt[d * 8 * B + u] = key(j0 + u)[d]`, and returns them. Every one of them is written, so the stack buffer is
/// never zeroed (zeroing its 16-32 KiB on every call was 3.6% of the bundled model's decode profile).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn pack_keys<'a, const B: usize>(
    keys: &KvRows<'_>,
    j0: usize,
    buf: &'a mut [MaybeUninit<f32>],
) -> &'a [f32] {
    let hd = keys.head_dim;
    let len = hd * 8 * B;
    assert!(hd.is_multiple_of(8) && buf.len() >= len && j0 + 8 * B <= keys.n);
    let kt = buf.as_mut_ptr() as *mut f32;
    for b in 0..B {
        for d0 in (0..hd).step_by(8) {
            let t = transpose8(std::array::from_fn(|u| load8(&keys.row(j0 + 8 * b + u)[d0..])));
            for (i, v) in t.into_iter().enumerate() {
                // SAFETY: (d0 + i) * 8 * B + 8 * b + 8 <= hd * 8 * B = len <= buf.len() (checked above);
                // MaybeUninit<f32> has f32's layout.
                unsafe { _mm256_storeu_ps(kt.add((d0 + i) * 8 * B + 8 * b), v) };
            }
        }
    }
    // SAFETY: the loops above wrote every element of the first `len` (d0 + i covers 0..hd, b and the 8 lanes cover
    // 0..8 * B).
    unsafe { std::slice::from_raw_parts(kt, len) }
}

/// Scores of `R` query rows (`q`, `[R, hd]`) against the eight packed keys: `scores[i * ld..][..8]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn score_rows<const R: usize>(q: &[f32], hd: usize, kt: &[f32], scale: f32, scores: &mut [f32], ld: usize) -> usize {
    assert!(q.len() >= R * hd && kt.len() >= hd * 8 && (R == 0 || scores.len() >= (R - 1) * ld + 8));
    let mut acc = [_mm256_setzero_ps(); R];
    let (qp, kp) = (q.as_ptr(), kt.as_ptr());
    for d in 0..hd {
        // SAFETY: d < hd, so d * 8 + 8 <= kt.len() and i * hd + d < q.len() (checked above).
        let k = unsafe { _mm256_loadu_ps(kp.add(d * 8)) };
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            *a = _mm256_fmadd_ps(_mm256_set1_ps(unsafe { *qp.add(i * hd + d) }), k, *a);
        }
    }
    for (i, a) in acc.into_iter().enumerate() {
        store8(&mut scores[i * ld..], _mm256_mul_ps(a, _mm256_set1_ps(scale)));
    }
    R
}

/// The scores of every row of `q` against the positions `n_blocks..keys.n` not in a whole block, one at a time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn scores_tail(q: &[f32], keys: &KvRows<'_>, from: usize, scale: f32, scores: &mut [f32], ld: usize) {
    for j in from..keys.n {
        let k = keys.row(j);
        for (r, qr) in q.chunks_exact(keys.head_dim).enumerate() {
            scores[r * ld + j] = attn::dot_fma_ref(qr, k) * scale;
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn attn_scores(q: &[f32], keys: KvRows<'_>, scale: f32, scores: &mut [f32], ld: usize) {
    let rows = check_attn(q.len(), &keys, scores, ld);
    let hd = keys.head_dim;
    if !hd.is_multiple_of(8) || hd > MAX_HEAD_DIM {
        return attn::attn_scores_ref(q, keys, scale, scores, ld);
    }
    let n8 = keys.n / 8 * 8;
    let mut buf = [MaybeUninit::uninit(); 8 * MAX_HEAD_DIM];
    for j0 in (0..n8).step_by(8) {
        let kt = pack_keys::<1>(&keys, j0, &mut buf);
        let mut r = 0;
        while r < rows {
            let (qr, out) = (&q[r * hd..], &mut scores[r * ld + j0..]);
            r += match rows - r {
                1 => score_rows::<1>(qr, hd, kt, scale, out, ld),
                2 => score_rows::<2>(qr, hd, kt, scale, out, ld),
                3 => score_rows::<3>(qr, hd, kt, scale, out, ld),
                4..=7 => score_rows::<4>(qr, hd, kt, scale, out, ld),
                _ => score_rows::<8>(qr, hd, kt, scale, out, ld),
            };
        }
    }
    scores_tail(q, &keys, n8, scale, scores, ld);
}

/// Adds the values of every position to `R` rows of `out` (`[R, hd]` from element `e0`, `8 * W` elements).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn value_rows<const R: usize, const W: usize>(
    p: &[f32],
    ld: usize,
    values: &KvRows<'_>,
    e0: usize,
    out: &mut [f32],
    hd: usize,
) {
    let n = values.n;
    assert!(R == 0 || (p.len() >= (R - 1) * ld + n && out.len() >= (R - 1) * hd + e0 + 8 * W));
    assert!(e0 + 8 * W <= hd && (n == 0 || (n - 1) * values.stride + e0 + 8 * W <= values.data.len()));
    let mut acc: [[__m256; W]; R] =
        std::array::from_fn(|i| std::array::from_fn(|w| load8(&out[i * hd + e0 + 8 * w..])));
    let (pp, vp) = (p.as_ptr(), values.data.as_ptr());
    for j in 0..n {
        // SAFETY: j < n and e0 + 8 * W <= the row's end (checked above).
        let v: [__m256; W] =
            std::array::from_fn(|w| unsafe { _mm256_loadu_ps(vp.add(j * values.stride + e0 + 8 * w)) });
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: i * ld + j < p.len() (checked above).
            let pj = _mm256_set1_ps(unsafe { *pp.add(i * ld + j) });
            for w in 0..W {
                a[w] = _mm256_fmadd_ps(pj, v[w], a[w]);
            }
        }
    }
    for (i, a) in acc.into_iter().enumerate() {
        for (w, v) in a.into_iter().enumerate() {
            store8(&mut out[i * hd + e0 + 8 * w..], v);
        }
    }
}

/// The elements `from..hd` of every row, one at a time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn values_tail(p: &[f32], ld: usize, values: &KvRows<'_>, from: usize, out: &mut [f32]) {
    let hd = values.head_dim;
    for (r, o) in out.chunks_exact_mut(hd).enumerate() {
        for j in 0..values.n {
            let (pj, v) = (p[r * ld + j], values.row(j));
            for e in from..hd {
                o[e] = pj.mul_add(v[e], o[e]);
            }
        }
    }
}

/// Every whole 8-element chunk of `R` rows: 16 elements at a time, then 8.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn value_chunks<const R: usize>(p: &[f32], ld: usize, values: &KvRows<'_>, out: &mut [f32], hd: usize) -> usize {
    let n8 = hd / 8 * 8;
    let mut e0 = 0;
    while e0 + 16 <= n8 {
        value_rows::<R, 2>(p, ld, values, e0, out, hd);
        e0 += 16;
    }
    if e0 < n8 {
        value_rows::<R, 1>(p, ld, values, e0, out, hd);
    }
    R
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn attn_values(p: &[f32], ld: usize, values: KvRows<'_>, out: &mut [f32]) {
    let rows = check_attn(out.len(), &values, p, ld);
    let hd = values.head_dim;
    let n8 = hd / 8 * 8;
    let mut r = 0;
    while r < rows {
        let (pr, o) = (&p[r * ld..], &mut out[r * hd..]);
        r += match rows - r {
            1 => value_chunks::<1>(pr, ld, &values, o, hd),
            2 => value_chunks::<2>(pr, ld, &values, o, hd),
            3 => value_chunks::<3>(pr, ld, &values, o, hd),
            _ => value_chunks::<4>(pr, ld, &values, o, hd),
        };
    }
    if n8 < hd {
        values_tail(p, ld, &values, n8, out);
    }
}

/// `attn::exp_ref` on eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp8(x: __m256) -> __m256 {
    let n =
        _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)));
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x);
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
    let mut p = _mm256_set1_ps(EXP_POLY[0]);
    for c in &EXP_POLY[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
    }
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
    let ni = _mm256_max_epi32(_mm256_min_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), _mm256_set1_epi32(-126));
    let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(ni, _mm256_set1_epi32(127))));
    let keep = _mm256_cmp_ps::<_CMP_NLT_UQ>(x, _mm256_set1_ps(EXP_MIN));
    _mm256_and_ps(_mm256_mul_ps(p, pow2), keep)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn attn_softmax(x: &mut [f32]) {
    let n8 = x.len() / 8 * 8;
    let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
    for c in x[..n8].chunks_exact(8) {
        mv = _mm256_max_ps(load8(c), mv);
    }
    let mut lanes = [0.0f32; 8];
    store8(&mut lanes, mv);
    let m = attn::row_max(&[attn::row_max(&lanes), attn::row_max(&x[n8..])]);
    let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let mv = _mm256_set1_ps(m);
    for c in x[..n8].chunks_exact_mut(8) {
        let e = exp8(_mm256_sub_ps(load8(c), mv));
        store8(c, e);
        lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(e)));
    }
    let mut sums = [0.0f64; 8];
    // SAFETY: writes 4 + 4 doubles of `sums`.
    unsafe {
        _mm256_storeu_pd(sums.as_mut_ptr(), lo);
        _mm256_storeu_pd(sums.as_mut_ptr().add(4), hi);
    }
    for (j, v) in x.iter_mut().enumerate().skip(n8) {
        *v = attn::exp_ref(*v - m);
        sums[j % 8] += *v as f64;
    }
    let inv = (1.0 / attn::lanes_total(&sums)) as f32;
    let iv = _mm256_set1_ps(inv);
    for c in x[..n8].chunks_exact_mut(8) {
        let v = _mm256_mul_ps(load8(c), iv);
        store8(c, v);
    }
    for v in &mut x[n8..] {
        *v *= inv;
    }
}
