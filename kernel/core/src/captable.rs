//! A task's capability table: a fixed number of slots, each empty or holding a capability
//! (an object reference, rights, a badge).
//!
//! Generic over the object reference `O` so it is tested on the host with plain values; the
//! kernel instantiates it with its reference-counted kernel objects. Every error maps to an ABI
//! error code.
use alloc::sync::Arc;
use rl4_abi::{Error, ObjType, Rights};

use crate::paged::PagedVec;
use crate::qsbr::Shadow;

/// What the table needs to know about an object.
pub trait Object: Clone {
    /// What ties a capability to its place in its object's derivation tree (the kernel's:
    /// `obj::Link`; `()` where nothing is derived). `Default` is "not in a tree yet".
    type Link: Clone + Default + core::fmt::Debug + PartialEq + Eq;
    fn obj_type(&self) -> ObjType;
    /// The address a lock-free reader of the slot's shadow may use (`qsbr.rs`), 0 for objects
    /// no such reader looks at.
    fn fast_address(&self) -> u64 {
        0
    }
    /// Called, under the table's lock, for each capability leaving a slot of a table with a
    /// shadow (the only tables a lock-free reader looks at) whose [`Object::fast_address`] is
    /// not 0: the kernel keeps the object alive until every CPU that may have read the address
    /// has left the kernel.
    fn retire(&self) {}
    /// Called for every capability put into a slot (under the table's lock): with
    /// [`Object::left`], an object can count the capabilities that slots hold — not the
    /// references in flight (a blocked sender's) or in the kernel's hands.
    fn entered(&self) {}
    /// Called for every capability leaving a slot: removed, drained, or dropped with its table
    /// (under the table's lock, or in the table's destructor); `table` is the table's owner
    /// ([`CapTable::set_owner`], 0 if none was set).
    fn left(&self, _table: usize) {}
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cap<O: Object> {
    pub obj: O,
    pub rights: Rights,
    pub badge: u64,
    pub link: O::Link,
}

impl<O: Object> Cap<O> {
    /// An original capability (not derived from another).
    pub fn new(obj: O, rights: Rights, badge: u64) -> Self {
        Cap { obj, rights, badge, link: O::Link::default() }
    }
}

/// The slots, and (once attached) their shadow for lock-free readers (`qsbr.rs`), which every
/// change of a slot keeps up to date (the table is the only writer). The slots lie in pieces
/// of at most a page each (`paged.rs`: 256 slots of 56 bytes in the kernel are four pieces),
/// so that making a table never needs physically contiguous frames.
pub struct CapTable<O: Object> {
    slots: PagedVec<Option<Cap<O>>>,
    shadow: Option<Arc<Shadow>>,
    /// Who the table belongs to, as a number its user chose ([`Object::left`] is told it).
    owner: usize,
}

impl<O: Object> CapTable<O> {
    pub fn new(slots: usize) -> Self {
        Self::try_new(slots).expect("out of memory for a capability table")
    }

    /// A table of `slots` empty slots, or `None` if there is no memory for it.
    pub fn try_new(slots: usize) -> Option<Self> {
        Some(CapTable { slots: PagedVec::try_filled(slots, || None)?, shadow: None, owner: 0 })
    }

    /// Names the table's owner for [`Object::left`] (the kernel: its task's address space).
    pub fn set_owner(&mut self, owner: usize) {
        self.owner = owner;
    }

    /// Whether a shadow is attached.
    pub fn has_shadow(&self) -> bool {
        self.shadow.is_some()
    }

    /// Attaches `shadow` (as many slots as the table, all empty) and writes into it every slot
    /// a lock-free reader may use; from now on every change of such a slot is written there
    /// too. A table that has one keeps it: `shadow` is handed back.
    pub fn attach(&mut self, shadow: Arc<Shadow>) -> Result<(), Arc<Shadow>> {
        if self.shadow.is_some() || shadow.len() != self.slots.len() {
            return Err(shadow);
        }
        for (i, c) in self.slots.iter().enumerate() {
            if let Some(c) = c.as_ref().filter(|c| c.obj.fast_address() != 0) {
                shadow.write(i, c.obj.fast_address(), c.rights, c.badge);
            }
        }
        self.shadow = Some(shadow);
        Ok(())
    }

    fn publish(&self, i: usize) {
        let Some(sh) = &self.shadow else { return };
        match &self.slots[i] {
            Some(c) => sh.write(i, c.obj.fast_address(), c.rights, c.badge),
            None => sh.write(i, 0, Rights::NONE, 0),
        }
    }

    /// Slot `i` is about to lose `c`: its shadow forgets it first, then the object is retired
    /// (only if a shadow was ever attached: before, nobody read the slot without the lock).
    fn vacate(&self, i: usize, c: &Cap<O>) {
        c.obj.left(self.owner);
        if c.obj.fast_address() != 0 {
            if let Some(sh) = &self.shadow {
                sh.write(i, 0, Rights::NONE, 0);
                c.obj.retire();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    fn index(&self, slot: u64) -> Result<usize, Error> {
        usize::try_from(slot).ok().filter(|&i| i < self.slots.len()).ok_or(Error::SlotOutOfRange)
    }

    /// The capability in `slot`.
    pub fn get(&self, slot: u64) -> Result<&Cap<O>, Error> {
        let i = self.index(slot)?;
        self.slots[i].as_ref().ok_or(Error::EmptySlot)
    }

    /// Calls `f` with the capability in `slot` and its link to change (only the link: the
    /// object, rights and badge that the slot's shadow repeats stay as they are).
    pub fn with_link<R>(&mut self, slot: u64, f: impl FnOnce(&O, Rights, u64, &mut O::Link) -> R) -> Result<R, Error> {
        let i = self.index(slot)?;
        let Cap { obj, rights, badge, link } = self.slots[i].as_mut().ok_or(Error::EmptySlot)?;
        Ok(f(obj, *rights, *badge, link))
    }

    /// The capability in `slot`, checked to name an object of type `ty` with at least `rights`.
    pub fn lookup(&self, slot: u64, ty: ObjType, rights: Rights) -> Result<&Cap<O>, Error> {
        let c = self.get(slot)?;
        if c.obj.obj_type() != ty {
            return Err(Error::WrongType);
        }
        if !c.rights.contains(rights) {
            return Err(Error::MissingRight);
        }
        Ok(c)
    }

    /// Checks that `slot` exists and is empty.
    pub fn check_free(&self, slot: u64) -> Result<(), Error> {
        let i = self.index(slot)?;
        if self.slots[i].is_some() { Err(Error::SlotOccupied) } else { Ok(()) }
    }

    /// Puts `cap` into the empty `slot`.
    pub fn insert(&mut self, slot: u64, cap: Cap<O>) -> Result<(), Error> {
        self.check_free(slot)?;
        let i = self.index(slot)?;
        cap.obj.entered();
        self.slots[i] = Some(cap);
        if self.slots[i].as_ref().is_some_and(|c| c.obj.fast_address() != 0) {
            self.publish(i);
        }
        Ok(())
    }

    /// Empties `slot` and returns what it held.
    pub fn remove(&mut self, slot: u64) -> Result<Cap<O>, Error> {
        let i = self.index(slot)?;
        let c = self.slots[i].take().ok_or(Error::EmptySlot)?;
        self.vacate(i, &c);
        Ok(c)
    }

    /// A copy of the capability in `slot` with only the rights in `mask` (never more than the
    /// original has), carrying a clone of its link (the kernel makes the copy a child of it
    /// when it inserts it). `mask` must be a valid rights set.
    pub fn derive(&self, slot: u64, mask: u64) -> Result<Cap<O>, Error> {
        if !Rights::is_valid(mask) {
            return Err(Error::InvalidArgument);
        }
        let c = self.get(slot)?;
        Ok(Cap { obj: c.obj.clone(), rights: c.rights.intersect(Rights(mask)), badge: c.badge, link: c.link.clone() })
    }

    /// Moves every capability into a table of its own, leaving this one with no slots (for the
    /// destructor of a task: nothing reads a dead task's shadow, and it allocates nothing).
    pub fn take_all(&mut self) -> CapTable<O> {
        CapTable { slots: core::mem::take(&mut self.slots), shadow: self.shadow.take(), owner: self.owner }
    }

    /// Empties every slot, handing each capability to `f` (for task teardown).
    pub fn drain(&mut self, mut f: impl FnMut(Cap<O>)) {
        for i in 0..self.slots.len() {
            if let Some(c) = self.slots[i].take() {
                self.vacate(i, &c);
                f(c)
            }
        }
    }

    /// Empties the next 64 slots from `*next` on (advancing it), handing back what they held
    /// (on the stack: no allocation), or `None` once every slot has been passed (to empty a
    /// table a piece at a time, dropping each piece after the lock).
    pub fn drain_piece(&mut self, next: &mut usize) -> Option<[Option<Cap<O>>; 64]> {
        if *next >= self.slots.len() {
            return None;
        }
        let first = *next;
        let end = (first + 64).min(self.slots.len());
        *next = end;
        Some(core::array::from_fn(|k| {
            let i = first + k;
            let c = if i < end { self.slots[i].take() } else { None };
            if let Some(c) = &c {
                self.vacate(i, c);
            }
            c
        }))
    }

    /// Every capability with its slot.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Cap<O>)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|c| (i as u64, c)))
    }

    /// Slots in use.
    pub fn used(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

impl<O: Object> Drop for CapTable<O> {
    /// The capabilities still in slots leave them ([`Object::left`]) as the table goes.
    fn drop(&mut self) {
        for c in self.slots.iter().flatten() {
            c.obj.left(self.owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Obj(ObjType, u32);
    impl Object for Obj {
        type Link = ();
        fn obj_type(&self) -> ObjType {
            self.0
        }
    }

    fn cap(t: ObjType, id: u32, r: Rights) -> Cap<Obj> {
        Cap::new(Obj(t, id), r, 0)
    }

    /// An object that counts the capabilities slots hold (`entered`/`left`).
    #[derive(Clone, Debug)]
    struct Counted(alloc::sync::Arc<core::sync::atomic::AtomicI64>);
    impl Object for Counted {
        type Link = ();
        fn obj_type(&self) -> ObjType {
            ObjType::IoPort
        }
        fn entered(&self) {
            self.0.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        }
        fn left(&self, table: usize) {
            assert_eq!(table, 7, "the table's owner is passed on");
            self.0.fetch_sub(1, core::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn slots_held_are_counted_through_every_exit() {
        let n = alloc::sync::Arc::new(core::sync::atomic::AtomicI64::new(0));
        let held = || n.load(core::sync::atomic::Ordering::Relaxed);
        let c = Cap::new(Counted(n.clone()), Rights::ALL, 0);
        let mut t = CapTable::new(200);
        t.set_owner(7);
        for i in 0..200 {
            t.insert(i, c.clone()).unwrap();
        }
        // A refused insert counts nothing; a copy outside a slot counts nothing.
        assert!(t.insert(3, c.clone()).is_err());
        let in_flight = t.derive(4, Rights::ALL.0).unwrap();
        assert_eq!(held(), 200);
        drop(t.remove(0).unwrap());
        assert_eq!(held(), 199);
        let mut next = 0;
        let piece = t.drain_piece(&mut next).unwrap();
        assert_eq!(held(), 136);
        drop(piece);
        let mut moved = t.take_all();
        assert_eq!(held(), 136, "moving the slots to another table changes nothing");
        moved.drain(|_| {});
        assert_eq!(held(), 0);
        let mut t = CapTable::new(8);
        t.set_owner(7);
        t.insert(1, c.clone()).unwrap();
        t.insert(2, in_flight).unwrap();
        assert_eq!(held(), 2);
        drop(t);
        assert_eq!(held(), 0, "the table's destructor lets go of what its slots held");
    }

    #[test]
    fn slots_are_checked() {
        let mut t = CapTable::new(4);
        assert_eq!(t.get(4).unwrap_err(), Error::SlotOutOfRange);
        assert_eq!(t.get(u64::MAX).unwrap_err(), Error::SlotOutOfRange);
        assert_eq!(t.get(1).unwrap_err(), Error::EmptySlot);
        t.insert(1, cap(ObjType::Frame, 7, Rights::READ)).unwrap();
        assert_eq!(t.insert(1, cap(ObjType::Frame, 8, Rights::READ)).unwrap_err(), Error::SlotOccupied);
        assert_eq!(t.get(1).unwrap().obj, Obj(ObjType::Frame, 7));
        assert_eq!(t.used(), 1);
    }

    #[test]
    fn lookup_checks_type_then_rights() {
        let mut t = CapTable::new(4);
        t.insert(0, cap(ObjType::Frame, 1, Rights::READ)).unwrap();
        assert_eq!(t.lookup(0, ObjType::Thread, Rights::NONE).unwrap_err(), Error::WrongType);
        assert_eq!(t.lookup(0, ObjType::Frame, Rights::WRITE).unwrap_err(), Error::MissingRight);
        assert!(t.lookup(0, ObjType::Frame, Rights::READ).is_ok());
        assert_eq!(t.lookup(2, ObjType::Frame, Rights::READ).unwrap_err(), Error::EmptySlot);
    }

    #[test]
    fn derive_never_adds_rights() {
        let mut t = CapTable::new(4);
        t.insert(0, cap(ObjType::Frame, 1, Rights::READ.union(Rights::GRANT))).unwrap();
        let c = t.derive(0, Rights::ALL.0).unwrap();
        assert_eq!(c.rights, Rights::READ.union(Rights::GRANT));
        let c = t.derive(0, Rights::WRITE.0).unwrap();
        assert_eq!(c.rights, Rights::NONE);
        assert_eq!(t.derive(0, 1 << 50).unwrap_err(), Error::InvalidArgument);
        assert_eq!(t.derive(3, 0).unwrap_err(), Error::EmptySlot);
    }

    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Fast(u64);
    impl Object for Fast {
        type Link = ();
        fn obj_type(&self) -> ObjType {
            ObjType::Endpoint
        }
        fn fast_address(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn the_shadow_follows_every_change() {
        let mut t: CapTable<Fast> = CapTable::new(3);
        t.insert(0, Cap::new(Fast(0x100), Rights::SEND, 5)).unwrap();
        let sh = Arc::new(Shadow::new(3));
        assert!(t.attach(Arc::new(Shadow::new(2))).is_err(), "a shadow of another size");
        assert!(t.attach(sh.clone()).is_ok());
        assert!(t.attach(Arc::new(Shadow::new(3))).is_err(), "a second shadow");
        assert_eq!((sh.read(0).unwrap().obj, sh.read(0).unwrap().badge), (0x100, 5));
        t.insert(2, Cap::new(Fast(0x200), Rights::RECEIVE, 0)).unwrap();
        assert_eq!(sh.read(2).unwrap().rights, Rights::RECEIVE);
        t.remove(0).unwrap();
        assert_eq!(sh.read(0).unwrap().obj, 0);
        t.drain(|_| {});
        assert_eq!(sh.read(2).unwrap().obj, 0);
        assert!(t.with_link(2, |_, _, _, _| ()).is_err());
    }

    #[test]
    fn remove_and_drain() {
        let mut t = CapTable::new(3);
        t.insert(0, cap(ObjType::Task, 1, Rights::ALL)).unwrap();
        t.insert(2, cap(ObjType::Thread, 2, Rights::ALL)).unwrap();
        assert_eq!(t.remove(0).unwrap().obj.1, 1);
        assert_eq!(t.remove(0).unwrap_err(), Error::EmptySlot);
        let mut seen = vec![];
        t.drain(|c| seen.push(c.obj.1));
        assert_eq!(seen, vec![2]);
        assert!(t.is_empty());
        // A piece at a time.
        let mut t = CapTable::new(130);
        for i in [0u64, 63, 64, 129] {
            t.insert(i, cap(ObjType::Task, i as u32, Rights::ALL)).unwrap();
        }
        let (mut next, mut seen) = (0, vec![]);
        while let Some(p) = t.drain_piece(&mut next) {
            seen.extend(p.into_iter().flatten().map(|c| c.obj.1));
        }
        assert_eq!((seen, next), (vec![0, 63, 64, 129], 130));
        assert!(t.is_empty() && t.len() == 130);
    }
}
