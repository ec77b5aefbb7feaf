//! Objects are destroyed after the locks are released, never under them, and one at a time
//! from a work list, never by recursion through destructors.
//!
//! The last reference to a kernel object can go away anywhere — a waiter's capability in
//! flight, a queue entry, a reply right. Its destructor may take locks, wake threads or wait
//! for a TLB shoot-down that only another CPU can answer; run under a spinlock, that can
//! deadlock against a CPU spinning on the same lock with interrupts off. So code that lets go
//! of a reference while it may hold locks hands it to [`later`] (or one of the typed helpers):
//! with no lock held it is dropped at once; otherwise it goes on this CPU's list, which
//! [`drain`] empties at the end of every kernel entry, with no lock held.
//!
//! **Iterative teardown.** What an object refers to can be the last reference to another
//! object, and so on without bound: a task's capability table holding the only capability to
//! the next task, a thread holding the only reference to the next through its reply right (an
//! endpoint whose dying woke a sender whose capability in flight was the last reference to the
//! next endpoint, until the thirty-fourth session: a capability in flight holds a weak
//! reference now, `obj::InFlight`). Dropped inline, such a chain recurses once per link
//! and a few thousand links overflow the 64 KiB kernel stack (issue 17). So the destructors
//! of the objects that hold references to other objects — a task's capability table, a
//! thread's state (its wait, with a capability in flight, its reply right), an endpoint's or notification's
//! waiters and their waits — hand those references to [`later`] instead of dropping them,
//! and [`later`] never drops anything inside another destruction: the first call on a CPU
//! with no lock held becomes the *destruction loop* (`busy`), which drops its object and
//! then takes the list's entries one at a time until it is empty; every [`later`] made while
//! it runs (by the destructors it calls) only appends to the list. The stack depth of any
//! deletion is that of one destructor, whatever the shape of the object graph; the list
//! holds the frontier of what is still to destroy (one entry per task table or wait, never
//! one per capability).
//!
//! Every kernel object's destructor calls [`dropping`], which counts a violation if this CPU
//! holds a lock; `KernelCheck` reports the count.
use rl4_core::paged::PagedVec;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, Ordering};
use rl4_smp::MAX_CPUS;

use crate::lock::{self, Level, Mutex};
use crate::obj::{Cap, KObj, Life, Thread, Wait};

/// Something to destroy later (held only to be dropped).
#[allow(dead_code)]
pub enum Garbage {
    Thread(Arc<Thread>),
    Cap(Cap),
    /// A capability in flight that arrived after its object was gone (`obj::InFlight::arrive`).
    InFlight(crate::obj::InFlight),
    Wait(Wait),
    Ep(Arc<crate::ipc::Endpoint>),
    Ntf(Arc<crate::ipc::Notification>),
    /// A thread whose last reference this CPU let go of (kept by value: its destructor has not
    /// run yet).
    ThreadBody(Thread),
    /// The capability table of a task that is being destroyed.
    Table(rl4_core::captable::CapTable<KObj>),
    /// The state of a thread that is being destroyed (a wait it still had, a reply right).
    Life(Life),
    /// A port object a capability to which left a slot while a task had a range open through
    /// it: each such task looks at its table when this goes (`device::PortsLeft`).
    PortsLeft(crate::device::PortsLeft),
    /// An address space and a port object let go of by each other's destructors (a space's
    /// destructor leaves its port objects' lists, a port object's closes its ranges in every
    /// space): either reference may be the last, and the two must not destroy each other by
    /// recursion.
    Space(Arc<crate::obj::Space>),
    IoPort(Arc<crate::device::IoPortObj>),
    /// A task's reference to the task that made it (`Task::parent`): a chain of parents is let
    /// go of one at a time, never by recursion.
    Task(Arc<crate::obj::Task>),
    /// A task whose last reference this CPU let go of under a lock ([`later_task`]).
    TaskBody(crate::obj::Task),
}

struct Grave {
    /// In page-sized pieces: a teardown's frontier has no constant bound, and growing the list
    /// never needs more than one frame (never contiguous frames, which a task can fragment away).
    list: Mutex<PagedVec<Garbage>, { Level::RECLAIM }>,
    full: AtomicBool,
    /// This CPU runs the destruction loop ([`destroy`]): every [`later`] only appends.
    busy: AtomicBool,
}

static GRAVES: [crossbeam_utils::CachePadded<Grave>; MAX_CPUS] =
    [const { crossbeam_utils::CachePadded::new(Grave { list: Mutex::new(PagedVec::new()), full: AtomicBool::new(false), busy: AtomicBool::new(false) }) }; MAX_CPUS];

fn mine() -> &'static Grave {
    &GRAVES[rl4_arch::percpu::cpu_index() as usize % MAX_CPUS]
}

/// Destroys `g` now if this CPU holds no lock and runs no destruction (then what its
/// destructor hands back is destroyed too, before this returns); else puts it on this CPU's
/// list, which the running destruction loop or the next [`drain`] empties.
pub fn later(g: Garbage) {
    let grave = mine();
    if lock::held() == 0 && !grave.busy.load(Ordering::Relaxed) {
        destroy(grave, Some(g));
        return;
    }
    // Not fallible (docs/memory.md): a destruction cannot be refused. Should not even one frame
    // be had, the object is kept for ever (leaked) rather than destroyed under a lock or the
    // kernel stopped.
    if let Err(g) = crate::mem::must_not_fail(|| grave.list.lock().try_push(g)) {
        keep_for_ever(g);
    }
    grave.full.store(true, Ordering::Relaxed);
}

#[cold]
fn keep_for_ever(g: Garbage) {
    rl4_arch::println!("reclaim: no memory for the destruction list: an object is kept for ever");
    core::mem::forget(g);
}

// A piece of the list holds at least one entry within a page.
const _: () = assert!(core::mem::size_of::<Garbage>() <= 3840);

/// Runs `f` with this CPU's destructions put off: what becomes garbage meanwhile (in an
/// interrupt `f` lets in, a halt's) goes on the list, for the next [`drain`], even with no lock
/// counted held — for a system call that halts holding a lock the count does not see
/// (`measure::ipi_floor`'s).
pub fn deferred<R>(f: impl FnOnce() -> R) -> R {
    let grave = mine();
    let was = grave.busy.swap(true, Ordering::Relaxed);
    let r = f();
    grave.busy.store(was, Ordering::Relaxed);
    r
}

/// Whether this CPU's destructions are put off now ([`deferred`], or the destruction loop
/// running further down its stack): a reference that may be the last must then go through
/// [`later`], not be dropped.
pub fn put_off() -> bool {
    mine().busy.load(Ordering::Relaxed)
}

/// Lets go of a thread reference. Only the last reference needs more (`Arc::into_inner` tells,
/// atomically, at the cost of a plain drop): the thread is destroyed by the destruction loop,
/// never inline, even with no lock held — its destructor fails the caller whose reply right it
/// held, whose last reference that may be, and so on along a chain of calls (a review found the
/// recursion: suspended threads holding each other's reply rights, then deleted).
pub fn later_thread(t: Arc<Thread>) {
    if let Some(body) = Arc::into_inner(t) {
        later(Garbage::ThreadBody(body));
    }
}

/// Lets go of a task reference (as [`later_thread`]: only the last one is put aside).
pub fn later_task(t: Arc<crate::obj::Task>) {
    if let Some(body) = Arc::into_inner(t) {
        later(Garbage::TaskBody(body));
    }
}

/// [`later_thread`] for a reference that may be absent.
pub fn later_thread_opt(t: Option<Arc<Thread>>) {
    if let Some(t) = t {
        later_thread(t);
    }
}

pub fn later_cap(c: Option<Cap>) {
    if let Some(c) = c {
        later(Garbage::Cap(c));
    }
}

pub fn later_in_flight(c: Option<crate::obj::InFlight>) {
    if let Some(c) = c {
        later(Garbage::InFlight(c));
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

/// Makes this CPU's next [`drain`] look at its limbo too (`qsbr.rs`: one flag for both).
pub fn wake_drain() {
    mine().full.store(true, Ordering::Relaxed);
}

#[cold]
fn drain_slow(grave: &Grave) {
    // Destructions put off ([`deferred`], or the destruction loop running further down this
    // CPU's stack): nothing is destroyed, the endpoints whose grace period ended included —
    // the flag stays set for the drain after (before the thirty-eighth session the limbo was
    // polled here all the same, and an interrupt in `Measure(IPI_FLOOR)`'s halt could run
    // endpoint destructors inside that call: a review).
    if grave.busy.load(Ordering::Relaxed) {
        return;
    }
    destroy(grave, None);
    // Endpoints waiting for a grace period keep the flag set until they are gone.
    if crate::qsbr::pending_here() {
        crate::qsbr::poll();
        if crate::qsbr::pending_here() {
            grave.full.store(true, Ordering::Relaxed);
        }
    }
}

/// The destruction loop: drops `first`, then the list's entries one at a time (each
/// destructor may append more) until it is empty. Nothing else is destroyed on this CPU
/// meanwhile: [`later`] only appends while `busy` is set. Interrupts are off in the kernel,
/// so nothing else runs on this CPU between the flag's load and store.
#[inline(never)]
fn destroy(grave: &Grave, first: Option<Garbage>) {
    grave.busy.store(true, Ordering::Relaxed);
    drop(first);
    loop {
        let g = {
            let mut l = grave.list.lock();
            match l.pop() {
                Some(g) => g,
                None => {
                    grave.full.store(crate::qsbr::pending_here(), Ordering::Relaxed);
                    *l = PagedVec::new();
                    drop(l);
                    grave.busy.store(false, Ordering::Relaxed);
                    return;
                }
            }
        };
        drop(g);
        // A long teardown answers other CPUs' TLB shoot-downs between objects (no lock is
        // held here), so that they wait for one destructor at most.
        crate::tlb::service_tlb_here();
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
