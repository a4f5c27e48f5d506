//! AVX-512 versions of the attention core (`attn.rs`), bit-identical to its references. Scores: sixteen positions
//! per register, their keys transposed (two 8 x 8 blocks per head chunk) so that each lane runs one score's `fma`
//! chain over the head's elements, for up to eight query rows per pass; values: sixteen head elements per
//! register, up to four registers by four rows at once; softmax: the fixed `exp` on sixteen lanes. Positions or
//! elements short of a whole register go through the AVX2 kernels, which compute the same bits.

use super::attn_avx2::{self, MAX_HEAD_DIM};
use crate::attn::{self, check_attn, KvRows, EXP_MIN, EXP_POLY, LN2_HI, LN2_LO, LOG2E};
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn load16(s: &[f32]) -> __m512 {
    assert!(s.len() >= 16);
    // SAFETY: reads the first 16 floats of `s` (checked above).
    unsafe { _mm512_loadu_ps(s.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn store16(s: &mut [f32], v: __m512) {
    assert!(s.len() >= 16);
    // SAFETY: writes the first 16 floats of `s` (checked above).
    unsafe { _mm512_storeu_ps(s.as_mut_ptr(), v) }
}

/// Scores of `R` query rows (`q`, `[R, hd]`) against the sixteen packed keys: `scores[i * ld..][..16]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn score_rows<const R: usize>(q: &[f32], hd: usize, kt: &[f32], scale: f32, scores: &mut [f32], ld: usize) -> usize {
    assert!(q.len() >= R * hd && kt.len() >= hd * 16 && (R == 0 || scores.len() >= (R - 1) * ld + 16));
    let mut acc = [_mm512_setzero_ps(); R];
    let (qp, kp) = (q.as_ptr(), kt.as_ptr());
    for d in 0..hd {
        // SAFETY: d < hd, so d * 16 + 16 <= kt.len() and i * hd + d < q.len() (checked above).
        let k = unsafe { _mm512_loadu_ps(kp.add(d * 16)) };
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            *a = _mm512_fmadd_ps(_mm512_set1_ps(unsafe { *qp.add(i * hd + d) }), k, *a);
        }
    }
    for (i, a) in acc.into_iter().enumerate() {
        store16(&mut scores[i * ld..], _mm512_mul_ps(a, _mm512_set1_ps(scale)));
    }
    R
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) fn attn_scores(q: &[f32], keys: KvRows<'_>, scale: f32, scores: &mut [f32], ld: usize) {
    let rows = check_attn(q.len(), &keys, scores, ld);
    let hd = keys.head_dim;
    if !hd.is_multiple_of(8) || hd > MAX_HEAD_DIM {
        return attn::attn_scores_ref(q, keys, scale, scores, ld);
    }
    let n16 = keys.n / 16 * 16;
    let mut buf = [MaybeUninit::uninit(); 16 * MAX_HEAD_DIM];
    for j0 in (0..n16).step_by(16) {
        let kt = attn_avx2::pack_keys::<2>(&keys, j0, &mut buf);
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
    if n16 < keys.n {
        let rest = KvRows { data: &keys.data[n16 * keys.stride..], n: keys.n - n16, ..keys };
        attn_avx2::attn_scores(q, rest, scale, &mut scores[n16..], ld);
    }
}

/// Adds the values of every position to `R` rows of `out` (`[R, hd]` from element `e0`, `16 * W` elements).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn value_rows<const R: usize, const W: usize>(
    p: &[f32],
    ld: usize,
    values: &KvRows<'_>,
    e0: usize,
    out: &mut [f32],
    hd: usize,
) {
    let n = values.n;
    assert!(R == 0 || (p.len() >= (R - 1) * ld + n && out.len() >= (R - 1) * hd + e0 + 16 * W));
    assert!(e0 + 16 * W <= hd && (n == 0 || (n - 1) * values.stride + e0 + 16 * W <= values.data.len()));
    let mut acc: [[__m512; W]; R] =
        std::array::from_fn(|i| std::array::from_fn(|w| load16(&out[i * hd + e0 + 16 * w..])));
    let (pp, vp) = (p.as_ptr(), values.data.as_ptr());
    for j in 0..n {
        // SAFETY: j < n and e0 + 16 * W <= the row's end (checked above).
        let v: [__m512; W] =
            std::array::from_fn(|w| unsafe { _mm512_loadu_ps(vp.add(j * values.stride + e0 + 16 * w)) });
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: i * ld + j < p.len() (checked above).
            let pj = _mm512_set1_ps(unsafe { *pp.add(i * ld + j) });
            for w in 0..W {
                a[w] = _mm512_fmadd_ps(pj, v[w], a[w]);
            }
        }
    }
    for (i, a) in acc.into_iter().enumerate() {
        for (w, v) in a.into_iter().enumerate() {
            store16(&mut out[i * hd + e0 + 16 * w..], v);
        }
    }
}

/// Every whole 16-element chunk of `R` rows: 64 elements at a time, then 16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn value_chunks<const R: usize>(p: &[f32], ld: usize, values: &KvRows<'_>, out: &mut [f32], hd: usize) -> usize {
    let n16 = hd / 16 * 16;
    let mut e0 = 0;
    while e0 + 64 <= n16 {
        value_rows::<R, 4>(p, ld, values, e0, out, hd);
        e0 += 64;
    }
    while e0 < n16 {
        value_rows::<R, 1>(p, ld, values, e0, out, hd);
        e0 += 16;
    }
    R
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) fn attn_values(p: &[f32], ld: usize, values: KvRows<'_>, out: &mut [f32]) {
    let rows = check_attn(out.len(), &values, p, ld);
    let hd = values.head_dim;
    let n16 = hd / 16 * 16;
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
    if n16 < hd {
        attn_avx2::values_tail(p, ld, &values, n16, out);
    }
}

/// `attn::exp_ref` on sixteen lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn exp16(x: __m512) -> __m512 {
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        x,
        _mm512_set1_ps(LOG2E),
    ));
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), x);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_LO), r);
    let mut p = _mm512_set1_ps(EXP_POLY[0]);
    for c in &EXP_POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
    let ni = _mm512_max_epi32(_mm512_min_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), _mm512_set1_epi32(-126));
    let pow2 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(ni, _mm512_set1_epi32(127))));
    let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, _mm512_set1_ps(EXP_MIN));
    _mm512_maskz_mov_ps(keep, _mm512_mul_ps(p, pow2))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) fn attn_softmax(x: &mut [f32]) {
    let n16 = x.len() / 16 * 16;
    let mut mv = _mm512_set1_ps(f32::NEG_INFINITY);
    for c in x[..n16].chunks_exact(16) {
        mv = _mm512_max_ps(load16(c), mv);
    }
    let mut lanes = [0.0f32; 16];
    store16(&mut lanes, mv);
    let m = attn::row_max(&[attn::row_max(&lanes), attn::row_max(&x[n16..])]);
    let mut acc = _mm512_setzero_pd();
    let mv = _mm512_set1_ps(m);
    for c in x[..n16].chunks_exact_mut(16) {
        let e = exp16(_mm512_sub_ps(load16(c), mv));
        store16(c, e);
        let lo = _mm512_castps512_ps256(e);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(e)));
        acc = _mm512_add_pd(acc, _mm512_cvtps_pd(lo));
        acc = _mm512_add_pd(acc, _mm512_cvtps_pd(hi));
    }
    let mut sums = [0.0f64; 8];
    // SAFETY: writes the 8 doubles of `sums`.
    unsafe { _mm512_storeu_pd(sums.as_mut_ptr(), acc) };
    for (j, v) in x.iter_mut().enumerate().skip(n16) {
        *v = attn::exp_ref(*v - m);
        sums[j % 8] += *v as f64;
    }
    let inv = (1.0 / attn::lanes_total(&sums)) as f32;
    let iv = _mm512_set1_ps(inv);
    for c in x[..n16].chunks_exact_mut(16) {
        let v = _mm512_mul_ps(load16(c), iv);
        store16(c, v);
    }
    for v in &mut x[n16..] {
        *v *= inv;
    }
}
