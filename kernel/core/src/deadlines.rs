//! One CPU's wait deadlines: a binary min-heap (earliest deadline at the root) over a
//! [`PagedVec`], with entries removed lazily.
//!
//! The timer takes out the due entries, earliest first, O(log N) each; a tick with nothing due
//! looks at the root only, however many threads wait with a deadline. (The unsorted list this
//! replaced was walked whole at every tick once it held 64 entries, so N threads waiting with
//! long timeouts cost their CPU O(N) at every tick, with interrupts off.)
//!
//! A wait that ends early (a partner came, the thread was killed) leaves its entry behind: the
//! thread that ends it may run on another CPU, and the IPC paths take no lock of the waiter's
//! CPU for that. Such a *stale* entry goes when its deadline comes (the transition it asks for
//! is refused: the wait it names is over), or at a [`Deadlines::prune`], which the owner runs
//! when [`Deadlines::wants_prune`] says: when the heap has doubled since the last prune (so
//! that prunes cost O(1) per entry added, however fast waits come and go), and when a period
//! has passed since the last one and the caller's *epoch* changed meanwhile (the kernel counts
//! threads destroyed: an entry whose thread died keeps the thread's record allocated, and goes
//! within that period, whatever its deadline; while no thread died, live waits with long
//! deadlines cost nothing, where a prune every period looked at every one of them). After a burst of
//! waits has ended, [`Deadlines::wants_shrink`] says when the heap holds leaves it does not
//! need.
//!
//! The caller decides what an entry's `W` is and which entries are stale; this module only
//! orders them (`tests/deadlines_model.rs` checks it against a sorted model).
use crate::paged::PagedVec;

/// The heap is not pruned below this many entries.
pub const PRUNE_MIN: usize = 64;

pub struct Deadlines<W> {
    heap: PagedVec<(u64, W)>,
    /// [`Deadlines::wants_prune`] once the heap holds this many entries.
    prune_at: usize,
    /// When the last prune ran (the `now` it was given).
    pruned: u64,
    /// The epoch the last prune was given.
    epoch: u64,
}

impl<W> Default for Deadlines<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W> Deadlines<W> {
    pub const fn new() -> Self {
        Deadlines { heap: PagedVec::new(), prune_at: PRUNE_MIN, pruned: 0, epoch: 0 }
    }

    /// Entries held, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &(u64, W)> {
        self.heap.iter()
    }

    /// Makes room for one more entry (`Err(())` if there is no memory for it), so that a
    /// [`Deadlines::try_push`] after it cannot fail.
    pub fn try_reserve_one(&mut self) -> Result<(), ()> {
        self.heap.try_reserve_one()
    }

    /// Adds `w` with `deadline`, or hands `w` back if there is no memory for it.
    pub fn try_push(&mut self, deadline: u64, w: W) -> Result<(), W> {
        self.heap.try_push((deadline, w)).map_err(|(_, w)| w)?;
        self.sift_up(self.heap.len() - 1);
        Ok(())
    }

    /// The earliest deadline held (stale entries included).
    pub fn earliest(&self) -> Option<u64> {
        self.heap.get(0).map(|e| e.0)
    }

    /// Takes out an entry whose deadline is at or before `now` (the earliest), if there is one.
    pub fn pop_due(&mut self, now: u64) -> Option<(u64, W)> {
        if self.earliest()? > now {
            return None;
        }
        let last = self.heap.len() - 1;
        self.heap.swap(0, last);
        let e = self.heap.pop();
        self.sift_down(0);
        e
    }

    /// Whether a prune is due at `now`: the heap has doubled since the last one (and holds at
    /// least [`PRUNE_MIN`] entries), or `period` has passed since it, `epoch` is not the one it
    /// was given and the heap is not empty.
    pub fn wants_prune(&self, now: u64, period: u64, epoch: u64) -> bool {
        self.heap.len() >= self.prune_at
            || (!self.heap.is_empty() && epoch != self.epoch && now.wrapping_sub(self.pruned) >= period)
    }

    /// Keeps only the entries for which `keep` is true and frees the memory the others held
    /// (allocates nothing). `now` and `epoch` are when (for [`Deadlines::wants_prune`]'s
    /// period). Returns how many entries it looked at.
    pub fn prune(&mut self, now: u64, epoch: u64, keep: impl FnMut(&(u64, W)) -> bool) -> usize {
        let seen = self.heap.len();
        self.heap.retain(keep);
        self.heap.shrink();
        // `retain` keeps the order of what stays, which is not a heap's: build one again.
        for i in (0..self.heap.len() / 2).rev() {
            self.sift_down(i);
        }
        self.prune_at = self.heap.len().saturating_mul(2).max(PRUNE_MIN);
        self.pruned = now;
        self.epoch = epoch;
        seen
    }

    /// Whether the heap holds more than one leaf beyond what its entries fill (due entries were
    /// taken out: [`Deadlines::shrink`] would free memory).
    pub fn wants_shrink(&self) -> bool {
        self.heap.leaves() > self.heap.len().div_ceil(PagedVec::<(u64, W)>::PER_LEAF) + 1
    }

    /// Frees the leaves its entries do not fill (allocates nothing).
    pub fn shrink(&mut self) {
        self.heap.shrink();
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[parent].0 <= self.heap[i].0 {
                break;
            }
            self.heap.swap(parent, i);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let l = 2 * i + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let c = if r < n && self.heap[r].0 < self.heap[l].0 { r } else { l };
            if self.heap[i].0 <= self.heap[c].0 {
                break;
            }
            self.heap.swap(i, c);
            i = c;
        }
    }

    /// Whether every entry's deadline is at or after its parent's (for tests).
    pub fn is_heap(&self) -> bool {
        (1..self.heap.len()).all(|i| self.heap[(i - 1) / 2].0 <= self.heap[i].0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_entries_come_out_earliest_first() {
        let mut d = Deadlines::new();
        for (i, t) in [50u64, 10, 40, 10, 30, 20, 60].into_iter().enumerate() {
            d.try_push(t, i).unwrap();
            assert!(d.is_heap());
        }
        assert_eq!(d.pop_due(5), None);
        let mut out = alloc::vec::Vec::new();
        while let Some((t, _)) = d.pop_due(40) {
            out.push(t);
            assert!(d.is_heap());
        }
        assert_eq!(out, [10, 10, 20, 30, 40]);
        assert_eq!(d.earliest(), Some(50));
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn shrink_after_a_burst() {
        let mut d = Deadlines::new();
        let per_leaf = PagedVec::<(u64, u64)>::PER_LEAF as u64;
        for i in 0..4 * per_leaf {
            d.try_push(i, i).unwrap();
        }
        assert!(!d.wants_shrink());
        while d.pop_due(3 * per_leaf).is_some() {}
        assert_eq!(d.len() as u64, per_leaf - 1);
        assert!(d.wants_shrink());
        d.shrink();
        assert!(!d.wants_shrink());
        assert!(d.is_heap());
        assert_eq!(d.earliest(), Some(3 * per_leaf + 1));
    }

    #[test]
    fn prune_runs_once_the_heap_has_doubled() {
        let mut d = Deadlines::new();
        for i in 0..PRUNE_MIN as u64 - 1 {
            d.try_push(1000 - i, i).unwrap();
        }
        const P: u64 = 1000;
        assert!(!d.wants_prune(0, P, 1));
        d.try_push(5, 99).unwrap();
        assert!(d.wants_prune(0, P, 0));
        // Half the entries are stale.
        assert_eq!(d.prune(0, 0, |&(_, w)| w % 2 == 0), PRUNE_MIN);
        assert!(d.is_heap());
        assert_eq!(d.len(), PRUNE_MIN / 2);
        assert!(!d.wants_prune(P - 1, P, 1), "below PRUNE_MIN, within the period");
        assert!(!d.wants_prune(P, P, 0), "the period passed, but the epoch is the same");
        assert!(d.wants_prune(P, P, 1), "the period passed and the epoch changed");
        for i in 0..PRUNE_MIN as u64 / 2 {
            d.try_push(2000 + i, 1000 + i).unwrap();
        }
        // 64 now: twice the 32 kept was 64.
        assert!(d.wants_prune(1, P, 0));
        assert_eq!(d.prune(1, 0, |_| true), PRUNE_MIN);
        assert!(!d.wants_prune(2, P, 1), "next prune at 128 entries or at P + 1 with a new epoch");
        assert_eq!(d.earliest(), Some(1000 - (PRUNE_MIN as u64 - 2)));
    }
}
