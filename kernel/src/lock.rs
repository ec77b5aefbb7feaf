//! The kernel's spinlock: `spin::Mutex` plus a lock level, checked on every acquisition.
//!
//! ## Lock order
//! A CPU may take a lock only while every lock it already holds has a *lower* level; two locks
//! of one level are never held together (in particular never two threads' locks). The levels,
//! in the order they may be taken:
//!
//! | level | locks |
//! |---|---|
//! | [`Level::Shootdown`] | the TLB shoot-down lock (taken holding nothing) |
//! | [`Level::TaskThreads`] | a task's thread list |
//! | [`Level::Queue`] | an endpoint's queues, a notification's word and waiters |
//! | [`Level::Thread`] | one thread's `Life` |
//! | [`Level::Cpu`] | a CPU's inbox, run queue, current slot or timeout list (one at a time) |
//! | [`Level::Object`] | a capability table, an IPC-buffer slot, a space's mappings, the PCID tables, a registry |
//! | [`Level::Reclaim`] | a CPU's list of objects to destroy later |
//!
//! Each CPU keeps the levels it holds as a bit set in its per-CPU header (`gs:48`). Taking a
//! lock whose level is not above every held one is counted as a lock-order violation, and a
//! kernel object destroyed while this CPU holds any lock is counted as a destructor under a
//! spinlock ([`crate::reclaim`]); the consistency check (`KernelCheck`) reports both.
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU64, Ordering};
use rl4_smp::MAX_CPUS;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Level {
    Shootdown = 0,
    TaskThreads = 1,
    Queue = 2,
    Thread = 3,
    Cpu = 4,
    Object = 5,
    Reclaim = 6,
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

/// The lock levels this CPU holds.
#[inline(always)]
pub fn held() -> u64 {
    rl4_arch::percpu::current().locks_held.load(Ordering::Relaxed)
}

#[inline(always)]
fn acquire(level: Level) {
    let h = &rl4_arch::percpu::current().locks_held;
    let held = h.load(Ordering::Relaxed);
    if held >> level as u8 != 0 {
        order_violation(held, level);
    }
    h.store(held | 1 << level as u8, Ordering::Relaxed);
}

#[cold]
fn order_violation(held: u64, level: Level) {
    let v = mine();
    v.order.fetch_add(1, Ordering::Relaxed);
    v.last.store(held << 8 | level as u64, Ordering::Relaxed);
}

#[inline(always)]
fn release(level: Level) {
    let h = &rl4_arch::percpu::current().locks_held;
    h.store(h.load(Ordering::Relaxed) & !(1 << level as u8), Ordering::Relaxed);
}

/// Counts a kernel object destroyed while this CPU holds a lock.
#[cold]
pub fn drop_violation() {
    mine().drops.fetch_add(1, Ordering::Relaxed);
}

/// Every CPU's counts: (lock-order violations, destructors under a lock, last bad acquisition
/// as held-set << 8 | level).
pub fn violations() -> (u64, u64, u64) {
    VIOLATIONS.iter().fold((0, 0, 0), |(o, d, l), v| {
        let last = v.last.load(Ordering::Relaxed);
        (o + v.order.load(Ordering::Relaxed), d + v.drops.load(Ordering::Relaxed), if last != 0 { last } else { l })
    })
}

/// A spinlock with a level.
pub struct Mutex<T> {
    inner: spin::Mutex<T>,
    level: Level,
}

impl<T> Mutex<T> {
    pub const fn new(level: Level, v: T) -> Self {
        Mutex { inner: spin::Mutex::new(v), level }
    }

    #[inline(always)]
    pub fn lock(&self) -> Guard<'_, T> {
        acquire(self.level);
        Guard { g: self.inner.lock(), level: self.level }
    }

    /// The lock if it is free (the consistency check, which must not wait).
    pub fn try_lock(&self) -> Option<Guard<'_, T>> {
        let g = self.inner.try_lock()?;
        acquire(self.level);
        Some(Guard { g, level: self.level })
    }

    /// The lock if it is free, outside the level discipline: only for the consistency check,
    /// which runs with every other CPU stopped and holds many locks of one level at once.
    pub fn peek(&self) -> Option<spin::MutexGuard<'_, T>> {
        self.inner.try_lock()
    }
}

pub struct Guard<'a, T> {
    g: spin::MutexGuard<'a, T>,
    level: Level,
}

impl<T> Drop for Guard<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        release(self.level);
    }
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.g
    }
}

impl<T> DerefMut for Guard<'_, T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.g
    }
}
