//! `Sampler::sample` allocates nothing after its first call (for a fixed vocabulary size), checked with a counting
//! global allocator that only counts on the thread that asks.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use engine::sample::{Sampler, SamplerConfig};

thread_local! {
    static N_ALLOCS: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: forwards every call to `System` unchanged; only bumps a const-initialized thread-local counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = N_ALLOCS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = N_ALLOCS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn sample_does_not_allocate_after_warm_up() {
    let before = N_ALLOCS.with(Cell::get);
    std::hint::black_box(Vec::<u8>::with_capacity(64));
    assert!(N_ALLOCS.with(Cell::get) > before, "the counting allocator does not count");

    let n_vocab = 50_000;
    let logits: Vec<f32> = (0..n_vocab).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
    let history: Vec<u32> = (0..200).map(|i| (i * 31) % n_vocab as u32).collect();
    let configs = [
        SamplerConfig::greedy(),
        SamplerConfig::default(),
        SamplerConfig {
            top_k: 0,
            top_p: 0.9,
            min_p: 0.0,
            repeat_penalty: 1.1,
            frequency_penalty: 0.2,
            ..SamplerConfig::default()
        },
    ];
    for cfg in configs {
        let mut s = Sampler::new(cfg);
        s.sample(&logits, &history);
        let before = N_ALLOCS.with(Cell::get);
        for _ in 0..20 {
            std::hint::black_box(s.sample(&logits, &history));
        }
        assert_eq!(N_ALLOCS.with(Cell::get), before, "{cfg:?} allocated after warm-up");
    }
}
