//! Wait deadlines: each CPU keeps the (TSC deadline, thread) of the waits its threads started,
//! earliest first (`rl4_core::deadlines`, a binary heap); its timer tick ends the waits whose
//! deadline passed (`thread::expire`, a transition that is refused if the wait already ended
//! some other way). A tick with nothing due looks at one entry, however many threads wait.
//!
//! Entries are not removed when a wait ends early (the thread that ends it may run on another
//! CPU, and no IPC path takes a lock of the waiter's CPU for that): such an entry goes when its
//! deadline comes, or when the heap is pruned of dead threads and threads no longer waiting with
//! that deadline — once it has doubled since the last prune, so a prune's cost is O(1) per
//! entry added, and the heap holds at most about twice the live waits. The heap is in
//! page-sized pieces (`rl4_core::paged`: a burst of thousands of waits needs no contiguous
//! frames), room for an entry is made before the wait begins ([`reserve`]), and the timer's pass
//! allocates nothing: it takes due entries out one at a time (the lock is not held while their
//! waits end), and a prune takes the heap out whole and runs with no lock held (each thread's
//! own lock is taken one at a time), frees the pieces it emptied, and puts the heap back.
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
    if deadline != u64::MAX && sched::this_cpu().timeouts.lock().try_push(deadline, Arc::downgrade(t)).is_err() {
        lost(t);
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

/// Ends the waits of this CPU whose deadline has passed, and prunes the heap when it has
/// doubled since the last prune. Allocates nothing; holds no lock while it ends waits.
pub fn expire_due(cs: sched::Here) {
    let now = cpu::rdtsc();
    loop {
        let due = cs.timeouts.lock().pop_due(now);
        let Some((_, w)) = due else { break };
        cs.bump(sched::Count::DeadlinesVisited);
        if let Some(t) = w.upgrade() {
            crate::thread::expire(&t, now);
        }
    }
    let mut l: List = {
        let mut g = cs.timeouts.lock();
        if !g.wants_prune() {
            return;
        }
        core::mem::take(&mut *g)
    };
    let seen = l.prune(|(d, w)| w.upgrade().is_some_and(|t| t.life.lock().deadline() == Some(*d)));
    cs.add_count(sched::Count::DeadlinesVisited, seen as u64);
    let mut g = cs.timeouts.lock();
    core::mem::swap(&mut *g, &mut l);
    // `l` is what was added meanwhile: nothing (see the module's comment); were it otherwise,
    // its entries go back too, into room the heap's last piece may have.
    while let Some((d, w)) = l.pop_due(u64::MAX) {
        if g.try_push(d, w).is_err() {
            rl4_arch::println!("timeout: a deadline added during the timer's pass was lost (a kernel bug)");
        }
    }
}
