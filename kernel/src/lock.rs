//! The kernel's spinlock: the spin crate's `SpinMutex` plus a lock level, checked on every
//! acquisition, whose wait answers other CPUs' TLB shoot-downs ([`Mutex::lock`]).
//!
//! ## Lock order
//! A CPU may wait for a lock only while every lock it already holds has a *lower* level (a try
//! that does not wait may take one of any level: [`Mutex::try_lock_unordered`], the IPC fast
//! paths' endpoint queue under a home lock); two locks of one level are never held together (in particular never two home locks). The levels,
//! in the order they may be taken (a thread's `Life` has no lock of its own: its home CPU's
//! lock guards it, so that a hand-over between two threads of one CPU takes one lock; two
//! home locks are held together only to move a thread to another home, in the order of their
//! addresses: [`HomeMutex::rehome_when`]; "a thread's lock" elsewhere means its home's lock). Under
//! a home lock no `Life` is locked again (all threads of the home share it: it would never come
//! free; a `lockcheck` kernel's `HomeMutex::lock` stops with a message instead) and nothing is
//! destroyed:
//!
//! | level | locks |
//! |---|---|
//! | `SHOOTDOWN` | the TLB shoot-down lock (taken holding nothing) |
//! | `TASK_THREADS` | a task's thread list |
//! | `QUEUE` | an endpoint's queues, a notification's word and waiters |
//! | `THREAD` | one CPU's home lock: the `Life` of every thread whose home that CPU is ([`HomeMutex`]) |
//! | `CPU` | a CPU's timeout list (its run queue, inbox and current slot take no lock) |
//! | `DERIV` | one object's capability derivation tree (`obj::Lineage`) |
//! | `PORT_RANGES` | a space's open port ranges (`device::IoSpace`: its task's table is read under it) |
//! | `OBJECT` | a capability table, an IPC-buffer slot, a space's mappings, the PCID tables, a registry |
//! | `PORTS` | a port object's list of the spaces that opened it (`device::IoPortObj`; under a space's port ranges, or a capability table as a capability to the object leaves it) |
//! | `RECLAIM` | a CPU's list of objects to destroy later |
//! | `IRQ` | one interrupt line's state (`irq.rs`; taken holding nothing, or by `IrqBind` and `IrqAck` under the binder's capability table) |
//! | `IRQ_CHIP` | one I/O APIC's register window |
//!
//! Each CPU counts the locks it holds in its per-CPU header (`gs:40`, one instruction per
//! acquisition and release), and a kernel object destroyed while that count is not zero is
//! counted as a destructor under a spinlock ([`crate::reclaim`]). A kernel built with the
//! `lockcheck` feature keeps the set of levels held there instead and counts every acquisition
//! of a level not above all held ones as a lock-order violation (a few more instructions per
//! lock; `scripts/test` boots such a kernel for the user-mode suites and the storms). The
//! consistency check (`KernelCheck`) reports both counts.
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU64, Ordering};
use rl4_smp::MAX_CPUS;

/// The lock levels (a lock's level is part of its type: `Mutex<T, { Level::THREAD }>`).
pub struct Level;

impl Level {
    pub const SHOOTDOWN: u8 = 0;
    pub const TASK_THREADS: u8 = 1;
    pub const QUEUE: u8 = 2;
    pub const THREAD: u8 = 3;
    pub const CPU: u8 = 4;
    pub const DERIV: u8 = 5;
    pub const PORT_RANGES: u8 = 6;
    pub const OBJECT: u8 = 7;
    pub const PORTS: u8 = 8;
    pub const RECLAIM: u8 = 9;
    pub const IRQ: u8 = 10;
    pub const IRQ_CHIP: u8 = 11;
}

/// Violations counted per CPU: [lock order, destructor under a lock]; and the level last
/// taken out of order.
struct Violations {
    order: AtomicU64,
    drops: AtomicU64,
    last: AtomicU64,
}

static VIOLATIONS: [crossbeam_utils::CachePadded<Violations>; MAX_CPUS] = [const {
    crossbeam_utils::CachePadded::new(Violations { order: AtomicU64::new(0), drops: AtomicU64::new(0), last: AtomicU64::new(0) })
}; MAX_CPUS];

fn mine() -> &'static Violations {
    &VIOLATIONS[rl4_arch::percpu::cpu_index() as usize % MAX_CPUS]
}

/// Non-zero while this CPU holds a lock: the number of locks held, or (in a `lockcheck`
/// build) the set of levels held.
#[inline(always)]
pub fn held() -> u64 {
    rl4_arch::percpu::locks_held()
}

/// Takes note of an acquisition: one instruction (`inc qword ptr gs:[40]`); a `lockcheck` build also
/// checks the level against those held.
#[inline(always)]
fn acquire(level: u8) {
    if cfg!(feature = "lockcheck") {
        let held = rl4_arch::percpu::locks_held();
        if held >> level != 0 {
            order_violation(held, level);
        }
        rl4_arch::percpu::set_locks_held(held | 1 << level);
    } else {
        rl4_arch::percpu::inc_locks_held();
    }
}

#[cold]
fn order_violation(held: u64, level: u8) {
    let v = mine();
    v.order.fetch_add(1, Ordering::Relaxed);
    v.last.store(held << 8 | level as u64, Ordering::Relaxed);
}

#[inline(always)]
fn release(level: u8) {
    if cfg!(feature = "lockcheck") {
        rl4_arch::percpu::clear_locks_held(!(1 << level));
    } else {
        rl4_arch::percpu::dec_locks_held();
    }
}

/// Counts a kernel object destroyed while this CPU holds a lock.
#[cold]
pub fn drop_violation(what: &'static str) {
    let v = mine();
    if v.drops.fetch_add(1, Ordering::Relaxed) < 3 {
        rl4_arch::println!("lock: a {what} was destroyed while this CPU held a lock");
        crate::panic::backtrace_here();
    }
}

/// Every CPU's counts: (lock-order violations, destructors under a lock, last bad acquisition
/// as held-set << 8 | level).
pub fn violations() -> (u64, u64, u64) {
    VIOLATIONS.iter().fold((0, 0, 0), |(o, d, l), v| {
        let last = v.last.load(Ordering::Relaxed);
        (o + v.order.load(Ordering::Relaxed), d + v.drops.load(Ordering::Relaxed), if last != 0 { last } else { l })
    })
}

/// A spinlock with a level `L` (see [`Level`]).
pub struct Mutex<T, const L: u8> {
    inner: spin::mutex::SpinMutex<T>,
}

impl<T, const L: u8> Mutex<T, L> {
    pub const fn new(v: T) -> Self {
        Mutex { inner: spin::mutex::SpinMutex::new(v) }
    }

    /// Takes the lock; a CPU that finds it held waits answering other CPUs' TLB shoot-downs. A
    /// holder may keep a lock for as long as a task's work takes — a capability's children
    /// handed up under its tree's lock, a piece at a time, or a capability sent under an
    /// endpoint's queue lock (and no home lock: [`Mutex::lock_answering`]) that waits for that
    /// tree — and a CPU that waited with interrupts
    /// off answering nothing would hold up every shoot-down in the system, since the holder of
    /// the shoot-down lock waits for that CPU (a review of the sixteenth session found the chain
    /// through a tree's lock, answered then by `lock_answering` alone; one of the twenty-second,
    /// through an endpoint's queue lock). The wait is out of line and returns nothing, so the
    /// uncontended path is one compare-and-swap and a branch, as the spin crate's own.
    #[inline(always)]
    pub fn lock(&self) -> Guard<'_, T, L> {
        acquire(L);
        loop {
            if let Some(g) = self.inner.try_lock_weak() {
                return Guard { g };
            }
            self.wait_while_held();
        }
    }

    /// [`lock`](Self::lock), written where the holder is known to keep the lock for long (a
    /// capability's tree). Never waited for under a home lock: that CPU's every scheduling
    /// decision, and every wake-up of its threads, would wait as long (a `lockcheck` kernel
    /// counts it as a lock-order violation; before the forty-third session a capability a
    /// message carried went into its receiver's table under the receiver's or the sender's home
    /// lock, through its tree's lock: a review found a task could so stall a CPU it never ran
    /// on; `ipc::arrive`).
    #[inline(always)]
    pub fn lock_answering(&self) -> Guard<'_, T, L> {
        if cfg!(feature = "lockcheck") {
            let held = rl4_arch::percpu::locks_held();
            if held & 1 << Level::THREAD != 0 {
                order_violation(held, L);
            }
        }
        self.lock()
    }

    /// Spins while another CPU holds the lock, answering TLB shoot-downs.
    #[cold]
    #[inline(never)]
    fn wait_while_held(&self) {
        while self.inner.is_locked() {
            crate::tlb::service_tlb_if_up();
            core::hint::spin_loop();
        }
    }

    /// The lock if it is free.
    pub fn try_lock(&self) -> Option<Guard<'_, T, L>> {
        let g = self.inner.try_lock()?;
        acquire(L);
        Some(Guard { g })
    }

    /// The lock if it is free, taken while this CPU may hold locks of higher levels (a home
    /// lock): a try never waits, so it closes no cycle of waits, and the order's rule is about
    /// waits. Only for the IPC fast paths, which take the running thread's home lock before
    /// anything else for its locked instruction (`fastpath`); a `lockcheck` kernel notes the
    /// level as held and checks nothing.
    #[inline(always)]
    pub fn try_lock_unordered(&self) -> Option<Guard<'_, T, L>> {
        let g = self.inner.try_lock()?;
        if cfg!(feature = "lockcheck") {
            rl4_arch::percpu::set_locks_held(rl4_arch::percpu::locks_held() | 1 << L);
        } else {
            rl4_arch::percpu::inc_locks_held();
        }
        Some(Guard { g })
    }

    /// The value, through exclusive access (no other reference can exist: no locking needed).
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }

    /// The lock if it is free, outside the level discipline: only for the consistency check,
    /// which runs with every other CPU stopped and holds many locks of one level at once.
    pub fn peek(&self) -> Option<spin::mutex::SpinMutexGuard<'_, T>> {
        self.inner.try_lock()
    }
}

/// A [`Mutex`] that every CPU may take (a registry, the PCID allocator, the shoot-down lock):
/// a kernel built with the `countglobal` feature counts its acquisitions (`count.rs`); other
/// kernels compile it to the plain `Mutex`.
pub struct GlobalMutex<T, const L: u8> {
    m: Mutex<T, L>,
    which: crate::count::Global,
}

impl<T, const L: u8> GlobalMutex<T, L> {
    pub const fn new(which: crate::count::Global, v: T) -> Self {
        GlobalMutex { m: Mutex::new(v), which }
    }

    #[inline(always)]
    pub fn lock(&self) -> Guard<'_, T, L> {
        crate::count::global_lock(self.which);
        self.m.lock()
    }

    /// [`GlobalMutex::lock`] (which answers TLB shoot-downs while it waits, as every
    /// [`Mutex::lock`] does), written where the holder may work for long, in time a task sizes
    /// (an object registry's pruning).
    #[inline(always)]
    pub fn lock_answering(&self) -> Guard<'_, T, L> {
        crate::count::global_lock(self.which);
        self.m.lock_answering()
    }

    pub fn try_lock(&self) -> Option<Guard<'_, T, L>> {
        let g = self.m.try_lock()?;
        crate::count::global_lock(self.which);
        Some(g)
    }
}

pub struct Guard<'a, T, const L: u8> {
    g: spin::mutex::SpinMutexGuard<'a, T>,
}

impl<T, const L: u8> Drop for Guard<'_, T, L> {
    #[inline(always)]
    fn drop(&mut self) {
        release(L);
    }
}

impl<T, const L: u8> Deref for Guard<'_, T, L> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.g
    }
}

impl<T, const L: u8> DerefMut for Guard<'_, T, L> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.g
    }
}

/// Every CPU's home lock (`rl4_core::homelock`): the lock of CPU `i` guards the `Life` of every
/// thread whose home is CPU `i`. Taken by that CPU and by CPUs that wake, kill, suspend or move
/// one of its threads; no lock of all CPUs.
static HOMES: [rl4_core::homelock::HomeLock; MAX_CPUS] = [const { rl4_core::homelock::HomeLock::new() }; MAX_CPUS];

/// A value (a thread's `Life`) guarded by the lock of its home CPU, at level `THREAD`.
pub struct HomeMutex<T> {
    h: rl4_core::homelock::Homed<T>,
}

/// CPU `cpu`'s home lock (an index past the array wraps around: two homes share a lock).
fn home_lock(cpu: u32) -> &'static rl4_core::homelock::HomeLock {
    &HOMES[cpu as usize % MAX_CPUS]
}

impl<T> HomeMutex<T> {
    pub fn new(home: u32, v: T) -> Self {
        HomeMutex { h: rl4_core::homelock::Homed::new(home_lock(home), v) }
    }

    /// Takes its home's lock.
    #[inline(always)]
    pub fn lock(&self) -> HomeMutexGuard<'_, T> {
        acquire(Level::THREAD);
        if cfg!(feature = "lockcheck") {
            home_not_held(self.h.home_addr());
        }
        // A CPU that waits here answers TLB shoot-downs meanwhile (the holder may wait long
        // itself: for a capability tree another CPU walks, `lock_answering`).
        let g = self.h.lock_waiting(crate::tlb::service_tlb_if_up);
        let prev = if cfg!(feature = "lockcheck") { held_home(self.h.home_addr()) } else { 0 };
        HomeMutexGuard { g, _level: ThreadLevel { prev, _here: core::marker::PhantomData } }
    }

    /// The value, through exclusive access.
    pub fn get_mut(&mut self) -> &mut T {
        self.h.get_mut()
    }

    /// Moves it to CPU `to`'s home if `f`, run on it with both homes' locks held (taken in the
    /// order of their addresses, counted as one acquisition of level `THREAD`), agrees: on
    /// `Err` the value stays at its home (`rl4_core::homelock::Homed::rehome_when`).
    pub fn rehome_when<R, E>(&self, to: u32, f: impl FnOnce(&mut T) -> Result<R, E>) -> Result<R, E> {
        acquire(Level::THREAD);
        let r = self.h.rehome_when(home_lock(to), crate::tlb::service_tlb_if_up, f);
        release(Level::THREAD);
        r
    }

    /// Whether its home is CPU `cpu`'s (for the consistency check: `Life::cpu` and the home
    /// agree while no `rehome_when` runs).
    pub fn home_is(&self, cpu: u32) -> bool {
        self.h.is_home(home_lock(cpu))
    }

    /// The value while every home lock is held ([`peek_homes`]).
    pub fn peeked<'a>(&'a self, all: &'a AllHomes) -> Option<&'a T>
    where
        T: Sync,
    {
        self.h.get(&all.0)
    }
}

/// Every CPU's home lock, held at once outside the level discipline ([`peek_homes`]).
pub struct AllHomes(rl4_core::homelock::AllHeld<MAX_CPUS>);

/// Every home lock if all are free (else the index of a CPU whose lock is held): only for the
/// consistency check, which runs with every other CPU stopped.
pub fn peek_homes() -> Result<AllHomes, usize> {
    rl4_core::homelock::AllHeld::try_lock(&HOMES).map(AllHomes)
}

/// A held home lock ([`HomeMutex::lock`]).
pub struct HomeMutexGuard<'a, T> {
    g: rl4_core::homelock::HomeGuard<'a, T>,
    _level: ThreadLevel,
}

/// The count of a held home lock (released after the lock itself); in a `lockcheck` kernel,
/// the home lock this CPU held before (see [`held_home`]).
struct ThreadLevel {
    prev: u64,
    /// Not `Send`: the count and the record are this CPU's, so the guard is dropped here.
    _here: core::marker::PhantomData<*const ()>,
}

impl Drop for ThreadLevel {
    #[inline(always)]
    fn drop(&mut self) {
        if cfg!(feature = "lockcheck") {
            HOME_HELD[rl4_arch::percpu::cpu_index() as usize % MAX_CPUS].store(self.prev, Ordering::Relaxed);
        }
        release(Level::THREAD);
    }
}

/// A `lockcheck` kernel's record of the home lock each CPU holds last (its address; 0: none).
/// Taking it again would spin forever (a home lock is not reentrant, and all threads of a home
/// share it): such a kernel stops with a message instead.
static HOME_HELD: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Notes that this CPU now holds the home lock at `addr`; returns the one it held before.
fn held_home(addr: usize) -> u64 {
    HOME_HELD[rl4_arch::percpu::cpu_index() as usize % MAX_CPUS].swap(addr as u64, Ordering::Relaxed)
}

/// Stops the kernel if this CPU holds the home lock at `addr` already (a `lockcheck` kernel).
fn home_not_held(addr: usize) {
    if HOME_HELD[rl4_arch::percpu::cpu_index() as usize % MAX_CPUS].load(Ordering::Relaxed) == addr as u64 {
        order_violation(rl4_arch::percpu::locks_held(), Level::THREAD);
        panic!("lock: a home lock taken again by the CPU that holds it (threads of one home locked together)");
    }
}

impl<'a, T> HomeMutexGuard<'a, T> {
    /// `o`'s value if it has the same home (reached under this lock, without taking another);
    /// `None` otherwise: drop this guard, then lock `o`.
    #[inline(always)]
    pub fn other<'b>(&'b mut self, o: &'b HomeMutex<T>) -> Option<rl4_core::homelock::HomeGuardRef<'b, T>> {
        self.g.other(&o.h)
    }

    /// Keeps the lock but lets go of the value and of the borrow it came through (a thread's
    /// reference may then move while the lock is held).
    #[inline(always)]
    pub fn into_held(self) -> HomeMutexHeld {
        let HomeMutexGuard { g, _level } = self;
        HomeMutexHeld { h: g.into_held(), _level }
    }
}

/// A held home lock without a value ([`HomeMutexGuard::into_held`]).
pub struct HomeMutexHeld {
    h: rl4_core::homelock::HomeHeld,
    _level: ThreadLevel,
}

impl HomeMutexHeld {
    /// `o`'s value if it has this home; `None` otherwise.
    #[inline(always)]
    pub fn other<'b, T>(&'b mut self, o: &'b HomeMutex<T>) -> Option<rl4_core::homelock::HomeGuardRef<'b, T>> {
        self.h.other(&o.h)
    }
}

impl<T> Deref for HomeMutexGuard<'_, T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.g
    }
}

impl<T> DerefMut for HomeMutexGuard<'_, T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.g
    }
}
