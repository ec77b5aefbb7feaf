//! A CPU's run queue: 256 priorities, FIFO within each, a two-level bitmap for an O(1) pick of
//! the highest non-empty priority.
//!
//! Intrusive: each priority's FIFO is a [`WList`] threaded through the items' *run link* (their
//! `WLinked<Run>` link, apart from the wait-queue link an endpoint's queues use), so putting a
//! thread in and taking it out allocates nothing, moves the queue's reference (`Arc`) without
//! touching its count, and takes out any one thread by identity in O(1). A thread needs both
//! links: its wait ends (under its own lock) before its waker takes it out of the endpoint's
//! queue (under the queue's lock, which a wake-up by kill or suspend takes only afterwards), and
//! it may be queued on a CPU in between.
//!
//! The running thread is not in the queue (lazy scheduling: a thread that blocks is never
//! touched here on the fast path). The queue owns one reference of every item it holds; an
//! item is in at most one run queue at a time (a second push hands it back).
use alloc::sync::Arc;

use crate::wlist::{WLinked, WList};

pub const PRIORITIES: usize = 256;

/// The tag of the run-queue link (`WLinked<Run>`).
pub enum Run {}

pub struct RunQueue<T: WLinked<Run>> {
    /// Bit `w` set: word `w` of `bits` is non-zero.
    top: u64,
    /// Bit `p % 64` of word `p / 64` set: priority `p` has a thread.
    bits: [u64; PRIORITIES / 64],
    queues: [WList<T, Run>; PRIORITIES],
    len: usize,
}

impl<T: WLinked<Run>> RunQueue<T> {
    /// An empty queue; `id` tells its lists apart from every other run queue's (the kernel: the
    /// CPU's index).
    pub fn new(id: u32) -> Self {
        RunQueue {
            top: 0,
            bits: [0; 4],
            queues: core::array::from_fn(|p| WList::new(((id as usize) << 8 | p) + 1)),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline(always)]
    fn mark(&mut self, p: u8) {
        let (w, b) = (p as usize / 64, p as usize % 64);
        self.bits[w] |= 1 << b;
        self.top |= 1 << w;
    }

    #[inline(always)]
    fn unmark_if_empty(&mut self, p: u8) {
        if self.queues[p as usize].is_empty() {
            let (w, b) = (p as usize / 64, p as usize % 64);
            self.bits[w] &= !(1 << b);
            if self.bits[w] == 0 {
                self.top &= !(1 << w);
            }
        }
    }

    /// Every queued entry with its priority, highest priority first.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &T)> {
        (0..PRIORITIES).rev().flat_map(move |p| self.queues[p].iter().map(move |(_, t)| (p as u8, t)))
    }

    /// Whether the bitmaps, the lists' links and the length agree with each other (the
    /// kernel's consistency check asks).
    pub fn is_consistent(&self) -> bool {
        let mut len = 0;
        for p in 0..PRIORITIES {
            let (w, b) = (p / 64, p % 64);
            let marked = self.bits[w] & (1 << b) != 0;
            if marked == self.queues[p].is_empty() || !self.queues[p].is_consistent() {
                return false;
            }
            len += self.queues[p].len();
        }
        let top = (0..PRIORITIES / 64).filter(|&w| self.bits[w] != 0).fold(0u64, |t, w| t | 1 << w);
        top == self.top && len == self.len
    }

    /// Adds `t` at the tail of priority `p` (a thread that used up its slice, or a new one).
    /// Hands `t` back if it is in a run queue already (a kernel bug; nothing changes).
    #[inline(always)]
    pub fn push_back(&mut self, p: u8, t: Arc<T>) -> Result<(), Arc<T>> {
        self.queues[p as usize].push_back(t)?;
        self.mark(p);
        self.len += 1;
        Ok(())
    }

    /// Adds `t` at the head of priority `p` (a preempted thread keeps its turn). Hands `t` back
    /// if it is in a run queue already.
    #[inline(always)]
    pub fn push_front(&mut self, p: u8, t: Arc<T>) -> Result<(), Arc<T>> {
        self.queues[p as usize].push_front(t)?;
        self.mark(p);
        self.len += 1;
        Ok(())
    }

    /// The highest priority that has a thread.
    #[inline(always)]
    pub fn highest(&self) -> Option<u8> {
        if self.top == 0 {
            return None;
        }
        let w = 63 - self.top.leading_zeros() as usize;
        let b = 63 - self.bits[w].leading_zeros() as usize;
        Some((w * 64 + b) as u8)
    }

    /// Takes the first thread of the highest priority.
    #[inline(always)]
    pub fn pop(&mut self) -> Option<(u8, Arc<T>)> {
        let p = self.highest()?;
        let t = self.queues[p as usize].pop_front()?;
        self.unmark_if_empty(p);
        self.len -= 1;
        Some((p, t))
    }

    /// Puts `t` at the tail of priority `p` and takes the head of `p` out (a `Yield` to the next
    /// thread of its priority: `t` itself if `p` was empty). The bitmaps and the length stay as
    /// they were. Hands `t` back if it is in a run queue already.
    #[inline(always)]
    pub fn rotate(&mut self, p: u8, t: Arc<T>) -> Result<Arc<T>, Arc<T>> {
        self.queues[p as usize].rotate(t)
    }

    /// Takes out the first entry, highest priority first, for which `f` holds (a walk over the
    /// non-empty priorities: for sweeping out entries that will never run).
    pub fn take_first_where(&mut self, mut f: impl FnMut(&T) -> bool) -> Option<(u8, Arc<T>)> {
        for w in (0..PRIORITIES / 64).rev() {
            let mut bits = self.bits[w];
            while bits != 0 {
                let b = 63 - bits.leading_zeros() as usize;
                bits &= !(1 << b);
                let p = (w * 64 + b) as u8;
                if let Some(t) = self.queues[p as usize].remove_first_where(&mut f) {
                    self.unmark_if_empty(p);
                    self.len -= 1;
                    return Some((p, t));
                }
            }
        }
        None
    }

    /// Takes out every entry for which `f` holds, in one pass over the non-empty priorities
    /// (O(entries), where taking them one at a time with [`Self::take_first_where`] walks
    /// again from the top for each), handing each to `out` with its priority.
    pub fn take_all_where(&mut self, mut f: impl FnMut(&T) -> bool, mut out: impl FnMut(u8, Arc<T>)) {
        for w in 0..PRIORITIES / 64 {
            let mut bits = self.bits[w];
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let p = (w * 64 + b) as u8;
                let mut n = 0;
                self.queues[p as usize].remove_all_where(&mut f, |t| {
                    n += 1;
                    out(p, t)
                });
                self.len -= n;
                self.unmark_if_empty(p);
            }
        }
    }

    /// Takes `t` out of this queue, whichever priority's FIFO holds it (O(1): its link names
    /// the list, and each priority's list has the token `first + p`), returning that priority
    /// and the queue's reference; `None` if this queue does not hold it.
    pub fn remove_queued(&mut self, t: &T) -> Option<(u8, Arc<T>)> {
        let first = self.queues[0].token();
        let p = WList::<T, Run>::owner_of(t).checked_sub(first).filter(|&p| p < PRIORITIES)? as u8;
        self.remove(p, t).map(|r| (p, r))
    }

    /// Takes `t` out of priority `p`'s FIFO if it is there (O(1)), returning the queue's
    /// reference.
    pub fn remove(&mut self, p: u8, t: &T) -> Option<Arc<T>> {
        let r = self.queues[p as usize].remove(t)?;
        self.unmark_if_empty(p);
        self.len -= 1;
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wlist::WLink;

    struct Item {
        id: u32,
        link: WLink<Item>,
    }
    // SAFETY: `link` is a field of the item (the test's only `unsafe`: implementing the trait).
    #[allow(unsafe_code)]
    unsafe impl WLinked<Run> for Item {
        fn wlink(&self) -> &WLink<Item> {
            &self.link
        }
    }
    fn item(id: u32) -> Arc<Item> {
        Arc::new(Item { id, link: WLink::new() })
    }
    type Q = RunQueue<Item>;
    fn push(q: &mut Q, p: u8, id: u32) {
        q.push_back(p, item(id)).ok().unwrap();
    }
    fn pop(q: &mut Q) -> Option<(u8, u32)> {
        q.pop().map(|(p, t)| (p, t.id))
    }
    fn ids(q: &Q) -> Vec<(u8, u32)> {
        q.iter().map(|(p, t)| (p, t.id)).collect()
    }

    #[test]
    fn highest_priority_first_fifo_within() {
        let mut q = Q::new(0);
        for (p, id) in [(10, 1), (200, 2), (10, 3), (0, 4), (255, 5), (63, 6), (64, 7)] {
            push(&mut q, p, id);
        }
        assert_eq!(q.len(), 7);
        let order: Vec<_> = core::iter::from_fn(|| pop(&mut q)).collect();
        assert_eq!(order, vec![(255, 5), (200, 2), (64, 7), (63, 6), (10, 1), (10, 3), (0, 4)]);
        assert!(q.is_empty());
        assert_eq!(q.highest(), None);
        assert!(q.pop().is_none());
    }

    #[test]
    fn push_front_keeps_the_turn() {
        let mut q = Q::new(0);
        push(&mut q, 5, 1);
        push(&mut q, 5, 2);
        q.push_front(5, item(3)).ok().unwrap();
        assert_eq!(pop(&mut q), Some((5, 3)));
        assert_eq!(pop(&mut q), Some((5, 1)));
    }

    #[test]
    fn one_entry_per_item() {
        let (mut q, mut other) = (Q::new(0), Q::new(1));
        let a = item(1);
        q.push_back(7, a.clone()).ok().unwrap();
        assert!(q.push_back(7, a.clone()).is_err());
        assert!(q.push_front(9, a.clone()).is_err());
        assert!(other.push_back(7, a.clone()).is_err(), "in one run queue at a time");
        assert!(other.remove(7, &a).is_none(), "another queue's entry is not this one's");
        assert!(q.is_consistent() && q.len() == 1 && other.is_empty());
        assert_eq!(Arc::strong_count(&a), 2, "the queue holds one reference");
        let (_, back) = q.pop().unwrap();
        assert!(Arc::ptr_eq(&back, &a));
        drop(back);
        assert_eq!(Arc::strong_count(&a), 1);
        assert!(other.push_back(7, a.clone()).is_ok(), "free again");
    }

    #[test]
    fn remove_queued_finds_the_priority_from_the_link() {
        let (mut q, mut other) = (Q::new(3), Q::new(4));
        let (a, b, c, d) = (item(1), item(2), item(3), item(4));
        q.push_back(255, a.clone()).ok().unwrap();
        q.push_back(0, b.clone()).ok().unwrap();
        q.push_back(0, c.clone()).ok().unwrap();
        other.push_back(0, d.clone()).ok().unwrap();
        // Another queue's entry, at a priority this one also has: not this queue's.
        assert!(q.remove_queued(&d).is_none());
        assert!(other.is_consistent() && other.len() == 1);
        let (p, r) = q.remove_queued(&b).unwrap();
        assert!(p == 0 && Arc::ptr_eq(&r, &b));
        drop(r);
        assert!(q.remove_queued(&b).is_none(), "taken out once");
        let (p, _) = q.remove_queued(&a).unwrap();
        assert_eq!(p, 255);
        assert!(q.is_consistent() && q.len() == 1 && q.highest() == Some(0));
        assert_eq!(pop(&mut q), Some((0, 3)));
        assert_eq!(Arc::strong_count(&a), 1);
    }

    #[test]
    fn remove_keeps_the_bitmap_right() {
        let mut q = Q::new(0);
        let (a, b, c) = (item(1), item(2), item(3));
        q.push_back(100, a.clone()).ok().unwrap();
        q.push_back(100, b.clone()).ok().unwrap();
        q.push_back(3, c.clone()).ok().unwrap();
        assert!(q.remove(100, &a).is_some());
        assert!(q.remove(100, &a).is_none());
        assert!(q.remove(7, &c).is_none(), "not at that priority");
        assert_eq!(q.highest(), Some(100));
        assert!(q.remove(100, &b).is_some());
        assert_eq!(q.highest(), Some(3));
        assert!(q.remove(3, &c).is_some());
        assert_eq!(q.highest(), None);
        assert_eq!(q.len(), 0);
        assert!(q.is_consistent());
        assert_eq!(Arc::strong_count(&a), 1);
    }

    #[test]
    fn every_priority_is_reachable() {
        let mut q = Q::new(0);
        for p in 0..=255u8 {
            push(&mut q, p, p as u32);
        }
        assert!(q.is_consistent());
        for p in (0..=255u8).rev() {
            assert_eq!(pop(&mut q), Some((p, p as u32)));
        }
    }

    #[test]
    fn iteration_and_self_check() {
        let mut q = Q::new(0);
        assert!(q.is_consistent());
        let a = item(1);
        push(&mut q, 3, 0);
        q.push_back(3, a.clone()).ok().unwrap();
        push(&mut q, 200, 2);
        q.push_front(3, item(3)).ok().unwrap();
        assert!(q.is_consistent());
        assert_eq!(ids(&q), [(200, 2), (3, 3), (3, 0), (3, 1)]);
        q.pop();
        q.remove(3, &a);
        assert!(q.is_consistent());
        assert_eq!(ids(&q), [(3, 3), (3, 0)]);
        q.len += 1;
        assert!(!q.is_consistent());
        q.len -= 1;
        q.bits[1] = 1;
        assert!(!q.is_consistent());
    }

    #[test]
    fn rotate_turns_one_priority() {
        let mut q = Q::new(0);
        let (a, b) = (item(1), item(2));
        assert_eq!(q.rotate(4, a.clone()).ok().map(|t| t.id), Some(1), "alone: it comes back");
        assert!(q.is_empty() && q.is_consistent());
        push(&mut q, 4, 3);
        push(&mut q, 4, 4);
        push(&mut q, 9, 5);
        assert_eq!(q.rotate(4, a.clone()).ok().map(|t| t.id), Some(3));
        assert_eq!(q.rotate(4, b.clone()).ok().map(|t| t.id), Some(4));
        assert!(q.rotate(4, a.clone()).is_err(), "queued already");
        assert!(q.is_consistent() && q.len() == 3);
        assert_eq!(ids(&q), [(9, 5), (4, 1), (4, 2)]);
    }

    #[test]
    fn take_first_where_keeps_the_rest_in_order() {
        let mut q = Q::new(0);
        for (p, t) in [(5u8, 1u32), (9, 2), (5, 3), (0, 4), (130, 6)] {
            push(&mut q, p, t);
        }
        assert_eq!(q.take_first_where(|t| t.id % 2 == 1).map(|(p, t)| (p, t.id)), Some((5, 1)));
        assert!(q.take_first_where(|t| t.id == 7).is_none());
        assert!(q.is_consistent());
        assert_eq!(ids(&q), vec![(130, 6), (9, 2), (5, 3), (0, 4)]);
        assert_eq!(q.take_first_where(|t| t.id == 4).map(|(p, t)| (p, t.id)), Some((0, 4)));
        assert_eq!(q.take_first_where(|t| t.id == 6).map(|(p, t)| (p, t.id)), Some((130, 6)));
        assert!(q.is_consistent() && q.len() == 2);
    }

    proptest::proptest! {
        /// Random sequences against a model (a FIFO per priority), each item at most once.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u8..6, 0u32..10, proptest::sample::select(vec![0u8, 1, 63, 64, 100, 200, 255])), 1..300)) {
            let items: Vec<Arc<Item>> = (0..10).map(item).collect();
            let mut q = Q::new(2);
            let mut model: Vec<Vec<u32>> = vec![vec![]; PRIORITIES];
            for (op, i, p) in ops {
                let t = &items[i as usize];
                let at = model.iter().position(|f| f.contains(&i));
                match op {
                    0 | 1 => {
                        let r = if op == 0 { q.push_back(p, t.clone()) } else { q.push_front(p, t.clone()) };
                        proptest::prop_assert_eq!(r.is_ok(), at.is_none());
                        if at.is_none() {
                            if op == 0 { model[p as usize].push(i) } else { model[p as usize].insert(0, i) }
                        }
                    }
                    2 if i % 2 == 0 => {
                        let r = q.rotate(p, t.clone()).map(|x| x.id).map_err(|x| x.id);
                        let want = match at {
                            Some(_) => Err(i),
                            None => {
                                model[p as usize].push(i);
                                Ok(model[p as usize].remove(0))
                            }
                        };
                        proptest::prop_assert_eq!(r, want);
                    }
                    2 => {
                        let want = (0..PRIORITIES).rev().find(|&p| !model[p].is_empty()).map(|p| (p as u8, model[p].remove(0)));
                        proptest::prop_assert_eq!(pop(&mut q), want);
                    }
                    3 if i % 2 == 0 => {
                        let got = q.remove_queued(t).map(|(p, x)| (p, x.id));
                        let want = at.map(|p| (p as u8, i));
                        if let Some(p) = at { model[p].retain(|&x| x != i); }
                        proptest::prop_assert_eq!(got, want);
                    }
                    3 => {
                        let got = q.remove(p, t).map(|x| x.id);
                        let want = (at == Some(p as usize)).then_some(i);
                        if want.is_some() { model[p as usize].retain(|&x| x != i); }
                        proptest::prop_assert_eq!(got, want);
                    }
                    4 => {
                        let got = q.take_first_where(|x| x.id % 3 == i % 3).map(|(p, x)| (p, x.id));
                        let want = (0..PRIORITIES).rev().find_map(|p| model[p].iter().position(|&x| x % 3 == i % 3).map(|k| (p as u8, model[p].remove(k))));
                        proptest::prop_assert_eq!(got, want);
                    }
                    _ => {
                        let mut got = Vec::new();
                        q.take_all_where(|x| x.id % 3 == i % 3, |p, x| got.push((p, x.id)));
                        let mut want = Vec::new();
                        for (p, f) in model.iter_mut().enumerate() {
                            want.extend(f.iter().filter(|&&x| x % 3 == i % 3).map(|&x| (p as u8, x)));
                            f.retain(|&x| x % 3 != i % 3);
                        }
                        proptest::prop_assert_eq!(got, want);
                    }
                }
                let flat: Vec<(u8, u32)> = (0..PRIORITIES).rev().flat_map(|p| model[p].iter().map(move |&x| (p as u8, x))).collect();
                proptest::prop_assert_eq!(ids(&q), flat.clone());
                proptest::prop_assert_eq!(q.len(), flat.len());
                proptest::prop_assert_eq!(q.highest(), flat.first().map(|&(p, _)| p));
                proptest::prop_assert!(q.is_consistent());
            }
            drop(q);
            for t in &items {
                proptest::prop_assert_eq!(Arc::strong_count(t), 1);
            }
        }
    }
}
