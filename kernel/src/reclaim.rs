//! Objects are destroyed after the locks are released, never under them.
//!
//! The last reference to a kernel object can go away anywhere — a waiter's capability in
//! flight, a queue entry, a reply right. Its destructor may take locks, wake threads or wait
//! for a TLB shoot-down that only another CPU can answer; run under a spinlock, that can
//! deadlock against a CPU spinning on the same lock with interrupts off. So code that lets go
//! of a reference while it may hold locks hands it to [`later`] (or one of the typed helpers):
//! with no lock held it is dropped at once; otherwise it goes on this CPU's list, which
//! [`drain`] empties at the end of every kernel entry, with no lock held.
//!
//! Every kernel object's destructor calls [`dropping`], which counts a violation if this CPU
//! holds a lock; `KernelCheck` reports the count.
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use rl4_smp::MAX_CPUS;

use crate::lock::{self, Level, Mutex};
use crate::obj::{Cap, Thread, Wait};

/// Something to destroy later (held only to be dropped).
#[allow(dead_code)]
pub enum Garbage {
    Thread(Arc<Thread>),
    Cap(Cap),
    Wait(Wait),
    Ep(Arc<crate::ipc::Endpoint>),
    Ntf(Arc<crate::ipc::Notification>),
    /// A frame or thread whose last reference this CPU let go of (kept by value: its
    /// destructor has not run yet).
    FrameBody(crate::obj::Frame),
    ThreadBody(Thread),
}

struct Grave {
    list: Mutex<Vec<Garbage>, { Level::RECLAIM }>,
    full: AtomicBool,
}

static GRAVES: [crossbeam_utils::CachePadded<Grave>; MAX_CPUS] =
    [const { crossbeam_utils::CachePadded::new(Grave { list: Mutex::new(Vec::new()), full: AtomicBool::new(false) }) }; MAX_CPUS];

fn mine() -> &'static Grave {
    &GRAVES[rl4_arch::percpu::cpu_index() as usize % MAX_CPUS]
}

/// Drops `g` now if this CPU holds no lock, else after the locks are released.
pub fn later(g: Garbage) {
    if lock::held() == 0 {
        drop(g);
        return;
    }
    let grave = mine();
    grave.list.lock().push(g);
    grave.full.store(true, Ordering::Relaxed);
}

/// Lets go of a thread reference. Under a lock only the last reference needs putting aside
/// (`Arc::into_inner` tells, atomically): the common case allocates nothing.
pub fn later_thread(t: Arc<Thread>) {
    if lock::held() == 0 {
        drop(t);
    } else if let Some(body) = Arc::into_inner(t) {
        later(Garbage::ThreadBody(body));
    }
}

/// Lets go of a frame reference (as [`later_thread`]).
pub fn later_frame(f: Option<Arc<crate::obj::Frame>>) {
    let Some(f) = f else { return };
    if lock::held() == 0 {
        drop(f);
    } else if let Some(body) = Arc::into_inner(f) {
        later(Garbage::FrameBody(body));
    }
}

pub fn later_cap(c: Option<Cap>) {
    if let Some(c) = c {
        later(Garbage::Cap(c));
    }
}

pub fn later_wait(w: Option<Wait>) {
    if let Some(w) = w {
        later(Garbage::Wait(w));
    }
}

pub(crate) fn later_queue(q: Option<crate::thread::QueueRef>) {
    match q {
        Some(crate::thread::QueueRef::Ep(e)) => later(Garbage::Ep(e)),
        Some(crate::thread::QueueRef::Ntf(n)) => later(Garbage::Ntf(n)),
        None => {}
    }
}

/// Destroys what this CPU put aside. Called with no lock held at the end of kernel entries.
#[inline(always)]
pub fn drain() {
    let grave = mine();
    if grave.full.load(Ordering::Relaxed) {
        drain_slow(grave);
    }
}

#[cold]
fn drain_slow(grave: &Grave) {
    // One at a time: a destructor may put more on the list.
    loop {
        let g = {
            let mut l = grave.list.lock();
            match l.pop() {
                Some(g) => g,
                None => {
                    grave.full.store(false, Ordering::Relaxed);
                    *l = Vec::new();
                    return;
                }
            }
        };
        drop(g);
    }
}

/// Called by every kernel object's destructor: counts a destructor run under a lock.
#[inline(always)]
pub fn dropping(what: &'static str) {
    if lock::held() != 0 {
        lock::drop_violation(what);
    }
}

/// Objects waiting on any CPU's list (for the consistency check, with the CPUs stopped).
pub fn pending() -> usize {
    GRAVES.iter().map(|g| g.list.try_lock().map_or(0, |l| l.len())).sum()
}
