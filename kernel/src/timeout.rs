//! Wait deadlines: each CPU keeps a list of (TSC deadline, thread) for the waits its threads
//! started; its timer tick ends the waits whose deadline passed (`thread::expire`, a transition
//! that is refused if the wait already ended some other way).
//!
//! Entries are never removed when a wait ends early; the list is pruned instead (dead threads
//! and threads no longer waiting with that deadline) whenever it has grown past 64 entries, so
//! it stays about as long as the live waits. The list is in page-sized pieces
//! (`rl4_core::paged`: a burst of thousands of waits needs no contiguous frames), room for an
//! entry is made before the wait begins ([`reserve`]), and the timer's pass allocates nothing:
//! it takes the list out whole, ends the due waits and prunes with no lock held (each thread's
//! own lock is taken one at a time), frees the pieces a prune emptied, and puts the list back.
//! Nothing is added meanwhile: only this CPU uses its list, from its timer interrupt and from
//! its threads' system calls, which run with interrupts off.
use alloc::sync::{Arc, Weak};
use rl4_arch::cpu;
use rl4_core::paged::PagedVec;

use crate::obj::Thread;
use crate::sched;

/// A CPU's deadlines: (TSC deadline, the thread that waits).
pub type List = PagedVec<(u64, Weak<Thread>)>;

/// Registers the deadline of a wait the running thread `t` just started (none for `u64::MAX`);
/// [`reserve`] made its room before the wait began.
pub fn add(deadline: u64, t: &Arc<Thread>) {
    if deadline != u64::MAX && sched::this_cpu().timeouts.lock().try_push((deadline, Arc::downgrade(t))).is_err() {
        lost(t);
    }
}

#[cold]
fn lost(t: &Thread) {
    rl4_arch::println!("timeout: no room for thread {}'s deadline (reserved before its wait: a kernel bug)", t.id);
}

/// Makes room in this CPU's list for one more deadline (none needed for `u64::MAX`), so that
/// [`add`] after the wait began cannot fail: `OutOfMemory` if the kernel has no memory for it.
/// Called holding no queue's lock.
pub fn reserve(deadline: u64) -> Result<(), rl4_abi::Error> {
    if deadline == u64::MAX {
        return Ok(());
    }
    sched::this_cpu().timeouts.lock().try_reserve_one().map_err(|_| rl4_abi::Error::OutOfMemory)
}

/// Ends the waits of this CPU's list whose deadline has passed (and prunes it past 64
/// entries). Allocates nothing; holds no lock while it ends waits.
pub fn expire_due(cs: sched::Here) {
    let now = cpu::rdtsc();
    let mut l: List = {
        let mut g = cs.timeouts.lock();
        if g.is_empty() {
            return;
        }
        core::mem::take(&mut *g)
    };
    let prune = l.len() >= 64;
    l.retain(|(d, w)| {
        if *d <= now {
            if let Some(t) = w.upgrade() {
                crate::thread::expire(&t, now);
            }
            return false;
        }
        if prune { w.upgrade().is_some_and(|t| t.life.lock().deadline() == Some(*d)) } else { w.strong_count() > 0 }
    });
    if prune {
        l.shrink();
    }
    let mut g = cs.timeouts.lock();
    core::mem::swap(&mut *g, &mut l);
    // `l` is what was added meanwhile: nothing (see the module's comment); were it otherwise,
    // its entries go back too, into room the list's last piece may have.
    for (d, w) in l.drain(..) {
        if g.try_push((d, w)).is_err() {
            rl4_arch::println!("timeout: a deadline added during the timer's pass was lost (a kernel bug)");
        }
    }
}
