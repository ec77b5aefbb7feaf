//! Values guarded by the lock of their *home* CPU rather than by a lock of their own.
//!
//! A thread's `Life` is changed by the CPU that runs it and, now and then, by another CPU (a
//! wake-up from there, a kill, a suspension). With a lock per thread, handing the CPU from one
//! thread to another of the same CPU (an IPC call or reply) takes two locks: the sender's to
//! block it, the partner's to wake it. With one lock per CPU guarding the `Life` of every
//! thread that CPU is home to, the same hand-over takes that lock once ([`HomeGuard::other`]),
//! and every other user takes one lock as before — the lock of the CPU the value names as its
//! home ([`Homed::lock`]): it reads the home, locks that CPU's lock and reads the home again;
//! the home only changes with both CPUs' locks held ([`Homed::rehome`]), so a home read under
//! its lock stays true until that lock is released. This is the discipline of Linux's
//! `task_rq_lock`, without the run queue.
//!
//! Two values of one home are never held apart: a CPU holding one home's lock may reach another
//! value of that home through the guard it already has, never by locking again (a spinlock
//! taken twice by one CPU never comes free). The models in `tests/homelock_loom.rs` check the
//! protocol under `loom` (`RUSTFLAGS="--cfg loom"`, which makes this module use loom's atomics
//! and cells): concurrent `lock`, `other` and `rehome` never give two CPUs the same value.
#![allow(unexpected_cfgs)] // `cfg(loom)`: set by RUSTFLAGS for the loom models only.

use core::marker::PhantomData;

use sync::Ordering::{Acquire, Relaxed, Release};
use sync::{AtomicBool, AtomicPtr, UnsafeCell};

/// The atomics and cells of the target, or loom's for the models.
mod sync {
    #[cfg(not(loom))]
    pub use core::cell::UnsafeCell;
    #[cfg(not(loom))]
    pub use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
    #[cfg(loom)]
    pub use loom::cell::UnsafeCell;
    #[cfg(loom)]
    pub use loom::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
}

/// One CPU's lock, alone on its cache line (other CPUs take it only to reach a value of this
/// home).
#[repr(align(64))]
pub struct HomeLock {
    held: AtomicBool,
}

impl HomeLock {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        HomeLock { held: AtomicBool::new(false) }
    }

    #[cfg(loom)]
    pub fn new() -> Self {
        HomeLock { held: AtomicBool::new(false) }
    }

    /// Takes the lock, spinning (one locked compare-and-swap when it is free), calling `wait`
    /// at every turn of the spin.
    #[inline(always)]
    fn acquire(&self, wait: &mut impl FnMut()) {
        if self.held.compare_exchange(false, true, Acquire, Relaxed).is_err() {
            self.acquire_contended(wait);
        }
    }

    #[cold]
    #[inline(never)]
    fn acquire_contended(&self, wait: &mut impl FnMut()) {
        loop {
            while self.held.load(Relaxed) {
                wait();
                spin();
            }
            if self.held.compare_exchange(false, true, Acquire, Relaxed).is_ok() {
                return;
            }
        }
    }

    #[inline(always)]
    fn try_acquire(&self) -> bool {
        self.held.compare_exchange(false, true, Acquire, Relaxed).is_ok()
    }

    #[inline(always)]
    fn release(&self) {
        self.held.store(false, Release);
    }
}

#[cfg(not(loom))]
impl Default for HomeLock {
    fn default() -> Self {
        Self::new()
    }
}

#[inline(always)]
fn spin() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// Every home's lock, held at once (by a check that runs while every other CPU is stopped):
/// the values whose home is one of them are reached through it ([`Homed::get`]).
pub struct AllHeld<const N: usize> {
    homes: &'static [HomeLock; N],
}

impl<const N: usize> AllHeld<N> {
    /// Takes every lock of `homes` if all are free; otherwise the index of one that is not.
    pub fn try_lock(homes: &'static [HomeLock; N]) -> Result<Self, usize> {
        for (i, l) in homes.iter().enumerate() {
            if !l.try_acquire() {
                for held in &homes[..i] {
                    held.release();
                }
                return Err(i);
            }
        }
        Ok(AllHeld { homes })
    }
}

impl<const N: usize> Drop for AllHeld<N> {
    fn drop(&mut self) {
        for l in self.homes {
            l.release();
        }
    }
}

/// A value guarded by its home CPU's lock.
pub struct Homed<T> {
    /// Its home's lock (a `&'static HomeLock`), written only with both the old and the new
    /// home's locks held. The lock rather than an index: taking it is a load and a
    /// compare-and-swap, and two values share a home when they hold the same pointer.
    home: AtomicPtr<HomeLock>,
    v: UnsafeCell<T>,
}

// SAFETY: the value is reached only through a guard of its home's lock (or `&mut self`), which
// one CPU holds at a time; it moves between CPUs with it, so it must be `Send`.
#[allow(unsafe_code)]
unsafe impl<T: Send> Sync for Homed<T> {}
// SAFETY: as above (the value itself is sent along).
#[allow(unsafe_code)]
unsafe impl<T: Send> Send for Homed<T> {}

/// The lock a home pointer stands for.
#[inline(always)]
fn lock_at(p: *mut HomeLock) -> &'static HomeLock {
    // SAFETY: every pointer a `Homed` holds was made from a `&'static HomeLock` (`new`,
    // `rehome`).
    #[allow(unsafe_code)]
    unsafe {
        &*p
    }
}

#[inline(always)]
fn ptr_of(l: &'static HomeLock) -> *mut HomeLock {
    l as *const HomeLock as *mut HomeLock
}

impl<T> Homed<T> {
    pub fn new(home: &'static HomeLock, v: T) -> Self {
        Homed { home: AtomicPtr::new(ptr_of(home)), v: UnsafeCell::new(v) }
    }

    /// Whether its home is `l`: a hint (the home may change as soon as it is read) unless the
    /// caller holds `l`.
    #[inline(always)]
    pub fn is_home(&self, l: &'static HomeLock) -> bool {
        core::ptr::eq(self.home.load(Relaxed), l)
    }

    /// The lock of its home, as an address (for a diagnostic: it may change as soon as it is
    /// read unless the caller holds that lock).
    #[inline(always)]
    pub fn home_addr(&self) -> usize {
        self.home.load(Relaxed) as usize
    }

    /// The value, through exclusive access (no guard can exist).
    #[cfg(not(loom))]
    pub fn get_mut(&mut self) -> &mut T {
        self.v.get_mut()
    }

    /// Locks its home's lock: reads the home, takes that lock and reads the home again (it
    /// changes only under that lock, so the second read is the truth while the lock is held).
    #[inline(always)]
    pub fn lock(&self) -> HomeGuard<'_, T> {
        self.lock_waiting(|| {})
    }

    /// [`lock`](Homed::lock), calling `wait` while another CPU holds the lock (the kernel
    /// answers TLB shoot-downs there: the holder may itself wait long, and a CPU that spins
    /// with interrupts off must not keep every shoot-down waiting meanwhile).
    #[inline(always)]
    pub fn lock_waiting(&self, mut wait: impl FnMut()) -> HomeGuard<'_, T> {
        let home = self.home.load(Relaxed);
        let lock = lock_at(home);
        lock.acquire(&mut wait);
        if self.home.load(Relaxed) != home {
            return self.lock_moved(lock, &mut wait);
        }
        HomeGuard { held: HomeHeld { lock }, v: self, _excl: PhantomData }
    }

    /// [`lock`](Homed::lock) found that the value moved to another home before its lock (the
    /// one given, held) was taken: that lock is released and the new home's taken.
    #[cold]
    #[inline(never)]
    fn lock_moved(&self, held: &'static HomeLock, wait: &mut impl FnMut()) -> HomeGuard<'_, T> {
        held.release();
        loop {
            let home = self.home.load(Relaxed);
            let lock = lock_at(home);
            lock.acquire(wait);
            if self.home.load(Relaxed) == home {
                return HomeGuard { held: HomeHeld { lock }, v: self, _excl: PhantomData };
            }
            lock.release();
        }
    }

    /// Moves it to the home of lock `to` and calls `f` on it, with both homes' locks held
    /// (taken in the order of their addresses, so that two moves in opposite directions cannot
    /// wait for each other).
    pub fn rehome<R>(&self, to: &'static HomeLock, f: impl FnOnce(&mut T) -> R) -> R {
        match self.rehome_when(to, || {}, |v| Ok::<R, core::convert::Infallible>(f(v))) {
            Ok(r) => r,
        }
    }

    /// [`rehome`](Homed::rehome) if `f`, called with both homes' locks held before the home
    /// changes, agrees (`Ok`); on `Err` the value stays where it was (what `f` did to it stays
    /// too: it must change nothing before it refuses). `wait` runs while another CPU holds a
    /// lock it needs (as [`lock_waiting`](Homed::lock_waiting)).
    pub fn rehome_when<R, E>(&self, to: &'static HomeLock, mut wait: impl FnMut(), f: impl FnOnce(&mut T) -> Result<R, E>) -> Result<R, E> {
        loop {
            let from = self.home.load(Relaxed);
            let (a, b) = if (from as usize) <= (ptr_of(to) as usize) { (lock_at(from), to) } else { (to, lock_at(from)) };
            let same = core::ptr::eq(a, b);
            a.acquire(&mut wait);
            if !same {
                b.acquire(&mut wait);
            }
            let moved = self.home.load(Relaxed) != from;
            if !moved {
                // Both locks held: nobody else reaches the value, whatever its home says, until
                // they are released, so the home may change after `f` as well as before.
                let r = self.with_locked(f);
                if r.is_ok() {
                    self.home.store(ptr_of(to), Relaxed);
                }
                if !same {
                    b.release();
                }
                a.release();
                return r;
            }
            if !same {
                b.release();
            }
            a.release();
        }
    }

    /// The value while every home's lock is held by `all` (`None` if its home is not one of
    /// `all`'s locks).
    #[cfg(not(loom))]
    pub fn get<'a, const N: usize>(&'a self, all: &'a AllHeld<N>) -> Option<&'a T>
    where
        T: Sync,
    {
        let p = self.home.load(Relaxed) as usize;
        let range = all.homes.as_ptr_range();
        if p < range.start as usize || p >= range.end as usize {
            return None;
        }
        // SAFETY: `all` holds the lock of the value's home for as long as the reference
        // lives: nobody else can reach the value or move it.
        #[allow(unsafe_code)]
        Some(unsafe { &*self.v.get() })
    }

    /// Runs `f` on the value; the caller holds its home's lock.
    #[inline(always)]
    fn with_locked<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        #[cfg(not(loom))]
        {
            // SAFETY: the caller holds the lock of the value's home, which nobody else can
            // hold, and the home cannot change under it: no other reference to the value
            // exists while `f` runs.
            #[allow(unsafe_code)]
            f(unsafe { &mut *self.v.get() })
        }
        #[cfg(loom)]
        {
            // SAFETY: as above; loom checks it.
            #[allow(unsafe_code)]
            self.v.with_mut(|p| f(unsafe { &mut *p }))
        }
    }
}

/// A held home lock, reaching one value of that home (and others of it through [`other`]).
///
/// [`other`]: HomeGuard::other
pub struct HomeGuard<'v, T> {
    held: HomeHeld,
    v: &'v Homed<T>,
    /// It hands out `&mut T`: as `Sync` as a `&mut T` (a shared guard must not hand two CPUs
    /// a `&T` of a `T` that is not `Sync`).
    _excl: PhantomData<&'v mut T>,
}

impl<'v, T> HomeGuard<'v, T> {
    /// `o`'s value if `o` has this home (it cannot move away while the lock is held); `None`
    /// otherwise (lock it after this guard is dropped). Borrows this guard: the two values are
    /// never reached at once.
    #[inline(always)]
    pub fn other<'b>(&'b mut self, o: &'b Homed<T>) -> Option<HomeGuardRef<'b, T>> {
        self.held.other(o)
    }

    /// Keeps the lock but lets go of the value (and of the borrow it came through).
    #[inline(always)]
    pub fn into_held(self) -> HomeHeld {
        self.held
    }

    /// Runs `f` on the value (under loom, where the value is reached through closures only).
    #[inline(always)]
    pub fn with<R>(&mut self, f: impl FnOnce(&mut T) -> R) -> R {
        self.v.with_locked(f)
    }
}

/// A held home lock without a value ([`HomeGuard::into_held`]): it reaches the values of its
/// home through [`other`](HomeHeld::other), and releases the lock when dropped.
pub struct HomeHeld {
    lock: &'static HomeLock,
}

impl HomeHeld {
    /// `o`'s value if `o` has this home; `None` otherwise (see [`HomeGuard::other`]).
    #[inline(always)]
    pub fn other<'b, T>(&'b mut self, o: &'b Homed<T>) -> Option<HomeGuardRef<'b, T>> {
        o.is_home(self.lock).then_some(HomeGuardRef { v: o, _excl: PhantomData })
    }
}

impl Drop for HomeHeld {
    #[inline(always)]
    fn drop(&mut self) {
        self.lock.release();
    }
}

/// Another value of a held home's lock ([`HomeGuard::other`]).
pub struct HomeGuardRef<'b, T> {
    v: &'b Homed<T>,
    _excl: PhantomData<&'b mut T>,
}

impl<T> HomeGuardRef<'_, T> {
    /// Runs `f` on the value (under loom, where the value is reached through closures only).
    #[inline(always)]
    pub fn with<R>(&mut self, f: impl FnOnce(&mut T) -> R) -> R {
        self.v.with_locked(f)
    }
}

#[cfg(not(loom))]
mod deref {
    use super::{HomeGuard, HomeGuardRef};

    use core::ops::{Deref, DerefMut};

    impl<T> Deref for HomeGuard<'_, T> {
        type Target = T;
        #[inline(always)]
        fn deref(&self) -> &T {
            // SAFETY: the guard holds the lock of the value's home (see `Homed::with_locked`);
            // the reference lives no longer than the guard's borrow.
            #[allow(unsafe_code)]
            unsafe {
                &*self.v.v.get()
            }
        }
    }

    impl<T> DerefMut for HomeGuard<'_, T> {
        #[inline(always)]
        fn deref_mut(&mut self) -> &mut T {
            // SAFETY: as in `deref`, and the guard is borrowed mutably for as long.
            #[allow(unsafe_code)]
            unsafe {
                &mut *self.v.v.get()
            }
        }
    }

    impl<T> Deref for HomeGuardRef<'_, T> {
        type Target = T;
        #[inline(always)]
        fn deref(&self) -> &T {
            // SAFETY: made by `HomeHeld::other` from a held lock of this value's home, which it
            // borrows mutably for as long as it lives.
            #[allow(unsafe_code)]
            unsafe {
                &*self.v.v.get()
            }
        }
    }

    impl<T> DerefMut for HomeGuardRef<'_, T> {
        #[inline(always)]
        fn deref_mut(&mut self) -> &mut T {
            // SAFETY: as in `deref`.
            #[allow(unsafe_code)]
            unsafe {
                &mut *self.v.v.get()
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

    /// A CPU waiting for a home lock another holds runs `wait` meanwhile (the kernel answers
    /// TLB shoot-downs there), and none when the lock is free.
    #[test]
    fn a_waiter_runs_wait_while_the_lock_is_held() {
        static HOME: HomeLock = HomeLock::new();
        static V: std::sync::OnceLock<Homed<u64>> = std::sync::OnceLock::new();
        let v = V.get_or_init(|| Homed::new(&HOME, 0));
        let mut free = 0;
        drop(v.lock_waiting(|| free += 1));
        assert_eq!(free, 0);
        let held = v.lock();
        static WAITS: AtomicU64 = AtomicU64::new(0);
        static GOT: AtomicBool = AtomicBool::new(false);
        let t = std::thread::spawn(move || {
            let mut g = v.lock_waiting(|| {
                WAITS.fetch_add(1, SeqCst);
            });
            g.with(|x| *x += 1);
            GOT.store(true, SeqCst);
        });
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while WAITS.load(SeqCst) < 100 && std::time::Instant::now() < end {
            std::thread::yield_now();
        }
        assert!(WAITS.load(SeqCst) >= 100, "the waiter ran `wait` {} times in 10 s", WAITS.load(SeqCst));
        assert!(!GOT.load(SeqCst));
        drop(held);
        t.join().unwrap();
        assert!(GOT.load(SeqCst));
        assert_eq!(*v.lock(), 1);
    }
}
