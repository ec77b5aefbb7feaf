//! A CPU's mailbox: an intrusive, multi-producer single-consumer list of `Arc<T>` in one word
//! on its own cache line, together with the owner's idle state.
//!
//! Any CPU pushes an item (a thread made runnable for the owner) with one compare-and-swap on
//! the mailbox word and no allocation: the link lives in the item ([`Link`], reached through
//! [`Linked`]). The owner takes the whole list with one compare-and-swap that empties the word
//! (keeping the state bits) and gets the items back oldest first ([`Mailbox::drain`]). The
//! mailbox owns one reference of each item it holds (`Arc::into_raw` on push, `Arc::from_raw`
//! on drain).
//!
//! ## The word
//! The word is the head pointer (the newest item; each item's link points at the one pushed
//! before it) with the owner's [`Idle`] state in its two low bits (an item holds a `Link`, so
//! it is 8-byte aligned; `push` checks at compile time that it is at least 4). Because the
//! state and the list are one atomic value, a pusher learns the state the owner was in *at the
//! instant its item went in*, from its own compare-and-swap, and an owner that goes to sleep
//! does so only if the list is empty *at that instant* ([`Mailbox::try_halt`]). There is no
//! window between "publish the item" and "look at the state" for a wake-up to be lost in, and
//! no fence or sequentially consistent access is needed for it: every decision is taken by a
//! read-modify-write of the one word, and all of them are totally ordered by the word's
//! modification order (coherence).
//!
//! The classic alternative — the state in a byte next to the head, the pusher publishing its
//! item and then reading the state, the owner publishing `HALTING` and then re-reading the
//! head — is a store-buffering pattern: it needs `SeqCst` on all four accesses (or a `SeqCst`
//! fence on each side) and still leaves a second locked access on the pusher's path and a
//! window in which several pushers all see `HALTING` and all send an interrupt. Here the one
//! pusher whose item meets `Halting` turns it into [`Idle::Waking`] in the same
//! compare-and-swap and is the only one told to send the interrupt ([`Pushed::must_interrupt`]).
//!
//! ## States ([`Idle`]), changed by the owner except `Halting → Waking`
//! ```text
//!   Busy ◀──set_busy── any          Busy/Polling ──try_halt (list empty)──▶ Halting
//!   Polling ◀──set_polling── any    Halting ──push (that pusher sends the IPI)──▶ Waking
//! ```
//!
//! ## Rules
//! - An item is in at most one mailbox, at most once. The kernel guarantees it through the
//!   thread's `Place` (`life.rs`); the mailbox also checks it: a push claims the item's link
//!   with a compare-and-swap of its `queued` flag and hands the item back if it was already
//!   claimed, so a misuse can never corrupt a list (a bug, but not a memory-safety one).
//! - Only the owner drains and changes the idle state. (Nothing unsafe happens if another CPU
//!   does: concurrent drains take disjoint lists. But the idle protocol assumes it.)
//! - [`Mailbox::drain`] clears each item's claim before handing it out: the callback (or any
//!   other CPU) may push it again at once, into this or another mailbox.
//! - The kernel never drops a CPU's mailbox; dropping one releases the items still in it.
//!
//! The models in `kernel/core/tests/mailbox_loom.rs` check the pushes against a concurrent
//! drain, the idle protocol and re-pushes from the drain's callback under `loom`
//! (`RUSTFLAGS="--cfg loom"`, which makes this module use loom's atomics and `Arc`);
//! `tests/mailbox_model.rs` runs random sequences against a plain queue.
//!
//! `unsafe` is confined to the conversion back from the raw pointer a list holds to an `Arc`
//! ([`from_list`]), the reads of an item through a list pointer ([`link_of`]), [`Mailbox::peek`]
//! and the `unsafe trait` [`Linked`].
#![allow(unexpected_cfgs)] // `cfg(loom)`: set by RUSTFLAGS for the loom models only.

use core::marker::PhantomData;
use core::ptr;

use sync::Ordering::{Acquire, Relaxed, Release, SeqCst};
use sync::{AtomicBool, AtomicPtr, AtomicU64};
pub use sync::Arc;

/// The atomics and `Arc` of the target, or loom's for the models.
mod sync {
    #[cfg(not(loom))]
    pub use alloc::sync::Arc;
    #[cfg(not(loom))]
    pub use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
    #[cfg(loom)]
    pub use loom::sync::Arc;
    #[cfg(loom)]
    pub use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
}

/// The idle state of a mailbox's owner, kept in the mailbox word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Idle {
    /// Running something (or about to look at its mailbox anyway). Whether a pusher should
    /// interrupt it is the kernel's decision (the pushed thread outranks the running one).
    Busy = 0,
    /// Idle and watching the mailbox word: it sees a push without an interrupt.
    Polling = 1,
    /// Idle and halted (or about to halt) until an interrupt: the next push must send one.
    Halting = 2,
    /// Was halting; one pusher has been told to interrupt it. Later pushers need not.
    Waking = 3,
}

/// The low bits of the mailbox word that hold the [`Idle`] state.
const STATE: usize = 0b11;

impl Idle {
    fn of<T>(w: *mut T) -> Idle {
        match w.addr() & STATE {
            0 => Idle::Busy,
            1 => Idle::Polling,
            2 => Idle::Halting,
            _ => Idle::Waking,
        }
    }
}

/// The head pointer of a mailbox word (the state bits cleared).
fn head<T>(w: *mut T) -> *mut T {
    w.map_addr(|a| a & !STATE)
}

/// A mailbox word: head pointer `h` (untagged) and state `s`.
fn word<T>(h: *mut T, s: Idle) -> *mut T {
    h.map_addr(|a| a | s as usize)
}

/// The link each item carries: where the item is in a mailbox's list, the word its pusher
/// attached to it, and whether it is claimed by a mailbox.
pub struct Link<T> {
    /// The item pushed before this one (null: the oldest); after the drain's reversal, the
    /// one pushed after it. Written only by the link's claimer (the pusher, then the drainer).
    next: AtomicPtr<T>,
    /// The pusher's word (the kernel: the priority the thread was pushed at).
    payload: AtomicU64,
    /// Claimed by a push, released by the drain that hands the item out.
    queued: AtomicBool,
}

impl<T> Link<T> {
    /// An unclaimed link.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Link { next: AtomicPtr::new(ptr::null_mut()), payload: AtomicU64::new(0), queued: AtomicBool::new(false) }
    }

    /// An unclaimed link.
    #[cfg(loom)]
    pub fn new() -> Self {
        Link { next: AtomicPtr::new(ptr::null_mut()), payload: AtomicU64::new(0), queued: AtomicBool::new(false) }
    }

    /// Whether the item is in a mailbox (for assertions and the kernel's consistency check; a
    /// snapshot).
    pub fn is_queued(&self) -> bool {
        self.queued.load(Acquire)
    }
}

impl<T> core::fmt::Debug for Link<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Link").field("queued", &self.is_queued()).field("payload", &self.payload.load(Relaxed)).finish()
    }
}

impl<T> Default for Link<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// An item that carries a [`Link`].
///
/// # Safety
/// `link` must return the same `Link`, a part of `self`, every time it is called on the same
/// value, and no other value may return that `Link`. (The mailbox claims an item through its
/// link: two links for one item would let it into two lists, which corrupts both.)
pub unsafe trait Linked: Sized {
    fn link(&self) -> &Link<Self>;
}

/// What a push found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// The mailbox was empty before this push.
    pub was_empty: bool,
    /// The owner's idle state when the item went in (`Halting`: this pusher changed it to
    /// `Waking` and must interrupt the owner).
    pub found: Idle,
}

impl Pushed {
    /// Whether this pusher must interrupt the owner: it was halting, and this push is the one
    /// that told it (at most one push per halt is).
    pub fn must_interrupt(&self) -> bool {
        self.found == Idle::Halting
    }
}

/// The mailbox: one word, alone on its cache line (128 bytes: the line and the neighbour that
/// x86's adjacent-line prefetcher pulls in with it, as `CpuSched` and crossbeam's `CachePadded`
/// do), written by pushers and by its owner's drains and idle-state changes only.
#[repr(align(128))]
pub struct Mailbox<T: Linked> {
    word: AtomicPtr<T>,
    /// The mailbox owns one reference of each item in it (for `Send`/`Sync` and drop check).
    _owns: PhantomData<Arc<T>>,
}

impl<T: Linked> Default for Mailbox<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Gives up one reference of `item` to a list: the raw pointer the list holds.
fn into_list<T>(item: Arc<T>) -> *mut T {
    Arc::into_raw(item).cast_mut()
}

/// Takes back the reference a list held.
///
/// # Safety
/// `p` came from [`into_list`] (untagged), and the caller takes over the one reference that
/// call gave up: exactly one `from_list` per `into_list`.
unsafe fn from_list<T>(p: *mut T) -> Arc<T> {
    // SAFETY: `p` is what `Arc::into_raw` returned for an `Arc<T>` (the caller's contract), and
    // the reference it stands for is handed over exactly once.
    unsafe { Arc::from_raw(p.cast_const()) }
}

/// The link of the item at `p`.
///
/// # Safety
/// `p` is a list pointer (from [`into_list`]) whose reference has not been taken back yet by
/// [`from_list`], so the item is alive for `'a`; the caller holds that reference for `'a`.
unsafe fn link_of<'a, T: Linked>(p: *mut T) -> &'a Link<T> {
    // SAFETY: the item is alive (its list reference is held, the caller's contract) and never
    // moves (it is inside an `Arc`); only shared references to it exist.
    unsafe { &*p }.link()
}

impl<T: Linked> Mailbox<T> {
    /// An empty mailbox, owner `Busy`.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Mailbox { word: AtomicPtr::new(ptr::null_mut()), _owns: PhantomData }
    }

    /// An empty mailbox, owner `Busy`.
    #[cfg(loom)]
    pub fn new() -> Self {
        Mailbox { word: AtomicPtr::new(ptr::null_mut()), _owns: PhantomData }
    }

    /// Pushes `item` with the word `payload`, from any CPU: one compare-and-swap of the mailbox
    /// word (repeated only if another push or the owner changed it meanwhile), no allocation,
    /// no lock. (The claim of the item's link is a second locked instruction, on the item's own
    /// cache line, which nobody else writes then.) Returns what it found (whether to interrupt
    /// the owner), or the item back if it is already in a mailbox (a bug of the caller).
    pub fn push(&self, item: Arc<T>, payload: u64) -> Result<Pushed, Arc<T>> {
        const { assert!(align_of::<T>() > STATE, "the state bits need items aligned to 4 bytes") };
        let link = item.link();
        // Claim the link. Acquire: pairs with the Release that cleared `queued` in the drain that
        // last handed this item out, so that drain's reads of `next` and `payload` happen
        // before the writes below (it read them before it cleared the flag).
        if link.queued.compare_exchange(false, true, Acquire, Relaxed).is_err() {
            return Err(item);
        }
        // Relaxed: published by the Release of the compare-and-swap below.
        link.payload.store(payload, Relaxed);
        let me = into_list(item);
        // SAFETY: `me` is from `into_list`, and this push holds its reference until the
        // compare-and-swap below publishes it; `link` is not used after that.
        let link = unsafe { link_of(me) };
        let mut w = self.word.load(Relaxed);
        loop {
            let found = Idle::of(w);
            let s = if found == Idle::Halting { Idle::Waking } else { found };
            // Only this pusher writes `next` while the link is claimed and not yet published.
            link.next.store(head(w), Relaxed);
            // Release: the drain's Acquire compare-and-swap then sees `next`, `payload` and
            // whatever the caller wrote into the item before the push (pushes are
            // read-modify-writes, so each continues the release sequences of the ones before
            // it). The pusher reads nothing through the old head, so it needs no Acquire.
            // Sequentially consistent besides (the same `lock cmpxchg` on x86): the owner's
            // scheduler, lowering the priority it publishes, stores it and then looks at the
            // mailbox (`is_empty_after_store`), while a pusher pushes and then reads that
            // priority; with both sides sequentially consistent, one of the two sees the other.
            match self.word.compare_exchange_weak(w, word(me, s), SeqCst, Relaxed) {
                Ok(_) => return Ok(Pushed { was_empty: head(w).is_null(), found }),
                Err(now) => w = now,
            }
        }
    }

    /// Takes every item out and calls `f` on each with its payload, oldest first (for each
    /// pusher: in the order it pushed). One atomic read-modify-write of the mailbox word, no
    /// allocation (the list is reversed in place through the links). Each item's claim is
    /// cleared before `f` gets it, so `f` may push it again. Items pushed meanwhile wait for
    /// the next drain. Returns how many items there were. (Should `f` panic, the items not yet
    /// handed out stay claimed and are leaked; the kernel aborts on a panic.)
    pub fn drain(&self, f: impl FnMut(Arc<T>, u64)) -> usize {
        self.drain_to(None, f)
    }

    /// [`Mailbox::drain`], the owner becoming `Busy` in the same compare-and-swap (as
    /// [`Mailbox::set_busy`] then `drain` would, with one locked instruction instead of two):
    /// the idle loop's hand-over of what arrived while it polled.
    pub fn drain_busy(&self, f: impl FnMut(Arc<T>, u64)) -> usize {
        self.drain_to(Some(Idle::Busy), f)
    }

    /// [`Mailbox::drain`], setting the state bits to `state` (`None`: as they are).
    fn drain_to(&self, state: Option<Idle>, mut f: impl FnMut(Arc<T>, u64)) -> usize {
        // Acquire: pairs with the Release of every push in the list (they form one release
        // sequence on the word), so their `next`, `payload` and item contents are visible. The
        // state bits stay as they are unless `state` says (a compare-and-swap, not a swap,
        // because the state might change meanwhile; uncontended it succeeds at once).
        let mut w = self.word.load(Relaxed);
        let mut p = loop {
            if head(w).is_null() && state.is_none_or(|s| s == Idle::of(w)) {
                return 0;
            }
            match self.word.compare_exchange_weak(w, word(ptr::null_mut(), state.unwrap_or(Idle::of(w))), Acquire, Relaxed) {
                Ok(_) => break head(w),
                Err(now) => w = now,
            }
        };
        // Newest first: reverse in place. The links are this drain's alone until it clears the
        // claims (no push can claim them; the pushers that wrote them are done with them).
        let mut oldest = ptr::null_mut();
        while !p.is_null() {
            // SAFETY: `p` is in the list this drain took out of the word, whose references it
            // now owns; it gives none back before this loop ends.
            let next = unsafe { &link_of(p).next };
            let older = next.load(Relaxed);
            next.store(oldest, Relaxed);
            oldest = p;
            p = older;
        }
        let mut n = 0;
        let mut p = oldest;
        while !p.is_null() {
            // SAFETY: `p` is in the list this drain took out of the word, whose references it
            // now owns (each item once: every push claimed a different, unclaimed link), and
            // gives back below, once each; the item is alive until then.
            let link = unsafe { link_of(p) };
            let newer = link.next.load(Relaxed);
            let payload = link.payload.load(Relaxed);
            // Release: the reads above happen before a new claim's writes (its Acquire).
            link.queued.store(false, Release);
            // SAFETY: `p` came from `into_list` in the push that put it into this list, and this
            // drain, which took that list, hands the reference back exactly once (here); `p` is
            // not used again.
            let item = unsafe { from_list(p) };
            f(item, payload);
            n += 1;
            p = newer;
        }
        n
    }

    /// Whether the mailbox is empty: one load of the word (what an idle owner polls, and the
    /// IPC fast path's "nothing arrived" guard). A snapshot; a drain is what synchronises with
    /// the pushes, so Relaxed would do, and Acquire costs nothing more on x86.
    pub fn is_empty(&self) -> bool {
        head(self.word.load(Acquire)).is_null()
    }

    /// [`is_empty`](Self::is_empty), ordered after a sequentially consistent store of the
    /// caller's (a plain load on x86): see the push's compare-and-swap.
    pub fn is_empty_after_store(&self) -> bool {
        head(self.word.load(SeqCst)).is_null()
    }

    /// The owner's idle state (a snapshot).
    pub fn state(&self) -> Idle {
        Idle::of(self.word.load(Relaxed))
    }

    /// The owner is running something: pushers see `Busy`. Returns the state before.
    pub fn set_busy(&self) -> Idle {
        self.set_state(Idle::Busy)
    }

    /// The owner is idle and watching the word: pushers need not interrupt it. Returns the
    /// state before.
    pub fn set_polling(&self) -> Idle {
        self.set_state(Idle::Polling)
    }

    /// The owner means to halt: succeeds (`true`, state `Halting`) only if the mailbox is empty
    /// and no interrupt is already on its way (`Waking`). After `true` the next push is told
    /// to interrupt the owner, so the owner may halt until an interrupt without missing it
    /// (with interrupts masked until the halt instruction, as `sti; hlt` does). After `false`
    /// it must drain (and run) first.
    ///
    /// One compare-and-swap of the word: a push is either in it (the swap fails) or comes
    /// after it in the word's modification order and so reads `Halting`. Relaxed: the
    /// decision rests on this one location alone; the drain after the wake-up synchronises
    /// with the pushes.
    pub fn try_halt(&self) -> bool {
        let mut w = self.word.load(Relaxed);
        loop {
            if !head(w).is_null() || Idle::of(w) == Idle::Waking {
                return false;
            }
            if Idle::of(w) == Idle::Halting {
                return true;
            }
            match self.word.compare_exchange_weak(w, word(ptr::null_mut(), Idle::Halting), Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(now) => w = now,
            }
        }
    }

    /// Sets the state bits, keeping the list. Relaxed: as for `try_halt`.
    fn set_state(&self, s: Idle) -> Idle {
        let mut w = self.word.load(Relaxed);
        loop {
            match self.word.compare_exchange_weak(w, word(head(w), s), Relaxed, Relaxed) {
                Ok(_) => return Idle::of(w),
                Err(now) => w = now,
            }
        }
    }

    /// Calls `f` on each item in the mailbox (as the `Arc` the mailbox holds) with its payload,
    /// newest first, leaving them in it: for the kernel's consistency check, which counts the
    /// holders of each object.
    ///
    /// # Safety
    /// No drain of this mailbox may run until `peek` returns (it would release the items
    /// being visited). Pushes may run: they only add newer items, which `peek` does not see.
    pub unsafe fn peek(&self, mut f: impl FnMut(&Arc<T>, u64)) {
        // Acquire: as in `drain`, sees the links and payloads of the pushes it finds.
        let mut p = head(self.word.load(Acquire));
        while !p.is_null() {
            // SAFETY: `p` came from `into_list` and is in the list (reached from the head
            // through links written before their pushes' Release), whose references only a
            // drain gives back, and the caller guarantees that none runs: the reference is
            // the list's until `peek` returns. It is only lent to `f` here, never dropped
            // (`ManuallyDrop`), so the list keeps it.
            let item = core::mem::ManuallyDrop::new(unsafe { from_list(p) });
            let link = item.link();
            f(&item, link.payload.load(Relaxed));
            p = link.next.load(Relaxed);
        }
    }
}

impl<T: Linked> Drop for Mailbox<T> {
    /// Releases the items still in the mailbox (the kernel never drops a CPU's mailbox).
    fn drop(&mut self) {
        self.drain(|item, _| drop(item));
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[derive(Debug)]
    struct Item {
        link: Link<Item>,
        id: u32,
    }

    // SAFETY: `link` returns the item's own field, always the same one.
    unsafe impl Linked for Item {
        fn link(&self) -> &Link<Item> {
            &self.link
        }
    }

    fn item(id: u32) -> Arc<Item> {
        Arc::new(Item { link: Link::new(), id })
    }

    fn ids(m: &Mailbox<Item>) -> Vec<(u32, u64)> {
        let mut v = Vec::new();
        m.drain(|i, p| v.push((i.id, p)));
        v
    }

    #[test]
    fn empty_until_pushed_fifo_with_payloads() {
        let m = Mailbox::new();
        assert!(m.is_empty());
        assert_eq!(m.drain(|_, _| panic!("nothing to drain")), 0);
        let items: Vec<_> = (0..5).map(item).collect();
        for (k, i) in items.iter().enumerate() {
            let r = m.push(i.clone(), 100 + k as u64).unwrap();
            assert_eq!(r, Pushed { was_empty: k == 0, found: Idle::Busy });
            assert!(!m.is_empty());
            assert!(i.link.is_queued());
            assert_eq!(Arc::strong_count(i), 2);
        }
        assert_eq!(ids(&m), (0..5).map(|k| (k, 100 + k as u64)).collect::<Vec<_>>());
        assert!(m.is_empty());
        for i in &items {
            assert!(!i.link.is_queued());
            assert_eq!(Arc::strong_count(i), 1);
        }
    }

    #[test]
    fn push_after_drain() {
        let m = Mailbox::new();
        let a = item(1);
        m.push(a.clone(), 7).unwrap();
        assert_eq!(ids(&m), [(1, 7)]);
        assert_eq!(m.push(a.clone(), 8).unwrap().was_empty, true);
        m.push(item(2), 9).unwrap();
        assert_eq!(ids(&m), [(1, 8), (2, 9)]);
        assert_eq!(Arc::strong_count(&a), 1);
    }

    #[test]
    fn refuses_a_second_push() {
        let (m, n) = (Mailbox::new(), Mailbox::new());
        let a = item(1);
        m.push(a.clone(), 1).unwrap();
        let back = m.push(a.clone(), 2).unwrap_err();
        assert!(Arc::ptr_eq(&back, &a));
        let back = n.push(back, 3).unwrap_err();
        drop(back);
        assert!(n.is_empty());
        assert_eq!(Arc::strong_count(&a), 2);
        assert_eq!(ids(&m), [(1, 1)]);
        assert_eq!(Arc::strong_count(&a), 1);
    }

    #[test]
    fn repush_from_the_callback() {
        let m = Mailbox::new();
        let (a, b) = (item(1), item(2));
        m.push(a.clone(), 1).unwrap();
        m.push(b.clone(), 2).unwrap();
        let mut seen = Vec::new();
        m.drain(|i, p| {
            seen.push(i.id);
            m.push(i, p + 10).unwrap();
        });
        assert_eq!(seen, [1, 2]);
        assert_eq!(ids(&m), [(1, 11), (2, 12)]);
    }

    #[test]
    fn idle_states() {
        let m = Mailbox::new();
        assert_eq!(m.state(), Idle::Busy);
        assert_eq!(m.set_polling(), Idle::Busy);
        let r = m.push(item(1), 0).unwrap();
        assert_eq!(r, Pushed { was_empty: true, found: Idle::Polling });
        assert!(!r.must_interrupt());
        // Something arrived: no halt, and the state is kept.
        assert!(!m.try_halt());
        assert_eq!(m.state(), Idle::Polling);
        assert_eq!(ids(&m), [(1, 0)]);
        assert_eq!(m.state(), Idle::Polling);
        assert!(m.try_halt());
        assert!(m.try_halt(), "halting stays halting");
        // The first push meets Halting and sends the interrupt; the next ones meet Waking.
        let r = m.push(item(2), 0).unwrap();
        assert!(r.must_interrupt());
        assert_eq!(r.found, Idle::Halting);
        assert_eq!(m.state(), Idle::Waking);
        let r = m.push(item(3), 0).unwrap();
        assert_eq!(r, Pushed { was_empty: false, found: Idle::Waking });
        assert!(!r.must_interrupt());
        assert_eq!(ids(&m), [(2, 0), (3, 0)]);
        // An interrupt is on its way: do not halt again before it came.
        assert!(!m.try_halt());
        assert_eq!(m.set_busy(), Idle::Waking);
        assert!(m.try_halt());
        assert_eq!(m.set_busy(), Idle::Halting);
        let r = m.push(item(4), 0).unwrap();
        assert_eq!(r.found, Idle::Busy);
        assert_eq!(m.set_polling(), Idle::Busy);
        assert_eq!(ids(&m), [(4, 0)]);
    }

    #[test]
    fn peek_leaves_the_items() {
        let m = Mailbox::new();
        let v: Vec<_> = (0..4).map(item).collect();
        for i in &v {
            m.push(i.clone(), i.id as u64 * 2).unwrap();
        }
        let mut seen = Vec::new();
        // SAFETY: no drain runs meanwhile (one thread).
        unsafe {
            m.peek(|i, p| {
                assert_eq!(Arc::strong_count(i), 2, "the test's and the mailbox's");
                seen.push((i.id, p))
            })
        };
        assert_eq!(seen, [(3, 6), (2, 4), (1, 2), (0, 0)]);
        assert!(v.iter().all(|i| Arc::strong_count(i) == 2 && i.link.is_queued()));
        seen.reverse();
        assert_eq!(ids(&m), seen);
    }

    #[test]
    fn drop_releases_the_items() {
        let a = item(1);
        {
            let m = Mailbox::new();
            m.set_polling();
            m.push(a.clone(), 0).unwrap();
            assert_eq!(Arc::strong_count(&a), 2);
        }
        assert_eq!(Arc::strong_count(&a), 1);
        assert!(!a.link.is_queued());
    }

    /// Real threads (and, under Miri, its weak-memory emulation): three push while the owner
    /// drains and re-pushes every tenth item it gets.
    #[test]
    fn threads_push_while_the_owner_drains() {
        const N: u32 = if cfg!(miri) { 20 } else { 2000 };
        let m = Arc::new(Mailbox::new());
        let items: Vec<Vec<Arc<Item>>> = (0..3).map(|c| (0..N).map(|k| item(c * N + k)).collect()).collect();
        let handles: Vec<_> = items
            .iter()
            .map(|mine| {
                let (m, mine) = (m.clone(), mine.clone());
                std::thread::spawn(move || {
                    for it in mine {
                        let p = it.id as u64;
                        m.push(it, p).unwrap();
                    }
                })
            })
            .collect();
        let mut next = [0u32; 3];
        let mut repushed = Vec::new();
        let mut got = 0;
        while got < 3 * N as usize + repushed.len() {
            m.drain(|it, p| {
                got += 1;
                if p >= 1 << 32 {
                    return; // a re-push coming back
                }
                assert_eq!(p, it.id as u64);
                let c = (it.id / N) as usize;
                assert_eq!(it.id % N, next[c], "the order of pusher {c}");
                next[c] += 1;
                if it.id % 10 == 0 {
                    repushed.push(it.id);
                    m.push(it, p | 1 << 32).unwrap();
                }
            });
            std::thread::yield_now();
        }
        for h in handles {
            h.join().unwrap();
        }
        assert!(m.is_empty());
        assert_eq!(next, [N; 3]);
        for it in items.iter().flatten() {
            assert_eq!(Arc::strong_count(it), 1);
        }
    }

    #[test]
    fn layout() {
        assert_eq!(align_of::<Mailbox<Item>>(), 128);
        assert_eq!(size_of::<Mailbox<Item>>(), 128);
    }
}
