//! Model-based property test of `rl4_core::deadlines`: random sequences of additions, takes of
//! due entries, prunes (each dropping a random subset, as stale waits are, and every dead one),
//! deaths (a subset of the ids, and the epoch moves) and sweep steps, against a plain model:
//! the list of (deadline, id) held and the set of dead ids.
//!
//! After every step: the heap property, the length, `earliest` (the model's least deadline),
//! that a due take returns an entry of the least deadline (and none when nothing is due), that a
//! prune keeps exactly what the model keeps, that a sweep step looks at no more entries than
//! its budget and takes out only dead ones, and that once a sweep has ended (`wants_sweep` says
//! no) no dead entry is left. Over the whole run: the owner prunes only when `wants_prune` says
//! so, and then the entries prunes look at stay within twice the entries added (the cost bound
//! the timer's pass relies on); at the end, sweep steps alone end the sweep.
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
    /// Prune if it wants to, keeping the entries whose id is not divisible by `k` (and not
    /// dead); then shrink if it wants to.
    Prune { k: u8 },
    /// The threads of the entries held whose id is `r` modulo `m` die: the epoch moves.
    Die { m: u8, r: u8 },
    /// A sweep step with this budget, if one is wanted.
    Sweep(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..1000).prop_map(Op::Add),
        1 => (1u8..100, 0u64..1000).prop_map(|(n, base)| Op::Burst { n, base }),
        2 => (0u64..1000).prop_map(Op::Due),
        2 => (1u8..5).prop_map(|k| Op::Prune { k }),
        1 => (1u8..6, 0u8..6).prop_map(|(m, r)| Op::Die { m, r: r % m }),
        3 => (1u8..20).prop_map(Op::Sweep),
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
        let mut dead = std::collections::BTreeSet::new();
        let mut epoch = 0u64;
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
                    // Half the takes say which entries are dead (as the kernel does), half not.
                    let take = |d: &mut Deadlines<u64>| if now % 2 == 0 { d.pop_due_with(now, |&(_, id)| dead.contains(&id)) } else { d.pop_due(now) };
                    while let Some((t, id)) = take(&mut d) {
                        let least = model.iter().map(|e| e.0).min().unwrap();
                        prop_assert!(t <= now && t == least, "took {t} at {now}, least {least}");
                        let i = model.iter().position(|&e| e == (t, id)).expect("an entry the model holds");
                        model.swap_remove(i);
                    }
                    prop_assert!(model.iter().all(|e| e.0 > now), "an entry due at {now} was left");
                }
                Op::Prune { k } => {
                    let keep = |id: u64| id % k as u64 != 0 && !dead.contains(&id);
                    if d.wants_prune() {
                        visited += d.prune(epoch, |&(_, id)| keep(id));
                        model.retain(|&(_, id)| keep(id));
                        prop_assert!(!d.wants_sweep(epoch), "a prune is a complete sweep");
                    }
                    if d.wants_shrink() {
                        d.shrink();
                        prop_assert!(!d.wants_shrink());
                    }
                }
                Op::Die { m, r } => {
                    dead.extend(model.iter().map(|e| e.1).filter(|id| id % m as u64 == r as u64));
                    epoch += 1;
                }
                Op::Sweep(budget) => {
                    let mut out = Vec::new();
                    let seen = d.sweep(epoch, budget as usize, |&(_, id)| dead.contains(&id), |e| out.push(e));
                    prop_assert!(seen <= budget as usize, "looked at {seen} with a budget of {budget}");
                    for e in out {
                        prop_assert!(dead.contains(&e.1), "took out {e:?}, which is not dead");
                        let i = model.iter().position(|&m| m == e).expect("an entry the model holds");
                        model.swap_remove(i);
                    }
                }
            }
            check(&d, &model);
            prop_assert!(visited <= 2 * added, "prunes looked at {visited} entries for {added} added");
            if !d.wants_sweep(epoch) {
                prop_assert!(model.iter().all(|e| !dead.contains(&e.1)), "a sweep ended with a dead entry left");
            }
        }
        // Sweep steps, with a due entry taken out between some of them (as the kernel's takes,
        // saying which are dead), end the sweep: at most a pass and a pass again per dead entry
        // that a removal or a take moved past it.
        let bound = (model.len() + 1) * (dead.len() + 2);
        let mut steps = 0;
        while d.wants_sweep(epoch) {
            if steps % 3 == 2
                && let Some(now) = d.earliest()
                && let Some(e) = d.pop_due_with(now, |&(_, id)| dead.contains(&id))
            {
                let i = model.iter().position(|&m| m == e).expect("an entry the model holds");
                model.swap_remove(i);
            }
            let mut out = Vec::new();
            d.sweep(epoch, 4, |&(_, id)| dead.contains(&id), |e| out.push(e));
            for e in out {
                let i = model.iter().position(|&m| m == e).expect("an entry the model holds");
                model.swap_remove(i);
            }
            check(&d, &model);
            steps += 1;
            prop_assert!(steps <= bound, "the sweep did not end in {bound} steps");
        }
        prop_assert!(model.iter().all(|e| !dead.contains(&e.1)));
    }
}
