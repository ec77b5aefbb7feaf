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
}

impl<T> WLink<T> {
    pub const fn new() -> Self {
        WLink { prev: AtomicPtr::new(ptr::null_mut()), next: AtomicPtr::new(ptr::null_mut()), owner: AtomicUsize::new(0), key: AtomicU64::new(0) }
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

/// A wait queue (see the module documentation), threaded through the items' `Tag` links.
pub struct WList<T: WLinked<Tag>, Tag = ()> {
    head: *const T,
    tail: *const T,
    len: usize,
    token: usize,
    _owns: PhantomData<(Arc<T>, fn() -> Tag)>,
}

// SAFETY: the list owns `Arc<T>`s; moving it to another thread moves those references, which
// is sound when `Arc<T>` is `Send` (`T: Send + Sync`).
unsafe impl<T: WLinked<Tag> + Send + Sync, Tag> Send for WList<T, Tag> {}
// SAFETY: `&WList` gives only shared access to the items (`iter`), which `T: Sync` allows.
unsafe impl<T: WLinked<Tag> + Send + Sync, Tag> Sync for WList<T, Tag> {}

/// The link of `t` that lists of tag `Tag` use.
#[inline(always)]
fn link<T: WLinked<Tag>, Tag>(t: &T) -> &WLink<T> {
    <T as WLinked<Tag>>::wlink(t)
}

impl<T: WLinked<Tag>, Tag> WList<T, Tag> {
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

    /// Puts `t` first (key 0).
    #[inline]
    pub fn push_front(&mut self, t: Arc<T>) -> Result<(), Arc<T>> {
        let p = self.claim(t, 0)?;
        self.link_after(ptr::null(), p);
        Ok(())
    }

    /// Inserts `t` after every item whose key is at least `key` (highest key first, first come
    /// first served within a key): a walk from the tail over the items of lower keys.
    pub fn insert_by_key(&mut self, t: Arc<T>, key: u64) -> Result<(), Arc<T>> {
        let p = self.claim(t, key)?;
        let mut after = self.tail;
        // SAFETY: every pointer reached from the tail is an item this list owns.
        while !after.is_null() && link::<T, Tag>(unsafe { &*after }).key.load(Relaxed) < key {
            after = link::<T, Tag>(unsafe { &*after }).prev.load(Relaxed);
        }
        self.link_after(after, p);
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
        self.len += 1;
    }

    /// Unlinks the item `p` this list owns and returns its reference.
    #[inline(always)]
    fn unlink(&mut self, p: *const T) -> Arc<T> {
        // SAFETY: `p` and its neighbours are items this list owns.
        let l = link::<T, Tag>(unsafe { &*p });
        let (prev, next) = (l.prev.load(Relaxed) as *const T, l.next.load(Relaxed) as *const T);
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
    pub fn take(&mut self) -> WList<T, Tag> {
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
        while !p.is_null() {
            // SAFETY: an item this list owns.
            let l = link::<T, Tag>(unsafe { &*p });
            let k = l.key.load(Relaxed);
            if l.prev.load(Relaxed) as *const T != prev || l.owner.load(Relaxed) != self.token || k > last_key {
                return false;
            }
            last_key = k;
            n += 1;
            prev = p;
            p = l.next.load(Relaxed);
            if n > self.len {
                return false;
            }
        }
        n == self.len && prev == self.tail
    }
}

impl<T: WLinked<Tag>, Tag> Drop for WList<T, Tag> {
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
    fn ids(l: &WList<Item>) -> Vec<(u64, u32)> {
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
        let (mut l1, mut l2) = (WList::new(1), WList::new(2));
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
        let mut l = WList::new(7);
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

    proptest::proptest! {
        /// Random sequences against a plain vector kept in the same order.
        #[test]
        fn matches_a_vector(keyed in proptest::bool::ANY, ops in proptest::collection::vec((0u8..5, 0u32..8, 0u64..4), 1..200)) {
            let items: Vec<Arc<Item>> = (0..8).map(item).collect();
            let mut l = WList::new(3);
            let mut model: Vec<(u64, u32)> = vec![];
            for (op, i, k) in ops {
                // A list is either keyed (insertions by key only) or plain (no keyed ones).
                let op = match (keyed, op) { (true, 0 | 1) => 2, (false, 2) => 0, (_, o) => o };
                let t = &items[i as usize];
                let inside = model.iter().any(|&(_, id)| id == i);
                match op {
                    0 => {
                        let r = l.push_back(t.clone());
                        proptest::prop_assert_eq!(r.is_ok(), !inside);
                        if !inside { model.push((0, i)); }
                    }
                    1 => {
                        let r = l.push_front(t.clone());
                        proptest::prop_assert_eq!(r.is_ok(), !inside);
                        if !inside { model.insert(0, (0, i)); }
                    }
                    2 => {
                        let r = l.insert_by_key(t.clone(), k);
                        proptest::prop_assert_eq!(r.is_ok(), !inside);
                        if !inside {
                            let at = model.iter().position(|&(mk, _)| mk < k).unwrap_or(model.len());
                            model.insert(at, (k, i));
                        }
                    }
                    3 if !keyed && k == 3 => {
                        let got = l.rotate(t.clone()).map(|x| x.id).map_err(|x| x.id);
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
                    3 => {
                        let got = l.pop_front().map(|x| x.id);
                        let want = if model.is_empty() { None } else { Some(model.remove(0).1) };
                        proptest::prop_assert_eq!(got, want);
                    }
                    _ => {
                        let got = l.remove(t).map(|x| x.id);
                        proptest::prop_assert_eq!(got, inside.then_some(i));
                        model.retain(|&(_, id)| id != i);
                    }
                }
                proptest::prop_assert_eq!(ids(&l), model.clone());
                proptest::prop_assert_eq!(l.len(), model.len());
                proptest::prop_assert!(l.is_consistent());
                for t in &items {
                    let held = model.iter().any(|&(_, id)| id == t.id);
                    proptest::prop_assert_eq!(t.link.is_queued(), held);
                    if !held {
                        proptest::prop_assert!(t.link.prev.load(Relaxed).is_null() && t.link.next.load(Relaxed).is_null());
                    }
                }
            }
            drop(l);
            for t in &items {
                proptest::prop_assert_eq!(Arc::strong_count(t), 1);
            }
        }
    }
}
