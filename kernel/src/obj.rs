//! Kernel objects and what capabilities point at.
//!
//! | object | holds | dies when |
//! |---|---|---|
//! | [`Memory`] | an allocation budget in bytes, charged by every object and frame made from it | its last reference goes |
//! | [`Frame`] | one 4 KiB physical frame | no capability and no mapping refers to it; the frame returns to the allocator and the budget |
//! | [`Space`] | a page-table root sharing the kernel half, its PCID, the frames it maps | no capability and no thread refers to it; its page tables are freed |
//! | [`Task`] | a capability table, its threads | it exits (all threads stop, all capabilities are deleted) and nothing refers to it |
//! | [`Thread`] | user registers, scheduling state, its task and space | it exits or its task does, and nothing refers to it |
//! | `Machine` | console and shutdown rights | never (no state) |
//! | `Devices` | the right to make `Irq` and `IoPort` capabilities (`device.rs`) | never (no state) |
//! | [`crate::irq::IrqLine`] | one interrupt line | its last capability goes; the line is masked and freed |
//! | [`crate::device::IoPortObj`] | a port range, and the address spaces that opened it | its last capability leaves its slot: the range closes in every task that opened it; the record goes with its last reference |
//!
//! Objects are reference-counted (`Arc`); a capability, a mapping, a run queue entry or a
//! thread's link to its task each hold one reference. Cycles (a task holding a capability to
//! itself or to its threads) are broken when the task exits: its table is emptied. Destruction
//! is iterative: a destructor hands the references it holds to `reclaim::later`, which destroys
//! them one at a time, never by recursion (`reclaim.rs`). Each object's cost pays for its
//! frames and its share of the kernel heap (`*_HEAP`, checked by `KernelCheck`).
use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use rl4_abi::{Error, ObjType};
use rl4_arch::entry::{RegsCell, UserRegs};
use rl4_arch::paging::{PageTableRoot, UserFrame};
use rl4_core::device::DeviceFrame;
use rl4_core::frames::OwnedFrame;
use rl4_core::captable::{self, CapTable};
use rl4_core::paged::PagedVec;
use rl4_core::deriv::{DerivTree, NodeId, Underivable};
use rl4_core::life::{Ident, Kinds};
use crate::lock::{GlobalMutex, Level, Mutex};

use crate::mem;

/// A capability's object.
#[derive(Clone)]
pub enum KObj {
    Task(Arc<Task>),
    Space(Arc<Space>),
    Thread(Arc<Thread>),
    Frame(Arc<Frame>),
    Memory(Arc<Memory>),
    Machine,
    Endpoint(Arc<crate::ipc::Endpoint>),
    Notification(Arc<crate::ipc::Notification>),
    /// The right to make `Irq` and `IoPort` capabilities (`device.rs`).
    Devices,
    Irq(Arc<crate::irq::IrqLine>),
    IoPort(Arc<crate::device::IoPortObj>),
}

impl KObj {
    /// The object's address (0 for the machine and devices capabilities, which name none).
    pub fn addr(&self) -> usize {
        match self {
            KObj::Task(a) => Arc::as_ptr(a) as usize,
            KObj::Space(a) => Arc::as_ptr(a) as usize,
            KObj::Thread(a) => Arc::as_ptr(a) as usize,
            KObj::Frame(a) => Arc::as_ptr(a) as usize,
            KObj::Memory(a) => Arc::as_ptr(a) as usize,
            KObj::Endpoint(a) => Arc::as_ptr(a) as usize,
            KObj::Notification(a) => Arc::as_ptr(a) as usize,
            KObj::Irq(a) => Arc::as_ptr(a) as usize,
            KObj::IoPort(a) => Arc::as_ptr(a) as usize,
            KObj::Machine | KObj::Devices => 0,
        }
    }

    /// Whether both name the same object.
    pub fn same(&self, o: &KObj) -> bool {
        use captable::Object;
        self.obj_type() == o.obj_type() && self.addr() == o.addr()
    }
}

impl captable::Object for KObj {
    type Link = Link;
    fn obj_type(&self) -> ObjType {
        match self {
            KObj::Task(_) => ObjType::Task,
            KObj::Space(_) => ObjType::AddressSpace,
            KObj::Thread(_) => ObjType::Thread,
            KObj::Frame(_) => ObjType::Frame,
            KObj::Memory(_) => ObjType::Memory,
            KObj::Machine => ObjType::Machine,
            KObj::Endpoint(_) => ObjType::Endpoint,
            KObj::Notification(_) => ObjType::Notification,
            KObj::Devices => ObjType::Devices,
            KObj::Irq(_) => ObjType::Irq,
            KObj::IoPort(_) => ObjType::IoPort,
        }
    }
    /// Endpoints are read without the table's lock by the IPC fast path (`fastpath.rs`).
    #[inline(always)]
    fn fast_address(&self) -> u64 {
        match self {
            KObj::Endpoint(e) => Arc::as_ptr(e) as u64,
            _ => 0,
        }
    }
    /// Keeps the endpoint alive until every CPU has left the kernel once (`qsbr.rs`).
    fn retire(&self) {
        if let KObj::Endpoint(e) = self {
            crate::qsbr::defer(e.clone());
        }
    }
    /// Port objects count the capabilities slots hold (`device::IoPortObj`).
    #[inline]
    fn entered(&self) {
        if let KObj::IoPort(p) = self {
            p.entered();
        }
    }
    /// A capability to a port object left a slot of the table of the task whose address space is
    /// `table` (`Task::new` names it): if that task has a range open through the object, it looks
    /// at its table after the locks (`device::PortsLeft`).
    #[inline]
    fn left(&self, table: usize) {
        if let KObj::IoPort(p) = self
            && p.left(table)
        {
            crate::reclaim::later(crate::reclaim::Garbage::PortsLeft(crate::device::PortsLeft(p.clone(), table)));
        }
    }
}

pub type Cap = captable::Cap<KObj>;

/// A capability's object as a capability in flight names it ([`InFlight`]): without keeping it
/// alive.
enum WeakObj {
    Task(Weak<Task>),
    Space(Weak<Space>),
    Thread(Weak<Thread>),
    Frame(Weak<Frame>),
    Memory(Weak<Memory>),
    Machine,
    Endpoint(Weak<crate::ipc::Endpoint>),
    Notification(Weak<crate::ipc::Notification>),
    Devices,
    Irq(Weak<crate::irq::IrqLine>),
    IoPort(Weak<crate::device::IoPortObj>),
}

/// A capability in flight: the one a sender blocked in an endpoint's queue carries (`Wait::Send`)
/// until a receiver takes it. It names its object without a reference that keeps it alive (a
/// weak one: a dead object's destructor has run, only its allocation waits, paid for by the
/// sender's heap share: [`LARGEST_OBJECT`]), and
/// the derivation node it will be a child of without owning it (`tracked`), so that it is
/// delivered only while the capability it was read from lives: that capability holds the object
/// (a slot's capability owns its node and holds a reference), and once it is gone (deleted,
/// revoked) the capability in flight can never arrive, and keeps nothing alive either. (Before
/// the thirty-fourth session it held a strong reference: a revoked capability in flight kept an
/// endpoint, and its waiters, for as long as its sender waited, which the sender's own task
/// decided — a review found it.)
pub struct InFlight {
    obj: WeakObj,
    rights: rl4_abi::Rights,
    badge: u64,
    link: Link,
}

impl InFlight {
    /// The capability `c` (a snapshot `tracked` made) goes into flight: what to keep in the
    /// sender's wait, and the object's reference, which the caller lets go of after its locks
    /// (it may be the last: the capability it was read from may be gone already).
    pub fn park(c: Cap) -> (InFlight, Cap) {
        let obj = match &c.obj {
            KObj::Task(a) => WeakObj::Task(Arc::downgrade(a)),
            KObj::Space(a) => WeakObj::Space(Arc::downgrade(a)),
            KObj::Thread(a) => WeakObj::Thread(Arc::downgrade(a)),
            KObj::Frame(a) => WeakObj::Frame(Arc::downgrade(a)),
            KObj::Memory(a) => WeakObj::Memory(Arc::downgrade(a)),
            KObj::Machine => WeakObj::Machine,
            KObj::Endpoint(a) => WeakObj::Endpoint(Arc::downgrade(a)),
            KObj::Notification(a) => WeakObj::Notification(Arc::downgrade(a)),
            KObj::Devices => WeakObj::Devices,
            KObj::Irq(a) => WeakObj::Irq(Arc::downgrade(a)),
            KObj::IoPort(a) => WeakObj::IoPort(Arc::downgrade(a)),
        };
        let Cap { obj: strong, rights, badge, link } = c;
        (InFlight { obj, rights, badge, link }, Cap::new(strong, rights, badge))
    }

    /// Its object, if it still lives.
    pub fn object(&self) -> Option<KObj> {
        Some(match &self.obj {
            WeakObj::Task(w) => KObj::Task(w.upgrade()?),
            WeakObj::Space(w) => KObj::Space(w.upgrade()?),
            WeakObj::Thread(w) => KObj::Thread(w.upgrade()?),
            WeakObj::Frame(w) => KObj::Frame(w.upgrade()?),
            WeakObj::Memory(w) => KObj::Memory(w.upgrade()?),
            WeakObj::Machine => KObj::Machine,
            WeakObj::Endpoint(w) => KObj::Endpoint(w.upgrade()?),
            WeakObj::Notification(w) => KObj::Notification(w.upgrade()?),
            WeakObj::Devices => KObj::Devices,
            WeakObj::Irq(w) => KObj::Irq(w.upgrade()?),
            WeakObj::IoPort(w) => KObj::IoPort(w.upgrade()?),
        })
    }

    /// It arrives: the capability again, to insert (as a child of its node, if that still
    /// lives), or, if its object is gone (and with it the capability it was read from), itself,
    /// to let go of after the locks (`reclaim::later_in_flight`: its link's lineage may go with
    /// it).
    pub fn arrive(self) -> Result<Cap, InFlight> {
        match self.object() {
            Some(obj) => Ok(Cap { obj, rights: self.rights, badge: self.badge, link: self.link }),
            None => Err(self),
        }
    }
}

/// The derivation tree of the capabilities that descend from one original capability
/// (`rl4_core::deriv`): made with the original, shared by every copy, mint and capability
/// received through IPC that comes from it, freed with the last of them. Its lock is taken
/// holding no capability table's and may be held while taking them (`lock.rs`).
pub struct Lineage {
    tree: Mutex<DerivTree<Home>, { Level::DERIV }>,
}

/// Where a capability of a [`Lineage`] lives, and the charge for its node: the task whose
/// slot holds a derived capability (a copy, a mint, one received through IPC) pays
/// [`DERIV_NODE_COST`] from its budget while the node lives; so does the task whose slot holds
/// an original capability for the root node it gets when something is first derived from it
/// (`tracked`): every node is charged (docs/memory.md).
pub struct Home {
    task: Weak<Task>,
    slot: u64,
    charge: Option<NodeCharge>,
}

impl Home {
    /// The home of a derived capability about to go into `slot` of `task`, charged to its
    /// budget.
    fn new(task: &Arc<Task>, slot: u64) -> Result<Home, Error> {
        let charge = NodeCharge::new(task.charge().of().0)?;
        Ok(Home { task: Arc::downgrade(task), slot, charge: Some(charge) })
    }

    /// An uncharged home (only for `inject=deriv`'s orphan node).
    fn original(task: &Arc<Task>, slot: u64) -> Home {
        Home { task: Arc::downgrade(task), slot, charge: None }
    }
}

/// [`DERIV_NODE_COST`] taken from a budget while a node lives, all of it heap share (a
/// [`Charge`] of one fixed size, kept small: it is in every node).
struct NodeCharge(Arc<Memory>);

impl NodeCharge {
    fn new(mem: &Arc<Memory>) -> Result<NodeCharge, Error> {
        mem.charge(DERIV_NODE_COST)?;
        HEAP_CHARGED.fetch_add(DERIV_NODE_COST, Ordering::Relaxed);
        Ok(NodeCharge(mem.clone()))
    }
}

impl Drop for NodeCharge {
    fn drop(&mut self) {
        HEAP_CHARGED.fetch_sub(DERIV_NODE_COST, Ordering::Relaxed);
        self.0.uncharge(DERIV_NODE_COST);
    }
}

/// What a capability's derivation node costs the budget of the task that holds it, bounded for
/// the worst case, a tree with one node: four places of the vector (its length stays within
/// about four times its live nodes: it shrinks, its live nodes moving down and a single first
/// piece made smaller, when at most a quarter is used and a quarter was freed since the last
/// look),
/// four entries of the forwarding index (its live entries and those of moved nodes freed since
/// the last look, in a first piece of four), the two piece lists of each, the tree's record
/// with its `Arc` header, and the heap's tag on each of those seven allocations. A tree of more
/// than one piece (65 places or more) has at least 17 live nodes, whose 17 × 640 bytes pay for
/// its partly used last piece (3 KiB) and the list of pieces (up to 3 KiB) besides their own
/// four places and index entries each (a review of the twentieth session counted 627 bytes a
/// node for the worst such tree). A tree whose capabilities are all gone but one in flight
/// (a sender blocked carrying it) keeps its record and empty lists, under 600 bytes, for as
/// long as the sender waits — paid for by no node; the blocked thread costs more.
pub const DERIV_NODE_COST: u64 = rl4_abi::cost::DERIV_NODE;
const _: () = assert!(
    (4 * DerivTree::<Home>::NODE_BYTES
        + 4 * DerivTree::<Home>::FORWARD_BYTES
        + 4 * core::mem::size_of::<alloc::vec::Vec<u8>>()
        + core::mem::size_of::<Lineage>()
        + 16
        + 7 * 16) as u64
        <= DERIV_NODE_COST
);

/// A capability's place in its [`Lineage`]. The capability in a slot *owns* its node (deleting
/// it, by any means, takes the node out of the tree, its children going to its parent); any
/// other copy of it (a system call's snapshot, a capability in flight in a blocked sender)
/// only names the node, which it gives as the parent when it is put into a slot. `Default`:
/// in no tree (a capability about to become an original).
#[derive(Default)]
pub struct Link {
    /// The tree and the node; the identifier's tag says whether this capability owns the node
    /// (`NodeId::tag`: kept in the identifier, so that a capability stays 56 bytes).
    at: Option<(Arc<Lineage>, NodeId)>,
}

impl Link {
    /// A link to node `id` of `lineage`, owning it or only naming it.
    fn new(lineage: Arc<Lineage>, id: NodeId, owned: bool) -> Link {
        Link { at: Some((lineage, id.tagged(owned))) }
    }

    fn parts(&self) -> Option<(&Arc<Lineage>, NodeId)> {
        self.at.as_ref().map(|(l, id)| (l, *id))
    }

    /// Whether this capability owns its node.
    fn owned(&self) -> bool {
        self.parts().is_some_and(|(_, id)| id.tag())
    }

    /// Whether this is node `id` of `lineage`.
    fn is(&self, lineage: &Arc<Lineage>, id: NodeId) -> bool {
        self.parts().is_some_and(|(l, i)| Arc::ptr_eq(l, lineage) && i == id)
    }

    /// Turns an owning link whose node is already gone into a naming one (nothing to remove).
    fn disown(&mut self) {
        if let Some((_, id)) = &mut self.at {
            *id = id.tagged(false);
        }
    }
}

impl Clone for Link {
    fn clone(&self) -> Self {
        Link { at: self.at.as_ref().map(|(l, id)| (l.clone(), id.tagged(false))) }
    }
}

impl PartialEq for Link {
    fn eq(&self, o: &Self) -> bool {
        match (self.parts(), o.parts()) {
            (None, None) => true,
            (Some((a, i)), Some((b, j))) => Arc::ptr_eq(a, b) && i == j,
            _ => false,
        }
    }
}
impl Eq for Link {}

impl core::fmt::Debug for Link {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.parts() {
            None => f.write_str("Link(none)"),
            Some((l, id)) => write!(f, "Link({:p}, {id:?}, owned {})", Arc::as_ptr(l), id.tag()),
        }
    }
}

impl Drop for Link {
    /// A capability leaving its slot leaves its tree. No lock of a capability table may be
    /// held (the tree's lock comes first): capabilities are dropped after the table's lock,
    /// as every kernel object is.
    fn drop(&mut self) {
        if let Some((l, id)) = self.at.as_ref().filter(|(_, id)| id.tag()) {
            // Its children go to its parent, as many as a task made: other CPUs' TLB shoot-downs
            // are answered between pieces of them (a review of the sixteenth session found
            // 60,000 children handed up in one go, interrupts off).
            let home = l.tree.lock_answering().remove_polling(*id, crate::tlb::service_tlb_if_up, |h, new| node_moved(l, h, new));
            drop(home);
        }
    }
}

/// A derivation node of `lineage` moves in its tree's vector (`DerivTree::maybe_shrink`, under
/// the tree's lock): the capability that owns it, in its home slot, is given its new identifier
/// `id` (lock order: a tree's lock, then a table's), so that it finds its node where it is. One
/// not in its slot (on its way out: a deletion waiting for the tree's lock, or its task's table
/// being torn down) keeps the old identifier, which the tree's forwarding index resolves
/// (`DerivTree::refresh`). The task reference taken here is let go of through the destruction
/// list if it is the last (no destructor under the lock).
fn node_moved(lineage: &Arc<Lineage>, home: &Home, id: NodeId) {
    let Some(t) = home.task.upgrade() else { return };
    {
        let mut caps = t.caps.lock();
        let _ = caps.with_link(home.slot, |_, _, _, link| {
            if link.owned() && link.is(lineage, id) {
                if let Some((_, at)) = &mut link.at {
                    *at = id.tagged(true);
                }
            }
        });
    }
    crate::reclaim::later_task(t);
}

/// `inject=deriv`: a node in the tree of `slot`'s capability that no slot owns (it says it is
/// in slot 0 of `task`), for the consistency check to find. Never used otherwise.
pub fn inject_orphan_node(task: &Arc<Task>, slot: u64) {
    let Ok(cap) = task.caps.lock().get(slot).cloned() else { return };
    let Ok(named) = tracked(task, slot, cap) else { return };
    // Uncharged (as an original's node is): the check is to find the orphan, not its charge.
    let home = Home::original(task, 0);
    if let Some((lineage, id)) = named.link.parts() {
        let _ = lineage.tree.lock_answering().add(Some(id), home);
    }
}

/// What `KernelCheck` finds about derivation trees: every capability in a slot that has a node
/// owns it, and the node says it lives in that slot; every tree holds exactly the nodes its
/// slots own (capabilities in flight only name theirs). Trees are read with `peek` (every other
/// CPU is stopped).
/// Its lists grow fallibly, one entry per capability with a node (a B-tree's nodes, or a
/// `push`, cannot fail: with the memory spent, the check stopped the kernel there before the
/// thirty-fourth session); one that could not grow marks the census `full`.
#[derive(Default)]
pub struct LinkCensus {
    /// Each owned node's tree, once per node, by the tree's address (grouped in `finish`).
    owners: Vec<(usize, Arc<Lineage>)>,
    /// The charges of the nodes found: (budget, bytes, heap part).
    charges: Vec<(usize, u64, u64)>,
    full: bool,
}

/// Appends `x` to `v`, growing it as a `push` would (twice its room, at least 4), but fallibly:
/// false if there was no room (`KernelCheck`'s lists: [`LinkCensus`] and `check.rs`'s).
pub(crate) fn grow<T>(v: &mut Vec<T>, x: T) -> bool {
    if v.len() == v.capacity() && v.try_reserve(v.len().max(4)).is_err() {
        return false;
    }
    v.push(x);
    true
}

impl LinkCensus {
    /// The capability in `slot` of `task`; calls `fail` for what is wrong with its link.
    pub fn slot(&mut self, task: &Arc<Task>, slot: u64, link: &Link, mut fail: impl FnMut(core::fmt::Arguments<'_>)) {
        let Some((lineage, id)) = link.parts() else { return };
        if !link.owned() {
            return fail(format_args!("task {} slot {slot}: the capability names node {id:?} but does not own it", task.id));
        }
        if !grow(&mut self.owners, (Arc::as_ptr(lineage) as usize, lineage.clone())) {
            self.full = true;
        }
        let Some(tree) = lineage.tree.peek() else {
            return fail(format_args!("a derivation tree is locked while every CPU is stopped"));
        };
        match tree.home(id) {
            None => fail(format_args!("task {} slot {slot}: its derivation node {id:?} is gone", task.id)),
            // A node moves only with its owner told (`node_moved`): a slot's identifier is
            // never out of date.
            Some(_) if !tree.is_current(id) => {
                fail(format_args!("task {} slot {slot}: its derivation node {id:?} moved without its slot being told", task.id))
            }
            Some(h) if !core::ptr::eq(h.task.as_ptr(), Arc::as_ptr(task)) || h.slot != slot => fail(format_args!(
                "task {} slot {slot}: its derivation node {id:?} says it is in slot {} of another task",
                task.id, h.slot
            )),
            Some(h) => {
                if let Some(c) = &h.charge
                    && !grow(&mut self.charges, (Arc::as_ptr(&c.0) as usize, DERIV_NODE_COST, DERIV_NODE_COST))
                {
                    self.full = true;
                }
            }
        }
    }

    /// Whether an entry could not be listed (the check then stops: its counts would be wrong).
    pub fn full(&self) -> bool {
        self.full
    }

    /// The charges of the nodes of the slots seen so far: (budget, bytes, heap part), taken
    /// out of the census (no copy is allocated).
    pub fn take_charges(&mut self) -> Vec<(usize, u64, u64)> {
        core::mem::take(&mut self.charges)
    }

    /// After every slot: each tree's node count against its owners, and its depth
    /// (`MOST_DEPTH`).
    pub fn finish(mut self, mut fail: impl FnMut(core::fmt::Arguments<'_>)) -> usize {
        self.owners.sort_unstable_by_key(|(k, _)| *k);
        let mut trees = 0;
        for group in self.owners.chunk_by(|a, b| a.0 == b.0) {
            trees += 1;
            let (lineage, owners) = (&group[0].1, group.len());
            if let Some(tree) = lineage.tree.peek() {
                if tree.len() != owners {
                    fail(format_args!("a derivation tree holds {} nodes, but {owners} capabilities in slots own one", tree.len()));
                }
                let deep = tree.too_deep();
                if deep > 0 {
                    fail(format_args!("a derivation tree holds {deep} nodes with more than {} ancestors", rl4_core::deriv::MOST_DEPTH));
                }
            }
        }
        trees
    }
}

/// `CapRevoke`: deletes every capability derived from the one in `slot` of `task`, in every
/// task, and returns how many. Capabilities in flight that were read from a revoked one are
/// not delivered (their node is gone). It works in batches of [`REVOKE_BATCH`] under the tree's
/// lock, whose capabilities are dropped after every lock, in arrays on the stack: nothing it
/// needs is allocated (the tree's shrink at its end takes a forwarding entry or a smaller piece
/// only if the heap has one), so a revocation cannot run out of memory or be kept from working
/// by a holder that derived many copies (a list of them all would need contiguous frames). Between batches the
/// tree may change; each batch starts at the revoking capability's first child (no cursor to
/// lose), finds what was derived meanwhile, does at most [`REVOKE_BATCH`] deletions and
/// hand-overs, and the whole revocation costs at most twice the capabilities it deletes
/// (`DerivTree::revoke_some_polling`). A revocation of an ancestor that meets this capability meanwhile
/// leaves it in place until what was derived from it is gone.
pub fn revoke(task: &Task, slot: u64) -> Result<u64, Error> {
    let link = task.caps.lock().get(slot)?.link.clone();
    let Some((lineage, mut id)) = link.parts() else { return Ok(0) };
    let mut total = 0u64;
    let mut first = true;
    let mut waited_out = false;
    loop {
        // Each batch may put endpoints into this CPU's limbo: once it is long, wait for a
        // grace period first (`qsbr::throttle`: once per call at most).
        if !waited_out {
            waited_out = crate::qsbr::throttle();
        }
        let mut removed: [Option<Cap>; REVOKE_BATCH] = [const { None }; REVOKE_BATCH];
        let mut holders: [Option<Arc<Task>>; REVOKE_BATCH] = [const { None }; REVOKE_BATCH];
        let mut homes: [Option<Home>; REVOKE_BATCH] = [const { None }; REVOKE_BATCH];
        let mut k = 0;
        let mut tree = lineage.tree.lock_answering();
        // The revoking capability's node may have moved since the last batch (or since it was
        // read): its identifier is brought up to date (the tree's forwarding index).
        let Some(now) = tree.refresh(id) else {
            drop(tree);
            return if total == 0 { Err(Error::EmptySlot) } else { Ok(total) };
        };
        id = now;
        // The revocation is announced in the tree, so that one of an ancestor's that meets this
        // capability meanwhile deletes what was derived from it first (`DerivTree::begin_revoke`).
        if first && tree.begin_revoke(id).is_err() {
            return Err(Error::EmptySlot);
        }
        first = false;
        let r = tree.revoke_some_polling(id, REVOKE_BATCH, |gone, home| {
            if let Some(t) = home.task.upgrade() {
                let mut caps = t.caps.lock();
                if caps.get(home.slot).is_ok_and(|c| c.link.is(lineage, gone)) {
                    if let Ok(mut c) = caps.remove(home.slot) {
                        c.link.disown();
                        removed[k] = Some(c);
                    }
                }
                drop(caps);
                holders[k] = Some(t);
            }
            homes[k] = Some(home);
            k += 1;
        }, crate::tlb::service_tlb_if_up, |h, new| node_moved(lineage, h, new));
        // A revoking capability deleted meanwhile (by another thread of its task, or its
        // task's end: `DerivTree::remove` leaves such a node to its revocation) goes now, its
        // home let go of after the lock.
        let mut doomed = None;
        if matches!(r, Ok((_, false))) {
            // (The shrink that ends the last batch may have moved it.)
            if let Some(now) = tree.refresh(id) {
                doomed = tree.end_revoke_polling(now, crate::tlb::service_tlb_if_up, |h, new| node_moved(lineage, h, new));
            }
        }
        drop(tree);
        // What this call took out of a slot (a capability deleted meanwhile from its slot, by
        // `CapDelete` or its task's end, is that call's: counted there, not here; before the
        // twenty-eighth session both calls counted it).
        let taken = removed.iter().filter(|c| c.is_some()).count() as u64;
        drop(removed);
        drop(holders);
        drop(homes);
        drop(doomed);
        // A long revocation answers other CPUs' TLB shoot-downs between batches (with no lock
        // held), so that they wait for one batch at most, not for the whole revocation.
        crate::tlb::service_tlb_here();
        match r {
            Ok((_, more)) => {
                total += taken;
                if !more {
                    return Ok(total);
                }
            }
            // The revoking capability itself was deleted meanwhile (before the first batch:
            // nothing was revoked).
            Err(_) if total == 0 => return Err(Error::EmptySlot),
            Err(_) => return Ok(total),
        }
    }
}

/// Capabilities one batch of `CapRevoke` deletes under its tree's lock (their records lie on
/// the kernel stack until the lock is let go: 32 capabilities, holders and homes, about 3 KiB).
pub const REVOKE_BATCH: usize = 32;

/// Every live object of one kind, as weak references, for the kernel's consistency check
/// (`check.rs`). Dead entries are pruned whenever the list has doubled since the last pruning,
/// so it stays within twice the live objects and adding is amortised O(1); and whenever the
/// objects destroyed since the last pruning are half the list (`gone`).
pub struct Registry<T> {
    list: GlobalMutex<RegList<T>, { Level::OBJECT }>,
}

struct RegList<T> {
    /// In page-sized pieces: a registry of 60,000 frames never needs contiguous frames.
    v: PagedVec<Weak<T>>,
    /// Length after the last pruning.
    pruned: usize,
    /// Objects destroyed since.
    dead: usize,
    /// Walks in progress ([`Registry::each`]): no pruning meanwhile (it would move entries
    /// under a walk's index).
    walkers: usize,
    /// Dead entries were emptied in place during a walk (`RegList::prune`): the list is pruned
    /// when the last walk ends.
    emptied: bool,
}

/// Drops the dead entries of a list of weak references (a registry, a task's threads): work
/// the tasks size (a registry of 245,000 frames), under a lock and with interrupts off, so this
/// CPU answers TLB shoot-downs every 64 entries, as the CPUs waiting for that lock do
/// (`lock_answering`; a hostile review of the seventeenth session found shoot-downs held up for
/// a whole pruning). Only weak references are dropped: no destructor runs. The dead entries are
/// emptied first, in the polled pass of [`clear_dead`] (dropping each one's last weak reference
/// frees the dead object's allocation, and the entries `retain` moves to the end are dropped in
/// one go, unpolled: a review of the twentieth session found up to half a registry freed there).
fn retain_live<T>(v: &mut PagedVec<Weak<T>>) {
    clear_dead(v);
    let mut n = 0u32;
    v.retain(|w| {
        n = n.wrapping_add(1);
        if n % 64 == 0 {
            crate::tlb::service_tlb_if_up();
        }
        w.strong_count() > 0
    });
}

/// Empties the dead entries of a list of weak references in place (each dead object's allocation
/// is freed; the entries keep their places, so a walk's index stays right), answering TLB
/// shoot-downs every 64 entries as [`retain_live`] does. Only weak references are dropped.
fn clear_dead<T>(v: &mut PagedVec<Weak<T>>) {
    for i in 0..v.len() {
        if i % 64 == 63 {
            crate::tlb::service_tlb_if_up();
        }
        if let Some(w) = v.get_mut(i)
            && w.strong_count() == 0
        {
            *w = Weak::new();
        }
    }
}

impl<T> RegList<T> {
    fn prune(&mut self) {
        if self.walkers > 0 {
            // A walk is under way (a task's end walks the task registry for its descendants,
            // which may take long): the dead entries are emptied where they are, so that the
            // dead objects' allocations — no longer charged to anyone — do not pile up while
            // it lasts (a hostile review of the nineteenth session: tasks made and deleted in a
            // loop meanwhile kept every record); the list itself shrinks after the walk.
            clear_dead(&mut self.v);
            self.pruned = self.v.len();
            self.dead = 0;
            self.emptied = true;
            return;
        }
        retain_live(&mut self.v);
        self.pruned = self.v.len();
        self.dead = 0;
        self.emptied = false;
        // Frees whole pieces only: allocates nothing.
        self.v.shrink();
    }
}

impl<T> Registry<T> {
    pub const fn new() -> Self {
        Registry { list: GlobalMutex::new(crate::count::Global::Registry, RegList { v: PagedVec::new(), pruned: 0, dead: 0, walkers: 0, emptied: false }) }
    }

    /// Registers a new object; `OutOfMemory` if the list cannot grow (the caller then drops
    /// the object, after this lock).
    pub fn add(&self, a: &Arc<T>) -> Result<(), Error> {
        let mut l = self.list.lock_answering();
        if l.v.len() >= 2 * l.pruned.max(32) {
            l.prune();
        }
        l.v.try_push(Arc::downgrade(a)).map_err(|_| Error::OutOfMemory)
    }

    /// Called by an object's destructor (no lock held). A weak reference keeps the whole
    /// allocation of its object alive (only the object's own destructor has run) after its
    /// charge was refunded: so dead entries are pruned once they are half the list, and the
    /// memory they hold stays within what the live objects are charged for (each object's
    /// heap share covers itself and one dead sibling: `covers`). An object whose [`add`] failed
    /// calls this too (its destructor cannot tell): the count then runs ahead of the list,
    /// which only makes a pruning come early (a pruning counts afresh).
    ///
    /// [`add`]: Registry::add
    pub fn gone(&self) {
        let mut l = self.list.lock_answering();
        l.dead += 1;
        if l.dead >= 32 && 2 * l.dead >= l.v.len() {
            l.prune();
        }
    }

    /// Calls `f` with every object alive when the walk reaches it, in the order they were
    /// registered, one at a time and with no lock held: the list's lock is taken once per 32
    /// entries (copied as weak references), and no pruning moves an entry meanwhile. The walk
    /// covers the objects registered before it started, and those registered before the last
    /// call of `f` that returned true (it changed something a later registration must see)
    /// ended: a walk ends however fast objects are registered meanwhile, as long as `f` returns
    /// true a bounded number of times (the task walk of `syscall::kill_task` ends no descendant
    /// of its task registered after it began — `TaskCreate` refuses them meanwhile — only
    /// those and the orphans of other ends, each of which another CPU's kill made). Allocates
    /// nothing; the
    /// reference `f` gets is let go of after it, with no lock held; this CPU answers TLB
    /// shoot-downs after each such call and between batches.
    pub fn each(&self, mut f: impl FnMut(&Arc<T>) -> bool) {
        /// Entries copied per hold of the list's lock (a lock every CPU's creations and
        /// destructions take: one hold per entry made a long walk contend with them all).
        const BATCH: usize = 32;
        let mut end = {
            let mut l = self.list.lock_answering();
            l.walkers += 1;
            l.v.len()
        };
        let mut i = 0;
        while i < end {
            let mut batch: [Option<Weak<T>>; BATCH] = [const { None }; BATCH];
            let n = {
                let l = self.list.lock_answering();
                let n = BATCH.min(end.saturating_sub(i));
                for (k, b) in batch.iter_mut().enumerate().take(n) {
                    *b = l.v.get(i + k).cloned();
                }
                n
            };
            i += n;
            for w in batch.iter_mut().take(n) {
                // The weak reference is let go of here, with no lock held (the last one frees
                // its object's allocation).
                let next = w.take().and_then(|w| w.upgrade());
                let changed = next.as_ref().is_some_and(&mut f);
                drop(next);
                if changed {
                    end = self.list.lock_answering().v.len();
                    crate::tlb::service_tlb_here();
                }
            }
            crate::tlb::service_tlb_here();
        }
        let mut l = self.list.lock_answering();
        l.walkers -= 1;
        if (l.emptied && l.walkers == 0) || (l.dead >= 32 && 2 * l.dead >= l.v.len()) {
            l.prune();
        }
    }

    /// A reference to every live object (for the consistency check only: one `Vec`).
    /// Every live object, or `None` if there is no room for the list (one contiguous vector
    /// as long as the registry: `KernelCheck` answers `OutOfMemory` then).
    pub fn try_live(&self) -> Option<Vec<Arc<T>>> {
        let l = self.list.lock();
        let mut v = Vec::new();
        v.try_reserve_exact(l.v.len()).ok()?;
        v.extend(l.v.iter().filter_map(Weak::upgrade));
        Some(v)
    }
}

pub static TASKS: Registry<Task> = Registry::new();
pub static SPACES: Registry<Space> = Registry::new();
pub static THREADS: Registry<Thread> = Registry::new();
pub static FRAMES: Registry<Frame> = Registry::new();
pub static MEMORIES: Registry<Memory> = Registry::new();
pub static ENDPOINTS: Registry<crate::ipc::Endpoint> = Registry::new();
pub static NOTIFICATIONS: Registry<crate::ipc::Notification> = Registry::new();

/// What each object costs its memory budget: the frames it holds and its share of the kernel
/// heap (`*_HEAP`), which covers the object's own allocation, its registry entry (and one dead
/// one: `Registry::gone`), and its entries in lists (a thread's in its task's list; wait and
/// run queues are intrusive, their links part of the thread's record).
pub const THREAD_COST: u64 = rl4_abi::cost::THREAD;
pub const TASK_COST: u64 = rl4_abi::cost::TASK;
/// The PML4 frame and the space's own record.
pub const SPACE_COST: u64 = rl4_abi::cost::SPACE;
/// Bookkeeping of one mapping (its new page tables are charged apart, before they are made:
/// `syscall::ChargedTables`): its entry in the
/// space's B-tree, which at worst (nodes half full) takes about 100 bytes.
pub const MAP_COST: u64 = rl4_abi::cost::MAP;
/// The frame, and its object (32 bytes and the heap's tag) with its registry entry.
pub const FRAME_COST: u64 = rl4_abi::cost::FRAME;
pub const ENDPOINT_COST: u64 = rl4_abi::cost::ENDPOINT;
pub const NOTIFICATION_COST: u64 = rl4_abi::cost::NOTIFICATION;

/// The heap shares (all of a cost but the frames it pays for).
pub const THREAD_HEAP: u64 = THREAD_COST;
pub const TASK_HEAP: u64 = TASK_COST;
pub const SPACE_HEAP: u64 = SPACE_COST - 4096;
pub const FRAME_HEAP: u64 = FRAME_COST - 4096;
pub const MAP_HEAP: u64 = MAP_COST;

// Each object's heap share covers its allocation twice (itself and a dead sibling that a weak
// reference still holds, `Registry::gone`) plus 64 bytes of entries and the heap's tags.
const fn covers(bytes: usize, share: u64) -> bool {
    (2 * (bytes + 16) + 64) as u64 <= share
}
/// The largest object record a capability names: a capability in flight whose object died
/// still holds its allocation (a weak reference, [`InFlight`]) until its sender's wait ends.
const LARGEST_OBJECT: usize = {
    use core::mem::size_of;
    let sizes = [
        size_of::<Task>(),
        size_of::<Space>(),
        size_of::<Thread>(),
        size_of::<Frame>(),
        size_of::<Memory>(),
        size_of::<crate::ipc::Endpoint>(),
        size_of::<crate::ipc::Notification>(),
        size_of::<crate::irq::IrqLine>(),
        size_of::<crate::device::IoPortObj>(),
    ];
    let (mut i, mut m) = (0, 0);
    while i < sizes.len() {
        if sizes[i] > m {
            m = sizes[i];
        }
        i += 1;
    }
    m
};
// A thread's share also covers the endpoint allocation its kept receive reference may hold
// after that endpoint is gone (`Life::keep_recv`), the allocation of the object of a
// capability in flight it carries, dead meanwhile (`InFlight`), and the two its fault handler's
// weak references may hold after their objects are gone (`FaultHandler`: the endpoint, and the
// task that set it; since the forty-third session, when a review found them left out).
const _: () = assert!(covers(
    core::mem::size_of::<Thread>(),
    THREAD_HEAP
        - 2 * (core::mem::size_of::<crate::ipc::Endpoint>() as u64 + 16)
        - (LARGEST_OBJECT as u64 + 16)
        - (core::mem::size_of::<Task>() as u64 + 16)
));
const _: () = assert!(covers(core::mem::size_of::<Frame>(), FRAME_HEAP));
const _: () = assert!(covers(core::mem::size_of::<Frame>(), rl4_abi::cost::DEVICE_FRAME));
const _: () = assert!(covers(core::mem::size_of::<Space>(), SPACE_HEAP));
const _: () = assert!(covers(core::mem::size_of::<crate::ipc::Endpoint>(), ENDPOINT_COST));
const _: () = assert!(covers(core::mem::size_of::<crate::ipc::Notification>(), NOTIFICATION_COST));
const _: () = assert!(covers(core::mem::size_of::<crate::device::IoPortObj>(), rl4_abi::cost::IO_PORT));
// A task: its record (twice) and its capability table.
const _: () = assert!(
    covers(core::mem::size_of::<Task>(), TASK_HEAP - rl4_abi::CAP_SLOTS * core::mem::size_of::<Option<Cap>>() as u64)
);
// A table's shadow: its slots (in pieces of 64 with a tag each), the pieces' list, the `Arc`'s
// counts and the record.
const _: () = assert!(
    rl4_abi::CAP_SLOTS * core::mem::size_of::<rl4_core::qsbr::ShadowSlot>() as u64
        + rl4_abi::CAP_SLOTS / 64 * (16 + 8)
        + core::mem::size_of::<rl4_core::qsbr::Shadow>() as u64
        + 16
        + 16
        <= rl4_abi::cost::CAP_SHADOW
);

/// Heap bytes the live objects are charged for (each `Charge`'s heap share).
static HEAP_CHARGED: AtomicU64 = AtomicU64::new(0);
/// Mappings of all spaces (each charged `MAP_COST`, all of it heap).
static MAPPINGS: AtomicU64 = AtomicU64::new(0);
/// The heap in use when the first budget (the root task's) was made: the kernel's own.
static HEAP_AT_BOOT: AtomicU64 = AtomicU64::new(0);
/// What the kernel may use of its heap beyond that and the charges: per-CPU lists (the
/// reclamation lists, timeout lists, inboxes' overflow), the registries' growth, the
/// consistency check's own.
pub const HEAP_ALLOWANCE: u64 = rl4_abi::HEAP_ALLOWANCE;

/// A mapping was made (`syscall::map_frame`) or removed.
pub fn mapped(added: bool) {
    if added {
        MAPPINGS.fetch_add(1, Ordering::Relaxed);
    } else {
        MAPPINGS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The heap shares of all live charges and mappings (as counted at each charge and refund).
pub fn heap_charged() -> u64 {
    HEAP_CHARGED.load(Ordering::Relaxed) + MAPPINGS.load(Ordering::Relaxed) * MAP_HEAP
}

/// The kernel heap the live objects allow: their heap shares, the kernel's own at boot and
/// the allowance (`Stat(HEAP_BOUND)`; `KernelCheck` compares the heap in use with it).
pub fn heap_bound() -> u64 {
    HEAP_CHARGED.load(Ordering::Relaxed)
        + MAPPINGS.load(Ordering::Relaxed) * MAP_HEAP
        + HEAP_AT_BOOT.load(Ordering::Relaxed)
        + HEAP_ALLOWANCE
}

/// An allocation budget.
pub struct Memory {
    pub total: u64,
    used: AtomicU64,
}

impl Memory {
    pub fn new(total: u64) -> Arc<Memory> {
        if HEAP_AT_BOOT.load(Ordering::Relaxed) == 0 {
            HEAP_AT_BOOT.store(mem::heap_in_use(), Ordering::Relaxed);
        }
        let m = Arc::new(Memory { total, used: AtomicU64::new(0) });
        // Only the root's budget is made, at boot.
        if MEMORIES.add(&m).is_err() {
            panic!("no memory for the root task's budget");
        }
        m
    }
    /// Bytes charged.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
    pub fn left(&self) -> u64 {
        self.total - self.used.load(Ordering::Relaxed)
    }
    /// Takes `bytes` from the budget.
    pub fn charge(&self, bytes: u64) -> Result<(), Error> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| u.checked_add(bytes).filter(|&n| n <= self.total))
            .map(|_| ())
            .map_err(|_| Error::OutOfMemory)
    }
    pub fn uncharge(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// A charge that is given back when dropped (so an object that fails half-way refunds).
pub struct Charge {
    mem: Arc<Memory>,
    bytes: u64,
    /// The part of it that pays for kernel heap (the rest pays for frames).
    heap: u64,
}

impl Charge {
    /// A charge of `bytes`, all of it for kernel heap.
    pub fn new(mem: &Arc<Memory>, bytes: u64) -> Result<Charge, Error> {
        Self::with_frames(mem, bytes, 0)
    }
    /// A charge of `bytes`, `frames` frames of it for frames, the rest for kernel heap.
    pub fn with_frames(mem: &Arc<Memory>, bytes: u64, frames: u64) -> Result<Charge, Error> {
        mem.charge(bytes)?;
        let heap = bytes.saturating_sub(frames * 4096);
        HEAP_CHARGED.fetch_add(heap, Ordering::Relaxed);
        Ok(Charge { mem: mem.clone(), bytes, heap })
    }
    /// Its kernel-heap part.
    pub fn heap(&self) -> u64 {
        self.heap
    }
    /// The budget charged and how much.
    pub fn of(&self) -> (&Arc<Memory>, u64) {
        (&self.mem, self.bytes)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        HEAP_CHARGED.fetch_sub(self.heap, Ordering::Relaxed);
        self.mem.uncharge(self.bytes);
    }
}

/// What a frame object holds: a frame of RAM it owns, or a device page (`DeviceMemGet`) with
/// its number among the device pages (`device.rs`). A device page is never the allocator's, is
/// mapped uncached and never executable, and is never an IPC buffer.
pub enum FrameMem {
    Ram(OwnedFrame),
    Device(DeviceFrame, u8),
}

/// One physical frame: a frame of RAM from the allocator, or a device page. Only the
/// allocator (`mem::alloc_frame`) and the device code (`device.rs`) make what it holds: a
/// number from a task never becomes one (`Map` takes a frame capability, never an address).
pub struct Frame {
    /// `None` only inside its destructor, which hands the frame back.
    mem: Option<FrameMem>,
    _charge: Charge,
}

impl Frame {
    /// A zeroed frame charged to `mem`.
    pub fn new(mem: &Arc<Memory>) -> Result<Arc<Frame>, Error> {
        let charge = Charge::with_frames(mem, FRAME_COST, 1)?;
        let mut f = mem::alloc_user_frame().ok_or(Error::OutOfMemory)?;
        mem::zero_frame(&mut f);
        // (On failure the frame goes back through the destructor.)
        let f = Arc::try_new(Frame { mem: Some(FrameMem::Ram(f)), _charge: charge }).map_err(|_| Error::OutOfMemory)?;
        FRAMES.add(&f)?;
        Ok(f)
    }
    /// A frame charged to `mem` holding `bytes` (at most a page) and zeros after them.
    pub fn with_bytes(mem: &Arc<Memory>, bytes: &[u8]) -> Result<Arc<Frame>, Error> {
        let charge = Charge::with_frames(mem, FRAME_COST, 1)?;
        let mut f = mem::alloc_user_frame().ok_or(Error::OutOfMemory)?;
        mem::zero_frame(&mut f);
        mem::write_frame(&f, 0, bytes);
        let f = Arc::try_new(Frame { mem: Some(FrameMem::Ram(f)), _charge: charge }).map_err(|_| Error::OutOfMemory)?;
        FRAMES.add(&f)?;
        Ok(f)
    }
    /// The frame object of device page number `index`, which the caller has claimed
    /// (`device::device_frame`); charged only for its record. If this fails, the page is
    /// returned for the caller to give back.
    pub fn device(mem: &Arc<Memory>, page: DeviceFrame, index: u8) -> Result<Arc<Frame>, (Error, DeviceFrame)> {
        let room = match mem::ArcSlot::new() {
            Ok(r) => r,
            Err(e) => return Err((e, page)),
        };
        let charge = match Charge::new(mem, rl4_abi::cost::DEVICE_FRAME) {
            Ok(c) => c,
            Err(e) => return Err((e, page)),
        };
        let mut f = room.fill(Frame { mem: Some(FrameMem::Device(page, index)), _charge: charge });
        if let Err(e) = FRAMES.add(&f) {
            // The page goes back to the caller, not through the frame's destructor.
            let Some(FrameMem::Device(page, _)) = Arc::get_mut(&mut f).and_then(|f| f.mem.take()) else {
                unreachable!("a frame just made, with its page")
            };
            return Err((e, page));
        }
        Ok(f)
    }
    pub fn charge(&self) -> &Charge {
        &self._charge
    }
    #[inline(always)]
    fn held(&self) -> &FrameMem {
        match &self.mem {
            Some(m) => m,
            None => unreachable!("a frame object without its frame outside its destructor"),
        }
    }
    /// Its physical address.
    #[inline]
    pub fn pa(&self) -> u64 {
        match self.held() {
            FrameMem::Ram(f) => f.addr(),
            FrameMem::Device(d, _) => d.addr(),
        }
    }
    /// A device page's number, `None` for RAM.
    #[inline]
    pub fn device_page(&self) -> Option<u8> {
        match self.held() {
            FrameMem::Ram(_) => None,
            FrameMem::Device(_, i) => Some(*i),
        }
    }
    /// The RAM frame it owns (`None` for a device page), for reading and writing its bytes
    /// (`mem::write_frame`, `mem::read_frame_words`, `mem::write_frame_words`).
    #[inline]
    pub fn ram(&self) -> Option<&OwnedFrame> {
        match self.held() {
            FrameMem::Ram(f) => Some(f),
            FrameMem::Device(..) => None,
        }
    }
    /// What `paging::map_user` maps.
    #[inline]
    pub fn user_frame(&self) -> UserFrame<'_> {
        match self.held() {
            FrameMem::Ram(f) => UserFrame::Ram(f),
            FrameMem::Device(d, _) => UserFrame::Device(d),
        }
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        crate::reclaim::dropping("Frame");
        match self.mem.take() {
            // The page is the device's: it only becomes available to `DeviceMemGet` again.
            Some(FrameMem::Device(d, i)) => crate::device::release_page(d, i),
            Some(FrameMem::Ram(f)) => mem::free_frame(f),
            None => {}
        }
        FRAMES.gone();
    }
}

/// A user address space.
/// A space's mappings: frames by virtual page, with whether they are writable / executable.
/// Its nodes come from a stock each `Map` fills first (`mem::MapNodes`): the insertion cannot
/// fail.
pub type Maps = BTreeMap<u64, (Arc<Frame>, bool, bool), mem::MapNodes>;

pub struct Space {
    /// Its root table, made by `paging::new_user_space` and freed by its destructor.
    pub pml4: PageTableRoot,
    pub pcid: u16,
    /// TLB generation (see `rl4_core::pcid`); bumped when a mapping is removed.
    pub generation: AtomicU64,
    /// Mapped frames by virtual page, with whether they are writable / executable.
    pub maps: Mutex<Maps, { Level::OBJECT }>,
    /// The budget it was made from: page tables and mappings are charged to it.
    pub memory: Arc<Memory>,
    /// Page-table frames made for it (charged, refunded when it dies).
    pub table_pages: AtomicU64,
    /// The I/O port ranges open to its task (`device.rs`).
    pub io: crate::device::IoSpace,
    /// Set once its task died ([`Space::empty`]): it maps nothing any more. Written and read
    /// under the lock of `maps`.
    emptied: AtomicBool,
    /// `Unmap`s of this space whose shoot-down has not ended (and [`Space::empty`], which
    /// unmaps everything): raised under the lock of `maps` as the entry goes, lowered after
    /// `tlb::flush_space`. A `Map` or `Unmap` that finds it
    /// raised (under that lock) shoots down the space itself before it returns: another CPU
    /// may still translate through the entry just removed, to its old frame, and the call
    /// must not say a page is mapped, or not mapped, before every CPU agrees.
    pub unmapping: AtomicU64,
    _charge: Charge,
}

impl Space {
    pub fn new(mem: &Arc<Memory>) -> Result<Arc<Space>, Error> {
        let charge = Charge::with_frames(mem, SPACE_COST, 1)?;
        let pml4 = rl4_arch::paging::new_user_space(&mut mem::UserFrames).map_err(|_| Error::OutOfMemory)?;
        let (pcid, generation) = crate::tlb::pcid_alloc();
        // (On failure the root table goes back through the destructor.)
        let s = Arc::try_new(Space {
            pml4,
            pcid,
            generation: AtomicU64::new(generation),
            maps: Mutex::new(Maps::new_in(mem::MapNodes)),
            memory: mem.clone(),
            table_pages: AtomicU64::new(0),
            io: crate::device::IoSpace::new(),
            emptied: AtomicBool::new(false),
            unmapping: AtomicU64::new(0),
            _charge: charge,
        })
        .map_err(|_| Error::OutOfMemory)?;
        SPACES.add(&s)?;
        Ok(s)
    }
    pub fn charge(&self) -> &Charge {
        &self._charge
    }

    /// Whether it may map anything (its task lives); read under the lock of `maps`, which the
    /// caller holds (the guard is the proof).
    pub fn may_map(&self, _maps: &Maps) -> bool {
        !self.emptied.load(Ordering::Relaxed)
    }

    /// Its task died (`syscall::kill_task`): every mapping goes, and the page tables below its
    /// root with them, whoever still holds a reference to the space, its task or one of its
    /// threads (a server that never answers a killed client's call keeps that thread; a
    /// capability to the space can outlive the task): what they held goes back to the budget
    /// now, not when the last reference goes. The root table stays, with an empty user half
    /// (a CPU that still has it loaded — a killed thread on its way out — walks nothing), and
    /// so do the space's and its task's records until their last reference. A `Map` into it
    /// afterwards is refused. Runs with no lock held; the frames are released after the lock.
    pub fn empty(&self) {
        let (maps, tables, pages) = {
            let mut maps = self.maps.lock();
            // Emptied already (a second `TaskKill`, or one racing `TaskExit`): nothing to do.
            if self.emptied.load(Ordering::Relaxed) {
                return;
            }
            self.emptied.store(true, Ordering::Relaxed);
            // SAFETY: under `maps`, this space's lock of its tables.
            #[allow(unsafe_code)]
            let tables = unsafe { rl4_arch::paging::detach_user_half(&self.pml4) };
            // An `Unmap` under way, as `Unmap` counts itself: another CPU's `Unmap` of the
            // space meanwhile (through a capability to it) waits for this shoot-down before it
            // answers `NotMapped`.
            self.unmapping.fetch_add(1, Ordering::Relaxed);
            // Every table below the root was counted in when it was made (`ChargedTables`),
            // under this lock (`KernelCheck` compares the count with the tables).
            (core::mem::replace(&mut *maps, Maps::new_in(mem::MapNodes)), tables, self.table_pages.swap(0, Ordering::Relaxed))
        };
        // No CPU keeps a translation or a cached table entry of the old user half past this.
        crate::tlb::flush_space(self);
        self.unmapping.fetch_sub(1, Ordering::Relaxed);
        // A space can hold hundreds of thousands of pages and this runs with interrupts off:
        // a shoot-down another CPU waits for is answered between pieces (a load when none
        // waits), as `kill_task` does between threads.
        let mut freed = 0u64;
        let mut piece = move || {
            freed += 1;
            if freed % 256 == 0 {
                crate::tlb::service_tlb_here();
            }
        };
        // SAFETY: the tables were detached under the space's lock, and the shoot-down above
        // ran to completion after that (`tlb.rs`): nothing can walk them any more.
        #[allow(unsafe_code)]
        unsafe {
            rl4_arch::paging::free_detached(tables, |f| {
                mem::free_frame(f);
                piece();
            })
        };
        let mappings = maps.len() as u64;
        self.memory.uncharge(pages * 4096 + mappings * MAP_COST);
        MAPPINGS.fetch_sub(mappings, Ordering::Relaxed);
        for (_, (frame, _, _)) in maps {
            drop(frame);
            piece();
        }
    }
}

impl Drop for Space {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        crate::reclaim::dropping("Space");
        // The user half goes first in pieces, answering shoot-downs between them, as a killed
        // task's does (`empty`; nothing if it ran already): a space whose task was never
        // killed can hold millions of mappings, and its last reference can be dropped on any
        // CPU — a server's that received a capability to it with nowhere to put it — where
        // freeing them in one go kept every CPU that waited for a shoot-down from that one
        // waiting as long, with interrupts off (review finding, eleventh session). What is left
        // below: the root table (`empty` counted out its tables and mappings).
        self.empty();
        let me = self as *const Space;
        self.io.forget(me);
        crate::tlb::forget_space(&self.pml4);
        // The frames are released after the mappings' lock.
        let maps = core::mem::replace(&mut *self.maps.lock(), Maps::new_in(mem::MapNodes));
        let mappings = maps.len() as u64;
        drop(maps);
        // SAFETY: `forget_space` above made every CPU that had this space loaded load the
        // kernel's tables, and none can load it again (no thread of it runs: its last
        // reference is going); `self.pml4` is not used after this (the space is being
        // destroyed). One of the kernel crate's few `unsafe` blocks outside `mem.rs`: that a
        // root is loaded nowhere is a protocol between CPUs (`tlb.rs`), not a type.
        unsafe { rl4_arch::paging::free_user_space(&self.pml4, mem::free_frame) };
        crate::tlb::pcid_free(self.pcid);
        let tables = self.table_pages.load(Ordering::Relaxed);
        self.memory.uncharge(tables * 4096 + mappings * MAP_COST);
        MAPPINGS.fetch_sub(mappings, Ordering::Relaxed);
        SPACES.gone();
    }
}

/// A task's capability-table shadow and what it is charged (`Task::shadow`).
pub struct TableShadow {
    pub shadow: Arc<rl4_core::qsbr::Shadow>,
    charge: Charge,
}

impl TableShadow {
    pub fn charge(&self) -> &Charge {
        &self.charge
    }
}

/// A task: a capability table and the threads that use it.
pub struct Task {
    pub id: u64,
    pub caps: Mutex<CapTable<KObj>, { Level::OBJECT }>,
    /// The shadow of `caps` that the IPC fast path reads without the lock (`qsbr.rs`), made
    /// (and charged) when the first endpoint capability enters the table.
    pub shadow: spin::Once<TableShadow>,
    /// The time stamp before which `Call` and `ReplyRecv` do not try to make the shadow again
    /// after a try was refused (`syscall::handle_ipc`; 0: no try refused).
    pub shadow_retry: AtomicU64,
    /// In page-sized pieces (`rl4_core::paged`): no contiguous frames for 10,000 threads.
    pub threads: Mutex<PagedVec<Weak<Thread>>, { Level::TASK_THREADS }>,
    /// Threads of it destroyed since `threads` was last pruned (`Thread`'s destructor).
    threads_gone: AtomicU64,
    pub space: Arc<Space>,
    pub dead: AtomicBool,
    /// Its end is done: every thread killed, the table emptied, the space emptied
    /// (`syscall::kill_task`'s first kill sets it; a kill from another CPU meanwhile waits for
    /// it before it answers).
    pub ended: AtomicBool,
    /// The task whose `TaskCreate` made it (`None`: the root task). A task ends with the task
    /// that made it (`syscall::kill_task`): a task can always end everything it made, even
    /// what it holds no capability to any more. (The reference keeps an ended parent's record,
    /// emptied, while a child's lives; the child's destructor lets go of it through the
    /// destruction loop, never by recursion along a chain of parents.)
    pub parent: Option<Arc<Task>>,
    /// Tasks it made that still exist (counted before each is registered, uncounted by its
    /// destructor): its end looks for children only while there are some.
    pub children: AtomicU64,
    /// The walk that ended its descendants after its end is done (`syscall::kill_task`).
    pub walked: AtomicBool,
    /// Tasks above it (`parent`, its parent, ...): 0 for the root task, at most
    /// [`MOST_TASK_DEPTH`].
    pub depth: u32,
    _charge: Charge,
}

/// The deepest a task may lie below the root task: `TaskCreate` by a task this deep is refused
/// (`InvalidState`), so that a look at every ancestor (`syscall::ancestry_refusal`) is bounded.
pub const MOST_TASK_DEPTH: u32 = 256;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

impl Task {
    pub fn new(mem: &Arc<Memory>, space: Arc<Space>, parent: Option<Arc<Task>>) -> Result<Arc<Task>, Error> {
        let depth = parent.as_ref().map_or(0, |p| p.depth + 1);
        if depth > MOST_TASK_DEPTH {
            return Err(Error::InvalidState);
        }
        let charge = Charge::new(mem, TASK_COST)?;
        let mut caps = CapTable::try_new(rl4_abi::CAP_SLOTS as usize).ok_or(Error::OutOfMemory)?;
        // Its capabilities' leaves name the space (a port object's check: `device::PortsLeft`).
        caps.set_owner(Arc::as_ptr(&space) as usize);
        // Counted before it is registered (`syscall::kill_task`); from here its destructor
        // uncounts it, whatever fails.
        if let Some(p) = &parent {
            p.children.fetch_add(1, Ordering::SeqCst);
        }
        let t = Arc::try_new(Task {
            id: next_id(),
            shadow: spin::Once::new(),
            shadow_retry: AtomicU64::new(0),
            caps: Mutex::new(caps),
            threads: Mutex::new(PagedVec::new()),
            threads_gone: AtomicU64::new(0),
            space,
            dead: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            parent,
            children: AtomicU64::new(0),
            walked: AtomicBool::new(false),
            depth,
            _charge: charge,
        })
        .map_err(|_| Error::OutOfMemory)?;
        TASKS.add(&t)?;
        Ok(t)
    }
    pub fn charge(&self) -> &Charge {
        &self._charge
    }

    /// Puts `cap` into `slot` of this task's table, unless the task has ended: `kill_task`
    /// marks it dead before it empties the table, and this checks under the table's lock, so
    /// no capability can slip into a table after it was emptied (it would never be freed).
    ///
    /// A capability read from another one (its link naming that one's node: see [`tracked`])
    /// becomes its child in the derivation tree, or is refused with `EmptySlot` if that one was
    /// deleted or revoked meanwhile. One with no link is an original and stays out of any tree
    /// until something is derived from it.
    pub fn insert_cap(self: &Arc<Self>, slot: u64, cap: Cap) -> Result<(), Error> {
        // A refused capability is dropped here, after the locks.
        self.insert_cap_or_return(slot, cap).map_err(|(e, _cap)| e)
    }

    /// [`Task::insert_cap`], handing a refused capability back (to drop after the caller's
    /// locks).
    pub fn insert_cap_or_return(self: &Arc<Self>, slot: u64, cap: Cap) -> Result<(), (Error, Cap)> {
        use rl4_core::captable::Object;
        // The table's shadow is made with the first endpoint capability, once it is in the
        // table (a refused one charges nothing: before the thirty-fourth session the shadow
        // was made first, and a copy refused charged its 8 KiB all the same, which a review
        // found), when no lock is held (it allocates; it copies what the table holds then);
        // under locks (a capability arriving by `Send` or `Call`, under the endpoint's queue
        // lock) the task goes on without one until its next IPC call makes it
        // (`syscall::handle_ipc`); one arriving by `Recv` comes with no lock held. A try refused
        // is not made again for a tick ([`Task::make_shadow_now_and_then`]). Without a shadow
        // the fast path takes the general path: a task that cannot pay for one is only slower.
        let shadow = cap.obj.fast_address() != 0 && self.shadow.get().is_none() && crate::lock::held() == 0;
        self.insert_tracked(slot, cap)?;
        if shadow {
            self.make_shadow_now_and_then(rl4_arch::cpu::rdtsc());
        }
        Ok(())
    }

    /// [`Task::make_shadow`], unless a try failed less than a tick (10 ms) before `now`: a
    /// refused one (the budget, or the kernel's headroom, short) is not made again for a tick,
    /// so that calls that would each try (a task's IPC calls, capabilities arriving with
    /// `Recv` or `CapCopy`) do not each take the frame allocator's lock, which every CPU takes
    /// (a review of the thirty-fifth session found it for the calls; one of the forty-third
    /// for `Recv`, which makes it with no lock held since that session).
    pub fn make_shadow_now_and_then(&self, now: u64) {
        if now >= self.shadow_retry.load(Ordering::Relaxed) && self.make_shadow().is_err() {
            self.shadow_retry.store(now.saturating_add(rl4_arch::time::us_to_ticks(10_000)), Ordering::Relaxed);
        }
    }

    /// [`Task::insert_cap_or_return`] but the shadow.
    fn insert_tracked(self: &Arc<Self>, slot: u64, mut cap: Cap) -> Result<(), (Error, Cap)> {
        let Some((lineage, parent)) = cap.link.parts().map(|(l, id)| (l.clone(), id)) else {
            let mut caps = self.caps.lock();
            if let Some(e) = self.refusal(&caps, slot) {
                return Err((e, cap));
            }
            return caps.insert(slot, cap).map_err(|_| unreachable!("checked free"));
        };
        // A slot that refuses it (out of range, occupied, an ended table) is told first, before
        // the charge, the tree's room and the walk of the ancestors (since the forty-third
        // session: a review found a receiver naming such a slot made every message carrying a
        // capability do all three, under the queue's and the home's locks, for nothing); and
        // again below, under both locks, where it counts.
        {
            let caps = self.caps.lock();
            if let Some(e) = self.refusal(&caps, slot) {
                drop(caps);
                return Err((e, cap));
            }
        }
        // Its node is charged to this task's budget, and its room made, before anything changes.
        let home = match Home::new(self, slot) {
            Ok(h) => h,
            Err(e) => return Err((e, cap)),
        };
        let mut tree = lineage.tree.lock_answering();
        if tree.reserve().is_err() {
            drop(tree);
            return Err((Error::OutOfMemory, cap));
        }
        // The parent's node may have moved since the capability was read (then the tree's
        // forwarding index finds it): from here its identifier is up to date, and nothing moves
        // while the lock is held.
        // (`None`: gone.)
        let parent = tree.refresh(parent);
        // Nothing is derived from a capability while it or one it derives from is being revoked
        // (copies made as fast as a revocation deletes them would keep it from ever ending),
        // nor from one with `MOST_DEPTH` ancestors (`DerivTree::may_derive`).
        if let Some(Err(why)) = parent.map(|p| tree.may_derive(p, crate::tlb::service_tlb_if_up)) {
            drop(tree);
            drop(home);
            let e = match why {
                Underivable::Revoking => Error::Busy,
                Underivable::TooDeep => Error::InvalidState,
            };
            return Err((e, cap));
        }
        let mut caps = self.caps.lock();
        let refused = match self.refusal(&caps, slot) {
            Some(e) => Some(e),
            None if parent.is_none() => Some(Error::EmptySlot),
            None => None,
        };
        if let Some(e) = refused {
            drop((caps, tree));
            drop(home);
            return Err((e, cap));
        }
        let id = tree.add(parent, home).unwrap_or_else(|_| unreachable!("parent checked live"));
        cap.link = Link::new(lineage.clone(), id, true);
        caps.insert(slot, cap).map_err(|_| unreachable!("checked free"))
    }

    /// Makes, charges and attaches the table's shadow (before the first endpoint capability
    /// enters it). Allocates and charges before the lock; a thread that lost the race to
    /// another drops its copy after the lock. No lock may be held.
    #[cold]
    pub fn make_shadow(&self) -> Result<(), Error> {
        // The slots (8 KiB) are allocated fallibly, after the kernel's headroom check
        // (`mem::headroom`), as every allocating call's are; the `Arc`'s header is small. The
        // budget first: one that cannot pay is refused without the allocator's lock, which
        // every CPU takes (before the thirty-fifth session the headroom check came first).
        let charge = Charge::new(self._charge.of().0, rl4_abi::cost::CAP_SHADOW)?;
        crate::mem::headroom()?;
        let shadow = Arc::try_new(rl4_core::qsbr::Shadow::try_new(rl4_abi::CAP_SLOTS as usize).ok_or(Error::OutOfMemory)?)
            .map_err(|_| Error::OutOfMemory)?;
        let mut caps = self.caps.lock();
        let lost = match caps.attach(shadow.clone()) {
            Ok(()) => {
                self.shadow.call_once(|| TableShadow { shadow, charge });
                None
            }
            Err(s) => Some((s, shadow, charge)),
        };
        drop(caps);
        drop(lost);
        Ok(())
    }

    /// Why `slot` cannot take a capability now (under the table's lock): the task has ended,
    /// or the slot is out of range or full.
    fn refusal(&self, caps: &CapTable<KObj>, slot: u64) -> Option<Error> {
        if self.dead.load(Ordering::Acquire) { Some(Error::InvalidState) } else { caps.check_free(slot).err() }
    }

    /// What [`Task::insert_cap`] would refuse now for `slot` (the task ended, the slot out of
    /// range or taken): checked before [`tracked`] makes a source capability the root of a
    /// derivation tree, so that a copy refused for its destination leaves no root node (and
    /// no charge) behind. (Another thread of the task may still fill the slot in between: the
    /// insertion then refuses, and the root stays with the original, charged to its holder.)
    pub fn may_insert(&self, slot: u64) -> Result<(), Error> {
        match self.refusal(&self.caps.lock(), slot) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// `cap`, read (perhaps with fewer rights) from `slot` of `task`, made ready to become a child
/// of the capability there: if that is an original in no derivation tree yet, a tree is made
/// with it as the root (the capability in the slot then owns the root node) and the returned
/// copy names that node. `EmptySlot` if the slot no longer holds a capability to that object
/// with that badge and at least `cap`'s rights (deleted or replaced since it was read; one
/// replaced by another such capability serves as the parent as well: no child has a right its
/// parent lacks; before the thirty-fourth session any rights did, which a review found). Takes
/// no lock held.
pub fn tracked(task: &Arc<Task>, slot: u64, mut cap: Cap) -> Result<Cap, Error> {
    if cap.link.parts().is_some() {
        return Ok(cap);
    }
    // The root node is charged to `task`, whose slot holds the original (given back if another
    // thread tracked it meanwhile: `home` is dropped unused). Declared before the guards below,
    // so that an early return drops it after them (its charge's release is a destructor; before
    // the thirty-sixth session the `EmptySlot` return dropped it under both locks: a review's
    // finding).
    let mut home = Some(Home::new(task, slot)?);
    let lineage = Arc::try_new(Lineage { tree: Mutex::new(DerivTree::new()) }).map_err(|_| Error::OutOfMemory)?;
    let mut tree = lineage.tree.lock_answering();
    tree.reserve().map_err(|_| Error::OutOfMemory)?;
    let mut caps = task.caps.lock();
    let root = caps.with_link(slot, |obj, rights, badge, link| {
        if !obj.same(&cap.obj) || badge != cap.badge || !rights.contains(cap.rights) {
            return Err(Error::EmptySlot);
        }
        if let Some((l, id)) = link.parts() {
            // Another thread tracked it meanwhile.
            return Ok(Err((l.clone(), id)));
        }
        let root = tree.add(None, home.take().expect("once")).map_err(|_| Error::EmptySlot)?;
        *link = Link::new(lineage.clone(), root, true);
        Ok(Ok(root))
    })??;
    let root = match root {
        Ok(root) => root,
        Err((l, id)) => {
            drop((caps, tree));
            cap.link = Link::new(l, id, false);
            return Ok(cap);
        }
    };
    drop((caps, tree));
    cap.link = Link::new(lineage, root, false);
    Ok(cap)
}

/// What a thread's [`Life`] names: the kernel's references to endpoints, notifications,
/// capabilities in flight and callers.
pub struct KernelKinds;

/// A blocked thread's endpoint (weak: a waiter does not keep its endpoint alive), with its
/// address, which the wait's checks compare (one load, where the weak reference's own address
/// takes a branch for the dangling case and an offset).
pub struct EpRef {
    pub weak: Weak<crate::ipc::Endpoint>,
    id: usize,
}

impl EpRef {
    /// A new weak reference to `ep`.
    #[inline(always)]
    pub fn new(ep: &crate::ipc::Endpoint) -> Self {
        EpRef { weak: ep.weak(), id: ep.id() }
    }
}
/// A blocked thread's notification.
pub struct NtfRef(pub Weak<crate::ipc::Notification>);

impl Ident for EpRef {
    #[inline(always)]
    fn ident(&self) -> usize {
        self.id
    }
}
impl Ident for NtfRef {
    fn ident(&self) -> usize {
        self.0.as_ptr() as usize
    }
}

impl Kinds for KernelKinds {
    type Ep = EpRef;
    type Ntf = NtfRef;
    type Cap = InFlight;
    type Caller = Arc<Thread>;
}

/// A thread's life as the kernel keeps it (see `rl4_core::life`).
pub type Life = rl4_core::life::Life<KernelKinds>;
pub type Wait = rl4_core::life::Wait<KernelKinds>;

/// Drops a wait that ended, inline (the enum's out-of-line drop glue costs the fast path a call
/// and a dozen instructions; a reply wait owns nothing). No lock may be held: a capability in
/// flight can be the last reference to an object.
#[inline(always)]
pub fn dispose(w: Wait) {
    if let rl4_core::life::Wait::Reply { .. } = &w {
        core::mem::forget(w);
        return;
    }
    match w {
        rl4_core::life::Wait::Recv { ep } => drop(ep),
        rl4_core::life::Wait::Notify { n } => drop(n),
        send => crate::reclaim::later_wait(Some(send)),
    }
}

pub struct Thread {
    pub regs: RegsCell,
    /// Its FPU/SIMD registers while it does not run (saved and restored by `thread::fpu_leave`
    /// and `thread::fpu_enter`, or the fast path's `thread::fpu_switch`, at every switch, once
    /// it has used them).
    pub fpu: rl4_arch::fpu::FpuState,
    /// The address of its IPC buffer page (message words 4 and up), a leaf lock. An address,
    /// not a frame: each long message uses the frame mapped there writable at that moment
    /// (`ipc::with_buffer`), so an `Unmap` of the page takes the buffer away with it.
    pub ipc_buffer: Mutex<Option<u64>, { Level::OBJECT }>,
    pub id: u64,
    pub task: Arc<Task>,
    pub space: Arc<Space>,
    /// Its state, place, scheduling parameters and reply right: every change is a transition
    /// of [`Life`], made under the lock of its home CPU (`Life::cpu`, which only
    /// `thread::set_affinity` changes, through `HomeMutex::rehome_when`).
    pub life: crate::lock::HomeMutex<Life>,
    /// Its link in a CPU's inbox (`rl4_core::mailbox`), used while its `Life` says
    /// `Place::Queued` and it was pushed there.
    pub mail: rl4_core::mailbox::Link<Thread>,
    /// Its link in an endpoint's wait queue (`rl4_core::wlist`), used while it waits there
    /// (under that endpoint's queue lock).
    pub wait_link: rl4_core::wlist::WLink<Thread>,
    /// Its link in its CPU's run queue (`rl4_core::runqueue`), used while its `Life` says
    /// `Place::Queued` and that CPU moved it there from its inbox (only that CPU touches it). A
    /// link of its own: a woken thread may be queued on a CPU before its waker has taken it
    /// out of the endpoint's queue.
    pub run_link: rl4_core::wlist::WLink<Thread>,
    /// Its link in a CPU's list of requests (`sched::request`: killed or re-prioritised while
    /// queued there), pushed only under its lock.
    pub req_link: rl4_core::wlist::WLink<Thread>,
    /// Set once it is `Dead` (under its lock, by `thread::kill`): its CPU takes its run-queue
    /// entry out when asked (`sched::request`) rather than when its turn comes.
    pub killed: AtomicBool,
    /// The IPC fast path's memory of the endpoint slot it read last for this thread
    /// (`qsbr::SlotMemo`; only this thread's own system calls touch it).
    pub memo: crate::qsbr::SlotMemo,
    /// Set (under its lock, by `thread::set_priority`) when its priority changed while it was
    /// queued: its CPU moves its run-queue entry to the list of its priority now when asked
    /// (`sched::request`).
    pub reprio: AtomicBool,
    /// Ticks left of its time slice when it was last preempted and queued again (0: none, and
    /// after it blocked or stopped): its next run from a queue goes on with them rather than a
    /// fresh slice (`sched::switch_to`; a direct switch runs on its waker's slice anyway), so that a thread preempted again and
    /// again by a thread of higher priority still ends its slice and lets one of its own
    /// priority run (before the fifteenth session it got a fresh slice at every return and,
    /// preempted at least once a slice, kept an equal-priority thread from ever running).
    pub slice_left: core::sync::atomic::AtomicU32,
    /// The last deadline prune that kept an entry of this thread (that prune's TSC time;
    /// `timeout.rs`): a second entry with the same deadline in the same prune is a duplicate.
    pub pruned_at: AtomicU64,
    /// The CPUs whose deadline heaps got an entry of its waits, a bit each (`timeout::add`):
    /// its destruction tells those CPUs alone (`timeout::thread_gone`).
    pub deadline_cpus: [AtomicU64; rl4_smp::MAX_CPUS / 64],
    /// Its fault handler (`ThreadSetFaultHandler`, [`FaultHandler`]). A leaf lock.
    pub fault_handler: Mutex<Option<FaultHandler>, { Level::OBJECT }>,
    _charge: Charge,
}

/// Whether `slot` of `caps` still holds a capability of type `ty` with `rights` to the object at
/// `addr` (and with `badge`, if given): the authority a stored binding was made with, checked
/// where the binding is used (`fault::handler_of`, `irq::ack`), under the table's lock, with no
/// reference count changed.
pub fn holds(caps: &rl4_core::captable::CapTable<KObj>, slot: u64, ty: ObjType, rights: rl4_abi::Rights, badge: Option<u64>, addr: usize) -> bool {
    caps.lookup(slot, ty, rights).is_ok_and(|c| badge.is_none_or(|b| c.badge == b) && c.obj.addr() == addr)
}

/// A thread's fault handler, as `ThreadSetFaultHandler` set it: the endpoint (weak: it dies
/// with its last capability) and the badge of the endpoint capability it was set with, and
/// where the authority that set it lives — the setter's task (weak) and the two slots of its
/// table it named, the thread capability (`WRITE`) and the endpoint capability (`SEND`). The
/// binding acts only while the endpoint's slot still holds that capability, and the thread's
/// slot its capability too if the setter is another task than the thread's own
/// (`fault::handler_of`): a capability deleted or revoked takes the binding with it at the
/// thread's next fault, as it takes the right to `Call` the endpoint or to set the thread's
/// handler again.
#[derive(Clone)]
pub struct FaultHandler {
    pub ep: Weak<crate::ipc::Endpoint>,
    pub badge: u64,
    pub setter: Weak<Task>,
    pub thread_slot: u64,
    pub ep_slot: u64,
}

impl FaultHandler {
    /// Whether `o` is this very binding (not one set again since).
    pub fn same(&self, o: &FaultHandler) -> bool {
        Weak::ptr_eq(&self.ep, &o.ep)
            && self.badge == o.badge
            && Weak::ptr_eq(&self.setter, &o.setter)
            && self.thread_slot == o.thread_slot
            && self.ep_slot == o.ep_slot
    }
}

// SAFETY: `wlink` returns the thread's own `wait_link` field, the same one at every call, which
// lives as long as the thread.
#[allow(unsafe_code)]
unsafe impl rl4_core::wlist::WLinked for Thread {
    fn wlink(&self) -> &rl4_core::wlist::WLink<Thread> {
        &self.wait_link
    }
}

// SAFETY: `wlink` returns the thread's own `run_link` field (not `wait_link`), the same one at
// every call, which lives as long as the thread.
#[allow(unsafe_code)]
unsafe impl rl4_core::wlist::WLinked<rl4_core::runqueue::Run> for Thread {
    fn wlink(&self) -> &rl4_core::wlist::WLink<Thread> {
        &self.run_link
    }
}

// SAFETY: `wlink` returns the thread's own `req_link` field (neither `wait_link` nor
// `run_link`), the same one at every call, which lives as long as the thread.
#[allow(unsafe_code)]
unsafe impl rl4_core::wlist::WLinked<crate::sched::Req> for Thread {
    fn wlink(&self) -> &rl4_core::wlist::WLink<Thread> {
        &self.req_link
    }
}

// SAFETY: `link` returns the thread's own `mail` field, the same one at every call, which lives
// as long as the thread.
#[allow(unsafe_code)]
unsafe impl rl4_core::mailbox::Linked for Thread {
    fn link(&self) -> &rl4_core::mailbox::Link<Thread> {
        &self.mail
    }
}

pub static LIVE_THREADS: AtomicU64 = AtomicU64::new(0);

/// What a thread costs its budget: [`THREAD_COST`] and its FPU save area, whose size comes from
/// CPUID (`stat::THREAD_BYTES`).
pub fn thread_bytes() -> u64 {
    THREAD_COST + rl4_arch::fpu::area_bytes()
}

impl Thread {
    pub fn new(mem: &Arc<Memory>, task: Arc<Task>, entry: u64, stack: u64, prio: u8, cpu: u32) -> Result<Arc<Thread>, Error> {
        let charge = Charge::new(mem, thread_bytes())?;
        let fpu = rl4_arch::fpu::FpuState::new().ok_or(Error::OutOfMemory)?;
        let space = task.space.clone();
        // Counted before it exists: a thread that cannot be allocated is dropped (and uncounted
        // by its destructor) inside `try_new`.
        LIVE_THREADS.fetch_add(1, Ordering::Relaxed);
        let t = Arc::try_new(Thread {
            regs: RegsCell::new(UserRegs::new_thread(entry, stack, 0)),
            fpu,
            ipc_buffer: Mutex::new(None),
            id: next_id(),
            task: task.clone(),
            space,
            life: crate::lock::HomeMutex::new(cpu, Life::new(prio, cpu)),
            mail: rl4_core::mailbox::Link::new(),
            wait_link: rl4_core::wlist::WLink::new(),
            run_link: rl4_core::wlist::WLink::new(),
            req_link: rl4_core::wlist::WLink::new(),
            killed: AtomicBool::new(false),
            memo: crate::qsbr::SlotMemo::new(),
            reprio: AtomicBool::new(false),
            slice_left: core::sync::atomic::AtomicU32::new(0),
            pruned_at: AtomicU64::new(0),
            deadline_cpus: [const { AtomicU64::new(0) }; rl4_smp::MAX_CPUS / 64],
            fault_handler: Mutex::new(None),
            _charge: charge,
        })
        .map_err(|_| Error::OutOfMemory)?;
        {
            // Checked under the list's lock, which `kill_task` takes after marking the task
            // dead: a thread is either in the list it drains or never made.
            let mut list = task.threads.lock_answering();
            if task.dead.load(Ordering::Acquire) {
                return Err(Error::InvalidState);
            }
            // Dead entries are pruned by `Thread`'s destructor once half the list is dead (it
            // used to be pruned here too, at every creation: O(threads) per `ThreadCreate`);
            // here only when the list cannot grow, before giving up.
            if list.try_reserve_one().is_err() {
                retain_live(&mut list);
                list.shrink();
            }
            if list.try_push(Arc::downgrade(&t)).is_err() {
                return Err(Error::OutOfMemory);
            }
        }
        THREADS.add(&t)?;
        Ok(t)
    }
    pub fn charge(&self) -> &Charge {
        &self._charge
    }
}

impl Drop for Thread {
    fn drop(&mut self) {
        crate::reclaim::dropping("Thread");
        crate::timeout::thread_gone(self);
        // A thread destroyed while it still holds a reply right (suspended after it received a
        // call, then its last capability deleted): that caller gets `PartnerGone`, never a wait
        // that nobody can end.
        if let Some((caller, ticket)) = self.life.get_mut().take_reply() {
            crate::thread::fail_caller(caller, ticket);
        }
        // A wait it may still hold (a capability in flight) goes to the destruction loop.
        if let rl4_core::life::State::Blocked { .. } = self.life.get_mut().state() {
            let life = core::mem::replace(self.life.get_mut(), Life::new(0, 0));
            crate::reclaim::later(crate::reclaim::Garbage::Life(life));
        }
        LIVE_THREADS.fetch_sub(1, Ordering::Relaxed);
        // Its task's list holds a weak reference, which keeps this allocation alive: the
        // list is pruned once half of it is dead.
        let gone = self.task.threads_gone.fetch_add(1, Ordering::Relaxed) + 1;
        if gone >= 8 {
            let mut l = self.task.threads.lock_answering();
            if 2 * gone as usize >= l.len() {
                retain_live(&mut l);
                // Frees whole pieces only: allocates nothing.
                l.shrink();
                self.task.threads_gone.store(0, Ordering::Relaxed);
            }
        }
        THREADS.gone();
    }
}

impl Drop for Task {
    /// Its table's capabilities can be the last references to other tasks (and so on): they
    /// are destroyed by the destruction loop, not from here (`reclaim.rs`).
    fn drop(&mut self) {
        crate::reclaim::dropping("Task");
        let table = self.caps.get_mut().take_all();
        if !table.is_empty() {
            crate::reclaim::later(crate::reclaim::Garbage::Table(table));
        }
        if let Some(p) = self.parent.take() {
            p.children.fetch_sub(1, Ordering::SeqCst);
            crate::reclaim::later(crate::reclaim::Garbage::Task(p));
        }
        TASKS.gone();
    }
}
