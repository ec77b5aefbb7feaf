//! `loom` models of `rl4_core::qsbr`: the slot shadow read without a lock against its writer,
//! and the grace period against a reader that still uses what it read. Compiles only with
//! `RUSTFLAGS="--cfg loom"` (set by `scripts/test`), which makes `qsbr` use loom's atomics.
//!
//! - [`reads_are_consistent`]: a reader meeting two writes sees the slot before, between or
//!   after them — never words of two different writes.
//! - [`grace_outlasts_the_reader`]: CPU R reads the slot, uses the object, and counts its exit
//!   (the kernel's return to user mode); CPU W clears the slot, takes the snapshot, waits until
//!   the grace period is over and frees the object. R never uses a freed object.
//! - [`control_exit_counted_before_use`]: the same with R counting its exit *before* its use
//!   (a kernel that announced a quiescent state too early): some execution must use a freed
//!   object, so the model above would have seen one.
//! - [`barrier_orders_the_last_exit_before_the_read`]: R's entry follows an earlier exit whose
//!   count may still sit in its store buffer (x86 lets a later load pass an earlier store, and
//!   neither `sysret` nor `syscall` drains the buffer): W's snapshot may read the count from
//!   before that exit and take the exit, seen later, for the end of the entry that read the old
//!   value. A full barrier before the read orders the earlier count before it: no execution
//!   uses a freed object. (The kernel's barrier is the home lock's locked instruction,
//!   `fastpath::entered`: a full barrier on x86, modelled here as a sequentially consistent
//!   fence — an acquiring read-modify-write of another word is weaker in the language's model.)
//! - [`control_no_barrier_after_the_last_exit`]: the same without the barrier: some execution
//!   uses a freed object (a review of the twenty-second session's code found it; before, the
//!   models had R make one entry only).
//! - [`remembered_read_after_the_barrier`]: R read the slot in its earlier entry and kept the
//!   read's stamp (the kernel's per-thread `SlotMemo`); in this entry, after the barrier, it
//!   uses what that read found if the stamp still holds (one load of the sequence) instead of
//!   reading again: no execution uses a freed object.
//! - [`control_remembered_without_the_barrier`]: the same without the barrier: some execution
//!   does.
#![allow(unexpected_cfgs)] // `cfg(loom)`: set by RUSTFLAGS for these models only.
#![cfg(loom)]
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use loom::thread;
use rl4_abi::Rights;
use rl4_core::qsbr::{Grace, Shadow};
use std::sync::atomic::AtomicBool as StdBool;

const OBJ: u64 = 0x40;

#[test]
fn reads_are_consistent() {
    loom::model(|| {
        let s = Arc::new(Shadow::new(1));
        s.write(0, 0x10, Rights::SEND, 1);
        let w = {
            let s = s.clone();
            thread::spawn(move || {
                s.write(0, 0x20, Rights::RECEIVE, 2);
                s.write(0, 0, Rights::NONE, 0);
            })
        };
        if let Some(v) = s.read(0) {
            let ok = [(0x10, Rights::SEND, 1), (0x20, Rights::RECEIVE, 2), (0, Rights::NONE, 0)];
            assert!(ok.contains(&(v.obj, v.rights, v.badge)), "a torn read: {v:?}");
        }
        w.join().unwrap();
    });
}

struct World {
    shadow: Shadow,
    /// R's exit counter (the kernel's `gs:56`).
    exits: AtomicU64,
    freed: AtomicBool,
}

/// What R does around its read of the slot, in program order: an exit counted first (the end
/// of an earlier entry, or a quiescent state announced too early), then a full barrier, then
/// the read and use of the object, then its exit.
#[derive(Clone, Copy)]
struct Steps {
    /// The slot was read (stamped) before the first exit, and this entry checks the stamp
    /// instead of reading.
    remembered: bool,
    exit_before: bool,
    barrier: bool,
    exit_after: bool,
}

/// The kernel's order within one entry: read and use, then the exit.
const ONE_ENTRY: Steps = Steps { remembered: false, exit_before: false, barrier: false, exit_after: true };
/// The control: the exit counted before the use.
const EXIT_TOO_EARLY: Steps = Steps { remembered: false, exit_before: true, barrier: false, exit_after: false };
/// An earlier exit, the barrier, then the entry (the kernel's fast paths).
const AFTER_EXIT_BARRIER: Steps = Steps { remembered: false, exit_before: true, barrier: true, exit_after: true };
/// The control: the earlier exit without the barrier.
const AFTER_EXIT_NO_BARRIER: Steps = Steps { remembered: false, exit_before: true, barrier: false, exit_after: true };
/// A read in the earlier entry, its exit, the barrier, then the stamp's check and the use.
const REMEMBERED: Steps = Steps { remembered: true, exit_before: true, barrier: true, exit_after: true };
/// The control: the same without the barrier.
const REMEMBERED_NO_BARRIER: Steps = Steps { remembered: true, exit_before: true, barrier: false, exit_after: true };

/// R: `steps` around one read and use of the object. Returns whether it used the object after
/// it was freed.
fn reader(w: &World, steps: Steps) -> bool {
    let count = || w.exits.store(w.exits.load(Ordering::Relaxed) + 1, Ordering::Release);
    // The earlier entry's read, kept as its stamp and what it found.
    let earlier = if steps.remembered { w.shadow.read_stamped(0) } else { None };
    if steps.exit_before {
        count();
    }
    if steps.barrier {
        fence(Ordering::SeqCst);
    }
    let now = match earlier {
        Some((seen, stamp)) => stamp.still().then_some(seen),
        None if steps.remembered => None,
        None => w.shadow.read(0),
    };
    let bad = now.is_some_and(|v| v.obj == OBJ && w.freed.load(Ordering::Acquire));
    if steps.exit_after {
        count();
    }
    bad
}

/// W (CPU 0): removes the capability, takes the snapshot, and frees the object if the grace
/// period is over at its one look (R is CPU 1, never idle in this model). A later look would
/// come later still, so one look covers every moment at which W could free it (a spin would
/// only make loom explore its repetitions).
fn remover(w: &World) {
    w.shadow.write(0, 0, Rights::NONE, 0);
    let g = Grace::start(0, 0..2, |i| if i == 1 { w.exits.load(Ordering::Acquire) } else { 0 });
    if g.over(0, |i| if i == 1 { w.exits.load(Ordering::Acquire) } else { 0 }, |_| false) {
        w.freed.store(true, Ordering::Release);
    }
}

/// One execution: the slot holds the object, R (`reader` with `steps`) runs on another thread
/// while W removes it; whether R used the object after it was freed.
fn run(steps: Steps) -> bool {
    let w = Arc::new(World { shadow: Shadow::new(1), exits: AtomicU64::new(0), freed: AtomicBool::new(false) });
    w.shadow.write(0, OBJ, Rights::SEND, 0);
    let r = {
        let w = w.clone();
        thread::spawn(move || reader(&w, steps))
    };
    remover(&w);
    r.join().unwrap()
}

/// Every execution of [`run`] with `steps`: none uses a freed object (a model's assertion).
fn no_execution_uses_freed(steps: Steps) {
    loom::model(move || assert!(!run(steps), "the object was used after it was freed"));
}

/// Whether some execution of [`run`] uses a freed object (a control's assertion).
/// (Each control has its own flag: the test harness runs them on threads at once.)
fn some_execution_uses_freed(steps: Steps) -> bool {
    let found = std::sync::Arc::new(StdBool::new(false));
    let f = found.clone();
    loom::model(move || {
        if run(steps) {
            f.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    found.load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn grace_outlasts_the_reader() {
    no_execution_uses_freed(ONE_ENTRY);
}

#[test]
fn control_exit_counted_before_use() {
    assert!(some_execution_uses_freed(EXIT_TOO_EARLY), "the control found no use after free");
}

#[test]
fn barrier_orders_the_last_exit_before_the_read() {
    no_execution_uses_freed(AFTER_EXIT_BARRIER);
}

#[test]
fn control_no_barrier_after_the_last_exit() {
    assert!(some_execution_uses_freed(AFTER_EXIT_NO_BARRIER), "the control found no use after free");
}

#[test]
fn remembered_read_after_the_barrier() {
    no_execution_uses_freed(REMEMBERED);
}

#[test]
fn control_remembered_without_the_barrier() {
    assert!(some_execution_uses_freed(REMEMBERED_NO_BARRIER), "the control found no use after free");
}
