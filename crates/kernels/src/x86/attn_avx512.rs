//! AVX-512 versions of the attention core (`attn.rs`), bit-identical to its references. Scores: eight keys at a
//! time, each key's eight `dot8` partial sums in one 256-bit register (products rounded, then added: no FMA),
//! and the eight combination trees done together (`vperm2f128` and two `vhaddps`, which add exactly the pairs
//! the reference adds). Values: sixteen output elements per 512-bit lane group, each adding its rounded
//! products in position order.

use super::attn_avx2;
use crate::attn::{check_attn, KvRows};
use std::arch::x86_64::*;

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn load8(s: &[f32]) -> __m256 {
    assert!(s.len() >= 8);
    // SAFETY: reads the first 8 floats of `s` (checked above).
    unsafe { _mm256_loadu_ps(s.as_ptr()) }
}

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

/// Lane `u`: `((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7))` of `acc[u]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn trees8(acc: [__m256; 8]) -> __m256 {
    // z[u] = [s(u) | s(u + 4)], s = [a0 + a4, a1 + a5, a2 + a6, a3 + a7].
    let z: [__m256; 4] = std::array::from_fn(|u| {
        let (a, b) = (acc[u], acc[u + 4]);
        _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(a, b), _mm256_permute2f128_ps::<0x31>(a, b))
    });
    // [s0 + s1, s2 + s3] of keys 0, 1 | 4, 5, and of keys 2, 3 | 6, 7; then their sums, in key order.
    let (h01, h23) = (_mm256_hadd_ps(z[0], z[1]), _mm256_hadd_ps(z[2], z[3]));
    _mm256_hadd_ps(h01, h23)
}

/// Scores of one query head against keys `j0..j0 + 8`, times `scale`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn scores8(qh: &[f32], keys: &KvRows<'_>, j0: usize, scale: f32, out: &mut [f32]) {
    let hd = keys.head_dim;
    let n8 = hd / 8 * 8;
    let mut acc = [_mm256_setzero_ps(); 8];
    for c in (0..n8).step_by(8) {
        let q = load8(&qh[c..]);
        for (u, a) in acc.iter_mut().enumerate() {
            *a = _mm256_add_ps(*a, _mm256_mul_ps(q, load8(&keys.row(j0 + u)[c..])));
        }
    }
    let tails: [f32; 8] = std::array::from_fn(|u| {
        let k = keys.row(j0 + u);
        let mut tail = 0.0f32;
        for (x, y) in qh[n8..].iter().zip(&k[n8..]) {
            tail += x * y;
        }
        tail
    });
    // SAFETY: reads the 8 floats of `tails`.
    let tails = unsafe { _mm256_loadu_ps(tails.as_ptr()) };
    let s = _mm256_mul_ps(_mm256_add_ps(trees8(acc), tails), _mm256_set1_ps(scale));
    assert!(out.len() >= 8);
    // SAFETY: writes the first 8 floats of `out` (checked above).
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) fn attn_scores(q: &[f32], keys: KvRows<'_>, scale: f32, scores: &mut [f32], ld: usize) {
    check_attn(q.len(), &keys, scores, ld);
    let n8 = keys.n / 8 * 8;
    for (g, qh) in q.chunks_exact(keys.head_dim).enumerate() {
        for j0 in (0..n8).step_by(8) {
            scores8(qh, &keys, j0, scale, &mut scores[g * ld + j0..]);
        }
    }
    if n8 < keys.n {
        let rest = KvRows { data: &keys.data[n8 * keys.stride..], n: keys.n - n8, ..keys };
        attn_avx2::attn_scores(q, rest, scale, &mut scores[n8..], ld);
    }
}

/// Adds `p[j] * values[j][e0..e0 + 16 * W]` over the positions to `o[..16 * W]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn values_block<const W: usize>(p: &[f32], values: &KvRows<'_>, e0: usize, o: &mut [f32]) {
    let mut acc: [__m512; W] = std::array::from_fn(|w| load16(&o[16 * w..]));
    for j in 0..values.n {
        let pj = _mm512_set1_ps(p[j]);
        let v = &values.data[j * values.stride + e0..j * values.stride + e0 + 16 * W];
        for w in 0..W {
            acc[w] = _mm512_add_ps(acc[w], _mm512_mul_ps(pj, load16(&v[16 * w..])));
        }
    }
    for w in 0..W {
        store16(&mut o[16 * w..], acc[w]);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) fn attn_values(p: &[f32], ld: usize, values: KvRows<'_>, out: &mut [f32]) {
    check_attn(out.len(), &values, p, ld);
    let hd = values.head_dim;
    let n16 = hd / 16 * 16;
    for (g, o) in out.chunks_exact_mut(hd).enumerate() {
        let pg = &p[g * ld..];
        let mut e0 = 0;
        while e0 + 64 <= n16 {
            values_block::<4>(pg, &values, e0, &mut o[e0..]);
            e0 += 64;
        }
        while e0 < n16 {
            values_block::<1>(pg, &values, e0, &mut o[e0..]);
            e0 += 16;
        }
    }
    if n16 < hd {
        // The last hd % 16 elements of every head: the AVX2 kernel on a narrower view of the same rows.
        let rest = KvRows { data: &values.data[n16..], head_dim: hd - n16, ..values };
        let group = out.len() / hd;
        for g in 0..group {
            let o = &mut out[g * hd + n16..(g + 1) * hd];
            let one = &p[g * ld..];
            attn_avx2::attn_values(one, ld, rest, o);
        }
    }
}
