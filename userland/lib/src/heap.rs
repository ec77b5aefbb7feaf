//! A heap for `alloc` (`Box`, `Vec`, `String`...), with the crate's `heap` feature: the global
//! allocator starts empty at [`crate::env::HEAP_BASE`] and grows by mapping fresh frames from
//! [`crate::env::MEMORY`] when an allocation does not fit. Allocate outside hot paths (rl4's IPC
//! itself never allocates).
//!
//! A lock guards it that waits in the kernel ([`HeapLock`]): a thread that finds it held spins a
//! little (the holder may run on another CPU and let go at once), then waits on a notification
//! that the holder signals as it lets go (and looks again after a tick at most, signalled or
//! not: the signal may go to a waiter that cannot run yet). rl4 schedules by strict priority, so with a plain
//! spin lock (before the twenty-fifth session) a thread that allocated while a thread of lower
//! priority of the same program held the lock on the same CPU spun there for ever: the holder
//! never ran again (`sdk-heap-lock-across-priorities`). The notification is made, from the
//! program's memory budget and a free slot ([`crate::slots`]), the first time two threads
//! contend; if it cannot be made, waiters yield instead, and the hazard above stays for them.
use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use linked_list_allocator::Heap;
use rl4_abi::{Error, PAGE_SIZE};

use crate::env;

/// The heap's lock (see the module documentation): a word saying free, held, or held with
/// threads waiting for it, and the notification those threads wait on.
pub struct HeapLock {
    state: AtomicU32,
    /// The notification's slot plus one (0: not made yet).
    note: AtomicU64,
}

const FREE: u32 = 0;
const HELD: u32 = 1;
/// Held, and a thread may wait for it: its release signals.
const WAITED: u32 = 2;
/// Rounds a contender spins before it waits in the kernel.
const SPINS: u32 = 100;
/// How long a waiter waits before it looks at the lock again, signalled or not (TSC ticks; the
/// wait ends at the first timer tick after them): a release signals one waiter, and the kernel
/// gives the signal to the waiter of highest priority, which may not get its CPU for a while;
/// the lock, free meanwhile, must not leave the other waiters asleep until it does (a review
/// found it). A millisecond at 1 GHz.
const RECHECK: u64 = 1 << 20;

/// Waits in the kernel for the heap's lock so far, all threads ([`waits`]).
static WAITS: AtomicU64 = AtomicU64::new(0);

/// How many times a thread of this program waited in the kernel for the heap's lock (a test
/// sees the contention it set up happen).
pub fn waits() -> u64 {
    WAITS.load(Ordering::Relaxed)
}

impl HeapLock {
    pub const fn new() -> Self {
        HeapLock { state: AtomicU32::new(FREE), note: AtomicU64::new(0) }
    }

    /// Takes the lock, waiting for it if need be.
    pub fn acquire(&self) {
        if self.state.compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return;
        }
        for _ in 0..SPINS {
            core::hint::spin_loop();
            if self.state.load(Ordering::Relaxed) == FREE
                && self.state.compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                return;
            }
        }
        // Made (and published) before this thread says it waits: a release that sees `WAITED`
        // finds it.
        let note = self.note();
        // Taken with `WAITED` even when free: another thread may wait too (its release
        // signals at worst once too often, and a signal nobody waits for only makes a later
        // wait return at once, to try again).
        while self.state.swap(WAITED, Ordering::AcqRel) != FREE {
            match note {
                // Any answer (bits, `Timeout`, `Interrupted` after a suspension): try again.
                Some(n) => {
                    WAITS.fetch_add(1, Ordering::Relaxed);
                    match crate::sys::wait(n, RECHECK) {
                        Ok(_) | Err(Error::Timeout) | Err(Error::Interrupted) => {}
                        // A timed wait the kernel could not take at all (`OutOfMemory`: no room
                        // for its deadline) would make this loop spin, perhaps for ever over a
                        // holder of lower priority on this CPU: it waits without a deadline
                        // instead, which needs no room — the release signals, since this
                        // thread said `WAITED` (a review found the spin). The price, only while
                        // memory is that short: a release's one signal goes to the waiter of
                        // highest priority, and if that one cannot run, this one sleeps until
                        // the next release that finds `WAITED` (the recheck a deadline gives
                        // is what it cannot have).
                        Err(_) => {
                            let _ = crate::sys::wait(n, rl4_abi::ipc::FOREVER);
                        }
                    }
                }
                None => crate::sys::yield_now(),
            }
        }
    }

    /// Lets the lock go, waking a waiter if there may be one.
    pub fn release(&self) {
        if self.state.swap(FREE, Ordering::AcqRel) == WAITED {
            if let Some(n) = self.made() {
                let _ = crate::sys::signal(n, 1);
            }
        }
    }

    /// The notification's slot, if it was made.
    fn made(&self) -> Option<u64> {
        self.note.load(Ordering::Acquire).checked_sub(1)
    }

    /// The notification's slot, made now if it was not (`None`: no slot or no memory for it).
    fn note(&self) -> Option<u64> {
        if let Some(n) = self.made() {
            return Some(n);
        }
        let slot = crate::slots::alloc()?;
        if crate::sys::notification_create(env::MEMORY, slot).is_err() {
            crate::slots::free(slot);
            return None;
        }
        match self.note.compare_exchange(0, slot + 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Some(slot),
            // Another contender made one first: that one is used.
            Err(other) => {
                crate::slots::free(slot);
                Some(other - 1)
            }
        }
    }
}

impl Default for HeapLock {
    fn default() -> Self {
        Self::new()
    }
}

/// The allocator (see the module documentation).
pub struct GrowingHeap {
    lock: HeapLock,
    /// The heap and the bytes it spans: only under `lock`.
    heap: UnsafeCell<(Heap, u64)>,
}

// SAFETY: `heap` is reached only under `lock` (`with`), which one thread holds at a time.
unsafe impl Sync for GrowingHeap {}

impl GrowingHeap {
    pub const fn new() -> Self {
        GrowingHeap { lock: HeapLock::new(), heap: UnsafeCell::new((Heap::empty(), 0)) }
    }
    /// `f` on the heap, under the lock.
    fn with<R>(&self, f: impl FnOnce(&mut (Heap, u64)) -> R) -> R {
        self.lock.acquire();
        // SAFETY: the lock is held: nobody else reaches the heap until it is released below.
        let r = f(unsafe { &mut *self.heap.get() });
        self.lock.release();
        r
    }
    /// Bytes the heap spans now.
    pub fn size(&self) -> u64 {
        self.with(|g| g.1)
    }
}

impl Default for GrowingHeap {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every block comes from `linked_list_allocator::Heap`, which hands out disjoint
// blocks of the asked layout inside memory mapped for the heap alone (mapped here, never
// unmapped), and all access to it is under the lock.
unsafe impl GlobalAlloc for GrowingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.with(|g| {
            if let Ok(p) = g.0.allocate_first_fit(layout) {
                return p.as_ptr();
            }
            // Grow by at least what was asked (plus room for alignment), 64 KiB at a time; not at
            // all if the budget cannot pay for it (each page costs its frame's record and its
            // mapping besides: `rl4_abi::cost`), so that an allocation too large for it fails at
            // once rather than after mapping what the budget had. `map_fresh` maps all or nothing.
            let Some(want) = (layout.size() as u64).checked_add(layout.align() as u64).map(|w| w.next_multiple_of(64 << 10)) else {
                return core::ptr::null_mut();
            };
            let pages = want / PAGE_SIZE;
            if let Ok((left, _)) = crate::sys::memory_info(env::MEMORY) {
                if pages.saturating_mul(rl4_abi::cost::FRAME + rl4_abi::cost::MAP) > left {
                    return core::ptr::null_mut();
                }
            }
            let top = env::HEAP_BASE + g.1;
            if crate::thread::map_fresh(top, pages).is_err() {
                return core::ptr::null_mut();
            }
            if g.1 == 0 {
                // SAFETY: `HEAP_BASE..HEAP_BASE+want` was just mapped writable, for the heap alone.
                unsafe { g.0.init(top as *mut u8, want as usize) };
            } else {
                // SAFETY: the pages right above the heap's top were just mapped for it.
                unsafe { g.0.extend(want as usize) };
            }
            g.1 += want;
            g.0.allocate_first_fit(layout).map_or(core::ptr::null_mut(), |p| p.as_ptr())
        })
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout (GlobalAlloc's contract).
        self.with(|g| unsafe { g.0.deallocate(NonNull::new_unchecked(ptr), layout) })
    }
}

#[global_allocator]
static HEAP: GrowingHeap = GrowingHeap::new();

/// Bytes the program's heap spans now.
pub fn size() -> u64 {
    HEAP.size()
}
