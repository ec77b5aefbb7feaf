//! `loom` model of `rl4_core::asks`: a CPU's answer to another CPU's question ("have you read
//! what I changed?"), as the kernel uses it when an I/O-port range closes
//! (`kernel/src/device.rs`, `Resync`). Compiles only with `RUSTFLAGS="--cfg loom"` (set by
//! `scripts/test`).
//!
//! B (the asker) publishes a new value and takes a ticket; A (the CPU asked) makes two passes,
//! each reading the value if a ticket waits, in any interleaving with B. The property: once
//! B's ticket is answered (seen by B right after it asked, or after both are done), the pass
//! that answered it read the new value.
//!
//! - [`an_answer_covers_only_passes_after_the_ticket`]: `Asks` as the kernel has it.
//! - [`an_answer_counted_after_the_pass_is_stale`]: the control: a CPU that reads the count of
//!   tickets *after* its pass (so that a pass which read the old value before the ticket was
//!   taken answers it) — some execution ends with the ticket answered and the old value read,
//!   so the model would see the race.
#![allow(unexpected_cfgs)] // `cfg(loom)`: set by RUSTFLAGS for these models only.
#![cfg(loom)]
use loom::sync::Arc;
use loom::sync::atomic::{AtomicU64, Ordering};
use loom::thread;
use rl4_core::asks::Asks;
use std::sync::atomic::AtomicBool as StdBool;

const OLD: u64 = 5;
const NEW: u64 = 6;

/// The answering side, either the kernel's (`Asks`) or the control's.
trait Answers: Send + Sync + 'static {
    fn ask(&self) -> u64;
    fn answered(&self, ticket: u64) -> bool;
    fn answer(&self, pass: impl FnOnce()) -> bool;
}

impl Answers for Asks {
    fn ask(&self) -> u64 {
        Asks::ask(self)
    }
    fn answered(&self, ticket: u64) -> bool {
        Asks::answered(self, ticket)
    }
    fn answer(&self, pass: impl FnOnce()) -> bool {
        Asks::answer(self, pass)
    }
}

/// The control: the count of tickets read after the pass.
struct CountAfter {
    asked: AtomicU64,
    answered: AtomicU64,
}

impl Answers for CountAfter {
    fn ask(&self) -> u64 {
        self.asked.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn answered(&self, ticket: u64) -> bool {
        self.answered.load(Ordering::Acquire) >= ticket
    }
    fn answer(&self, pass: impl FnOnce()) -> bool {
        pass();
        let asked = self.asked.load(Ordering::SeqCst);
        if asked == self.answered.load(Ordering::Relaxed) {
            return false;
        }
        self.answered.store(asked, Ordering::Release);
        true
    }
}

struct World<A> {
    value: AtomicU64,
    /// What A's last pass read.
    seen: AtomicU64,
    asks: A,
}

/// One execution: whether B's ticket ended answered by a pass that read the old value.
fn stale<A: Answers>(asks: A) -> bool {
    let w = Arc::new(World { value: AtomicU64::new(OLD), seen: AtomicU64::new(0), asks });
    let b = {
        let w = w.clone();
        thread::spawn(move || {
            w.value.store(NEW, Ordering::Release);
            let t = w.asks.ask();
            // Answered already: the pass that answered read the new value.
            let early = w.asks.answered(t) && w.seen.load(Ordering::Acquire) != NEW;
            (t, early)
        })
    };
    // A: a pass (perhaps begun before B's change), then another; each runs only if a ticket
    // waits, reading the value in a pass that has the kernel's order of loads.
    for _ in 0..2 {
        w.asks.answer(|| {
            // `seen` is written before the answer's release store, so whoever sees the answer
            // sees the value this pass read.
            w.seen.store(w.value.load(Ordering::Acquire), Ordering::Relaxed);
        });
    }
    let (t, early) = b.join().unwrap();
    early || (w.asks.answered(t) && w.seen.load(Ordering::Acquire) != NEW)
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(f);
}

#[test]
fn an_answer_covers_only_passes_after_the_ticket() {
    model(|| assert!(!stale(Asks::new()), "a ticket was answered by a pass that read the old value"));
}

#[test]
fn an_answer_counted_after_the_pass_is_stale() {
    let found = std::sync::Arc::new(StdBool::new(false));
    let f = found.clone();
    model(move || {
        if stale(CountAfter { asked: AtomicU64::new(0), answered: AtomicU64::new(0) }) {
            f.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    assert!(found.load(std::sync::atomic::Ordering::Relaxed), "the control never answered a ticket with a stale pass: the model cannot see the race");
}
