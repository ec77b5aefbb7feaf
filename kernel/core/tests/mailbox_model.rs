//! Model-based property test of `rl4_core::mailbox`: random sequences of pushes (of items that
//! may already be in a mailbox), drains (whose callback pushes some items again, into the same
//! or the other mailbox) and idle-state changes on two mailboxes, against a plain model: a
//! `VecDeque` of (item, payload) and an idle state per mailbox, and where each item is.
//!
//! After every step: each push's result (accepted or handed back, `was_empty`, the state it
//! found), each drain's items and payloads in order, `is_empty`, `state`, every item's
//! `is_queued` and its reference count (one for the test, one more while it is in a mailbox).
#![allow(unexpected_cfgs)] // `cfg(loom)`: set by RUSTFLAGS for the loom models only.
#![cfg(not(loom))]
use std::collections::VecDeque;
use std::sync::Arc;

use proptest::prelude::*;
use rl4_core::mailbox::{Idle, Link, Linked, Mailbox, Pushed};

const ITEMS: usize = 6;
const BOXES: usize = 2;

#[derive(Debug)]
struct Item {
    link: Link<Item>,
    id: usize,
}

// SAFETY: `link` returns the item's own field, always the same one.
unsafe impl Linked for Item {
    fn link(&self) -> &Link<Item> {
        &self.link
    }
}

#[derive(Clone, Debug)]
enum Op {
    Push { item: usize, to: usize, payload: u64 },
    /// Drain mailbox `from`; the k-th item drained is pushed again into `again[k]` (if `Some`).
    /// `busy`: with `drain_busy` (the owner becomes `Busy` in the same step).
    Drain { from: usize, again: Vec<Option<usize>>, busy: bool },
    Polling(usize),
    Busy(usize),
    TryHalt(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..ITEMS, 0..BOXES, any::<u64>()).prop_map(|(item, to, payload)| Op::Push { item, to, payload }),
        3 => (0..BOXES, prop::collection::vec(prop::option::weighted(0.3, 0..BOXES), 0..ITEMS), any::<bool>())
            .prop_map(|(from, again, busy)| Op::Drain { from, again, busy }),
        1 => (0..BOXES).prop_map(Op::Polling),
        1 => (0..BOXES).prop_map(Op::Busy),
        1 => (0..BOXES).prop_map(Op::TryHalt),
    ]
}

#[derive(Default)]
struct Model {
    boxes: [VecDeque<(usize, u64)>; BOXES],
    state: [Option<Idle>; BOXES],
    /// Which mailbox each item is in.
    in_box: [Option<usize>; ITEMS],
}

impl Model {
    fn state(&self, b: usize) -> Idle {
        self.state[b].unwrap_or(Idle::Busy)
    }

    /// The expected result of a push (`None`: handed back), applied to the model.
    fn push(&mut self, item: usize, to: usize, payload: u64) -> Option<Pushed> {
        if self.in_box[item].is_some() {
            return None;
        }
        let found = self.state(to);
        let r = Pushed { was_empty: self.boxes[to].is_empty(), found };
        if found == Idle::Halting {
            self.state[to] = Some(Idle::Waking);
        }
        self.boxes[to].push_back((item, payload));
        self.in_box[item] = Some(to);
        Some(r)
    }
}

fn run(ops: Vec<Op>) {
    let items: Vec<Arc<Item>> = (0..ITEMS).map(|id| Arc::new(Item { link: Link::new(), id })).collect();
    let boxes: [Mailbox<Item>; BOXES] = [Mailbox::new(), Mailbox::new()];
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::Push { item, to, payload } => {
                let want = m.push(item, to, payload);
                match boxes[to].push(items[item].clone(), payload) {
                    Ok(got) => assert_eq!(Some(got), want, "push of {item} into {to}"),
                    Err(back) => {
                        assert!(want.is_none(), "push of {item} into {to} refused");
                        assert!(Arc::ptr_eq(&back, &items[item]));
                    }
                }
            }
            Op::Drain { from, again, busy } => {
                let want: Vec<(usize, u64)> = m.boxes[from].drain(..).collect();
                for &(i, _) in &want {
                    m.in_box[i] = None;
                }
                // The state changes before the callback runs (a re-push into this mailbox sees
                // `Busy`).
                if busy {
                    m.state[from] = Some(Idle::Busy);
                }
                let mut got = Vec::new();
                let each = |it: Arc<Item>, p: u64| {
                    let k = got.len();
                    got.push((it.id, p));
                    assert!(!it.link.is_queued(), "handed out with its claim");
                    if let Some(Some(to)) = again.get(k) {
                        let w = m.push(it.id, *to, p.wrapping_add(1)).expect("a drained item may be pushed");
                        assert_eq!(boxes[*to].push(it, p.wrapping_add(1)).unwrap(), w);
                    }
                };
                let n = if busy { boxes[from].drain_busy(each) } else { boxes[from].drain(each) };
                assert_eq!(got, want, "drain of {from}");
                assert_eq!(n, want.len());
            }
            Op::Polling(b) => {
                assert_eq!(boxes[b].set_polling(), m.state(b));
                m.state[b] = Some(Idle::Polling);
            }
            Op::Busy(b) => {
                assert_eq!(boxes[b].set_busy(), m.state(b));
                m.state[b] = Some(Idle::Busy);
            }
            Op::TryHalt(b) => {
                let ok = m.boxes[b].is_empty() && m.state(b) != Idle::Waking;
                assert_eq!(boxes[b].try_halt(), ok);
                if ok {
                    m.state[b] = Some(Idle::Halting);
                }
            }
        }
        for b in 0..BOXES {
            assert_eq!(boxes[b].is_empty(), m.boxes[b].is_empty());
            assert_eq!(boxes[b].state(), m.state(b));
            let mut seen = Vec::new();
            // SAFETY: no drain runs meanwhile (one thread).
            unsafe { boxes[b].peek(|it, p| seen.push((it.id, p))) };
            seen.reverse();
            assert!(seen.iter().eq(m.boxes[b].iter()), "contents of {b}");
        }
        for (i, it) in items.iter().enumerate() {
            let queued = m.in_box[i].is_some();
            assert_eq!(it.link.is_queued(), queued, "item {i}");
            assert_eq!(Arc::strong_count(it), 1 + queued as usize, "references of item {i}");
        }
    }
    drop(boxes);
    for it in &items {
        assert_eq!(Arc::strong_count(it), 1, "dropping a mailbox releases its items");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]
    #[test]
    fn mailbox_matches_a_queue(ops in prop::collection::vec(op(), 1..60)) {
        run(ops);
    }
}
