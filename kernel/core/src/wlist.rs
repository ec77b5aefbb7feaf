//! A wait queue: an intrusive, doubly linked list of `Arc<T>`, ordered by a key (highest
//! first, first come first served within a key), owned by whoever holds the list (the kernel: an
//! endpoint's queue lock).
//!
//! The link lives in the item ([`WLink`], reached through [`WLinked`]), so putting a thread
//! into a queue allocates nothing and taking one out — the first, or any one by identity (a
//! cancelled wait) — is O(1). The list owns one reference of each item it holds
//! (`Arc::into_raw` in, `Arc::from_raw` out). An item is in at most one list at a time: every
//! insertion claims the item's link by setting its `owner` word (0 → the list's non-zero
//! token) and hands the item back if it was claimed already, and a removal by identity first
//! checks that the item's owner is this list; so a sequential misuse never corrupts a list.
//! (The claim is a plain load and store: the user must never insert one item into two lists
//! at once from two CPUs; the kernel's thread states rule that out.) The link's words are atomics only so that a `&T` may be shared between CPUs; they are
//! read and written only by the list that owns the item, through `&mut self`, with relaxed
//! ordering (the lock that guards the list orders them).
//!
//! A keyed list (`KEYED`, [`KeyedList`]: an endpoint's senders, by priority) also keeps, at
//! both ends of each run of equal keys, a pointer to the run's other end, so that an insertion
//! walks from the tail run by run rather than item by item: O(distinct lower keys), at most 256
//! steps for the kernel's priorities, however many items wait (a task with thousands of
//! low-priority senders on a shared endpoint would otherwise make every higher-priority
//! sender's insertion walk over all of them, under the endpoint's lock). Only keyed lists
//! insert by key, and only plain ones put items first or rotate: a keyed list stays sorted.
//!
//! `unsafe` is confined to the conversions between the raw pointers the list keeps and the
//! `Arc`s it was given, and to dereferencing those pointers while the list owns the items.
#![allow(unexpected_cfgs)]

use alloc::sync::Arc;
use core::marker::PhantomData;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};

/// An item's place in a wait queue.
pub struct WLink<T> {
    prev: AtomicPtr<T>,
    next: AtomicPtr<T>,
    /// The token of the list that holds the item, 0 if none.
    owner: AtomicUsize,
    key: AtomicU64,
    /// In a keyed list, at either end of a run of equal keys: the run's other end (itself,
    /// alone); meaningless elsewhere and in plain lists.
    run: AtomicPtr<T>,
}

impl<T> WLink<T> {
    pub const fn new() -> Self {
        WLink { prev: AtomicPtr::new(ptr::null_mut()), next: AtomicPtr::new(ptr::null_mut()), owner: AtomicUsize::new(0), key: AtomicU64::new(0), run: AtomicPtr::new(ptr::null_mut()) }
    }

    /// Whether some list holds the item (an `Acquire` load: after `false`, the list that held
    /// it is done with its links).
    pub fn is_queued(&self) -> bool {
        self.owner.load(Acquire) != 0
    }
}

impl<T> Default for WLink<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Items that carry a [`WLink`]. An item may carry several, one per kind of list it can be in
/// at the same time, each named by a `Tag` type (the default `()`: a thread's wait-queue link;
/// `runqueue::Run`: its run-queue link): a list uses only the link of its own tag.
///
/// # Safety
/// `wlink` must return the same link, a field of `self`, at every call, and the link must live
/// as long as the item; two tags must name two different links.
pub unsafe trait WLinked<Tag = ()>: Sized {
    fn wlink(&self) -> &WLink<Self>;
}

/// A wait queue (see the module documentation), threaded through the items' `Tag` links;
/// `KEYED`: kept sorted by key, with the runs of equal keys marked.
pub struct WList<T: WLinked<Tag>, Tag = (), const KEYED: bool = false> {
    head: *const T,
    tail: *const T,
    len: usize,
    token: usize,
    _owns: PhantomData<(Arc<T>, fn() -> Tag)>,
}

// SAFETY: the list owns `Arc<T>`s; moving it to another thread moves those references, which
// is sound when `Arc<T>` is `Send` (`T: Send + Sync`).
unsafe impl<T: WLinked<Tag> + Send + Sync, Tag, const K: bool> Send for WList<T, Tag, K> {}
// SAFETY: `&WList` gives only shared access to the items (`iter`), which `T: Sync` allows.
unsafe impl<T: WLinked<Tag> + Send + Sync, Tag, const K: bool> Sync for WList<T, Tag, K> {}

/// A list sorted by key (highest first), for [`WList::insert_by_key`].
pub type KeyedList<T, Tag = ()> = WList<T, Tag, true>;

/// The link of `t` that lists of tag `Tag` use.
#[inline(always)]
fn link<T: WLinked<Tag>, Tag>(t: &T) -> &WLink<T> {
    <T as WLinked<Tag>>::wlink(t)
}

impl<T: WLinked<Tag>, Tag, const KEYED: bool> WList<T, Tag, KEYED> {
    /// An empty list; `token` (not 0) names it in its items' links and must differ from every
    /// other live list's.
    pub const fn new(token: usize) -> Self {
        assert!(token != 0);
        WList { head: ptr::null(), tail: ptr::null(), len: 0, token, _owns: PhantomData }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// This list's token (the one its items' links name).
    pub fn token(&self) -> usize {
        self.token
    }

    /// The token of the list that holds `t` (0: none). Meaningful to the holder of that list
    /// (which alone changes it while it holds `t`).
    pub fn owner_of(t: &T) -> usize {
        link::<T, Tag>(t).owner.load(Acquire)
    }

    /// Whether `t` is in this list.
    pub fn contains(&self, t: &T) -> bool {
        link::<T, Tag>(t).owner.load(Relaxed) == self.token
    }

    /// The key of the first item.
    pub fn front_key(&self) -> Option<u64> {
        // SAFETY: a non-null head is an item this list owns (alive: the list holds a reference).
        (!self.head.is_null()).then(|| link::<T, Tag>(unsafe { &*self.head }).key.load(Relaxed))
    }

    /// Claims `t`'s link for this list, or hands `t` back if a list holds it. A plain load
    /// and store, not a compare-and-swap: two CPUs never insert one item at once (the kernel
    /// queues a thread only after its one successful `block`, under the queue's lock), so the
    /// check is against a sequential misuse, which it catches.
    #[inline(always)]
    fn claim(&self, t: Arc<T>, key: u64) -> Result<*const T, Arc<T>> {
        let l = link::<T, Tag>(&*t);
        if l.owner.load(Acquire) != 0 {
            return Err(t);
        }
        l.owner.store(self.token, Relaxed);
        l.key.store(key, Relaxed);
        Ok(Arc::into_raw(t))
    }

    /// Appends `t` (key 0: for lists whose items are all equal).
    #[inline]
    pub fn push_back(&mut self, t: Arc<T>) -> Result<(), Arc<T>> {
        let p = self.claim(t, 0)?;
        self.link_after(self.tail, p);
        Ok(())
    }

    /// Links the claimed item `p` after `after` (null: first).
    #[inline(always)]
    fn link_after(&mut self, after: *const T, p: *const T) {
        // SAFETY: `p` was claimed for this list (and is kept alive by the reference it took);
        // `after` is null or an item this list owns, as is its successor.
        let l = link::<T, Tag>(unsafe { &*p });
        let next = if after.is_null() { self.head } else { link::<T, Tag>(unsafe { &*after }).next.load(Relaxed) };
        l.prev.store(after as *mut T, Relaxed);
        l.next.store(next as *mut T, Relaxed);
        if after.is_null() {
            self.head = p;
        } else {
            link::<T, Tag>(unsafe { &*after }).next.store(p as *mut T, Relaxed);
        }
        if next.is_null() {
            self.tail = p;
        } else {
            link::<T, Tag>(unsafe { &*next }).prev.store(p as *mut T, Relaxed);
        }
        if KEYED {
            self.join_runs(after, p, next);
        }
        self.len += 1;
    }

    /// A keyed list: `p` was just linked between `prev` and `next` (either may be null); the
    /// run it joins — either neighbour's of its key, or its own — gets its ends right. (An
    /// insertion by key never lands in the middle of a run; both cases are kept all the same.)
    #[inline(always)]
    fn join_runs(&self, prev: *const T, p: *const T, next: *const T) {
        // SAFETY: `p` and its non-null neighbours are items this list owns, and so are the run
        // ends their `run` words name: a neighbour of another key is not read, and a neighbour
        // of `p`'s key is the end of its run (the list is sorted and `p` did not split a run),
        // whose `run` names the run's other end (kept so by every link and unlink).
        let l = link::<T, Tag>(unsafe { &*p });
        let key = l.key.load(Relaxed);
        let same = |q: *const T| !q.is_null() && link::<T, Tag>(unsafe { &*q }).key.load(Relaxed) == key;
        let end = |q: *const T| link::<T, Tag>(unsafe { &*q }).run.load(Relaxed) as *const T;
        let set = |q: *const T, to: *const T| link::<T, Tag>(unsafe { &*q }).run.store(to as *mut T, Relaxed);
        match (same(prev), same(next)) {
            // Inside a run: its ends stay.
            (true, true) => {}
            // The run's new last item (`prev` was its last: `run` names the first).
            (true, false) => {
                let first = end(prev);
                set(first, p);
                set(p, first);
            }
            // The run's new first item (`next` was its first: `run` names the last).
            (false, true) => {
                let last = end(next);
                set(last, p);
                set(p, last);
            }
            (false, false) => set(p, p),
        }
    }

    /// A keyed list: `p`, between `prev` and `next`, is being taken out; the run it was in gets
    /// its ends right (before the links change).
    #[inline(always)]
    fn leave_run(&self, prev: *const T, p: *const T, next: *const T) {
        // SAFETY: `p` and its non-null neighbours are items this list owns; `p`'s `run` is read
        // only when `p` is an end of its run (a neighbour of another key), where it names the
        // run's other end, an item of this list.
        let l = link::<T, Tag>(unsafe { &*p });
        let key = l.key.load(Relaxed);
        let same = |q: *const T| !q.is_null() && link::<T, Tag>(unsafe { &*q }).key.load(Relaxed) == key;
        let set = |q: *const T, to: *const T| link::<T, Tag>(unsafe { &*q }).run.store(to as *mut T, Relaxed);
        let other = l.run.load(Relaxed) as *const T;
        match (same(prev), same(next)) {
            (true, true) | (false, false) => {}
            // It was the run's last: `prev` is now.
            (true, false) => {
                set(other, prev);
                set(prev, other);
            }
            // It was the run's first: `next` is now.
            (false, true) => {
                set(other, next);
                set(next, other);
            }
        }
        l.run.store(ptr::null_mut(), Relaxed);
    }

    /// Unlinks the item `p` this list owns and returns its reference.
    #[inline(always)]
    fn unlink(&mut self, p: *const T) -> Arc<T> {
        // SAFETY: `p` and its neighbours are items this list owns.
        let l = link::<T, Tag>(unsafe { &*p });
        let (prev, next) = (l.prev.load(Relaxed) as *const T, l.next.load(Relaxed) as *const T);
        if KEYED {
            self.leave_run(prev, p, next);
        }
        if prev.is_null() {
            self.head = next;
        } else {
            link::<T, Tag>(unsafe { &*prev }).next.store(next as *mut T, Relaxed);
        }
        if next.is_null() {
            self.tail = prev;
        } else {
            link::<T, Tag>(unsafe { &*next }).prev.store(prev as *mut T, Relaxed);
        }
        l.prev.store(ptr::null_mut(), Relaxed);
        l.next.store(ptr::null_mut(), Relaxed);
        // Last: whoever sees the item free afterwards sees its links cleared.
        l.owner.store(0, Release);
        self.len -= 1;
        // SAFETY: `p` came from `Arc::into_raw` when it was claimed, and this list owned that
        // reference until now.
        unsafe { Arc::from_raw(p) }
    }

    /// Takes the first item out ([`WList::unlink`] for the item that has no predecessor).
    #[inline]
    pub fn pop_front(&mut self) -> Option<Arc<T>> {
        let p = self.head;
        if p.is_null() {
            return None;
        }
        // SAFETY: `p`, the head, and its successor are items this list owns.
        let l = link::<T, Tag>(unsafe { &*p });
        let next = l.next.load(Relaxed) as *const T;
        if KEYED {
            self.leave_run(ptr::null(), p, next);
        }
        self.head = next;
        if next.is_null() {
            self.tail = ptr::null();
        } else {
            link::<T, Tag>(unsafe { &*next }).prev.store(ptr::null_mut(), Relaxed);
        }
        // Its `prev` is null already: it was first.
        l.next.store(ptr::null_mut(), Relaxed);
        // Last: whoever sees the item free afterwards sees its links cleared.
        l.owner.store(0, Release);
        self.len -= 1;
        // SAFETY: `p` came from `Arc::into_raw` when it was claimed, and this list owned that
        // reference until now.
        Some(unsafe { Arc::from_raw(p) })
    }

    /// Takes `t` out if this list holds it.
    pub fn remove(&mut self, t: &T) -> Option<Arc<T>> {
        self.contains(t).then(|| self.unlink(t as *const T))
    }

    /// Takes out the first item for which `f` holds (a walk from the head).
    pub fn remove_first_where(&mut self, mut f: impl FnMut(&T) -> bool) -> Option<Arc<T>> {
        let mut p = self.head;
        while !p.is_null() {
            // SAFETY: an item this list owns, alive while the list holds it.
            let t = unsafe { &*p };
            if f(t) {
                return Some(self.unlink(p));
            }
            p = link::<T, Tag>(t).next.load(Relaxed);
        }
        None
    }

    /// Takes out every item for which `f` holds, in one walk from the head (O(items)), handing
    /// each to `out` in order.
    pub fn remove_all_where(&mut self, mut f: impl FnMut(&T) -> bool, mut out: impl FnMut(Arc<T>)) {
        let mut p = self.head;
        while !p.is_null() {
            // SAFETY: an item this list owns, alive while the list holds it.
            let t = unsafe { &*p };
            let next = link::<T, Tag>(t).next.load(Relaxed);
            if f(t) {
                out(self.unlink(p));
            }
            p = next;
        }
    }

    /// The items, first to last, with their keys.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> + '_ {
        let mut p = self.head;
        core::iter::from_fn(move || {
            if p.is_null() {
                return None;
            }
            // SAFETY: an item this list owns, alive while the list is borrowed.
            let t = unsafe { &*p };
            p = link::<T, Tag>(t).next.load(Relaxed);
            Some((link::<T, Tag>(t).key.load(Relaxed), t))
        })
    }

    /// Empties the list into `f`, first to last.
    pub fn drain(&mut self, mut f: impl FnMut(u64, Arc<T>)) {
        while let Some(k) = self.front_key() {
            let t = self.pop_front().expect("not empty");
            f(k, t);
        }
    }

    /// Moves every item into a new list with the same token (this one is left empty).
    pub fn take(&mut self) -> WList<T, Tag, KEYED> {
        let l = WList { head: self.head, tail: self.tail, len: self.len, token: self.token, _owns: PhantomData };
        self.head = ptr::null();
        self.tail = ptr::null();
        self.len = 0;
        l
    }

    /// Whether the links agree with each other, the length and the keys' order (for the
    /// consistency check and the tests).
    pub fn is_consistent(&self) -> bool {
        let (mut n, mut prev, mut p, mut last_key) = (0usize, ptr::null::<T>(), self.head, u64::MAX);
        // A keyed list: the first item of the run `p` is in.
        let mut first = ptr::null::<T>();
        while !p.is_null() {
            // SAFETY: an item this list owns (and so are the runs' ends it names, once checked
            // to be items met in this walk).
            let l = link::<T, Tag>(unsafe { &*p });
            let k = l.key.load(Relaxed);
            if l.prev.load(Relaxed) as *const T != prev || l.owner.load(Relaxed) != self.token || k > last_key {
                return false;
            }
            let next = l.next.load(Relaxed) as *const T;
            if KEYED {
                if prev.is_null() || k != last_key {
                    first = p;
                }
                // SAFETY: `next` is an item of this list or null (its links are checked when
                // the walk reaches it).
                let last = next.is_null() || link::<T, Tag>(unsafe { &*next }).key.load(Relaxed) != k;
                let run = |q: *const T| link::<T, Tag>(unsafe { &*q }).run.load(Relaxed) as *const T;
                if last && (run(p) != first || run(first) != p) {
                    return false;
                }
            }
            last_key = k;
            n += 1;
            prev = p;
            p = next;
            if n > self.len {
                return false;
            }
        }
        n == self.len && prev == self.tail
    }
}

/// What only plain lists do (a keyed list stays sorted).
impl<T: WLinked<Tag>, Tag> WList<T, Tag, false> {
    /// Puts `t` first (key 0).
    #[inline]
    pub fn push_front(&mut self, t: Arc<T>) -> Result<(), Arc<T>> {
        let p = self.claim(t, 0)?;
        self.link_after(ptr::null(), p);
        Ok(())
    }

    /// Appends `t` and takes the first item out (`t` itself if the list was empty): a turn of
    /// a FIFO in one pass over the links. The length stays as it was. Hands `t` back if a list
    /// holds it.
    #[inline(always)]
    pub fn rotate(&mut self, t: Arc<T>) -> Result<Arc<T>, Arc<T>> {
        let h = self.head;
        if h.is_null() {
            return if link::<T, Tag>(&*t).is_queued() { Err(t) } else { Ok(t) };
        }
        let p = self.claim(t, 0)?;
        // SAFETY: `h` is this list's first item and `p` was just claimed for it (alive: the
        // list holds a reference of each); `tail` is an item of this list too (not null: the
        // list is not empty).
        let (hl, pl) = (link::<T, Tag>(unsafe { &*h }), link::<T, Tag>(unsafe { &*p }));
        let next = hl.next.load(Relaxed) as *const T;
        if next.is_null() {
            // `h` was alone: `p` takes its place.
            pl.prev.store(ptr::null_mut(), Relaxed);
            self.head = p;
        } else {
            // SAFETY: `next` and the tail are items of this list.
            link::<T, Tag>(unsafe { &*next }).prev.store(ptr::null_mut(), Relaxed);
            link::<T, Tag>(unsafe { &*self.tail }).next.store(p as *mut T, Relaxed);
            pl.prev.store(self.tail as *mut T, Relaxed);
            self.head = next;
        }
        pl.next.store(ptr::null_mut(), Relaxed);
        self.tail = p;
        hl.next.store(ptr::null_mut(), Relaxed);
        // Last: whoever sees the item free afterwards sees its links cleared (its `prev` is
        // null already: it was first).
        hl.owner.store(0, Release);
        // SAFETY: `h` came from `Arc::into_raw` when it was claimed, and this list owned that
        // reference until now.
        Ok(unsafe { Arc::from_raw(h) })
    }

}

/// What only keyed lists do.
impl<T: WLinked<Tag>, Tag> KeyedList<T, Tag> {
    /// Inserts `t` after every item whose key is at least `key` (highest key first, first come
    /// first served within a key), and returns the steps its place took: a walk from the tail
    /// over the runs of lower keys, one step per run.
    pub fn insert_by_key(&mut self, t: Arc<T>, key: u64) -> Result<usize, Arc<T>> {
        let p = self.claim(t, key)?;
        let (after, steps) = self.insertion_point(key);
        self.link_after(after, p);
        Ok(steps)
    }

    /// The item an insertion at `key` goes after (null: first), and the number of runs the
    /// walk stepped over.
    #[inline(always)]
    fn insertion_point(&self, key: u64) -> (*const T, usize) {
        let (mut after, mut steps) = (self.tail, 0);
        // SAFETY: every pointer reached from the tail is an item this list owns. `after` is
        // the last item of its run each time (the tail; then the item before a run's first),
        // so its `run` names that run's first item.
        while !after.is_null() && link::<T, Tag>(unsafe { &*after }).key.load(Relaxed) < key {
            let first = link::<T, Tag>(unsafe { &*after }).run.load(Relaxed) as *const T;
            after = link::<T, Tag>(unsafe { &*first }).prev.load(Relaxed);
            steps += 1;
        }
        (after, steps)
    }

}

impl<T: WLinked<Tag>, Tag, const K: bool> Drop for WList<T, Tag, K> {
    /// Releases the references of the items still in it.
    fn drop(&mut self) {
        while self.pop_front().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Item {
        id: u32,
        link: WLink<Item>,
    }
    // SAFETY: `link` is a field of the item.
    unsafe impl WLinked for Item {
        fn wlink(&self) -> &WLink<Item> {
            &self.link
        }
    }
    fn item(id: u32) -> Arc<Item> {
        Arc::new(Item { id, link: WLink::new() })
    }
    fn ids<const K: bool>(l: &WList<Item, (), K>) -> Vec<(u64, u32)> {
        l.iter().map(|(k, t)| (k, t.id)).collect()
    }

    #[test]
    fn fifo_and_removal() {
        let mut l = WList::new(1);
        let (a, b, c) = (item(1), item(2), item(3));
        l.push_back(a.clone()).ok().unwrap();
        l.push_back(b.clone()).ok().unwrap();
        l.push_front(c.clone()).ok().unwrap();
        assert_eq!(ids(&l), vec![(0, 3), (0, 1), (0, 2)]);
        assert_eq!(Arc::strong_count(&a), 2);
        assert!(l.remove(&a).is_some());
        assert!(l.remove(&a).is_none(), "not in the list any more");
        assert_eq!(Arc::strong_count(&a), 1);
        assert_eq!(l.pop_front().unwrap().id, 3);
        assert!(l.is_consistent());
        drop(l);
        assert_eq!(Arc::strong_count(&b), 1, "a dropped list releases its items");
    }

    #[test]
    fn an_item_is_in_one_list_only() {
        let (mut l1, mut l2): (WList<Item>, WList<Item>) = (WList::new(1), WList::new(2));
        let a = item(1);
        l1.push_back(a.clone()).ok().unwrap();
        assert!(l2.push_back(a.clone()).is_err());
        assert!(l1.push_back(a.clone()).is_err());
        assert!(l2.remove(&a).is_none());
        assert!(l1.remove(&a).is_some());
        assert!(l2.push_back(a.clone()).is_ok());
    }

    #[test]
    fn keyed_insertion_is_stable() {
        let mut l = KeyedList::new(7);
        for (id, k) in [(1, 5), (2, 9), (3, 5), (4, 1), (5, 9), (6, 0)] {
            l.insert_by_key(item(id), k).ok().unwrap();
        }
        assert_eq!(ids(&l), vec![(9, 2), (9, 5), (5, 1), (5, 3), (1, 4), (0, 6)]);
        assert!(l.is_consistent());
        let mut t = l.take();
        assert!(l.is_empty() && t.len() == 6 && t.is_consistent());
        let mut seen = vec![];
        t.drain(|k, x| seen.push((k, x.id)));
        assert_eq!(seen.len(), 6);
    }

    /// An item with two links (a thread: its wait-queue link and its run-queue link) is in
    /// one list of each tag at once; each list uses only its own link.
    struct Two {
        id: u32,
        wait: WLink<Two>,
        run: WLink<Two>,
    }
    enum RunTag {}
    // SAFETY: `wait` is a field of the item.
    unsafe impl WLinked for Two {
        fn wlink(&self) -> &WLink<Two> {
            &self.wait
        }
    }
    // SAFETY: `run` is another field of the item.
    unsafe impl WLinked<RunTag> for Two {
        fn wlink(&self) -> &WLink<Two> {
            &self.run
        }
    }

    #[test]
    fn two_tags_two_links() {
        let two = |id| Arc::new(Two { id, wait: WLink::new(), run: WLink::new() });
        let (a, b) = (two(1), two(2));
        let mut w: WList<Two> = WList::new(1);
        let mut r: WList<Two, RunTag> = WList::new(1);
        w.push_back(a.clone()).ok().unwrap();
        w.push_back(b.clone()).ok().unwrap();
        r.push_back(b.clone()).ok().unwrap();
        r.push_back(a.clone()).ok().unwrap();
        assert!(r.push_front(a.clone()).is_err(), "its run link is taken");
        assert!(a.wait.is_queued() && a.run.is_queued());
        assert_eq!(w.iter().map(|(_, t)| t.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(r.iter().map(|(_, t)| t.id).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(w.pop_front().unwrap().id, 1);
        assert!(!a.wait.is_queued() && a.run.is_queued());
        assert_eq!(r.remove_first_where(|t| t.id == 1).unwrap().id, 1);
        assert!(r.remove_first_where(|t| t.id == 1).is_none());
        assert!(w.is_consistent() && r.is_consistent());
        assert_eq!(Arc::strong_count(&b), 3);
        drop((w, r));
        assert_eq!((Arc::strong_count(&a), Arc::strong_count(&b)), (1, 1));
    }

    /// One step of the model test: `op` on `l` and on `model` (the items in the list's order,
    /// with their keys); `insert` is the list kind's own insertion (`push_front` or
    /// `insert_by_key`), `rotate` a plain list's `rotate`.
    fn step<const K: bool>(
        l: &mut WList<Item, (), K>,
        model: &mut Vec<(u64, u32)>,
        items: &[Arc<Item>],
        (op, i, k): (u8, u32, u64),
        insert: fn(&mut WList<Item, (), K>, Arc<Item>, u64) -> Result<(), Arc<Item>>,
        rotate: Option<fn(&mut WList<Item, (), K>, Arc<Item>) -> Result<Arc<Item>, Arc<Item>>>,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let t = &items[i as usize];
        let inside = model.iter().any(|&(_, id)| id == i);
        match op {
            0 => {
                let r = l.push_back(t.clone());
                proptest::prop_assert_eq!(r.is_ok(), !inside);
                if !inside {
                    model.push((0, i));
                }
            }
            1 => {
                let r = insert(l, t.clone(), k);
                proptest::prop_assert_eq!(r.is_ok(), !inside);
                if !inside {
                    // A plain list puts it first (key 0); a keyed one after every key ≥ k.
                    let at = if K { model.iter().position(|&(mk, _)| mk < k).unwrap_or(model.len()) } else { 0 };
                    model.insert(at, (if K { k } else { 0 }, i));
                }
            }
            2 if rotate.is_some() => {
                let got = rotate.unwrap()(l, t.clone()).map(|x| x.id).map_err(|x| x.id);
                let want = if inside {
                    Err(i)
                } else if model.is_empty() {
                    Ok(i)
                } else {
                    model.push((0, i));
                    Ok(model.remove(0).1)
                };
                proptest::prop_assert_eq!(got, want);
            }
            2 | 3 => {
                let got = l.pop_front().map(|x| x.id);
                let want = if model.is_empty() { None } else { Some(model.remove(0).1) };
                proptest::prop_assert_eq!(got, want);
            }
            4 => {
                let got = l.remove(t).map(|x| x.id);
                proptest::prop_assert_eq!(got, inside.then_some(i));
                model.retain(|&(_, id)| id != i);
            }
            5 => {
                let got = l.remove_first_where(|x| x.id == i).map(|x| x.id);
                proptest::prop_assert_eq!(got, inside.then_some(i));
                model.retain(|&(_, id)| id != i);
            }
            6 => {
                // Every item of the parity of `i`, in one walk.
                let mut out = vec![];
                l.remove_all_where(|x| x.id % 2 == i % 2, |x| out.push(x.id));
                let want: Vec<u32> = model.iter().filter(|&&(_, id)| id % 2 == i % 2).map(|&(_, id)| id).collect();
                proptest::prop_assert_eq!(out, want);
                model.retain(|&(_, id)| id % 2 != i % 2);
            }
            _ => {
                // The items move to a new list with the same token, and back.
                let taken = l.take();
                proptest::prop_assert!(l.is_empty() && taken.is_consistent());
                *l = taken;
            }
        }
        proptest::prop_assert_eq!(ids(l), model.clone());
        proptest::prop_assert_eq!(l.len(), model.len());
        proptest::prop_assert!(l.is_consistent());
        for t in items {
            let held = model.iter().any(|&(_, id)| id == t.id);
            proptest::prop_assert_eq!(t.link.is_queued(), held);
            if !held {
                proptest::prop_assert!(t.link.prev.load(Relaxed).is_null() && t.link.next.load(Relaxed).is_null());
            }
        }
        Ok(())
    }

    proptest::proptest! {
        /// Random sequences against a plain vector kept in the same order: a plain list
        /// (push_back, push_front, rotate, pop_front, remove, remove_first_where,
        /// remove_all_where, take).
        #[test]
        fn plain_matches_a_vector(ops in proptest::collection::vec((0u8..8, 0u32..8, 0u64..4), 1..200)) {
            let items: Vec<Arc<Item>> = (0..8).map(item).collect();
            let mut l: WList<Item> = WList::new(3);
            let mut model = vec![];
            for op in ops {
                step(&mut l, &mut model, &items, op, |l, t, _| l.push_front(t), Some(|l, t| l.rotate(t)))?;
            }
            drop(l);
            for t in &items {
                proptest::prop_assert_eq!(Arc::strong_count(t), 1);
            }
        }

        /// The same for a keyed list (push_back, insert_by_key, pop_front, the removals, take,
        /// drain at the end), whose run
        /// ends `is_consistent` checks after every step; keys from few values, so that runs
        /// grow, split and merge.
        #[test]
        fn keyed_matches_a_vector(ops in proptest::collection::vec((0u8..11, 0u32..12, 0u64..4), 1..300)) {
            let items: Vec<Arc<Item>> = (0..12).map(item).collect();
            let mut l: KeyedList<Item> = KeyedList::new(3);
            let mut model = vec![];
            for (o, i, k) in ops {
                // Weighted towards insertions, so that runs grow long, split and merge.
                let op = [0, 1, 1, 1, 1, 2, 3, 4, 5, 6, 7][o as usize];
                step(&mut l, &mut model, &items, (op, i, k), |l, t, k| l.insert_by_key(t, k).map(|_| ()), None)?;
            }
            let mut drained = vec![];
            l.drain(|k, x| drained.push((k, x.id)));
            proptest::prop_assert_eq!(drained, model);
            proptest::prop_assert!(l.is_empty() && l.is_consistent());
            drop(l);
            for t in &items {
                proptest::prop_assert_eq!(Arc::strong_count(t), 1);
            }
        }
    }

    /// An insertion walks one step per run of lower keys, however long the runs (a list of
    /// 10,000 items, 7,500 of them in 3 runs below the new key).
    #[test]
    fn keyed_insertion_skips_runs() {
        let mut l = KeyedList::new(5);
        let items: Vec<Arc<Item>> = (0..10_000).map(item).collect();
        for (n, t) in items.iter().enumerate() {
            l.insert_by_key(t.clone(), [9, 3, 2, 1][n * 4 / items.len()]).ok().unwrap();
        }
        assert!(l.is_consistent());
        let steps = |l: &KeyedList<Item>, key: u64| l.insertion_point(key).1;
        assert_eq!(steps(&l, 5), 3);
        assert_eq!(steps(&l, 0), 0);
        let x = item(10_000);
        assert_eq!(l.insert_by_key(x.clone(), 5).ok(), Some(3), "the steps it took");
        let order: Vec<u64> = l.iter().map(|(k, _)| k).collect();
        assert_eq!(order[2500], 5, "after the 2,500 items of key 9");
        assert_eq!(l.iter().nth(2500).unwrap().1.id, 10_000);
        assert!(l.is_consistent());
        // Taking the runs' ends out keeps the others' right.
        assert!(l.remove(&items[2500]).is_some() && l.remove(&items[4999]).is_some());
        assert!(l.remove(&x).is_some() && l.is_consistent());
        assert_eq!(steps(&l, 5), 3);
        drop(l);
        assert_eq!(Arc::strong_count(&items[0]), 1);
    }
}
