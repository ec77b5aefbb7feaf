//! Wait deadlines: each CPU keeps a list of (TSC deadline, thread) for the waits its threads
//! started; its timer tick ends the waits whose deadline passed (`thread::expire`, a transition
//! that is refused if the wait already ended some other way).
//!
//! Entries are never removed when a wait ends early; the list is pruned instead (dead threads
//! and threads no longer waiting with that deadline) whenever it has grown past 64 entries, so
//! it stays about as long as the live waits. The check is made under each thread's own lock
//! with the list's lock released (never both at once).
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use rl4_arch::cpu;

use crate::obj::Thread;
use crate::sched::{self, CpuSched};

/// Registers the deadline of a wait the running thread `t` just started (none for `u64::MAX`).
pub fn add(deadline: u64, t: &Arc<Thread>) {
    if deadline != u64::MAX {
        sched::this_cpu().timeouts.lock().push((deadline, Arc::downgrade(t)));
    }
}

/// Makes room in this CPU's list for one more deadline (none needed for `u64::MAX`), so that
/// [`add`] after the wait began cannot fail: `OutOfMemory` if the kernel has no memory for it.
/// Called holding no queue's lock.
pub fn reserve(deadline: u64) -> Result<(), rl4_abi::Error> {
    if deadline == u64::MAX {
        return Ok(());
    }
    sched::this_cpu().timeouts.lock().try_reserve(1).map_err(|_| rl4_abi::Error::OutOfMemory)
}

/// Ends the waits of this CPU's list whose deadline has passed.
pub fn expire_due(cs: &CpuSched) {
    let now = cpu::rdtsc();
    let (due, prune): (Vec<Weak<Thread>>, Option<Vec<(u64, Weak<Thread>)>>) = {
        let mut l = cs.timeouts.lock();
        if l.is_empty() {
            return;
        }
        let mut due = Vec::new();
        l.retain(|(d, w)| {
            if *d <= now {
                due.push(w.clone());
                return false;
            }
            w.strong_count() > 0
        });
        let prune = if l.len() >= 64 { Some(core::mem::take(&mut *l)) } else { None };
        (due, prune)
    };
    for w in due {
        if let Some(t) = w.upgrade() {
            crate::thread::expire(&t, now);
        }
    }
    if let Some(mut entries) = prune {
        entries.retain(|(d, w)| w.upgrade().is_some_and(|t| t.life.lock().deadline() == Some(*d)));
        cs.timeouts.lock().append(&mut entries);
    }
}
