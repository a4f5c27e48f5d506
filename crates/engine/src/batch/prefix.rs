//! The prefix cache: sessions of finished sequences kept with the tokens their state holds, so that a request
//! whose prompt starts with one of them (the next turn of a conversation) continues from that state instead of
//! computing the prefix again. Bounded in sessions; the least recently used goes first.

use crate::session::Session;

/// A finished sequence's state and the tokens it holds (`tokens.len() == session.pos`).
pub struct Cached {
    pub session: Session,
    pub tokens: Vec<u32>,
    last_used: u64,
}

/// Idle sessions by the tokens they hold, at most `n_max`, least recently used evicted first.
pub struct PrefixCache {
    entries: Vec<Cached>,
    n_max: usize,
    clock: u64,
}

impl PrefixCache {
    pub fn new(n_max: usize) -> PrefixCache {
        PrefixCache { entries: Vec::new(), n_max, clock: 0 }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes out the session sharing the longest common prefix with `prompt` (the most recent of equals), with
    /// that prefix's length; `None` when none shares a token.
    pub fn take_longest(&mut self, prompt: &[u32]) -> Option<(Cached, usize)> {
        let mut best: Option<(usize, usize, u64)> = None; // (index, lcp, last_used)
        for (i, c) in self.entries.iter().enumerate() {
            let lcp = common_prefix(&c.tokens, prompt);
            if lcp > 0 && best.is_none_or(|(_, l, u)| lcp > l || (lcp == l && c.last_used > u)) {
                best = Some((i, lcp, c.last_used));
            }
        }
        let (i, lcp, _) = best?;
        Some((self.entries.swap_remove(i), lcp))
    }

    /// Keeps a finished sequence's session; evicts the least recently used beyond the bound.
    pub fn put(&mut self, session: Session, tokens: Vec<u32>) {
        if self.n_max == 0 {
            return;
        }
        debug_assert_eq!(session.pos, tokens.len());
        self.clock += 1;
        self.entries.push(Cached { session, tokens, last_used: self.clock });
        while self.entries.len() > self.n_max {
            let lru = self.entries.iter().enumerate().min_by_key(|(_, c)| c.last_used).map_or(0, |(i, _)| i);
            self.entries.swap_remove(lru);
        }
    }

    /// Drops every kept session.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Bytes of the kept states (KV caches and recurrent states, without checkpoints).
    pub fn state_bytes(&self) -> usize {
        self.entries.iter().map(|c| c.session.kv_bytes()).sum()
    }
}

/// The length of the longest common prefix of `a` and `b`.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::LayerStateKind;

    fn session(tokens: &[u32]) -> Session {
        let mut s = Session::new(&[LayerStateKind::Kv { kv_dim: 2, head_dim: 2 }], 16, Default::default());
        s.pos = tokens.len();
        s
    }

    #[test]
    fn longest_prefix_wins_then_most_recent_and_lru_is_evicted() {
        let mut c = PrefixCache::new(2);
        c.put(session(&[1, 2, 3]), vec![1, 2, 3]);
        c.put(session(&[1, 2, 9, 9]), vec![1, 2, 9, 9]);
        let (got, lcp) = c.take_longest(&[1, 2, 9, 5]).expect("a match");
        assert_eq!((got.tokens.as_slice(), lcp), (&[1, 2, 9, 9][..], 3));
        c.put(got.session, got.tokens);
        assert!(c.take_longest(&[7]).is_none());
        // Equal prefixes: the most recently used.
        let (got, lcp) = c.take_longest(&[1, 2]).expect("a match");
        assert_eq!((got.tokens.as_slice(), lcp), (&[1, 2, 9, 9][..], 2));
        c.put(got.session, got.tokens);
        c.put(session(&[5]), vec![5]);
        assert_eq!(c.len(), 2);
        assert!(c.take_longest(&[1, 2, 3]).is_some_and(|(g, _)| g.tokens == [1, 2, 9, 9]), "[1, 2, 3] was the LRU");
    }
}
