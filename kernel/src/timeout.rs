//! Wait deadlines: each CPU keeps the (TSC deadline, thread) of the waits its threads started,
//! earliest first (`rl4_core::deadlines`, a binary heap); its timer tick ends the waits whose
//! deadline passed (`thread::expire`, a transition that is refused if the wait already ended
//! some other way). A tick with nothing due looks at one entry, however many threads wait
//! (and at up to [`SWEEP_STEP`] more while it sweeps for a dead thread's entries).
//!
//! Entries are not removed when a wait ends early (the thread that ends it may run on another
//! CPU, and no IPC path takes a lock of the waiter's CPU for that): such an entry goes when its
//! deadline comes, or when the heap is pruned of dead threads and threads no longer waiting with
//! that deadline — when it has doubled since the last prune (so prunes cost O(1) per entry
//! added). A prune looks at every entry (at most about twice the waits since the last one, and
//! the live ones), taking each thread's lock in turn with interrupts off. An entry keeps its
//! thread's record allocated, so the entries of a thread that died go sooner: its destruction
//! moves the epoch of each CPU its waits used (`thread_gone`), and each tick of such a CPU
//! sweeps [`SWEEP_STEP`] entries until it has looked at all (`Deadlines::sweep`: one load per
//! entry, the thread's reference count; no lock) — a thread's death costs a CPU a few loads per
//! tick, however many live waits it holds. (Before the twenty-fourth session every CPU pruned
//! every second regardless, and until the twenty-fifth a CPU pruned within a second of a death
//! there: a task could have a CPU walk all its live waits, each thread's lock taken, once a
//! second; reviews found both.) The heap is in
//! page-sized pieces (`rl4_core::paged`: a burst of thousands of waits needs no contiguous
//! frames), room for an entry is made before the wait begins ([`reserve`]), and the timer's pass
//! allocates nothing: it takes due entries out one at a time (the lock is not held while their
//! waits end; TLB shoot-downs are answered between them, and between a prune's entries); a
//! sweep step runs under the heap's lock (32 loads at most; what it takes out is dropped after
//! the lock), and a prune or a shrink takes the heap out whole and runs with no lock held (a
//! prune takes each thread's own lock one at a time), frees what it took out, and puts the heap
//! back (`stat::DEADLINES_HELD` counts a heap that is out: `Deadlines::take_out`).
//! Nothing is added meanwhile: only this CPU uses its heap, from its timer interrupt and from
//! its threads' system calls, which run with interrupts off.
use alloc::sync::{Arc, Weak};
use rl4_arch::cpu;
use rl4_core::deadlines::Deadlines;

use crate::obj::Thread;
use crate::sched;

/// A CPU's deadlines: (TSC deadline, the thread that waits).
pub type List = Deadlines<Weak<Thread>>;

/// Registers the deadline of a wait the running thread `t` just started (none for `u64::MAX`);
/// [`reserve`] made its room before the wait began.
pub fn add(deadline: u64, t: &Arc<Thread>) {
    if deadline == u64::MAX {
        return;
    }
    if sched::this_cpu().timeouts.lock().try_push(deadline, Arc::downgrade(t)).is_err() {
        lost(t);
        return;
    }
    // This CPU's heap may now keep the thread's record: its destruction must reach this CPU's
    // sweep (a load when the bit is set already, as after the first of its waits here).
    let me = rl4_arch::percpu::cpu_index() as usize % rl4_smp::MAX_CPUS;
    let (w, bit) = (&t.deadline_cpus[me / 64], 1u64 << (me % 64));
    if w.load(core::sync::atomic::Ordering::Relaxed) & bit == 0 {
        w.fetch_or(bit, core::sync::atomic::Ordering::Relaxed);
    }
}

#[cold]
fn lost(t: &Thread) {
    rl4_arch::println!("timeout: no room for thread {}'s deadline (reserved before its wait: a kernel bug)", t.id);
}

/// Makes room in this CPU's heap for one more deadline (none needed for `u64::MAX`), so that
/// [`add`] after the wait began cannot fail: `OutOfMemory` if the kernel has no memory for it.
/// Called holding no queue's lock.
pub fn reserve(deadline: u64) -> Result<(), rl4_abi::Error> {
    if deadline == u64::MAX {
        return Ok(());
    }
    sched::this_cpu().timeouts.lock().try_reserve_one().map_err(|_| rl4_abi::Error::OutOfMemory)
}

/// The deadlines every CPU holds now (`stat::DEADLINES_HELD`; takes each CPU's lock in turn),
/// those of a heap out for a prune included (`Deadlines::held`).
pub fn held() -> u64 {
    (0..rl4_smp::MAX_CPUS).filter_map(sched::get).map(|cs| cs.timeouts.lock().held() as u64).sum()
}

/// Entries a tick's sweep looks at (see the module's comment): a heap of N entries is swept in
/// N / 32 ticks, a third of a second per thousand entries at 100 Hz.
pub const SWEEP_STEP: usize = 32;

/// Per CPU, the threads destroyed so far that had left entries in its heap (the epoch of its
/// sweeps): a thread's death makes only the CPUs its waits used sweep.
static THREADS_GONE: [crossbeam_utils::CachePadded<core::sync::atomic::AtomicU64>; rl4_smp::MAX_CPUS] =
    [const { crossbeam_utils::CachePadded::new(core::sync::atomic::AtomicU64::new(0)) }; rl4_smp::MAX_CPUS];

/// Thread `t` is being destroyed: the deadline entries it may have left keep its record
/// allocated until each CPU they are on lets them go, by its sweep (the epoch moved here) or by
/// a prune, whichever comes first.
pub fn thread_gone(t: &Thread) {
    for (k, w) in t.deadline_cpus.iter().enumerate() {
        let mut bits = w.load(core::sync::atomic::Ordering::Relaxed);
        while bits != 0 {
            let cpu = k * 64 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            // Release, with the load's Acquire (`epoch`): a sweep that reads the new epoch sees
            // the reference count that reached zero before it.
            THREADS_GONE[cpu].fetch_add(1, core::sync::atomic::Ordering::Release);
        }
    }
}

/// This CPU's epoch.
fn epoch() -> u64 {
    THREADS_GONE[rl4_arch::percpu::cpu_index() as usize % rl4_smp::MAX_CPUS].load(core::sync::atomic::Ordering::Acquire)
}

/// Ends the waits of this CPU whose deadline has passed; prunes the heap when it has doubled
/// since the last prune, or takes a step of the sweep of dead threads' entries, and frees the
/// leaves a burst of ended waits left. Allocates nothing; holds no lock while it ends waits or
/// drops entries.
pub fn expire_due(cs: sched::Here) {
    let now = cpu::rdtsc();
    loop {
        // (A dead thread's entry is told apart for a sweep under way: `Deadlines::pop_due_with`.)
        let due = cs.timeouts.lock().pop_due_with(now, |(_, w)| w.strong_count() == 0);
        let Some((_, w)) = due else { break };
        cs.bump(sched::Count::DeadlinesVisited);
        if let Some(t) = w.upgrade() {
            crate::thread::expire(&t, now);
            // Possibly the last reference (its capability deleted meanwhile): destroyed through
            // the destruction loop (iteratively, not by recursion), here in the timer's pass.
            crate::reclaim::later_thread(t);
        }
        // A task decides how many waits end in one tick (as many threads as its budget pays
        // for, each with the same deadline): a CPU doing a shoot-down meanwhile must not wait
        // for all of them (a review of the sixteenth session found it waiting for the whole
        // burst). A plain load when no request waits. (Port-close questions too.)
        crate::tlb::serve_others(cs);
    }
    let gone = epoch();
    let mut l: List = {
        let mut g = cs.timeouts.lock();
        // A step of the sweep runs in place, under the lock (a `Stat` of the deadlines held
        // from another CPU then never finds the heap out, as it would at every tick of a sweep:
        // a test read 0 and took the dead threads' entries for gone): 32 loads of a reference
        // count at most, and the entries it takes out are dropped after the lock (one may be a
        // thread record's last reference).
        // (Made only for a step: not at every tick.)
        let mut swept: Option<[Option<Weak<Thread>>; SWEEP_STEP]> = None;
        if !g.wants_prune() && g.wants_sweep(gone) {
            let swept = swept.insert([const { None }; SWEEP_STEP]);
            let mut k = 0;
            // A thread that died holds no strong reference, so its count is zero for good.
            let seen = g.sweep(gone, SWEEP_STEP, |(_, w)| w.strong_count() == 0, |(_, w)| {
                swept[k] = Some(w);
                k += 1;
            });
            cs.add_count(sched::Count::DeadlinesVisited, seen as u64);
        }
        if !g.wants_prune() && !g.wants_shrink() {
            drop(g);
            drop(swept);
            return;
        }
        // A prune or a shrink runs with the heap out (each thread's lock taken, or pieces freed).
        let l = g.take_out();
        drop(g);
        drop(swept);
        l
    };
    if l.wants_prune() {
        // An entry is kept if its thread still waits with that deadline — once: a thread that
        // blocks again and again with one absolute deadline (a task can compute it from the
        // TSC it reads) left an entry per wait, all kept, kernel heap no budget pays for (a
        // review finding). Each CPU's prune writes its own `now` (two CPUs' prunes of one
        // thread, or a race on the stamp, at worst let a duplicate survive one prune; any entry
        // kept ends the wait, as `Life::expire` compares the deadline, not the entry).
        let seen = l.prune(gone, |(d, w)| {
            // Shoot-downs are answered between entries, as in the expiry above.
            crate::tlb::serve_others(cs);
            w.upgrade().is_some_and(|t| {
                let waits = t.life.lock().deadline() == Some(*d);
                let first = t.pruned_at.load(core::sync::atomic::Ordering::Relaxed) != now;
                if waits && first {
                    t.pruned_at.store(now, core::sync::atomic::Ordering::Relaxed);
                }
                // (As in the expiry above: a last reference goes to the destruction loop.)
                crate::reclaim::later_thread(t);
                waits && first
            })
        });
        cs.add_count(sched::Count::DeadlinesVisited, seen as u64);
    } else {
        l.shrink();
    }
    let mut g = cs.timeouts.lock();
    core::mem::swap(&mut *g, &mut l);
    // `l` is what was added meanwhile: nothing (see the module's comment); were it otherwise,
    // its entries go back too, into room the heap's last piece may have (what finds none is
    // dropped after the lock).
    let mut lost = None;
    while let Some((d, w)) = l.pop_due(u64::MAX) {
        if let Err(w) = g.try_push(d, w) {
            lost = Some(w);
            break;
        }
    }
    drop(g);
    if lost.is_some() {
        rl4_arch::println!("timeout: deadlines added during the timer's pass were lost (a kernel bug)");
    }
}
