//! A question one CPU puts to another and waits on: "have you passed a point where you read
//! what I just changed?" — for a change whose answer cannot wait for the other CPU's next
//! natural pass (the kernel: a closed I/O-port range must be closed on every CPU that runs the
//! task before the call that closed it answers; `kernel/src/device.rs`).
//!
//! The asker changes what it changes, publishes it (a release store at least), and takes a
//! ticket from the CPU's [`Asks`] ([`Asks::ask`]: a sequentially consistent increment) before it
//! interrupts the CPU; it then waits until [`Asks::answered`] says the CPU answered that ticket
//! or a later one. The CPU answers at a point of its choosing ([`Asks::answer`]): it reads how
//! many tickets were taken *before* it runs the pass that reads the change, and publishes that
//! number after the pass. So an answer that covers a ticket comes from a pass that began after
//! the ticket was taken, and that pass reads the change (the ticket's increment comes after the
//! change's store; the answer's read of the count is an acquire). A pass that had already read
//! the change's old value when the ticket was taken answers an older count, which does not
//! cover the ticket: the asker waits for the next pass. `tests/asks_loom.rs` checks both orders
//! (its control answers after a pass that read first, and loom finds the stale answer).
//!
//! Only the CPU itself answers (its answer is a plain store); any number of askers may take
//! tickets at once. Nothing here blocks: the asker's wait loop, and where the CPU answers, are
//! the kernel's.
#![allow(unexpected_cfgs)] // `cfg(loom)`: set by RUSTFLAGS for the loom models only.

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
use core::sync::atomic::{AtomicU64, Ordering};

/// One CPU's tickets taken and answered.
pub struct Asks {
    asked: AtomicU64,
    answered: AtomicU64,
}

impl Default for Asks {
    fn default() -> Self {
        Self::new()
    }
}

impl Asks {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Asks { asked: AtomicU64::new(0), answered: AtomicU64::new(0) }
    }

    #[cfg(loom)]
    pub fn new() -> Self {
        Asks { asked: AtomicU64::new(0), answered: AtomicU64::new(0) }
    }

    /// The asker, after its change is published: a ticket the CPU's answer must cover.
    pub fn ask(&self) -> u64 {
        self.asked.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Whether the CPU answered `ticket` (or a later one).
    pub fn answered(&self, ticket: u64) -> bool {
        self.answered.load(Ordering::Acquire) >= ticket
    }

    /// The CPU itself: if a ticket was taken since its last answer, runs `pass` (which must
    /// read what the askers changed) and answers every ticket taken before the pass began.
    /// Returns whether it ran `pass`. (A plain load when nobody asked.)
    pub fn answer(&self, pass: impl FnOnce()) -> bool {
        let asked = self.asked.load(Ordering::SeqCst);
        if asked == self.answered.load(Ordering::Relaxed) {
            return false;
        }
        pass();
        self.answered.store(asked, Ordering::Release);
        true
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn an_answer_covers_the_tickets_taken_before_it() {
        let a = Asks::new();
        assert!(!a.answer(|| panic!("nobody asked")));
        let t1 = a.ask();
        let t2 = a.ask();
        assert!(!a.answered(t1) && !a.answered(t2));
        let mut passes = 0;
        assert!(a.answer(|| passes += 1));
        assert_eq!(passes, 1);
        assert!(a.answered(t1) && a.answered(t2));
        let t3 = a.ask();
        assert!(!a.answered(t3));
        assert!(a.answer(|| passes += 1));
        assert!(a.answered(t3));
        assert_eq!(passes, 2);
    }
}
