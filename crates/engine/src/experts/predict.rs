//! Next-layer expert prediction from routing history alone: an online cross-layer transition table.
//!
//! While layer `l` runs, the experts it chose predict those of the next MoE layer `l'` of the same token: for each
//! pair (expert `a` chosen at `l`, expert `b` chosen at `l'`) the table counts how often they went together, and
//! the prediction is the `k` experts `b` with the largest sum over the chosen `a` of `count(a, b) / count(a, *)`.
//! Experts the next layer chose at its previous visit break ties (and stand in while the table is empty). This
//! works whatever decides the routes (a trace replay included); the router-based predictor in the decoder is more
//! accurate on real models. Predictions only decide what to prefetch: they never change a result.
//!
//! Memory: `n_layer * n_expert^2` counts of 2 bytes (1.5 MiB for 48 x 128 experts); above [`TABLE_BYTES_MAX`] the
//! table is not built and only the previous visit predicts.

/// Largest transition table built (bytes).
pub const TABLE_BYTES_MAX: usize = 64 << 20;

/// Weight of "chosen by the next layer at its previous visit", against transition scores (which sum to at most
/// the number of experts chosen at this layer).
const PREVIOUS_VISIT_WEIGHT: f32 = 0.01;

pub struct TransitionTable {
    n_expert: usize,
    /// `[layer][a][b]`: how often expert `a` at `layer` was followed by `b` at the next MoE layer.
    counts: Vec<u16>,
    /// `[layer][a]`: the sum of the row `counts[layer][a][..]`.
    row_sum: Vec<u32>,
    /// The next MoE layer after each layer.
    next_moe: Vec<Option<usize>>,
    /// The experts each layer chose at its latest visit (single-token visits only).
    latest: Vec<Vec<u32>>,
    /// The layer observed last, if its visit can teach the next one.
    last_layer: Option<usize>,
    scores: Vec<f32>, // [n_expert]
    order: Vec<u32>,  // [n_expert]
}

impl TransitionTable {
    /// `moe_layers[l]`: whether layer `l` has experts.
    pub fn new(moe_layers: &[bool], n_expert: usize) -> TransitionTable {
        let n_layer = moe_layers.len();
        let with_table = n_layer * n_expert * n_expert * 2 <= TABLE_BYTES_MAX;
        let next_moe = (0..n_layer).map(|l| (l + 1..n_layer).find(|&m| moe_layers[m])).collect::<Vec<Option<usize>>>();
        TransitionTable {
            n_expert,
            counts: if with_table { vec![0; n_layer * n_expert * n_expert] } else { Vec::new() },
            row_sum: if with_table { vec![0; n_layer * n_expert] } else { Vec::new() },
            next_moe,
            latest: vec![Vec::new(); n_layer],
            last_layer: None,
            scores: vec![0.0; n_expert],
            order: Vec::with_capacity(n_expert),
        }
    }

    /// The MoE layer after `layer`, if any.
    pub fn next_layer(&self, layer: usize) -> Option<usize> {
        self.next_moe.get(layer).copied().flatten()
    }

    /// Records that one token's visit of `layer` chose `ids` (learning the transition from the layer observed
    /// just before, when that was the previous MoE layer of the same token).
    pub fn observe(&mut self, layer: usize, ids: &[u32]) {
        let n = self.n_expert;
        if let Some(prev) = self.last_layer.filter(|&p| self.next_layer(p) == Some(layer)) {
            if !self.counts.is_empty() {
                for &a in &self.latest[prev] {
                    let row = (prev * n + a as usize) * n;
                    for &b in ids {
                        let c = &mut self.counts[row + b as usize];
                        if *c == u16::MAX {
                            // Halve the row: old transitions fade, the sums stay exact.
                            let mut sum = 0;
                            for x in &mut self.counts[row..row + n] {
                                *x /= 2;
                                sum += u32::from(*x);
                            }
                            self.row_sum[prev * n + a as usize] = sum;
                        }
                        self.counts[row + b as usize] += 1;
                        self.row_sum[prev * n + a as usize] += 1;
                    }
                }
            }
        }
        self.latest[layer].clear();
        self.latest[layer].extend_from_slice(ids);
        self.last_layer = Some(layer);
    }

    /// Forgets the token in progress (a multi-token step ran: its union of experts teaches nothing).
    pub fn interrupt(&mut self) {
        self.last_layer = None;
    }

    /// The `k` experts of the next MoE layer most likely to follow `ids` chosen at `layer`, best first, into
    /// `out`; returns that layer (`None` after the last MoE layer).
    pub fn predict(&mut self, layer: usize, ids: &[u32], k: usize, out: &mut Vec<u32>) -> Option<usize> {
        out.clear();
        let next = self.next_layer(layer)?;
        let n = self.n_expert;
        self.scores.iter_mut().for_each(|s| *s = 0.0);
        if !self.counts.is_empty() {
            for &a in ids {
                let sum = self.row_sum[layer * n + a as usize];
                if sum == 0 {
                    continue;
                }
                let row = (layer * n + a as usize) * n;
                let inv = 1.0 / sum as f32;
                for (s, &c) in self.scores.iter_mut().zip(&self.counts[row..row + n]) {
                    *s += f32::from(c) * inv;
                }
            }
        }
        for &b in &self.latest[next] {
            self.scores[b as usize] += PREVIOUS_VISIT_WEIGHT;
        }
        self.order.clear();
        self.order.extend((0..n as u32).filter(|&b| self.scores[b as usize] > 0.0));
        let scores = &self.scores;
        self.order.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]).then(a.cmp(&b)));
        out.extend(self.order.iter().take(k));
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_fixed_transition() {
        let mut t = TransitionTable::new(&[true, false, true], 8);
        let mut out = Vec::new();
        assert_eq!(t.predict(0, &[1, 2], 2, &mut out), Some(2));
        assert!(out.is_empty(), "nothing learned yet");
        for _ in 0..5 {
            t.observe(0, &[1, 2]);
            t.observe(2, &[5, 6]);
        }
        t.observe(0, &[1, 3]);
        t.predict(0, &[1, 3], 2, &mut out);
        assert_eq!(out, vec![5, 6]);
        assert_eq!(t.predict(2, &[5], 2, &mut out), None, "no MoE layer after the last");
    }
}
