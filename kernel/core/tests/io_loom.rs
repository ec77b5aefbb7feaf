//! `loom` model of how a change of a task's I/O-port ranges reaches the CPUs that run its
//! threads (`kernel/src/device.rs`, `Resync`; `kernel/src/tlb.rs`, `load_space`). Compiles only
//! with `RUSTFLAGS="--cfg loom"` (set by `scripts/test`), which makes `tlbsync` use loom's
//! atomics.
//!
//! CPU A switches to space S (`CpuTlbShared::switch`: root published, then the CR3 write, a
//! full fence) and then makes its I/O bitmap match S's ranges: it reads S's port generation.
//! CPU B closes a range of S: it publishes S's new generation, fences (`shooter_fence`) and
//! sends A the reschedule interrupt only if A's published root is S. The property: A either
//! read the new generation or is interrupted (and re-reads it at the interrupt) — a closed
//! range never stays open on A without an IPI on its way.
//!
//! - [`switch_then_sync_against_close`]: the kernel's order (the bitmap synced after the
//!   switch), with and without a CR3 write (A had S loaded already: its root was published
//!   before an earlier CR3 write).
//! - [`back_to_s_through_t`]: A, with S loaded, switches to T and back to S while B closes.
//! - [`sync_before_switch_misses_the_close`]: the control: syncing before the switch (the order
//!   before the twelfth session, when every CPU was interrupted anyway) lets some execution end
//!   with A on S, the old generation read and no interrupt, so the model would see the race.
//! - [`a_closer_without_its_fence_misses_the_switch`]: the second control, a weak-memory one:
//!   the kernel's order on A, but B reads A's root without the fence after publishing the
//!   generation; some execution (store buffering: each side reads the other's old value) ends
//!   the same way.
//! - [`open_lists_the_space_before_it_reads_the_table`] and its control
//!   [`an_open_that_reads_the_table_first_misses_the_leave`]: `IoPortOpen` against the task's
//!   last capability leaving its table (below).
#![allow(unexpected_cfgs)] // `cfg(loom)`: set by RUSTFLAGS for these models only.
#![cfg(loom)]
use loom::sync::Arc;
use loom::sync::atomic::{AtomicU64, Ordering, fence};
use loom::thread;
use rl4_core::tlbsync::{CpuTlbShared, Mmu, shooter_fence};
use std::sync::atomic::AtomicBool as StdBool;

const KERNEL: u64 = 0x1000;
const S: u64 = 0x2000;
const OLD: u64 = 5;
const NEW: u64 = 6;

struct World {
    /// S's port-range generation.
    io: AtomicU64,
    a: CpuTlbShared,
}

/// A's MMU: a CR3 write is serialising (a full fence); nothing else matters here.
struct Cr3;
impl Mmu<u64> for Cr3 {
    fn write_root(&mut self, _: u64, _: u16, _: bool) {
        fence(Ordering::SeqCst);
    }
    fn flush_user(&mut self) {}
}

/// B: the range closes (S's new generation), then the CPUs whose root is S are interrupted
/// (`fenced`: with the kernel's fence between the two).
fn closer(w: &World, fenced: bool) -> bool {
    w.io.store(NEW, Ordering::Release);
    if fenced {
        shooter_fence();
    }
    w.a.loaded() == S
}

/// Runs A's switch to S against B's close; `before`: A reads the generation before switching
/// (the control), `loaded`: A had S loaded already (no CR3 write). Returns whether A ended on
/// S with the old generation and no interrupt coming.
fn run(before: bool, loaded: bool) -> bool {
    run_with(before, loaded, true)
}

fn run_with(before: bool, loaded: bool, fenced: bool) -> bool {
    let gen_tlb = AtomicU64::new(0);
    let w = Arc::new(World { io: AtomicU64::new(OLD), a: CpuTlbShared::new(KERNEL) });
    if loaded {
        w.a.switch(&mut Cr3, None, S, 0, &gen_tlb);
    }
    let b = {
        let w = w.clone();
        thread::spawn(move || closer(&w, fenced))
    };
    let seen = if before {
        let g = w.io.load(Ordering::Acquire);
        w.a.switch(&mut Cr3, None, S, 0, &gen_tlb);
        g
    } else {
        w.a.switch(&mut Cr3, None, S, 0, &gen_tlb);
        w.io.load(Ordering::Acquire)
    };
    let interrupted = b.join().unwrap();
    w.a.loaded() == S && seen == OLD && !interrupted
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

#[test]
fn switch_then_sync_against_close() {
    model(|| assert!(!run(false, false), "A kept a closed range open and no interrupt was sent"));
    model(|| assert!(!run(false, true), "A (S loaded before) kept a closed range open and no interrupt was sent"));
}

#[test]
fn back_to_s_through_t() {
    const T: u64 = 0x3000;
    model(|| {
        let gen_tlb = AtomicU64::new(0);
        let w = Arc::new(World { io: AtomicU64::new(OLD), a: CpuTlbShared::new(KERNEL) });
        w.a.switch(&mut Cr3, None, S, 0, &gen_tlb);
        let b = {
            let w = w.clone();
            thread::spawn(move || closer(&w, true))
        };
        // A thread of T (its ranges are another space's: nothing to read), then one of S.
        w.a.switch(&mut Cr3, None, T, 0, &gen_tlb);
        w.a.switch(&mut Cr3, None, S, 0, &gen_tlb);
        let seen = w.io.load(Ordering::Acquire);
        let interrupted = b.join().unwrap();
        assert!(seen == NEW || interrupted, "A came back to S with a closed range open and no interrupt");
    });
}

#[test]
fn a_closer_without_its_fence_misses_the_switch() {
    static FOUND: StdBool = StdBool::new(false);
    model(|| {
        if run_with(false, false, false) {
            FOUND.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    assert!(
        FOUND.load(std::sync::atomic::Ordering::Relaxed),
        "without the closer's fence some execution should miss the switch (the model misses store buffering)"
    );
}

#[test]
fn sync_before_switch_misses_the_close() {
    static FOUND: StdBool = StdBool::new(false);
    model(|| {
        if run(true, false) {
            FOUND.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    assert!(
        FOUND.load(std::sync::atomic::Ordering::Relaxed),
        "syncing before the switch should let some execution miss the close (the model misses the race)"
    );
}

// ---- a range's open against its task's last capability leaving its table ----------------------
//
// `kernel/src/device.rs`, `IoPortOpen` and `IoPortObj::left` / `recheck` (nineteenth session): a
// range opened through a port object stays open only while the opener's own table holds a
// capability to the object. The open, under the space's port-range lock, first puts the space on
// the object's list of openers (the list's own lock) and then reads the table (the table's lock);
// a leave, under the table's lock, empties the slot and reads whether the space is listed; if it
// is, it looks at the table again later, under the port-range lock, and closes the range if the
// table no longer holds the capability. The property: once both are done, a table without the
// capability has no range open. The control: an open that reads the table before it lists the
// space lets some execution end with the range open and the capability gone.

/// The space's port ranges (`IoSet`): whether the range is open.
struct Ports {
    ranges: loom::sync::Mutex<bool>,
    /// The object's list of openers: whether the space is on it.
    listed: loom::sync::Mutex<bool>,
    /// The task's table: whether it holds a capability to the object.
    table: loom::sync::Mutex<bool>,
}

/// `IoPortOpen` (the capability looked up before: `true`); `list_first`: the kernel's order.
fn open(p: &Ports, list_first: bool) {
    let mut open = p.ranges.lock().unwrap();
    let held = if list_first {
        *p.listed.lock().unwrap() = true;
        *p.table.lock().unwrap()
    } else {
        let h = *p.table.lock().unwrap();
        *p.listed.lock().unwrap() = true;
        h
    };
    if held {
        *open = true;
    } else if !*open {
        *p.listed.lock().unwrap() = false;
    }
}

/// `CapDelete` of the task's capability: `left` under the table's lock, then `recheck` after it.
fn leave(p: &Ports) {
    let listed = {
        let mut t = p.table.lock().unwrap();
        *t = false;
        *p.listed.lock().unwrap()
    };
    if listed {
        let mut open = p.ranges.lock().unwrap();
        if !*p.table.lock().unwrap() {
            *open = false;
            *p.listed.lock().unwrap() = false;
        }
    }
}

/// Runs an open against a leave; returns whether the range ended open without the capability.
fn open_against_leave(list_first: bool) -> bool {
    let p = Arc::new(Ports { ranges: loom::sync::Mutex::new(false), listed: loom::sync::Mutex::new(false), table: loom::sync::Mutex::new(true) });
    let l = {
        let p = p.clone();
        thread::spawn(move || leave(&p))
    };
    open(&p, list_first);
    l.join().unwrap();
    let (open, held) = (*p.ranges.lock().unwrap(), *p.table.lock().unwrap());
    open && !held
}

#[test]
fn open_lists_the_space_before_it_reads_the_table() {
    model(|| assert!(!open_against_leave(true), "a range stayed open after the task's last capability left"));
}

#[test]
fn an_open_that_reads_the_table_first_misses_the_leave() {
    static FOUND: StdBool = StdBool::new(false);
    model(|| {
        if open_against_leave(false) {
            FOUND.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    assert!(
        FOUND.load(std::sync::atomic::Ordering::Relaxed),
        "reading the table before listing the space should let some execution keep the range open (the model misses the race)"
    );
}

// ---- a space's first open against a CPU that loads its ranges ----------------------------------
//
// `kernel/src/device.rs`, `change` and `reload` (forty-third session, from a review): `change`
// stores the space's packed ranges, then its new generation; `reload`, on another CPU and without
// the space's lock, reads the generation first, then the ranges, and labels its bitmap with what
// it read. The ranges may be newer than that generation; for a space that never opened a port
// the generation read is 0, which every such space shares: labelled 0, the loaded range would
// pass for every never-opened space's (none) at the next switch. `rl4_core::device::bitmap_label`
// labels it so that the next switch reloads.

/// One run: the space's first open (range `R`, generation `G`) against a CPU's reload of its
/// ranges; `label` makes the bitmap's label from the generation read and whether a range was
/// loaded. Returns whether the bitmap ended labelled 0 with a range loaded.
fn first_open_against_reload(label: fn(u64, bool) -> u64) -> bool {
    const R: u64 = 0x0001_0000_03f8;
    const G: u64 = 7;
    let space = Arc::new((AtomicU64::new(0), AtomicU64::new(0))); // (generation, packed range)
    let opener = {
        let s = space.clone();
        thread::spawn(move || {
            s.1.store(R, Ordering::Relaxed);
            s.0.store(G, Ordering::Release);
        })
    };
    let g = space.0.load(Ordering::Acquire);
    let loaded = space.1.load(Ordering::Relaxed);
    let l = label(g, loaded != 0);
    opener.join().unwrap();
    l == 0 && loaded != 0
}

#[test]
fn first_open_against_reload_is_never_labelled_empty() {
    model(|| {
        assert!(
            !first_open_against_reload(rl4_core::device::bitmap_label),
            "a bitmap holding a range was labelled with the never-opened spaces' generation"
        )
    });
}

#[test]
fn a_reload_labelled_with_what_it_read_passes_for_empty() {
    static FOUND: StdBool = StdBool::new(false);
    model(|| {
        if first_open_against_reload(|g, _| g) {
            FOUND.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    assert!(
        FOUND.load(std::sync::atomic::Ordering::Relaxed),
        "labelling with the generation read should let some execution load a range under 0 (the model misses the race)"
    );
}
