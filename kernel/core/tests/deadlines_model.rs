//! Model-based property test of `rl4_core::deadlines`: random sequences of additions, takes of
//! due entries and prunes (each dropping a random subset, as stale waits are), against a plain
//! model: the list of (deadline, id) held.
//!
//! After every step: the heap property, the length, `earliest` (the model's least deadline),
//! that a due take returns an entry of the least deadline (and none when nothing is due), and
//! that a prune keeps exactly what the model keeps. Over the whole run: the owner prunes only
//! when `wants_prune` says so, and then the entries prunes look at stay within twice the entries
//! added (the cost bound the timer's pass relies on).
#![allow(unexpected_cfgs)] // `cfg(loom)`: set by RUSTFLAGS for the loom models only.
#![cfg(not(loom))]
use proptest::prelude::*;
use rl4_core::deadlines::Deadlines;

#[derive(Clone, Debug)]
enum Op {
    /// Add an entry with this deadline.
    Add(u64),
    /// Add this many entries with deadlines from `base` on (a burst of waits).
    Burst { n: u8, base: u64 },
    /// Take every entry due at `now`.
    Due(u64),
    /// Prune if it wants to (the time is `now`), keeping the entries whose id is not divisible
    /// by `k`; then shrink if it wants to.
    Prune { k: u8, now: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..1000).prop_map(Op::Add),
        1 => (1u8..100, 0u64..1000).prop_map(|(n, base)| Op::Burst { n, base }),
        2 => (0u64..1000).prop_map(Op::Due),
        2 => (1u8..5, 0u64..3000).prop_map(|(k, now)| Op::Prune { k, now }),
    ]
}

fn check(d: &Deadlines<u64>, model: &[(u64, u64)]) {
    assert!(d.is_heap());
    assert_eq!(d.len(), model.len());
    assert_eq!(d.earliest(), model.iter().map(|e| e.0).min());
    let mut held: Vec<_> = d.iter().copied().collect();
    let mut want = model.to_vec();
    held.sort();
    want.sort();
    assert_eq!(held, want);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn deadlines_match_the_model(ops in proptest::collection::vec(op(), 1..200)) {
        let mut d: Deadlines<u64> = Deadlines::new();
        let mut model: Vec<(u64, u64)> = Vec::new();
        let (mut next_id, mut added, mut visited) = (0u64, 0usize, 0usize);
        for op in ops {
            match op {
                Op::Add(t) => {
                    d.try_push(t, next_id).unwrap();
                    model.push((t, next_id));
                    (next_id, added) = (next_id + 1, added + 1);
                }
                Op::Burst { n, base } => {
                    for i in 0..n as u64 {
                        d.try_push(base + i * 7 % 13, next_id).unwrap();
                        model.push((base + i * 7 % 13, next_id));
                        (next_id, added) = (next_id + 1, added + 1);
                    }
                }
                Op::Due(now) => {
                    while let Some((t, id)) = d.pop_due(now) {
                        let least = model.iter().map(|e| e.0).min().unwrap();
                        prop_assert!(t <= now && t == least, "took {t} at {now}, least {least}");
                        let i = model.iter().position(|&e| e == (t, id)).expect("an entry the model holds");
                        model.swap_remove(i);
                    }
                    prop_assert!(model.iter().all(|e| e.0 > now), "an entry due at {now} was left");
                }
                Op::Prune { k, now } => {
                    // The period's prunes are bounded by time, not by entries added: the model
                    // counts only the doubling's (a period longer than any `now`).
                    if d.wants_prune(now, u64::MAX, 0) {
                        visited += d.prune(0, 0, |&(_, id)| id % k as u64 != 0);
                        model.retain(|&(_, id)| id % k as u64 != 0);
                    } else if d.wants_prune(now, 1000, now) {
                        d.prune(now, now, |&(_, id)| id % k as u64 != 0);
                        model.retain(|&(_, id)| id % k as u64 != 0);
                    }
                    if d.wants_shrink() {
                        d.shrink();
                        prop_assert!(!d.wants_shrink());
                    }
                }
            }
            check(&d, &model);
            prop_assert!(visited <= 2 * added, "prunes looked at {visited} entries for {added} added");
        }
    }
}
