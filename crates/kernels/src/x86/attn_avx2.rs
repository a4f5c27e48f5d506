//! AVX2 versions of the attention core (`attn.rs`), bit-identical to its references: the eight partial sums of
//! `dot8` are the eight lanes of one register (products rounded, then added: no FMA), combined in the same
//! tree; a value sum keeps eight output elements per lane, each adding its rounded products in position order.

use crate::attn::{check_attn, KvRows};
use std::arch::x86_64::*;

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

/// `attn::dot8_ref`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let n8 = a.len() / 8 * 8;
    let mut acc = _mm256_setzero_ps();
    for c in (0..n8).step_by(8) {
        acc = _mm256_add_ps(acc, _mm256_mul_ps(load8(&a[c..]), load8(&b[c..])));
    }
    let mut tail = 0.0f32;
    for (x, y) in a[n8..].iter().zip(&b[n8..]) {
        tail += x * y;
    }
    // [l0 + l4, l1 + l5, l2 + l6, l3 + l7], then (s0 + s1) and (s2 + s3), then their sum.
    let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
    let t = _mm_add_ps(s, _mm_shuffle_ps::<0b10_11_00_01>(s, s));
    _mm_cvtss_f32(_mm_add_ss(t, _mm_movehl_ps(t, t))) + tail
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn attn_scores(q: &[f32], keys: KvRows<'_>, scale: f32, scores: &mut [f32], ld: usize) {
    check_attn(q.len(), &keys, scores, ld);
    for j in 0..keys.n {
        let k = keys.row(j);
        for (g, qh) in q.chunks_exact(keys.head_dim).enumerate() {
            scores[g * ld + j] = dot8(qh, k) * scale;
        }
    }
}

/// Adds `p[j] * values[j][e0..e0 + 8 * W]` over the positions to `o[..8 * W]`, `W` registers at a time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn values_block<const W: usize>(p: &[f32], values: &KvRows<'_>, e0: usize, o: &mut [f32]) {
    let mut acc: [__m256; W] = std::array::from_fn(|w| load8(&o[8 * w..]));
    for j in 0..values.n {
        let pj = _mm256_set1_ps(p[j]);
        let v = &values.data[j * values.stride + e0..j * values.stride + e0 + 8 * W];
        for w in 0..W {
            acc[w] = _mm256_add_ps(acc[w], _mm256_mul_ps(pj, load8(&v[8 * w..])));
        }
    }
    for w in 0..W {
        store8(&mut o[8 * w..], acc[w]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn attn_values(p: &[f32], ld: usize, values: KvRows<'_>, out: &mut [f32]) {
    check_attn(out.len(), &values, p, ld);
    let hd = values.head_dim;
    for (g, o) in out.chunks_exact_mut(hd).enumerate() {
        let pg = &p[g * ld..];
        let mut e0 = 0;
        while e0 + 32 <= hd {
            values_block::<4>(pg, &values, e0, &mut o[e0..]);
            e0 += 32;
        }
        while e0 + 8 <= hd {
            values_block::<1>(pg, &values, e0, &mut o[e0..]);
            e0 += 8;
        }
        for j in 0..values.n {
            let v = &values.data[j * values.stride..];
            for e in e0..hd {
                o[e] += pg[j] * v[e];
            }
        }
    }
}
