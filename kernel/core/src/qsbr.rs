//! Lock-free reads of capability slots, and the grace period that makes them safe.
//!
//! The IPC fast path reads the endpoint capability a system call names without taking its
//! task's table lock and without touching the endpoint's reference count. It reads a *shadow*
//! of the slot ([`Shadow`]): per slot a sequence word and three value words (the object's
//! address, rights, badge), written only under the table's lock by the table itself
//! (`captable.rs`: every insert, removal and drain), read by anyone:
//!
//! - writer: sequence odd, the values, sequence even (the next even number);
//! - reader: sequence (must be even), the values, sequence again (must be unchanged). A reader
//!   that meets a writer gets `None` and takes the general path, which reads under the lock.
//!
//! A consistent read yields the address of an object the slot held *at that instant*. The
//! object stays alive while the reader uses it because the kernel never lets the last reference
//! go at once: a capability leaving a slot that a fast reader may dereference (an endpoint)
//! leaves a clone of its reference in a per-CPU *limbo* until every other CPU has passed a quiescent state
//! — returned to user mode (each CPU counts its kernel exits, [`Grace`]) or sat in its idle
//! loop — and is dropped only then. The reader's use ends before its CPU leaves the kernel, so
//! by then it is over. This is read-copy-update's quiescent-state-based reclamation with
//! "leaving the kernel" as the quiescent state: the fast path pays one plain increment per
//! system call (the exit counter) and nothing else.
//!
//! Orders (x86-TSO, and the atomics below for the compiler): the remover clears the shadow,
//! then (later) takes a snapshot of every CPU's exit counter after a sequentially consistent
//! fence, so a CPU that read the old value did so in a kernel entry still running at the
//! snapshot, whose exit is counted after it (a load is never reordered after a later store on
//! x86, and the counter's increment is the store that ends the entry) — provided the reader's
//! previous exit count was visible before its read: x86 lets a load pass an earlier store, and
//! neither `sysret` nor `syscall` drains the store buffer, so the reader makes a full barrier
//! in its entry before it reads (the kernel's fast paths: the running thread's home lock, a
//! locked instruction). Without it the snapshot could read the count from before that exit
//! and take the exit, landing later, for the end of the entry that read the old value. A CPU seen idle at the
//! check left whatever entry it was in; its next entry starts after an atomic read-modify-write
//! of its idle word (a full barrier) that follows the check's read, so it reads the cleared
//! shadow. The models in `tests/qsbr_loom.rs` check the shadow's reads against concurrent
//! writers, and the grace rule against a reader that holds the old value, with and without
//! the barrier after an earlier exit.
#![allow(unexpected_cfgs)] // `cfg(loom)`: set by RUSTFLAGS for the loom models only.

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering, fence};
#[cfg(not(loom))]
use core::sync::atomic::{AtomicU64, Ordering, fence};

use alloc::vec::Vec;
use rl4_abi::Rights;

/// One slot's shadow (32 bytes: a slot's four words share a cache line).
#[repr(C, align(32))]
pub struct ShadowSlot {
    seq: AtomicU64,
    obj: AtomicU64,
    rights: AtomicU64,
    badge: AtomicU64,
}

impl ShadowSlot {
    fn new() -> Self {
        ShadowSlot { seq: AtomicU64::new(0), obj: AtomicU64::new(0), rights: AtomicU64::new(0), badge: AtomicU64::new(0) }
    }
}

/// What a consistent read of a slot found: the object's address (0: the slot holds nothing a
/// fast reader may use, and then no rights either), its rights and badge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub obj: u64,
    pub rights: Rights,
    pub badge: u64,
}

/// Slots per piece of a [`Shadow`] (2 KiB: a piece fits in a page of the kernel heap).
pub const PIECE_SLOTS: usize = 64;
/// Pieces of a [`Shadow`]: it has room for `rl4_abi::CAP_SLOTS` slots.
pub const PIECES: usize = 4;
const _: () = assert!(PIECES * PIECE_SLOTS == rl4_abi::CAP_SLOTS as usize);

/// One piece of a shadow.
type Piece = [ShadowSlot; PIECE_SLOTS];

/// The shadows of a table's slots, in [`PIECES`] pieces of [`PIECE_SLOTS`] (a table's 8 KiB
/// are four allocations of 2 KiB, so that it never needs physically contiguous frames): slot
/// `i` is entry `i % 64` of piece `i / 64`. The pieces' addresses lie in the shadow's own
/// record, so that a read costs one load more than a flat array's (the piece's address) and
/// no bounds check but the one against the constant size.
pub struct Shadow {
    pieces: [alloc::boxed::Box<Piece>; PIECES],
    /// The table's slots (at most `PIECES * PIECE_SLOTS`; those beyond are never written and
    /// read as empty).
    slots: usize,
}

impl Shadow {
    pub fn new(slots: usize) -> Self {
        Self::try_new(slots).expect("out of memory for a capability table's shadow")
    }

    /// The shadow of `slots` slots (at most `rl4_abi::CAP_SLOTS`), or `None` if there is no
    /// memory for it (or `slots` is too large).
    pub fn try_new(slots: usize) -> Option<Self> {
        if slots > PIECES * PIECE_SLOTS {
            return None;
        }
        let mut pieces: Vec<alloc::boxed::Box<Piece>> = Vec::new();
        pieces.try_reserve_exact(PIECES).ok()?;
        for _ in 0..PIECES {
            let mut v: Vec<ShadowSlot> = Vec::new();
            v.try_reserve_exact(PIECE_SLOTS).ok()?;
            v.resize_with(PIECE_SLOTS, ShadowSlot::new);
            // Exactly `PIECE_SLOTS` long with that capacity: no reallocation.
            pieces.push(v.into_boxed_slice().try_into().ok()?);
        }
        Some(Shadow { pieces: pieces.try_into().ok()?, slots })
    }

    pub fn len(&self) -> usize {
        self.slots
    }

    pub fn is_empty(&self) -> bool {
        self.slots == 0
    }

    /// Slot `i`: `None` beyond the pieces.
    #[inline(always)]
    fn slot(&self, i: usize) -> Option<&ShadowSlot> {
        Some(&self.pieces.get(i / PIECE_SLOTS)?[i % PIECE_SLOTS])
    }

    /// Writes slot `i` (only under the table's lock: one writer at a time). A slot without an
    /// address gets no rights, so that a reader that finds the rights it needs (some) knows the
    /// address is there without testing it.
    pub fn write(&self, i: usize, obj: u64, rights: Rights, badge: u64) {
        let rights = if obj == 0 { Rights::NONE } else { rights };
        let Some(s) = self.slot(i).filter(|_| i < self.slots) else { panic!("shadow slot {i} out of range ({})", self.slots) };
        let seq = s.seq.load(Ordering::Relaxed);
        debug_assert!(seq % 2 == 0);
        s.seq.store(seq + 1, Ordering::Relaxed);
        // The odd sequence is visible before any value changes.
        fence(Ordering::Release);
        s.obj.store(obj, Ordering::Relaxed);
        s.rights.store(rights.0, Ordering::Relaxed);
        s.badge.store(badge, Ordering::Relaxed);
        s.seq.store(seq + 2, Ordering::Release);
    }

    /// Reads slot `slot` without a lock: `None` if it is out of range or a writer was at work
    /// (the caller then reads under the lock). A slot beyond the table's but within the pieces
    /// reads as empty (address 0).
    #[inline(always)]
    pub fn read(&self, slot: u64) -> Option<Seen> {
        self.read_stamped(slot).map(|(seen, _)| seen)
    }

    /// [`Shadow::read`], with the slot's sequence as the read found it: while it keeps that
    /// value the slot holds what the read saw ([`Stamp::still`]).
    #[inline(always)]
    pub fn read_stamped(&self, slot: u64) -> Option<(Seen, Stamp<'_>)> {
        let s = self.slot(usize::try_from(slot).ok()?)?;
        let seq = s.seq.load(Ordering::Acquire);
        if seq % 2 != 0 {
            return None;
        }
        let seen = Seen { obj: s.obj.load(Ordering::Relaxed), rights: Rights(s.rights.load(Ordering::Relaxed)), badge: s.badge.load(Ordering::Relaxed) };
        // The values are read before the sequence is read again.
        fence(Ordering::Acquire);
        if s.seq.load(Ordering::Relaxed) != seq {
            return None;
        }
        Some((seen, Stamp { seq: &s.seq, value: seq }))
    }
}

/// A slot's sequence word and the even value a consistent read of the slot found there
/// ([`Shadow::read_stamped`]). Every write of the slot moves the sequence on (odd while it
/// writes, two more after) and it never comes back, so while the word still holds `value` the
/// slot holds what that read saw: one load stands for the whole read. Used the same way as a
/// read (after the same barrier, within one kernel entry: the grace period of a removal that
/// changes the word later covers the use), which the loom model
/// `remembered_read_after_the_barrier` checks.
#[derive(Clone, Copy)]
pub struct Stamp<'a> {
    seq: &'a AtomicU64,
    value: u64,
}

/// The sequence word of no slot: odd, as no stamp's value is ([`Stamp::never`]).
#[cfg(not(loom))]
static NEVER: AtomicU64 = AtomicU64::new(1);

#[cfg(not(loom))]
impl Stamp<'static> {
    /// A stamp that never holds (for a memory of no read yet: its parts are a valid address).
    pub fn never() -> Self {
        Stamp { seq: &NEVER, value: 0 }
    }
}

impl<'a> Stamp<'a> {
    /// Remade from [`Stamp::parts`] of a stamp of a shadow that is still alive (or of
    /// [`Stamp::never`]).
    ///
    /// # Safety
    /// `at` must be the `parts` address of a stamp whose shadow lives for `'a`, or of
    /// [`Stamp::never`].
    #[allow(unsafe_code)]
    #[inline(always)]
    pub unsafe fn from_parts(at: usize, value: u64) -> Self {
        // SAFETY: the caller's promise: the address of a live shadow's sequence word.
        Stamp { seq: unsafe { &*(at as *const AtomicU64) }, value }
    }

    /// The sequence word's address and the value (to keep the stamp past the shadow's borrow).
    pub fn parts(&self) -> (usize, u64) {
        (self.seq as *const AtomicU64 as usize, self.value)
    }

    /// Whether the slot is unchanged since the stamped read (one load).
    #[inline(always)]
    pub fn still(&self) -> bool {
        self.seq.load(Ordering::Acquire) == self.value
    }
}

/// The grace-period rule, over the CPUs' exit counters and idle states as the kernel reads
/// them. A snapshot is taken after the removals it covers, by the CPU that made them; the grace
/// period is over when every other CPU has counted an exit since, or is idle now.
pub struct Grace {
    /// The CPU that took the snapshot, and each other CPU's counter then.
    by: usize,
    at: Vec<(usize, u64)>,
}

impl Grace {
    /// The snapshot, taken by CPU `me` of `counter(i)` for each CPU `i` in `cpus`, after a
    /// sequentially consistent fence that orders the removals before it.
    pub fn start(me: usize, cpus: impl Iterator<Item = usize>, mut counter: impl FnMut(usize) -> u64) -> Self {
        fence(Ordering::SeqCst);
        Grace { by: me, at: cpus.filter(|&i| i != me).map(|i| (i, counter(i))).collect() }
    }

    /// [`Grace::start`] over the CPUs `cpus`, or `None` if there is no memory for the snapshot
    /// (the caller keeps its entries and tries again later).
    pub fn try_start(me: usize, cpus: core::ops::Range<usize>, mut counter: impl FnMut(usize) -> u64) -> Option<Self> {
        let mut at = Vec::new();
        at.try_reserve_exact(cpus.len()).ok()?;
        fence(Ordering::SeqCst);
        at.extend(cpus.filter(|&i| i != me).map(|i| (i, counter(i))));
        Some(Grace { by: me, at })
    }

    /// Whether every CPU of the snapshot but the one that took it and `asking` has left the
    /// kernel since (`counter` moved) or is idle (`idle`). The asking CPU must hold nothing it
    /// read from a shadow (it is at a quiescent point itself).
    pub fn over(&self, asking: usize, mut counter: impl FnMut(usize) -> u64, mut idle: impl FnMut(usize) -> bool) -> bool {
        fence(Ordering::SeqCst);
        let over = self.at.iter().all(|&(i, c)| i == asking || counter(i) != c || idle(i));
        // What those CPUs did before the moves or the idle states seen comes before what the
        // caller does next (frees).
        fence(Ordering::Acquire);
        over
    }

    /// The CPU that took the snapshot.
    pub fn by(&self) -> usize {
        self.by
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn reads_what_was_written() {
        let s = Shadow::new(4);
        assert_eq!(s.read(1), Some(Seen { obj: 0, rights: Rights::NONE, badge: 0 }));
        s.write(1, 0x1000, Rights::SEND, 7);
        assert_eq!(s.read(1), Some(Seen { obj: 0x1000, rights: Rights::SEND, badge: 7 }));
        s.write(1, 0, Rights::NONE, 0);
        assert_eq!(s.read(1).unwrap().obj, 0);
        // Rights without an address are not kept (a reader tests the rights only).
        s.write(2, 0, Rights::SEND, 3);
        assert_eq!(s.read(2).unwrap().rights, Rights::NONE);
        assert_eq!(s.read(4).unwrap().obj, 0, "beyond the table: empty");
        assert_eq!(s.read(PIECES as u64 * 64), None);
        assert_eq!(s.read(u64::MAX), None);
        assert!(Shadow::try_new(PIECES * 64 + 1).is_none());
    }

    #[test]
    fn a_reader_meeting_a_writer_gets_none() {
        let s = Shadow::new(1);
        s.pieces[0][0].seq.store(3, Ordering::Relaxed);
        assert_eq!(s.read(0), None);
    }

    #[test]
    fn grace_waits_for_every_other_cpu() {
        let counters = [5u64, 9, 2];
        // CPU 0 takes the snapshot of CPUs 0 to 2.
        let g = Grace::start(0, 0..3, |i| counters[i]);
        assert_eq!(g.by(), 0);
        assert!(!g.over(0, |i| counters[i], |_| false));
        let moved = [5u64, 10, 2];
        assert!(!g.over(0, |i| moved[i], |_| false));
        assert!(g.over(0, |i| moved[i], |i| i == 2));
        assert!(!g.over(0, |i| moved[i], |i| i == 0));
        // The CPU that took it never holds it up.
        assert!(g.over(0, |i| [5u64, 10, 3][i], |_| false));
        assert!(g.over(0, |i| [6u64, 10, 3][i], |_| false));
        // Nor does the one asking (another CPU settling).
        assert!(g.over(2, |i| [5u64, 10, 2][i], |_| false));
        assert!(!g.over(1, |i| [5u64, 10, 2][i], |_| false));
        // With no other CPU, it is over at once.
        assert!(Grace::start(1, 1..2, |_| 0).over(1, |_| 0, |_| false));
    }

    #[test]
    fn concurrent_reads_are_never_torn() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let s = Arc::new(Shadow::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        let w = {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut k = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    s.write(0, k * 16, Rights(k & 0x1ff), k);
                    k += 1;
                }
            })
        };
        // Until 20,000 consistent reads of written values (the writer may start late on a
        // loaded host), for at most 10 s.
        let (mut good, start) = (0, std::time::Instant::now());
        while good < 20_000 && start.elapsed().as_secs() < 10 {
            if let Some(v) = s.read(0) {
                if v.obj != 0 {
                    let k = v.obj / 16;
                    assert_eq!((v.rights.0, v.badge), (k & 0x1ff, k), "a torn read");
                    good += 1;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        w.join().unwrap();
        assert!(good > 0);
    }
}
