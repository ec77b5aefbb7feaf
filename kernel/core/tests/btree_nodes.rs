//! `rl4_core::btreenodes` against the real `BTreeMap` (the same `alloc` the kernel links): every
//! node allocation of every insertion is counted, after random sequences of insertions and
//! removals and in trees five and six levels high; no insertion may allocate more nodes than
//! `insert_nodes` of the map's length, nor a node larger than `NODE_BLOCK` (the kernel's map:
//! `u64` keys, a reference and two flags as the value).
#![feature(allocator_api, btreemap_alloc)]
#![allow(unexpected_cfgs)] // `cfg(loom)`: set by RUSTFLAGS for the loom models only.
#![cfg(not(loom))]
use std::alloc::{AllocError, Allocator, Global, Layout};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::Arc;

use proptest::prelude::*;
use rl4_core::btreenodes::{NODE_ALIGN, NODE_BLOCK, insert_nodes};

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
    static LARGEST: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Counts this thread's allocations and their largest layout.
#[derive(Clone, Copy)]
struct Counting;

// SAFETY: every call is passed to `Global` unchanged.
unsafe impl Allocator for Counting {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        ALLOCS.with(|a| a.set(a.get() + 1));
        LARGEST.with(|l| {
            let (s, a) = l.get();
            l.set((s.max(layout.size()), a.max(layout.align())));
        });
        Global.allocate(layout)
    }
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: `ptr` came from `Global` with `layout` (above).
        unsafe { Global.deallocate(ptr, layout) }
    }
}

/// The kernel's value: a frame's reference and two flags.
type Value = (Arc<u8>, bool, bool);
type Map = BTreeMap<u64, Value, Counting>;

/// Inserts `key`, checking the nodes it allocated against the bound; the nodes it allocated.
fn insert(m: &mut Map, key: u64, v: &Arc<u8>) -> usize {
    let len = m.len();
    let before = ALLOCS.with(|a| a.get());
    m.insert(key, (v.clone(), true, false));
    let n = ALLOCS.with(|a| a.get()) - before;
    assert!(n <= insert_nodes(len), "inserting into a map of {len} entries allocated {n} nodes, the bound says {}", insert_nodes(len));
    n
}

fn largest_fits() {
    let (size, align) = LARGEST.with(|l| l.get());
    assert!(size > 0, "no node was counted");
    assert!(size <= NODE_BLOCK && align <= NODE_ALIGN, "a node of {size} bytes (aligned {align}) does not fit a block");
}

/// A xorshift generator (deterministic, fast enough for a million steps).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn deep_trees_stay_within_the_bound() {
    let v = Arc::new(0u8);
    let mut m = Map::new_in(Counting);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut most = 0;
    // In ascending order (every insertion at the right edge: the splits that leave nodes
    // fullest), then at random, then removals and insertions mixed: 250,000 entries make six
    // levels.
    for k in 0..100_000u64 {
        most = most.max(insert(&mut m, k << 12, &v));
    }
    for _ in 0..150_000 {
        most = most.max(insert(&mut m, (rng.next() % (1 << 36)) << 12, &v));
    }
    for _ in 0..400_000 {
        let k = (rng.next() % (1 << 36)) << 12;
        if rng.next() % 2 == 0 {
            m.remove(&k);
            if let Some((&first, _)) = m.iter().next() {
                m.remove(&first);
            }
        } else {
            most = most.max(insert(&mut m, k, &v));
        }
    }
    // Positive control: some insertion split a leaf and every level above it, up to a new root.
    assert!(most >= 4, "no insertion allocated more than {most} nodes: the counting saw no deep split");
    largest_fits();
}

#[test]
fn removing_down_to_empty_and_growing_again_stays_within_the_bound() {
    let v = Arc::new(0u8);
    let mut m = Map::new_in(Counting);
    let mut rng = Rng(12345);
    for round in 0..4 {
        for _ in 0..20_000 {
            insert(&mut m, (rng.next() % (1 << 20)) << 12, &v);
        }
        let keys: Vec<u64> = m.keys().copied().collect();
        for (i, k) in keys.iter().enumerate() {
            // Every other one, then the rest from the top: underfull nodes merge both ways.
            if (i + round) % 2 == 0 {
                m.remove(k);
            }
        }
        for k in keys.iter().rev() {
            m.remove(k);
        }
        assert!(m.is_empty());
    }
    largest_fits();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    /// Short random sequences over a small key range (many collisions, removals of absent
    /// keys, trees of one to four levels).
    #[test]
    fn random_insertions_and_removals(ops in prop::collection::vec((any::<bool>(), 0u64..600), 1..2000)) {
        let v = Arc::new(0u8);
        let mut m = Map::new_in(Counting);
        for (ins, k) in ops {
            if ins {
                insert(&mut m, k << 12, &v);
            } else {
                m.remove(&(k << 12));
            }
        }
    }
}
