//! Rotary position embeddings (RoPE).

/// Which dimensions are rotated together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i + 1)`: llama.cpp's "normal" mode, used for GGUF Llama models, whose converter permutes
    /// the q/k weights to match.
    Interleaved,
    /// Pairs `(i, i + d/2)` (transformers' `rotate_half`, llama.cpp's NeoX mode): Qwen, and Llama from
    /// safetensors.
    Neox,
}

#[derive(Clone, Debug)]
pub struct Rope {
    pub style: RopeStyle,
    /// Number of rotated dimensions per head (the head size for the families here).
    pub n_dims: usize,
    /// The base frequency.
    pub theta: f32,
    /// `inv_freq[i] = theta^(-2i / n_dims)` as transformers computes it (float32).
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(style: RopeStyle, n_dims: usize, theta: f32) -> Rope {
        assert!(n_dims.is_multiple_of(2), "RoPE needs an even number of dimensions");
        let inv_freq = (0..n_dims / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / n_dims as f32)).collect();
        Rope { style, n_dims, theta, inv_freq }
    }

    /// Interleaved multimodal RoPE (Qwen3.5) for text positions: every section (t, h, w) gets the token's
    /// position, so it is this RoPE, except that rotary pair `i` whose sector `i % sum(sections)` no section covers
    /// (llama.cpp's `ggml_rope_multi`, IMROPE: t takes sectors `0 mod 3` below `3 s0`, h `1 mod 3` below `3 s1`,
    /// w `2 mod 3` below `3 s2`) keeps position 0, that is, is not rotated.
    pub fn keep_sections(&mut self, sections: &[usize]) {
        let s = |i: usize| sections.get(i).copied().unwrap_or(0);
        let total: usize = sections.iter().sum();
        for (i, f) in self.inv_freq.iter_mut().enumerate() {
            let sector = if total == 0 { i } else { i % total };
            let covered = match sector % 3 {
                0 => sector < 3 * s(0),
                1 => sector < 3 * s(1),
                _ => sector < 3 * s(2),
            };
            if !covered {
                *f = 0.0;
            }
        }
    }

    /// Fills `cos` and `sin` (`n_dims / 2` each) for position `pos`.
    pub fn cos_sin(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        for (i, &f) in self.inv_freq.iter().enumerate() {
            let angle = pos as f32 * f;
            cos[i] = angle.cos();
            sin[i] = angle.sin();
        }
    }

    /// Rotates one head `x` (`[head_dim]`) with the table of its position.
    pub fn apply(&self, x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = self.n_dims / 2;
        match self.style {
            RopeStyle::Neox => {
                for i in 0..half {
                    let (a, b) = (x[i], x[i + half]);
                    x[i] = a * cos[i] - b * sin[i];
                    x[i + half] = b * cos[i] + a * sin[i];
                }
            }
            RopeStyle::Interleaved => {
                for i in 0..half {
                    let (a, b) = (x[2 * i], x[2 * i + 1]);
                    x[2 * i] = a * cos[i] - b * sin[i];
                    x[2 * i + 1] = b * cos[i] + a * sin[i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity_and_norm_is_kept() {
        for style in [RopeStyle::Neox, RopeStyle::Interleaved] {
            let rope = Rope::new(style, 8, 10000.0);
            let (mut c, mut s) = (vec![0.0; 4], vec![0.0; 4]);
            let x0: Vec<f32> = (0..8).map(|i| i as f32 - 3.5).collect();
            let mut x = x0.clone();
            rope.cos_sin(0, &mut c, &mut s);
            rope.apply(&mut x, &c, &s);
            assert_eq!(x, x0);
            rope.cos_sin(17, &mut c, &mut s);
            rope.apply(&mut x, &c, &s);
            let n0: f32 = x0.iter().map(|v| v * v).sum();
            let n1: f32 = x.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-4);
        }
    }
}
