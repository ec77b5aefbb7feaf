//! A task's capability table: a fixed number of slots, each empty or holding a capability
//! (an object reference, rights, a badge).
//!
//! Generic over the object reference `O` so it is tested on the host with plain values; the
//! kernel instantiates it with its reference-counted kernel objects. Every error maps to an ABI
//! error code.
use alloc::vec::Vec;
use rl4_abi::{Error, ObjType, Rights};

/// What the table needs to know about an object.
pub trait Object: Clone {
    /// What ties a capability to its place in its object's derivation tree (the kernel's:
    /// `obj::Link`; `()` where nothing is derived). `Default` is "not in a tree yet".
    type Link: Clone + Default + core::fmt::Debug + PartialEq + Eq;
    fn obj_type(&self) -> ObjType;
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

pub struct CapTable<O: Object> {
    slots: Vec<Option<Cap<O>>>,
}

impl<O: Object> CapTable<O> {
    pub fn new(slots: usize) -> Self {
        Self::try_new(slots).expect("out of memory for a capability table")
    }

    /// A table of `slots` empty slots, or `None` if there is no memory for it.
    pub fn try_new(slots: usize) -> Option<Self> {
        let mut v = Vec::new();
        v.try_reserve_exact(slots).ok()?;
        v.resize_with(slots, || None);
        Some(CapTable { slots: v })
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

    /// The capability in `slot`, to change in place.
    pub fn get_mut(&mut self, slot: u64) -> Result<&mut Cap<O>, Error> {
        let i = self.index(slot)?;
        self.slots[i].as_mut().ok_or(Error::EmptySlot)
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
        self.slots[i] = Some(cap);
        Ok(())
    }

    /// Empties `slot` and returns what it held.
    pub fn remove(&mut self, slot: u64) -> Result<Cap<O>, Error> {
        let i = self.index(slot)?;
        self.slots[i].take().ok_or(Error::EmptySlot)
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

    /// Empties every slot, handing each capability to `f` (for task teardown).
    pub fn drain(&mut self, mut f: impl FnMut(Cap<O>)) {
        for s in self.slots.iter_mut() {
            if let Some(c) = s.take() {
                f(c)
            }
        }
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
    }
}
