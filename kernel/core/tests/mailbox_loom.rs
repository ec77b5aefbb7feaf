//! `loom` models of `rl4_core::mailbox`: every interleaving (up to a preemption bound) and every
//! value the memory model lets each atomic load return, of 2–3 simulated CPUs using one real
//! [`Mailbox`] (built with loom's atomics and `Arc`: this file compiles only with
//! `RUSTFLAGS="--cfg loom"`, which `scripts/test` sets for it, in a target directory of its own).
//!
//! - [`two_producers_against_a_drain`]: two CPUs push two items each while the owner drains
//!   until it has them all (loom tries every way of splitting the four over its drains);
//!   every item comes out exactly once, each CPU's items in the order it pushed them, with the
//!   payload it gave, and every reference comes back (`Arc` counts).
//! - [`no_lost_wakeup`], [`one_interrupt_per_halt`]: the idle protocol. The owner polls (and
//!   takes what it finds with `drain_busy`, the idle loop's hand-over, or — the second
//!   variant of `no_lost_wakeup` — with `set_busy` and a drain), then `try_halt`s and
//!   "halts"; pushers "send an interrupt" when the push tells them to. No
//!   execution halts with an item in the mailbox and no interrupt on its way, and a halt gets
//!   exactly one interrupt however many CPUs push.
//! - [`halting_without_try_halt_loses_a_wakeup`]: the control: an owner that looks at the
//!   mailbox and halts without `try_halt` — some execution loses the wake-up, so the models
//!   above would see one.
//! - [`repush_from_the_callback_against_a_push`]: the owner's drain pushes the item it is handed
//!   back into the mailbox while another CPU pushes a second item and tries to push the first
//!   one too (refused, or accepted and then the owner's re-push is refused): every accepted
//!   push is delivered exactly once.
//!
//! With the bounds below each model takes at most 2 s in a release build (about 25 s for all in
//! a debug build); `LOOM_MAX_PREEMPTIONS` overrides them. The models fail, as they should,
//! when the push's Release or the drain's Acquire on the word is weakened to Relaxed, when
//! the drain clears a claim before it has read the link, when a push that meets `Halting`
//! leaves it as it is, or when `try_halt` ignores the list.
#![allow(unexpected_cfgs)] // `cfg(loom)`: set by RUSTFLAGS for these models only.
#![cfg(loom)]
use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use loom::thread;
use rl4_core::mailbox::{Arc, Idle, Link, Linked, Mailbox};

#[derive(Debug)]
struct Item {
    link: Link<Item>,
    /// Pusher (CPU) and sequence number.
    cpu: usize,
    seq: u64,
}

// SAFETY: `link` returns the item's own field, always the same one.
unsafe impl Linked for Item {
    fn link(&self) -> &Link<Item> {
        &self.link
    }
}

fn item(cpu: usize, seq: u64) -> Arc<Item> {
    Arc::new(Item { link: Link::new(), cpu, seq })
}

/// Runs `f` under loom with at most `bound` preemptions (`None`: every interleaving) unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise, and prints how many executions it explored (seen
/// with `--nocapture`).
fn model(bound: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = bound;
    }
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let start = std::time::Instant::now();
    b.check(move || {
        counted.fetch_add(1, Relaxed);
        f()
    });
    let name = std::thread::current().name().unwrap_or("?").to_string();
    let (n, t) = (runs.load(Relaxed), start.elapsed());
    eprintln!("{name}: {n} executions, preemption bound {:?}, {t:.2?}", b.preemption_bound);
}

/// Drains `m`, returning (cpu, seq, payload) of each item, and checking each item's claim was
/// cleared.
fn drain(m: &Mailbox<Item>) -> Vec<(usize, u64, u64)> {
    let mut v = Vec::new();
    m.drain(|it, p| {
        assert!(!it.link.is_queued());
        v.push((it.cpu, it.seq, p));
    });
    v
}

#[test]
fn two_producers_against_a_drain() {
    model(Some(2), || {
        let m = Arc::new(Mailbox::<Item>::new());
        let items: Vec<Vec<Arc<Item>>> = (0..2).map(|c| (0..2).map(|s| item(c, s)).collect()).collect();
        let producers: Vec<_> = (0..2)
            .map(|c| {
                let m = m.clone();
                let mine: Vec<_> = items[c].clone();
                thread::spawn(move || {
                    for it in mine {
                        let p = 10 * it.cpu as u64 + it.seq;
                        m.push(it, p).expect("not in a mailbox");
                    }
                })
            })
            .collect();
        // The owner drains until it has everything, whenever the schedule lets it: loom then
        // tries drains that take every split of the pushes ([4], [2, 2], [1, 3], ...
        // [1, 1, 1, 1]). (A single drain would not do: loom's partial-order reduction misses
        // the race between its first load of an empty word and a later push.)
        let mut got = Vec::new();
        while got.len() < 4 {
            got.extend(drain(&m));
            if got.len() < 4 {
                thread::yield_now();
            }
        }
        for p in producers {
            p.join().unwrap();
        }
        assert!(m.is_empty());
        // Exactly once each, in each producer's order, with its payload.
        assert_eq!(got.len(), 4);
        for c in 0..2 {
            let seqs: Vec<_> = got.iter().filter(|g| g.0 == c).map(|g| (g.1, g.2)).collect();
            assert_eq!(seqs, [(0, 10 * c as u64), (1, 10 * c as u64 + 1)], "{got:?}");
        }
        for it in items.iter().flatten() {
            assert!(!it.link.is_queued());
            assert_eq!(Arc::strong_count(it), 1, "a reference leaked");
        }
    });
}

/// The owner's idle loop, once: poll, then halt if `try_halt` lets it, else drain. Returns
/// whether it halted, and what it drained.
fn owner(m: &Mailbox<Item>) -> (bool, Vec<(usize, u64, u64)>) {
    owner_with(m, true)
}

/// [`owner`]; `direct`: what arrived during the poll is taken with `drain_busy` (the idle loop's
/// hand-over), else with `set_busy` and a drain (its way when something else needs it first).
fn owner_with(m: &Mailbox<Item>, direct: bool) -> (bool, Vec<(usize, u64, u64)>) {
    m.set_polling();
    if !m.is_empty() && !direct {
        m.set_busy();
        return (false, drain(m));
    }
    if !m.is_empty() {
        // The kernel's hand-over of what arrived while it polled: `Busy` and the drain in one.
        let mut v = Vec::new();
        m.drain_busy(|it, p| {
            assert!(!it.link.is_queued());
            v.push((it.cpu, it.seq, p));
        });
        assert_eq!(m.state(), Idle::Busy);
        return (false, v);
    }
    if m.try_halt() {
        // Halted until an interrupt: the model ends here; the main thread plays the wake-up.
        return (true, Vec::new());
    }
    m.set_busy();
    (false, drain(m))
}

#[test]
fn no_lost_wakeup() {
    no_lost_wakeup_with(true);
}

#[test]
fn no_lost_wakeup_set_busy_then_drain() {
    no_lost_wakeup_with(false);
}

fn no_lost_wakeup_with(direct: bool) {
    model(None, move || {
        let m = Arc::new(Mailbox::<Item>::new());
        let a = item(1, 0);
        let pusher = {
            let (m, a) = (m.clone(), a.clone());
            thread::spawn(move || m.push(a, 5).unwrap().must_interrupt())
        };
        let (halted, mut got) = owner_with(&m, direct);
        let ipi = pusher.join().unwrap();
        if halted {
            // It halted: the item must be there and its pusher must be interrupting it.
            assert!(ipi, "halted with an item in the mailbox and no interrupt on its way");
            assert_eq!(m.state(), Idle::Waking);
            assert!(!m.is_empty());
            assert_eq!(m.set_busy(), Idle::Waking);
            got = drain(&m);
        } else {
            assert!(!ipi, "an interrupt to an owner that did not halt");
        }
        assert_eq!(got, [(1, 0, 5)]);
        assert_eq!(Arc::strong_count(&a), 1);
    });
}

#[test]
fn one_interrupt_per_halt() {
    model(Some(3), || {
        let m = Arc::new(Mailbox::<Item>::new());
        let ipis = Arc::new(AtomicUsize::new(0));
        let pushers: Vec<_> = (0..2)
            .map(|c| {
                let (m, ipis) = (m.clone(), ipis.clone());
                thread::spawn(move || {
                    if m.push(item(c, 0), c as u64).unwrap().must_interrupt() {
                        ipis.fetch_add(1, SeqCst);
                    }
                })
            })
            .collect();
        let (halted, mut got) = owner(&m);
        for p in pushers {
            p.join().unwrap();
        }
        let ipis = ipis.load(SeqCst);
        assert_eq!(ipis, halted as usize, "halted: {halted}, interrupts: {ipis}");
        m.set_busy();
        got.extend(drain(&m));
        got.sort();
        assert_eq!(got, [(0, 0, 0), (1, 0, 1)]);
    });
}

#[test]
fn halting_without_try_halt_loses_a_wakeup() {
    static LOST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    model(None, || {
        let m = Arc::new(Mailbox::<Item>::new());
        let pusher = {
            let m = m.clone();
            thread::spawn(move || m.push(item(1, 0), 0).unwrap().must_interrupt())
        };
        // Check, then halt, without the one compare-and-swap that makes the two one step.
        m.set_polling();
        let halted = m.is_empty();
        let ipi = pusher.join().unwrap();
        if halted && !ipi && !m.is_empty() {
            LOST.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        m.set_busy();
        drain(&m);
    });
    assert!(LOST.load(std::sync::atomic::Ordering::Relaxed), "no execution lost the wake-up");
}

#[test]
fn repush_from_the_callback_against_a_push() {
    model(None, || {
        let m = Arc::new(Mailbox::<Item>::new());
        let (x, y) = (item(0, 0), item(1, 0));
        m.push(x.clone(), 1).unwrap();
        let other = {
            let (m, x, y) = (m.clone(), x.clone(), y.clone());
            thread::spawn(move || {
                m.push(y, 2).unwrap();
                m.push(x, 3).is_ok()
            })
        };
        let mut got = Vec::new();
        let mut repushed = false;
        m.drain(|it, p| {
            got.push((it.cpu, p));
            if it.cpu == 0 {
                // Back into the mailbox it came from: refused only if the other CPU got there
                // first (between the drain's release of the claim and now).
                repushed = m.push(it, p + 10).is_ok();
            }
        });
        let pushed = other.join().unwrap();
        got.extend(drain(&m).into_iter().map(|g| (g.0, g.2)));
        assert_eq!(got[0], (0, 1));
        let mut want = vec![(1, 2)];
        if repushed {
            want.push((0, 11));
        }
        if pushed {
            want.push((0, 3));
        }
        let mut rest = got[1..].to_vec();
        rest.sort();
        want.sort();
        assert_eq!(rest, want);
        // x was handed out unclaimed and stays claimed by whichever push took it until the
        // final drain: exactly one of the two wins.
        assert!(repushed != pushed, "repushed: {repushed}, pushed: {pushed}");
        assert!(!x.link.is_queued() && !y.link.is_queued());
        assert_eq!((Arc::strong_count(&x), Arc::strong_count(&y)), (1, 1));
    });
}
