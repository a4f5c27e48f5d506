//! The KV cache of one attention layer: keys and values of every position, in f32. A leaf module: the session
//! owns one per attention layer, and the backends read it.

/// Keys and values of one layer, `[n_ctx, n_head_kv * head_dim]` each, in f32.
pub struct LayerKv {
    n_ctx: usize,
    kv_dim: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl LayerKv {
    pub fn new(n_ctx: usize, kv_dim: usize) -> LayerKv {
        LayerKv { n_ctx, kv_dim, k: vec![0.0; n_ctx * kv_dim], v: vec![0.0; n_ctx * kv_dim] }
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Stores keys and values (`[n, kv_dim]`) at positions `pos0..pos0 + n`.
    pub fn write(&mut self, pos0: usize, k: &[f32], v: &[f32]) {
        let start = pos0 * self.kv_dim;
        self.k[start..start + k.len()].copy_from_slice(k);
        self.v[start..start + v.len()].copy_from_slice(v);
    }

    pub fn k_head(&self, pos: usize, head: usize, head_dim: usize) -> &[f32] {
        let o = pos * self.kv_dim + head * head_dim;
        &self.k[o..o + head_dim]
    }

    pub fn v_head(&self, pos: usize, head: usize, head_dim: usize) -> &[f32] {
        let o = pos * self.kv_dim + head * head_dim;
        &self.v[o..o + head_dim]
    }

    pub fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * 4
    }
}
