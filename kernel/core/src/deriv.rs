//! The derivation tree of one object's capabilities: which capability was copied or minted
//! from which, so that `CapRevoke` can delete everything derived from one capability in time
//! proportional to what it deletes.
//!
//! A node is one capability in a slot; its *home* (`H`: the kernel's task and slot) says where.
//! The original capability of an object is a root; a copy, a mint or a capability received
//! through IPC is a child of the capability it came from. Nodes live in one vector, linked by
//! index (parent, first child, siblings both ways), and are reused through a free list; a
//! [`NodeId`] carries the node's *serial*, which no other node of the tree ever has, so an
//! identifier kept after its node was freed (and perhaps its place reused) is recognised as gone.
//!
//! Nodes move: when the vector is mostly free, the live nodes above twice the live count move
//! down into free places ([`DerivTree::maybe_shrink`]) and the end is given back, so that a
//! vector is never longer than four times its live nodes for long, whichever node is last (a live node
//! at the end used to keep the vector as long as it ever was, and no budget paid for that: a
//! hostile review of the twentieth session). The owner of a moved node is told its new
//! identifier (`on_move`) if it can be; an identifier kept elsewhere (a capability in flight, a
//! system call's snapshot, a capability on its way out of its slot or in a table being torn
//! down) is out of date after a move, and [`DerivTree::refresh`] finds the node again through
//! the tree's *forwarding index*: every live node that ever moved, by serial, sorted (a binary
//! search, only for an identifier whose node is not where it says).
//!
//! Deleting a capability ([`DerivTree::remove`]) hands its children to its parent, so that
//! revoking the parent still reaches them, and no node outlives its capability: the tree holds
//! exactly one node per capability in a slot — but for a capability deleted while it is being
//! revoked, whose node stays, its revocation's to finish, until the last revocation of it ends
//! ([`DerivTree::end_revoke`]): handed up at once, the children a revocation had not reached
//! yet (and the grandchildren it had already handed to the node) would have escaped it, kept
//! for good by whoever held them (a review of the twenty-fourth session). [`DerivTree::revoke`] frees every descendant of
//! a node, top down, with no recursion, no allocation it needs (its final shrink takes memory
//! only if the heap has it) and no cursor between batches.
use crate::paged::PagedVec;

const NONE: u32 = u32::MAX;
/// [`Node::revoking`]'s flag: the node's capability was deleted while it was being revoked.
const DOOMED: u16 = 1 << 15;
/// [`Node::revoking`]'s count of revocations under way.
const REVOKING: u16 = DOOMED - 1;

/// How many children [`DerivTree::remove_polling`] hands up between two calls of its `poll`.
pub const POLL_EVERY: usize = 64;
/// The most ancestors a node may have: [`DerivTree::may_derive`] refuses a child below a node
/// that has this many already. Depths only fall afterwards (a node's parent goes: its children
/// go to their grandparent), so the walk that looks for a revocation under way above a node
/// looks at every ancestor it has, in at most this many steps.
pub const MOST_DEPTH: usize = rl4_abi::MOST_CAP_DEPTH as usize;
const _: () = assert!(MOST_DEPTH >= POLL_EVERY && MOST_DEPTH <= 4 * POLL_EVERY);

/// Why [`DerivTree::may_derive`] refuses a child below a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Underivable {
    /// The node or one of its ancestors is being revoked (the kernel answers `Busy`).
    Revoking,
    /// The node has [`MOST_DEPTH`] ancestors already (the kernel answers `InvalidState`).
    TooDeep,
}

/// A node of a [`DerivTree`]: where it was when the identifier was made, and its serial (its
/// identity: two identifiers are equal when they name the same node, wherever it is now).
#[derive(Clone, Copy, Debug)]
pub struct NodeId {
    index: u32,
    /// The node's serial (bits 0–46: never 0, never repeats within a tree) and the [`tag`] bit
    /// (63) of the identifier's holder.
    ///
    /// [`tag`]: Self::tag
    serial: u64,
}

/// Serials have 47 bits ([`DerivTree::reserve`] refuses a node once a tree has used them all:
/// 2^47 copies, years of nothing else).
const SERIAL_BITS: u64 = (1 << 47) - 1;
/// In a node's `serial_hi`: the node moved at least once (it has an entry in the forwarding
/// index).
const MOVED: u16 = 1 << 15;
const TAG: u64 = 1 << 63;

impl NodeId {
    /// One bit the holder of an identifier keeps with it (the kernel: whether the capability
    /// owns its node), which the tree ignores and [`DerivTree::refresh`] keeps.
    pub fn tag(self) -> bool {
        self.serial & TAG != 0
    }

    /// This identifier with its [`tag`](Self::tag) set to `on`.
    pub fn tagged(self, on: bool) -> NodeId {
        NodeId { serial: self.serial & !TAG | if on { TAG } else { 0 }, ..self }
    }

    fn serial(self) -> u64 {
        self.serial & SERIAL_BITS
    }
}

/// Two identifiers are equal when they name the same node (wherever it was when each was made,
/// whatever their tags).
impl PartialEq for NodeId {
    fn eq(&self, o: &Self) -> bool {
        self.serial() == o.serial()
    }
}
impl Eq for NodeId {}

struct Node<H> {
    /// The [`NodeId`] serial of the node here, in two parts ([`Node::serial`]: the node is 48
    /// bytes, 4 × 48 in a node's cost); 0 while the place is free.
    serial_lo: u32,
    serial_hi: u16,
    /// Revocations of this node under way ([`DerivTree::begin_revoke`]; the bits of
    /// [`REVOKING`]): another revocation that reaches it takes its children first and leaves the
    /// node itself until it has none. [`DOOMED`]: its capability was deleted meanwhile (the
    /// node goes when its last revocation ends).
    revoking: u16,
    parent: u32,
    first_child: u32,
    prev: u32,
    /// Next sibling; for a free node, the next free one.
    next: u32,
    /// `None`: the node is free.
    home: Option<H>,
}

impl<H> Node<H> {
    fn serial(&self) -> u64 {
        ((self.serial_hi & !MOVED) as u64) << 32 | self.serial_lo as u64
    }

    /// Sets the serial (0: free) and clears the moved flag.
    fn set_serial(&mut self, s: u64) {
        (self.serial_lo, self.serial_hi) = (s as u32, (s >> 32) as u16 & !MOVED);
    }

    fn moved(&self) -> bool {
        self.serial_hi & MOVED != 0
    }
}

/// An entry of the forwarding index: where the node with this serial is now (`NONE` once it is
/// freed, until the next shrink compacts the index).
#[derive(Clone, Copy)]
struct Fwd {
    serial: u64,
    index: u32,
}

/// Calls `poll` after every [`POLL_EVERY`] steps of one piece of work.
struct Poller<'a, F: FnMut()> {
    poll: &'a mut F,
    n: usize,
}

impl<F: FnMut()> Poller<'_, F> {
    fn step(&mut self) {
        self.n += 1;
        if self.n % POLL_EVERY == 0 {
            (self.poll)();
        }
    }

    fn poll(&mut self) {
        (self.poll)();
    }
}

/// One object's derivation tree.
pub struct DerivTree<H> {
    /// In page-sized pieces (`paged.rs`): a tree of 100,000 copies needs no contiguous frames.
    nodes: PagedVec<Node<H>>,
    free: u32,
    live: usize,
    /// Nodes freed since the vector was last considered for shrinking.
    freed: usize,
    /// Revocations under way in the tree: the sum of the live nodes' `revoking` (while it is 0,
    /// [`may_derive`](Self::may_derive) looks for none).
    revocations: u32,
    /// The serial the next node gets (from 1).
    serials: u64,
    /// The forwarding index: an entry per live node that ever moved (and per such node freed
    /// since the last shrink), sorted by serial. In page-sized pieces, 16 bytes an entry, at
    /// most one per live node after a shrink (in a node's cost).
    fwd: PagedVec<Fwd>,
    /// Nodes revocations deleted or handed over (tests: the cost bound).
    #[cfg(test)]
    steps: usize,
}

impl<H> Default for DerivTree<H> {
    fn default() -> Self {
        Self::new()
    }
}

/// The node a derivation names was freed: its capability was deleted or revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gone;

impl<H> DerivTree<H> {
    /// Bytes one node takes in the tree's vector.
    pub const NODE_BYTES: usize = core::mem::size_of::<Node<H>>();
    /// Bytes a moved node's entry takes in the forwarding index.
    pub const FORWARD_BYTES: usize = core::mem::size_of::<Fwd>();

    /// Bytes of heap the vector and the forwarding index hold (their pieces, by capacity).
    pub fn bytes(&self) -> usize {
        self.nodes.bytes() + self.fwd.bytes()
    }

    pub const fn new() -> Self {
        DerivTree {
            nodes: PagedVec::new(),
            free: NONE,
            live: 0,
            freed: 0,
            revocations: 0,
            serials: 1,
            fwd: PagedVec::new(),
            #[cfg(test)]
            steps: 0,
        }
    }

    /// Capabilities in the tree.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Nodes allocated, free ones included (what the tree's vector holds).
    pub fn capacity(&self) -> usize {
        self.nodes.len()
    }

    /// `id`'s node, if it is live where `id` says. An identifier made before the tree's last
    /// move may name a node that moved: the public functions taking one expect it up to date
    /// ([`refresh`](Self::refresh)), else they take the node for gone.
    fn node(&self, id: NodeId) -> Option<&Node<H>> {
        self.nodes.get(id.index as usize).filter(|n| n.serial() == id.serial() && n.home.is_some())
    }

    fn id_at(&self, index: u32) -> NodeId {
        NodeId { index, serial: self.nodes[index as usize].serial() }
    }

    /// `id` brought up to date: the same node where it is now, or `None` if it was freed. An
    /// identifier is checked where it says; one whose node is not there is looked up in the
    /// forwarding index (a binary search; none if no node of the tree ever moved). Keeps `id`'s
    /// tag.
    pub fn refresh(&self, id: NodeId) -> Option<NodeId> {
        if self.node(id).is_some() {
            return Some(id);
        }
        if self.fwd.is_empty() {
            return None;
        }
        // (A freed node's entry says `NONE`, which is no place: `node` finds nothing there.)
        let moved = NodeId { index: self.fwd[self.fwd_find(id.serial())?].index, ..id };
        self.node(moved).map(|_| moved)
    }

    /// The forwarding index's entry for `serial`, if any.
    fn fwd_find(&self, serial: u64) -> Option<usize> {
        self.fwd_find_in(serial, self.fwd.len())
    }

    /// Whether `id` names a live node where it says, without looking further (the kernel's
    /// consistency check: a capability in a slot has an up-to-date identifier).
    pub fn is_current(&self, id: NodeId) -> bool {
        self.node(id).is_some()
    }

    /// Whether `id` still names a capability.
    pub fn is_live(&self, id: NodeId) -> bool {
        self.refresh(id).is_some()
    }

    /// Where `id`'s capability lives.
    pub fn home(&self, id: NodeId) -> Option<&H> {
        let id = self.refresh(id)?;
        self.node(id).and_then(|n| n.home.as_ref())
    }

    /// The parent of `id`, if it is live and not a root.
    pub fn parent(&self, id: NodeId) -> Option<NodeId> {
        let id = self.refresh(id)?;
        let n = self.node(id)?;
        (n.parent != NONE).then(|| self.id_at(n.parent))
    }

    /// Makes room for one more node, so that the next [`add`](Self::add) allocates nothing;
    /// `Err` if there is no memory for it (or the tree has used every serial).
    pub fn reserve(&mut self) -> Result<(), ()> {
        if self.serials > SERIAL_BITS {
            return Err(());
        }
        if self.free != NONE { Ok(()) } else { self.nodes.try_reserve_one() }
    }

    /// A new node: a root (`parent` `None`) or a child of the live node `parent`.
    pub fn add(&mut self, parent: Option<NodeId>, home: H) -> Result<NodeId, Gone> {
        let p = match parent.map(|p| self.refresh(p)) {
            None => NONE,
            Some(Some(p)) => p.index,
            Some(None) => return Err(Gone),
        };
        if self.serials > SERIAL_BITS {
            return Err(Gone);
        }
        let index = if self.free != NONE {
            let i = self.free;
            self.free = self.nodes[i as usize].next;
            i
        } else {
            let node = Node { serial_lo: 0, serial_hi: 0, parent: NONE, first_child: NONE, prev: NONE, next: NONE, revoking: 0, home: None };
            // Only without a `reserve` first, and with no memory: no node.
            if self.nodes.try_push(node).is_err() {
                return Err(Gone);
            }
            (self.nodes.len() - 1) as u32
        };
        let next = if p == NONE { NONE } else { self.nodes[p as usize].first_child };
        {
            let serial = self.serials;
            self.serials += 1;
            let n = &mut self.nodes[index as usize];
            n.set_serial(serial);
            n.parent = p;
            n.first_child = NONE;
            n.prev = NONE;
            n.next = next;
            n.home = Some(home);
        }
        if p != NONE {
            if next != NONE {
                self.nodes[next as usize].prev = index;
            }
            self.nodes[p as usize].first_child = index;
        }
        self.live += 1;
        Ok(self.id_at(index))
    }

    /// Takes node `i` out of its parent's list of children.
    fn unlink(&mut self, i: u32) {
        let (parent, prev, next) = {
            let n = &self.nodes[i as usize];
            (n.parent, n.prev, n.next)
        };
        if prev != NONE {
            self.nodes[prev as usize].next = next;
        } else if parent != NONE {
            self.nodes[parent as usize].first_child = next;
        }
        if next != NONE {
            self.nodes[next as usize].prev = prev;
        }
    }

    /// Frees the unlinked, childless node `i` and returns its home.
    fn release(&mut self, i: u32) -> H {
        let n = &mut self.nodes[i as usize];
        debug_assert_eq!(n.first_child, NONE);
        n.parent = NONE;
        n.prev = NONE;
        n.next = NONE;
        // A revocation of a node that is freed is over.
        self.revocations -= (n.revoking & REVOKING) as u32;
        n.revoking = 0;
        self.live -= 1;
        let home = n.home.take().expect("a live node");
        let (serial, moved) = (n.serial(), n.moved());
        n.set_serial(0);
        n.next = self.free;
        self.free = i;
        self.freed += 1;
        if moved {
            // Its forwarding entry goes at the next shrink (which compacts the index).
            if let Some(f) = self.fwd_find(serial) {
                self.fwd[f].index = NONE;
            }
        }
        home
    }

    /// Gives memory back after a burst: once at most a quarter of the vector's places are live
    /// and a quarter were freed since the last look, the live nodes at or above `target` (twice
    /// the live nodes, 4 at least) move down into the lowest free places, and the free end of
    /// the vector is dropped, its capacity with it: the vector is then at most about twice its
    /// live nodes, and until the next look at most about four times, whatever the order of
    /// deletions. Each moved node's owner is told its new identifier (`on_move`, under the
    /// tree's lock; the kernel rewrites the capability in its slot if it is there), and the
    /// node gets an entry in the forwarding index, where [`refresh`](Self::refresh) finds it
    /// for an identifier that was not told (a capability in flight or on its way out of its
    /// slot). The index is compacted (entries of freed nodes dropped) and sorted here. A node
    /// for whose entry there is no memory stays where it is, and the vector keeps what lies
    /// below it. The free list is rebuilt in address order, so the lowest free nodes are used
    /// first and the end stays free. Time: the places looked at, the moved nodes' children and
    /// the index's sorting, `poll` called after every [`POLL_EVERY`] steps (the tree's lock is
    /// held, interrupts off, and a task decides how long the vector is: a hostile review of the
    /// twentieth session found three unpolled passes over 100,000 nodes); amortised over the
    /// quarter of the vector freed since the last look, a few steps (and a logarithm) a free.
    fn maybe_shrink(&mut self, poll: &mut impl FnMut(), on_move: &mut impl FnMut(&H, NodeId)) {
        let len = self.nodes.len();
        if len < 4 || 4 * self.live > len || 4 * self.freed < len {
            return;
        }
        self.freed = 0;
        let mut p = Poller { poll, n: 0 };
        // The freed nodes' forwarding entries go first (order kept: still sorted).
        self.fwd.retain(|f| {
            p.step();
            f.index != NONE
        });
        let sorted = self.fwd.len();
        // At most `live` nodes lie below `target`, so it has room for every one above.
        let target = (2 * self.live).max(4);
        let mut to = 0;
        let mut stuck = 0;
        for j in target..len {
            p.step();
            if self.nodes[j].serial() == 0 {
                continue;
            }
            while self.nodes[to].serial() != 0 {
                to += 1;
                p.step();
            }
            debug_assert!(to < target);
            let serial = self.nodes[j].serial();
            // Its forwarding entry: the one it has (from an earlier move: in the sorted part),
            // or a new one at the end (sorted below). Without memory for one, it stays.
            let entry = if self.nodes[j].moved() { self.fwd_find_in(serial, sorted) } else { None };
            if entry.is_none() && self.fwd.try_push(Fwd { serial, index: to as u32 }).is_err() {
                stuck = j + 1;
                continue;
            }
            if let Some(f) = entry {
                self.fwd[f].index = to as u32;
            }
            self.relocate(j as u32, to as u32, &mut p);
            self.nodes[to].serial_hi |= MOVED;
            let id = self.id_at(to as u32);
            on_move(self.nodes[to].home.as_ref().expect("a live node moved"), id);
            to += 1;
        }
        self.sort_fwd(sorted, &mut p);
        let mut keep = target.max(stuck);
        while keep > 0 && self.nodes[keep - 1].serial() == 0 {
            keep -= 1;
            p.step();
        }
        while self.nodes.len() > keep {
            self.nodes.truncate(keep.max(self.nodes.len().saturating_sub(POLL_EVERY)));
            p.poll();
        }
        // Frees whole pieces (allocates nothing), then gives back what a small vector's grown
        // first leaf holds beyond twice its length (a smaller leaf, if one can be had).
        self.nodes.shrink();
        self.nodes.compact();
        self.fwd.shrink();
        self.fwd.compact();
        self.free = NONE;
        for i in (0..keep).rev() {
            let n = &mut self.nodes[i];
            if n.serial() == 0 {
                n.next = self.free;
                self.free = i as u32;
            }
            p.step();
        }
        // A node that could not move (no memory for its entry) keeps the vector long: the next
        // look comes after an eighth more is freed, not a quarter.
        if stuck > 0 {
            self.freed = keep / 8;
        }
    }

    /// [`fwd_find`](Self::fwd_find) in the first `n` entries.
    fn fwd_find_in(&self, serial: u64, n: usize) -> Option<usize> {
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let s = self.fwd[mid].serial;
            if s == serial {
                return Some(mid);
            }
            if s < serial {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        None
    }

    /// Sorts the forwarding index by serial, its first `sorted` entries being sorted already: a
    /// heap sort in place (no allocation), unless nothing was added.
    fn sort_fwd(&mut self, sorted: usize, p: &mut Poller<'_, impl FnMut()>) {
        let n = self.fwd.len();
        if n == sorted {
            return;
        }
        let key = |v: &PagedVec<Fwd>, i: usize| v[i].serial;
        let sift = |v: &mut PagedVec<Fwd>, mut root: usize, end: usize, p: &mut Poller<'_, _>| loop {
            let mut child = 2 * root + 1;
            if child >= end {
                break;
            }
            if child + 1 < end && key(v, child) < key(v, child + 1) {
                child += 1;
            }
            if key(v, root) >= key(v, child) {
                break;
            }
            v.swap(root, child);
            root = child;
            p.step();
        };
        for start in (0..n / 2).rev() {
            sift(&mut self.fwd, start, n, p);
        }
        for end in (1..n).rev() {
            self.fwd.swap(0, end);
            sift(&mut self.fwd, 0, end, p);
        }
    }

    /// Moves the live node at `from` to the free place `to`: its neighbours, its parent (if it
    /// was the first child) and its children are pointed there. Time: its children.
    fn relocate(&mut self, from: u32, to: u32, p: &mut Poller<'_, impl FnMut()>) {
        let (serial, parent, first, prev, next, revoking, home) = {
            let n = &mut self.nodes[from as usize];
            let v = (n.serial(), n.parent, n.first_child, n.prev, n.next, n.revoking, n.home.take());
            n.set_serial(0);
            (n.parent, n.first_child, n.prev, n.next, n.revoking) = (NONE, NONE, NONE, NONE, 0);
            v
        };
        debug_assert!(self.nodes[to as usize].serial() == 0 && self.nodes[to as usize].home.is_none());
        {
            let n = &mut self.nodes[to as usize];
            n.set_serial(serial);
            (n.parent, n.first_child, n.prev, n.next, n.revoking, n.home) = (parent, first, prev, next, revoking, home);
        }
        if prev != NONE {
            self.nodes[prev as usize].next = to;
        } else if parent != NONE && self.nodes[parent as usize].first_child == from {
            self.nodes[parent as usize].first_child = to;
        }
        if next != NONE {
            self.nodes[next as usize].prev = to;
        }
        let mut c = first;
        while c != NONE {
            self.nodes[c as usize].parent = to;
            c = self.nodes[c as usize].next;
            p.step();
        }
    }

    /// Gives node `i`'s children to its parent: each gets the new parent, and the list is put
    /// where `i` is in its parent's list (just before it: `i` is unlinked next); children of a
    /// root become roots. Time: the number of children; `poll` is called after every
    /// [`POLL_EVERY`] of them.
    fn hand_children_up(&mut self, i: u32, poll: &mut impl FnMut()) {
        let first = self.nodes[i as usize].first_child;
        if first == NONE {
            return;
        }
        if self.nodes[i as usize].parent != NONE {
            // Spliced in just before `i`, which is unlinked next: where `i` was (a piece at a
            // time: each lands before `i`, after the pieces before it, so the order stays).
            while self.nodes[i as usize].first_child != NONE {
                self.hand_some_children_up(i, POLL_EVERY);
                poll();
            }
            return;
        }
        // Children of a root become roots, which are not linked to each other.
        self.nodes[i as usize].first_child = NONE;
        let mut c = first;
        let mut k = 0;
        while c != NONE {
            let n = self.nodes[c as usize].next;
            let node = &mut self.nodes[c as usize];
            (node.parent, node.prev, node.next) = (NONE, NONE, NONE);
            c = n;
            k += 1;
            if k % POLL_EVERY == 0 {
                poll();
            }
        }
    }

    /// Deletes the capability `id` (if it is still live): its children become its parent's
    /// (roots, if it was one). Returns its home. Time: its number of children. A node being
    /// revoked stays, its revocation's to finish ([`end_revoke`](Self::end_revoke) frees it and
    /// returns its home then): `None` here.
    pub fn remove(&mut self, id: NodeId) -> Option<H> {
        self.remove_polling(id, || {}, |_, _| {})
    }

    /// [`remove`](Self::remove), calling `poll` after every [`POLL_EVERY`] children handed up
    /// (the kernel answers other CPUs' TLB shoot-downs there: a task decides how many children
    /// a capability has, and the tree's lock is held, interrupts off, throughout); nodes the
    /// shrink that may follow moves are told to `on_move` ([`maybe_shrink`](Self::maybe_shrink)).
    pub fn remove_polling(&mut self, id: NodeId, mut poll: impl FnMut(), mut on_move: impl FnMut(&H, NodeId)) -> Option<H> {
        let id = self.refresh(id)?;
        let i = id.index;
        if self.nodes[i as usize].revoking & REVOKING != 0 {
            // Being revoked: what is below it goes with the revocation, then the node.
            self.nodes[i as usize].revoking |= DOOMED;
            return None;
        }
        Some(self.free_node(i, &mut poll, &mut on_move))
    }

    /// Frees the live node at `i`: its children go to its parent (roots, if it was one), it
    /// leaves its siblings, and the vector may shrink. Its home.
    fn free_node(&mut self, i: u32, poll: &mut impl FnMut(), on_move: &mut impl FnMut(&H, NodeId)) -> H {
        self.hand_children_up(i, poll);
        self.unlink(i);
        let home = self.release(i);
        self.maybe_shrink(poll, on_move);
        home
    }

    /// Deletes every capability derived from `id`, transitively, handing each one's id and
    /// home to `f`; `id` itself stays. Returns how many were deleted, or `Gone` if `id` is not
    /// live. Time: see [`revoke_some`](Self::revoke_some).
    pub fn revoke(&mut self, id: NodeId, mut f: impl FnMut(NodeId, H)) -> Result<usize, Gone> {
        self.begin_revoke(id)?;
        let mut total = 0;
        loop {
            let (n, more) = self.revoke_some(id, usize::MAX, &mut f)?;
            total += n;
            if !more {
                // (A node whose capability was deleted meanwhile goes with its revocation.)
                drop(self.end_revoke(id));
                return Ok(total);
            }
        }
    }

    /// A revocation of `id` begins (`Gone` if it is not live): until
    /// [`end_revoke`](Self::end_revoke), another revocation that reaches `id` (one of an
    /// ancestor's) leaves it in place while it has children, and deletes those first, so that
    /// this one never ends with `id` gone and its descendants still there. Freeing `id` ends it
    /// too.
    pub fn begin_revoke(&mut self, id: NodeId) -> Result<(), Gone> {
        let id = self.refresh(id).ok_or(Gone)?;
        if self.revocations == u32::MAX || self.nodes[id.index as usize].revoking & REVOKING == REVOKING {
            // (Never: one per revoking call under way, each on a CPU.) Refused rather than
            // miscounted.
            return Err(Gone);
        }
        self.revocations += 1;
        let n = &mut self.nodes[id.index as usize];
        n.revoking += 1;
        Ok(())
    }

    /// Whether a child may be made below `id`: not while `id` or one of its ancestors is being
    /// revoked ([`begin_revoke`](Self::begin_revoke) to [`end_revoke`](Self::end_revoke)) — a
    /// copy made below a revocation under way would be one more capability for it to delete,
    /// and copies made as fast as it deletes them would keep it from ever ending (`CapRevoke`
    /// works in batches, letting go of the tree's lock in between) — and not below a node with
    /// [`MOST_DEPTH`] ancestors. One step per ancestor (at most `MOST_DEPTH`), `poll` called
    /// after every [`POLL_EVERY`] (the kernel answers other CPUs' TLB shoot-downs there).
    ///
    /// Before the twenty-ninth session there was no depth limit: a copy from a node deeper
    /// than the walk answered `Busy` while any revocation was under way in its tree, which
    /// another holder in that tree could keep up as long as it liked (the walk had been bounded
    /// in the twenty-eighth, after a review found copies from the bottom of chains of tens of
    /// thousands walking them with interrupts off). Now every node the walk meets has its
    /// whole ancestry within it, and the answer depends on the node alone. `Ok` for a node
    /// that is gone (the kernel refuses it as gone first).
    pub fn may_derive(&self, id: NodeId, mut poll: impl FnMut()) -> Result<(), Underivable> {
        let Some(id) = self.refresh(id) else { return Ok(()) };
        let looking = self.revocations > 0;
        let mut x = id.index;
        // Ancestors of `id` passed so far: `x` is the `k`-th.
        let mut k = 0;
        loop {
            let n = &self.nodes[x as usize];
            if looking && n.revoking > 0 {
                return Err(Underivable::Revoking);
            }
            if n.parent == NONE {
                return Ok(());
            }
            // `id` has more than `k` ancestors.
            if k + 1 == MOST_DEPTH {
                return Err(Underivable::TooDeep);
            }
            x = n.parent;
            k += 1;
            if k % POLL_EVERY == 0 {
                poll();
            }
        }
    }

    /// How many live nodes have more than [`MOST_DEPTH`] ancestors (for the kernel's consistency
    /// check: none, as [`may_derive`](Self::may_derive) refuses them and depths only fall). At
    /// most `MOST_DEPTH + 1` steps per node.
    pub fn too_deep(&self) -> usize {
        let deep = |mut x: u32| {
            for _ in 0..=MOST_DEPTH {
                x = self.nodes[x as usize].parent;
                if x == NONE {
                    return false;
                }
            }
            true
        };
        (0..self.nodes.len() as u32).filter(|&i| self.nodes[i as usize].home.is_some() && deep(i)).count()
    }

    /// The revocation of `id` that [`begin_revoke`](Self::begin_revoke) announced is over
    /// (nothing to do if `id` is gone meanwhile). If it was the last of a node whose capability
    /// was deleted meanwhile ([`remove`](Self::remove)), the node is freed: its home.
    pub fn end_revoke(&mut self, id: NodeId) -> Option<H> {
        self.end_revoke_polling(id, || {}, |_, _| {})
    }

    /// [`end_revoke`](Self::end_revoke), polling and telling moves as
    /// [`remove_polling`](Self::remove_polling) does.
    pub fn end_revoke_polling(&mut self, id: NodeId, mut poll: impl FnMut(), mut on_move: impl FnMut(&H, NodeId)) -> Option<H> {
        let id = self.refresh(id)?;
        let i = id.index;
        let n = &mut self.nodes[i as usize];
        if n.revoking & REVOKING == 0 {
            return None;
        }
        n.revoking -= 1;
        self.revocations -= 1;
        if n.revoking != DOOMED {
            return None;
        }
        // Its capability is gone and so is its last revocation: what that left below it (a
        // revocation ends with nothing below it) goes to its parent, and the node is freed.
        Some(self.free_node(i, &mut poll, &mut on_move))
    }

    /// One batch of [`revoke`](Self::revoke): deletes capabilities below `id` and hands
    /// children up, at most `limit` of both together (at least one, if anything is left).
    /// Returns how many it deleted and whether any is left below `id`, or `Gone` if `id` is not
    /// live. Between batches the caller may let go of the tree's lock, and the tree may change
    /// meanwhile: a batch needs no cursor from the one before, and whatever was derived
    /// meanwhile below `id` is found all the same.
    ///
    /// Top down: each step takes `id`'s first child; a child with children of its own first
    /// hands them to `id` (spliced in before it), and a childless one is deleted. A child that
    /// another revocation is working on ([`begin_revoke`](Self::begin_revoke)) is not handed
    /// over: the step goes down into it and works there, handing its grandchildren to it (the
    /// way down passes only such nodes, at most one per revocation under way). A node is
    /// handed over at most once (after that its parent is a node under revocation, which is not
    /// deleted while it has children), so a whole revocation costs at most twice what it
    /// deletes, plus those ways down, whatever the tree's shape and however the batches
    /// interleave with other changes. (It used to go leaves first from a cursor, and started
    /// again from `id` when another CPU deleted the cursor's node between batches: a chain of D
    /// copies whose next node kept being deleted cost D steps per batch, D² in all.)
    pub fn revoke_some(&mut self, id: NodeId, limit: usize, f: impl FnMut(NodeId, H)) -> Result<(usize, bool), Gone> {
        self.revoke_some_polling(id, limit, f, || {}, |_, _| {})
    }

    /// [`revoke_some`](Self::revoke_some), calling `poll` after every [`POLL_EVERY`] nodes the
    /// vector's shrinking at the end of the revocation looks at (the kernel answers other
    /// CPUs' TLB shoot-downs there), and telling `on_move` of the nodes that shrinking moves
    /// (`id`'s own among them, perhaps: keep it up to date with [`refresh`](Self::refresh)).
    pub fn revoke_some_polling(
        &mut self,
        id: NodeId,
        limit: usize,
        mut f: impl FnMut(NodeId, H),
        mut poll: impl FnMut(),
        mut on_move: impl FnMut(&H, NodeId),
    ) -> Result<(usize, bool), Gone> {
        let id = self.refresh(id).ok_or(Gone)?;
        let top = id.index;
        let limit = limit.max(1);
        let (mut deleted, mut work) = (0, 0);
        while work < limit {
            let mut x = self.nodes[top as usize].first_child;
            if x == NONE {
                break;
            }
            while self.nodes[x as usize].revoking > 0 && self.nodes[x as usize].first_child != NONE {
                x = self.nodes[x as usize].first_child;
            }
            if self.nodes[x as usize].first_child != NONE {
                let k = self.hand_some_children_up(x, limit - work);
                work += k;
                #[cfg(test)]
                {
                    self.steps += k;
                }
                continue;
            }
            let gone = self.id_at(x);
            self.unlink(x);
            let home = self.release(x);
            deleted += 1;
            work += 1;
            #[cfg(test)]
            {
                self.steps += 1;
            }
            f(gone, home);
        }
        let more = self.nodes[top as usize].first_child != NONE;
        if !more {
            self.maybe_shrink(&mut poll, &mut on_move);
        }
        Ok((deleted, more))
    }

    /// Moves the first `n` (at least one) children of `x`, which has a parent, to that parent,
    /// spliced in just before `x`; returns how many moved.
    fn hand_some_children_up(&mut self, x: u32, n: usize) -> usize {
        let p = self.nodes[x as usize].parent;
        let first = self.nodes[x as usize].first_child;
        debug_assert!(p != NONE && first != NONE && n > 0);
        let mut last = first;
        let mut k = 1;
        self.nodes[first as usize].parent = p;
        while k < n {
            let next = self.nodes[last as usize].next;
            if next == NONE {
                break;
            }
            last = next;
            self.nodes[last as usize].parent = p;
            k += 1;
        }
        // Out of `x`'s list...
        let rest = self.nodes[last as usize].next;
        self.nodes[x as usize].first_child = rest;
        if rest != NONE {
            self.nodes[rest as usize].prev = NONE;
        }
        // ... into `p`'s, before `x`.
        let before = self.nodes[x as usize].prev;
        self.nodes[last as usize].next = x;
        self.nodes[x as usize].prev = last;
        self.nodes[first as usize].prev = before;
        if before != NONE {
            self.nodes[before as usize].next = first;
        } else {
            self.nodes[p as usize].first_child = first;
        }
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::vec;

    /// The reference: each live capability's parent, by name.
    #[derive(Default)]
    struct Model {
        parent: BTreeMap<u32, Option<u32>>,
    }

    impl Model {
        fn descendants(&self, n: u32) -> Vec<u32> {
            let mut out = vec![];
            let mut todo = vec![n];
            while let Some(x) = todo.pop() {
                for (&c, &p) in &self.parent {
                    if p == Some(x) {
                        out.push(c);
                        todo.push(c);
                    }
                }
            }
            out.sort();
            out
        }
        fn remove(&mut self, n: u32) {
            let p = self.parent.remove(&n).unwrap();
            for v in self.parent.values_mut() {
                if *v == Some(n) {
                    *v = p;
                }
            }
        }
    }

    /// While a node or one of its ancestors is being revoked nothing may be derived from it;
    /// that ends with the revocation, or with the revoking node.
    #[test]
    fn nothing_derived_under_a_revocation_under_way() {
        let mut t: DerivTree<u32> = DerivTree::new();
        let root = t.add(None, 0).unwrap();
        let a = t.add(Some(root), 1).unwrap();
        let b = t.add(Some(a), 2).unwrap();
        let other = t.add(Some(root), 3).unwrap();
        let under = |t: &DerivTree<u32>, id| t.may_derive(id, || {}) == Err(Underivable::Revoking);
        assert!(!under(&t, b));
        t.begin_revoke(a).unwrap();
        assert!(under(&t, a) && under(&t, b));
        assert!(!under(&t, root) && !under(&t, other));
        t.begin_revoke(a).unwrap();
        t.end_revoke(a);
        assert!(under(&t, b), "one of two revocations of a still under way");
        t.end_revoke(a);
        assert!(!under(&t, b) && t.revocations == 0);
        // A revoking node whose capability is deleted stays, under its revocations, until the
        // last of them ends, which frees it.
        t.begin_revoke(b).unwrap();
        t.begin_revoke(b).unwrap();
        assert!(t.remove(b).is_none());
        assert!(t.is_live(b) && under(&t, b) && t.revocations == 2);
        assert!(t.end_revoke(b).is_none());
        assert!(t.is_live(b) && t.revocations == 1);
        assert_eq!(t.end_revoke(b), Some(2));
        assert!(!t.is_live(b));
        assert_eq!(t.revocations, 0);
        assert!(!under(&t, a));
        // Gone: nothing refused (the kernel refuses it as gone first).
        assert_eq!(t.may_derive(b, || {}), Ok(()));
    }

    /// Nothing is derived below a node with `MOST_DEPTH` ancestors, revocation or not; the walk
    /// takes one step per ancestor, polled every `POLL_EVERY`, and finds a revocation under way
    /// anywhere above a node of the deepest allowed, where the first bounded walk (twenty-
    /// eighth session) answered `Busy` for anything deeper than itself.
    #[test]
    fn derivation_depth_is_bounded() {
        let mut t: DerivTree<u32> = DerivTree::new();
        let root = t.add(None, 0).unwrap();
        let other = t.add(Some(root), 1).unwrap();
        // chain[i] has i + 1 ancestors (root, `other`, chain[1..i]); `add` itself has no limit.
        let mut chain = vec![other];
        for i in 0..1000 {
            chain.push(t.add(Some(*chain.last().unwrap()), 10 + i).unwrap());
        }
        let may = |t: &DerivTree<u32>, id| t.may_derive(id, || {});
        // The consistency check's count: chain[MOST_DEPTH..=1000] have more than MOST_DEPTH.
        assert_eq!(t.too_deep(), 1001 - MOST_DEPTH);
        assert_eq!(may(&t, chain[MOST_DEPTH - 2]), Ok(()), "MOST_DEPTH - 1 ancestors: a child may have MOST_DEPTH");
        assert_eq!(may(&t, chain[MOST_DEPTH - 1]), Err(Underivable::TooDeep), "MOST_DEPTH ancestors");
        assert_eq!(may(&t, chain[1000]), Err(Underivable::TooDeep));
        let mut polls = 0;
        assert_eq!(t.may_derive(chain[1000], || polls += 1), Err(Underivable::TooDeep));
        assert_eq!(polls, (MOST_DEPTH - 1) / POLL_EVERY, "one step per ancestor, no more than the limit");
        // A revocation at the top is found from the deepest node that may have a child.
        t.begin_revoke(root).unwrap();
        assert_eq!(may(&t, chain[MOST_DEPTH - 2]), Err(Underivable::Revoking));
        assert_eq!(may(&t, chain[MOST_DEPTH - 1]), Err(Underivable::TooDeep), "the limit comes before an ancestor beyond it");
        t.end_revoke(root);
        // Depths fall when a node goes: its children move up to its parent.
        t.remove(chain[5]);
        assert!(!t.is_live(chain[5]));
        assert_eq!(may(&t, chain[MOST_DEPTH - 1]), Ok(()), "one ancestor fewer");
        assert_eq!(t.too_deep(), 1001 - MOST_DEPTH - 1);
        assert_eq!(may(&t, chain[MOST_DEPTH]), Err(Underivable::TooDeep));
    }

    /// A capability deleted between two batches of its own revocation (its holder's other
    /// thread deletes it, or its task is killed): the revocation still deletes everything that
    /// was below it — the children it had not reached and the grandchildren it had handed up to
    /// it — and the node goes with the revocation's end. Handed to its parent at the deletion
    /// (as a deletion does otherwise), they escaped it for good.
    #[test]
    fn a_capability_deleted_mid_revocation_takes_its_descendants_with_it() {
        let mut t: DerivTree<u32> = DerivTree::new();
        let root = t.add(None, 0).unwrap();
        let a = t.add(Some(root), 1).unwrap();
        let b = t.add(Some(a), 2).unwrap();
        let cs: Vec<NodeId> = (0..40).map(|i| t.add(Some(b), 10 + i).unwrap()).collect();
        let other = t.add(Some(a), 3).unwrap();
        t.begin_revoke(a).unwrap();
        // The first batch hands some of b's children up to a (and may delete the childless one).
        let (mut deleted, more) = t.revoke_some(a, 32, |_, _| {}).unwrap();
        assert!(more);
        let handed = cs.iter().filter(|&&c| t.parent(c) == Some(a)).count();
        assert!(handed >= 30, "{handed} handed up");
        // a's capability is deleted now: its node stays, under its revocation.
        assert!(t.remove(a).is_none());
        assert!(t.is_live(a));
        loop {
            let (n, more) = t.revoke_some(a, 32, |_, _| {}).unwrap();
            deleted += n;
            if !more {
                break;
            }
        }
        assert_eq!(deleted, 42, "b, its 40 children and the other child");
        assert!(cs.iter().chain([&b, &other]).all(|&c| !t.is_live(c)));
        assert_eq!(t.end_revoke(a), Some(1), "the node goes with the revocation's end");
        assert!(!t.is_live(a) && t.is_live(root) && t.len() == 1 && t.revocations == 0);
    }

    /// A copier that derives 40 capabilities between every two batches of 32 from what it still
    /// holds below the revoked node (and from the node itself) keeps the revocation from ever
    /// ending — unless derivation under a revocation under way is refused, as the kernel does.
    #[test]
    fn copies_refused_under_a_revocation_let_it_end() {
        fn run(refuse: bool) -> Option<usize> {
            let mut t: DerivTree<u32> = DerivTree::new();
            let root = t.add(None, 0).unwrap();
            let top = t.add(Some(root), 1).unwrap();
            let mut held: Vec<NodeId> = (0..100).map(|i| t.add(Some(top), 10 + i).unwrap()).collect();
            t.begin_revoke(top).unwrap();
            for batches in 1..2000 {
                let (_, more) = t.revoke_some(top, 32, |_, _| {}).unwrap();
                if !more {
                    t.end_revoke(top);
                    assert_eq!(t.len(), 2);
                    return Some(batches);
                }
                held.retain(|&h| t.is_live(h));
                for k in 0..40 {
                    let src = if held.is_empty() || k % 5 == 0 { top } else { held[k % held.len()] };
                    if !(refuse && t.may_derive(src, || {}).is_err()) {
                        held.push(t.add(Some(src), 1000).unwrap());
                    }
                }
            }
            None
        }
        assert_eq!(run(false), None, "without the rule the copier keeps the revocation going");
        let n = run(true).expect("the revocation ends");
        assert!(n <= 100 / 32 + 2, "{n} batches");
    }

    /// Revocation in batches of 3 with the tree changed between batches (a copy made below a
    /// node not yet reached, one made below the revoking node itself) deletes exactly what one
    /// revocation of the final tree would.
    #[test]
    fn revocation_in_batches_finds_what_was_derived_meanwhile() {
        let mut t: DerivTree<u32> = DerivTree::new();
        let root = t.add(None, 0).unwrap();
        let a = t.add(Some(root), 1).unwrap();
        let mut last = a;
        for i in 2..10 {
            last = t.add(Some(last), i).unwrap();
        }
        let (n, more) = t.revoke_some(root, 3, |_, _| {}).unwrap();
        // Three steps: down a chain, each node first hands its child up.
        assert!(n <= 3, "{n} deleted");
        assert!(more, "more to go");
        // Derived meanwhile: below `a`'s chain (not reached yet) and below the root.
        t.add(Some(last), 100).unwrap();
        t.add(Some(root), 101).unwrap();
        let mut total = n;
        let mut seen = vec![];
        loop {
            let (n, more) = t.revoke_some(root, 3, |_, h| seen.push(h)).unwrap();
            assert!(n <= 3);
            total += n;
            if !more {
                break;
            }
        }
        assert_eq!(total, 9 + 2);
        assert!(seen.contains(&100) && seen.contains(&101));
        assert_eq!(t.len(), 1);
        assert_eq!(t.revoke_some(root, 3, |_, _| {}), Ok((0, false)));
    }

    /// A chain of copies whose next node another CPU deletes between every two batches costs
    /// the revocation no more than the nodes it deletes and hands over (a cursor that started
    /// again from the top walked the whole remaining chain at every batch).
    #[test]
    fn revocation_of_a_chain_deleted_under_it_stays_linear() {
        const D: u32 = 20_000;
        let mut t: DerivTree<u32> = DerivTree::new();
        let root = t.add(None, 0).unwrap();
        let mut chain = vec![root];
        for i in 1..=D {
            chain.push(t.add(Some(*chain.last().unwrap()), i).unwrap());
        }
        let (mut deleted, mut removed_by_others, mut batches) = (0, 0, 0);
        let mut k = chain.len() - 1;
        loop {
            let (n, more) = t.revoke_some(root, 32, |_, _| {}).unwrap();
            deleted += n;
            batches += 1;
            if !more {
                break;
            }
            // Another CPU deletes the deepest live copy (the old cursor's node).
            while k > 0 && !t.is_live(chain[k]) {
                k -= 1;
            }
            if k > 0 && t.remove(chain[k]).is_some() {
                removed_by_others += 1;
            }
        }
        assert_eq!(deleted + removed_by_others, D as usize);
        assert_eq!(t.len(), 1);
        assert!(t.steps <= 2 * D as usize, "{} steps for {D} capabilities", t.steps);
        // Each batch does 32 steps (a deletion or a hand-over).
        assert!(batches <= 2 * D as usize / 32 + 2, "{batches} batches");
    }

    /// A revocation of `x` under way while `x`'s ancestor is revoked too (another CPU, batches
    /// interleaved): `x` is never deleted while something derived from it is left, so the
    /// revocation of `x` never ends (or finds `x` gone) with a descendant of `x` still there.
    #[test]
    fn nested_revocations_interleaved() {
        for (inner_first, sb, cb) in [(true, 3, 3), (false, 3, 3), (true, 1, 7), (false, 7, 1), (true, 32, 2)] {
            let mut t: DerivTree<u32> = DerivTree::new();
            let a = t.add(None, 0).unwrap();
            let x = t.add(Some(a), 1).unwrap();
            let mut below = vec![];
            let mut last = x;
            for i in 0..40 {
                last = t.add(Some(last), 100 + i).unwrap();
                below.push(last);
                below.push(t.add(Some(x), 200 + i).unwrap());
            }
            let other = t.add(Some(a), 2).unwrap();
            t.begin_revoke(x).unwrap();
            t.begin_revoke(a).unwrap();
            let (mut inner_done, mut outer_done) = (false, false);
            let mut turn = inner_first;
            while !(inner_done && outer_done) {
                if turn && !inner_done {
                    match t.revoke_some(x, cb, |_, _| {}) {
                        Ok((_, true)) => {}
                        Ok((_, false)) => {
                            t.end_revoke(x);
                            inner_done = true;
                        }
                        Err(Gone) => inner_done = true,
                    }
                    if inner_done {
                        assert!(below.iter().all(|&b| !t.is_live(b)), "the revocation of x ended with some of it left");
                    }
                } else if !outer_done {
                    let (_, more) = t.revoke_some(a, sb, |_, _| {}).unwrap();
                    outer_done = !more;
                }
                if !t.is_live(x) {
                    assert!(below.iter().all(|&b| !t.is_live(b)), "x deleted before what was derived from it");
                }
                turn = !turn;
            }
            t.end_revoke(a);
            assert!(!t.is_live(x) && !t.is_live(other) && t.is_live(a));
            assert_eq!(t.len(), 1);
        }
    }

    /// One batch does at most `limit` steps, however many children a node it reaches has.
    #[test]
    fn a_batch_is_bounded_by_its_limit() {
        let mut t: DerivTree<u32> = DerivTree::new();
        let a = t.add(None, 0).unwrap();
        let x = t.add(Some(a), 1).unwrap();
        for i in 0..10_000 {
            t.add(Some(x), 10 + i).unwrap();
        }
        let mut deleted = 0;
        loop {
            let before = t.steps;
            let (n, more) = t.revoke_some(a, 32, |_, _| {}).unwrap();
            assert!(t.steps - before <= 32, "{} steps in one batch", t.steps - before);
            deleted += n;
            if !more {
                break;
            }
        }
        assert_eq!(deleted, 10_001);
        assert!(t.steps <= 2 * 10_001);
    }

    #[test]
    fn the_vector_shrinks_after_a_burst_and_stale_ids_stay_dead() {
        let mut t = DerivTree::new();
        let root = t.add(None, 0u32).unwrap();
        let ids: Vec<NodeId> = (1..10_000).map(|i| t.add(Some(root), i).unwrap()).collect();
        assert!(t.capacity() >= 10_000);
        for &id in &ids {
            t.remove(id).unwrap();
        }
        assert_eq!(t.len(), 1);
        // Halved step by step as the nodes went: the vector is back near its live size.
        assert!(t.capacity() <= 64, "{} nodes kept", t.capacity());
        assert!(t.nodes.capacity() <= 128.max(PagedVec::<Node<u32>>::PER_LEAF), "capacity {}", t.nodes.capacity());
        // Identifiers of dropped nodes never name the nodes made in their place.
        let again: Vec<NodeId> = (0..10_000).map(|i| t.add(Some(root), i).unwrap()).collect();
        assert!(ids.iter().all(|&id| !t.is_live(id)));
        assert!(again.iter().all(|&id| t.is_live(id)));
        // Revoking them shrinks it too.
        assert_eq!(t.revoke(root, |_, _| {}), Ok(10_000));
        assert!(t.capacity() <= 64 && t.is_live(root));
    }

    /// A live node at the end of the vector moves down when the vector shrinks (it used to keep
    /// the vector as long as it ever was: a task that filled a tree, copied once more, kept that
    /// copy and deleted the rest held the whole vector while paying for two nodes — a hostile
    /// review of the twentieth session). Its owner is told where it went, and an identifier
    /// kept from before the move still finds it.
    #[test]
    fn a_live_node_at_the_end_moves_down_and_the_vector_shrinks() {
        let mut t = DerivTree::new();
        let root = t.add(None, 0u32).unwrap();
        let ids: Vec<NodeId> = (1..1000).map(|i| t.add(Some(root), i).unwrap()).collect();
        let z = t.add(Some(ids[10]), 5000).unwrap();
        let mut owner = z;
        let mut moved = 0;
        for &id in &ids {
            t.remove_polling(id, || {}, |&h, new| {
                if h == 5000 {
                    owner = new;
                }
                moved += 1;
            });
        }
        assert_eq!(t.len(), 2);
        assert!(t.capacity() <= 64, "{} places kept for 2 live nodes", t.capacity());
        assert!(moved >= 1);
        // The owner's identifier is up to date (found where it says, no scan); the old one
        // finds the node by its serial.
        assert!(t.node(owner).is_some() && owner.index < 64);
        assert_eq!(t.refresh(z).map(|i| i.index), Some(owner.index));
        assert_eq!(z, owner);
        assert_eq!(t.home(z), Some(&5000));
        assert_eq!(t.parent(z), Some(root), "handed up to the root when its parent went");
        // New nodes take the lowest free places.
        let n = t.add(Some(root), 7).unwrap();
        assert!(n.index < 64);
        // Repeated over and over, the vector stays within four times its live nodes (and 128).
        for round in 0..20u32 {
            let many: Vec<NodeId> = (0..2000).map(|i| t.add(Some(root), 10_000 + i).unwrap()).collect();
            let _keep = t.add(Some(root), 100_000 + round).unwrap();
            for &id in &many {
                t.remove(id).unwrap();
            }
            assert!(t.capacity() <= (4 * t.len()).max(128), "round {round}: {} places for {} live", t.capacity(), t.len());
            // What the pieces hold: within four nodes and four entries a live node, and the
            // pieces' lists.
            let most = 4 * t.len() * (DerivTree::<u32>::NODE_BYTES + DerivTree::<u32>::FORWARD_BYTES) + 4 * 24;
            assert!(t.bytes() <= most, "round {round}: {} bytes for {} live (at most {most})", t.bytes(), t.len());
        }
        assert_eq!(t.len(), 3 + 20);
        let mut n = 0;
        assert_eq!(t.revoke(root, |_, _| n += 1), Ok(22));
        assert!(t.capacity() <= 64);
    }

    /// A node that must move down while the forwarding index has no memory for its entry stays
    /// where it is (`maybe_shrink`'s stuck path), and so does the vector below it: nothing is
    /// lost or left unfindable, no owner is told of a move that did not happen, and the next
    /// shrink with memory moves it.
    #[test]
    fn a_node_without_memory_for_its_entry_stays_until_the_next_shrink() {
        let mut t = DerivTree::new();
        let root = t.add(None, 0u32).unwrap();
        let ids: Vec<NodeId> = (1..1000).map(|i| t.add(Some(root), i).unwrap()).collect();
        let z = t.add(Some(ids[10]), 5000).unwrap();
        assert_eq!(z.index, 1000);
        assert_eq!(t.fwd.len(), 0);
        let mut told = 0;
        let mut gone = 0;
        let before = t.capacity();
        // Every allocation fails while the children go (a shrink finds a quarter live, and a
        // live node above its target has no forwarding entry yet: each push must grow the index).
        crate::test_alloc::no_memory(|| {
            for &id in &ids {
                if t.remove_polling(id, || {}, |_, _| told += 1).is_some() {
                    gone += 1;
                }
            }
        });
        assert_eq!((gone, told), (999, 0));
        assert_eq!(t.len(), 2);
        // The stuck node keeps its place, its identifier, its home and its parent (its own
        // parent went: handed up to the root), and the vector still reaches it.
        assert!(t.capacity() > z.index as usize && t.capacity() <= before);
        assert_eq!(t.refresh(z), Some(z));
        assert_eq!((t.home(z), t.parent(z)), (Some(&5000), Some(root)));
        assert!(ids.iter().all(|&id| !t.is_live(id)));
        // With memory again, the next shrink (another burst made and deleted) moves it down.
        let mut owner = z;
        let more: Vec<NodeId> = (0..3000).map(|i| t.add(Some(root), 10_000 + i).unwrap()).collect();
        for &id in &more {
            t.remove_polling(id, || {}, |&h, new| {
                if h == 5000 {
                    owner = new;
                }
            });
        }
        assert!(owner.index < 64, "moved to {}", owner.index);
        assert_eq!(t.refresh(z), Some(owner));
        assert!(t.capacity() <= 64, "{} places kept for 2 live nodes", t.capacity());
        assert_eq!(t.home(owner), Some(&5000));
        assert_eq!(t.revoke(root, |_, _| {}), Ok(1));
    }

    /// A revocation that leaves a few nodes high in the vector shrinks it all the same (the
    /// first version of moving nodes looked only at the upper half, and stopped at a live node
    /// just below it: a revocation that deleted all but the low root and a node at the middle
    /// kept half the vector — the twentieth session's review of the change).
    #[test]
    fn a_revocation_shrinks_to_the_live_nodes() {
        let mut t = DerivTree::new();
        let root = t.add(None, 0u32).unwrap();
        let first: Vec<NodeId> = (1..2047).map(|i| t.add(Some(root), i).unwrap()).collect();
        let z = t.add(Some(root), 5000).unwrap();
        for i in 0..2048 {
            t.add(Some(z), 10_000 + i).unwrap();
        }
        for &id in &first {
            t.remove(id).unwrap();
        }
        assert_eq!(t.capacity(), 4096, "no look yet: half live");
        assert_eq!(t.revoke(z, |_, _| {}), Ok(2048));
        assert_eq!(t.len(), 2);
        assert!(t.capacity() <= 8, "{} places for 2 live", t.capacity());
        let most = 4 * 2 * (DerivTree::<u32>::NODE_BYTES + DerivTree::<u32>::FORWARD_BYTES) + 4 * 24;
        assert!(t.bytes() <= most, "{} bytes for 2 live (at most {most})", t.bytes());
        assert_eq!(t.home(z), Some(&5000));
        assert_eq!(t.parent(z), Some(root));
    }

    /// Identifiers nobody told of a move (a capability in flight, one on its way out of its
    /// slot) find their nodes through the forwarding index, however often they moved; freed
    /// nodes' entries go at the next shrink.
    #[test]
    fn untold_identifiers_find_moved_nodes() {
        let mut t = DerivTree::new();
        let root = t.add(None, 0u32).unwrap();
        let mut keep = vec![];
        for round in 0..6u32 {
            let many: Vec<NodeId> = (0..3000).map(|i| t.add(Some(root), 100_000 * (round + 1) + i).unwrap()).collect();
            keep.push((t.add(Some(many[17]), round).unwrap(), round));
            for &id in &many {
                t.remove(id).unwrap();
            }
            assert!(t.capacity() <= 4 * t.len() + 64, "round {round}: {} places for {} live", t.capacity(), t.len());
        }
        for &(id, h) in &keep {
            let now = t.refresh(id).expect("found");
            assert!(!t.is_current(id) || id.index == now.index);
            assert!(t.is_current(now) && now == id && t.home(id) == Some(&h) && t.parent(id) == Some(root));
        }
        // Entries of moved nodes only, and of freed ones until the next shrink.
        let live_entries = (0..t.fwd.len()).filter(|&i| t.fwd[i].index != NONE).count();
        assert!(live_entries <= keep.len() && t.fwd.len() <= t.capacity(), "{live_entries} of {} entries", t.fwd.len());
        let gone = keep[0].0;
        assert_eq!(t.remove(gone), Some(0));
        assert!(!t.is_live(gone) && t.refresh(gone).is_none());
        assert_eq!(t.revoke(root, |_, _| {}), Ok(5));
        assert!(keep.iter().all(|&(id, _)| !t.is_live(id)));
    }

    /// The shrink a deletion or a revocation ends with polls as it goes (the kernel answers TLB
    /// shoot-downs there): at least one poll per [`POLL_EVERY`] places the passes look at.
    #[test]
    fn shrinking_polls_every_few_nodes() {
        for revoke in [false, true] {
            let mut t = DerivTree::new();
            let root = t.add(None, 0u32).unwrap();
            let ids: Vec<NodeId> = (1..20_000).map(|i| t.add(Some(root), i).unwrap()).collect();
            // Removed one by one: one removal (that of the 15,000th) finds a quarter live and
            // shrinks 20,000 places, moving 4,999 nodes down; it polls all along.
            let (polls, before) = if revoke {
                let mut polls = 0;
                let mut more = true;
                while more {
                    polls = 0;
                    more = t.revoke_some_polling(root, 100_000, |_, _| {}, || polls += 1, |_, _| {}).unwrap().1;
                }
                (polls, 20_000)
            } else {
                let mut most = 0;
                for &id in &ids {
                    let mut polls = 0;
                    t.remove_polling(id, || polls += 1, |_, _| {}).unwrap();
                    most = most.max(polls);
                }
                (most, 20_000)
            };
            assert!(t.capacity() <= 64, "shrunk ({})", t.capacity());
            // The passes: the places from twice the live count up (moving their live nodes: the
            // upper half in the removal case), the truncation, the free list (each at least a
            // poll per POLL_EVERY places it looks at).
            assert!(polls >= before / POLL_EVERY, "{polls} polls for {before} nodes (revoke: {revoke})");
        }
    }

    #[test]
    fn copies_of_copies_are_revoked_and_the_revoker_stays() {
        let mut t = DerivTree::new();
        let a = t.add(None, 'a').unwrap();
        let b = t.add(Some(a), 'b').unwrap();
        let c = t.add(Some(b), 'c').unwrap();
        let d = t.add(Some(a), 'd').unwrap();
        let e = t.add(Some(d), 'e').unwrap();
        let mut seen = vec![];
        assert_eq!(t.revoke(b, |_, h| seen.push(h)), Ok(1));
        assert_eq!(seen, vec!['c']);
        assert!(t.is_live(b) && !t.is_live(c));
        seen.clear();
        assert_eq!(t.revoke(a, |_, h| seen.push(h)), Ok(3));
        seen.sort();
        assert_eq!(seen, vec!['b', 'd', 'e']);
        assert!(t.is_live(a) && !t.is_live(e));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_deleted_capability_hands_its_children_up() {
        let mut t = DerivTree::new();
        let a = t.add(None, 1).unwrap();
        let b = t.add(Some(a), 2).unwrap();
        let c = t.add(Some(b), 3).unwrap();
        let d = t.add(Some(b), 4).unwrap();
        assert_eq!(t.remove(b), Some(2));
        assert_eq!(t.parent(c), Some(a));
        assert_eq!(t.parent(d), Some(a));
        assert_eq!(t.remove(b), None, "gone once");
        let mut n = 0;
        t.revoke(a, |_, _| n += 1).unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn many_children_are_handed_up_in_pieces_with_a_poll_between() {
        for with_parent in [true, false] {
            let mut t = DerivTree::new();
            let a = t.add(None, 0).unwrap();
            let b = t.add(if with_parent { Some(a) } else { None }, 1).unwrap();
            let sib = t.add(if with_parent { Some(a) } else { None }, 2).unwrap();
            let kids: Vec<NodeId> = (0..200).map(|i| t.add(Some(b), 10 + i).unwrap()).collect();
            let mut polls = 0;
            assert_eq!(t.remove_polling(b, || polls += 1, |_, _| {}), Some(1));
            // 200 children: three full pieces and a short one (handed up under a parent), or a
            // poll after each 64 made roots.
            assert_eq!(polls, if with_parent { 4 } else { 3 });
            let parent = if with_parent { Some(a) } else { None };
            assert!(kids.iter().all(|&k| t.parent(k) == parent && t.is_live(k)));
            assert!(t.is_live(sib));
            // Revoking the new parent reaches every one of them, and its other child.
            if with_parent {
                let mut n = 0;
                t.revoke(a, |_, _| n += 1).unwrap();
                assert_eq!(n, 201);
            }
        }
    }

    #[test]
    fn a_freed_id_is_never_live_again_even_when_its_node_is_reused() {
        let mut t = DerivTree::new();
        let a = t.add(None, 1).unwrap();
        let b = t.add(Some(a), 2).unwrap();
        t.remove(b);
        let c = t.add(Some(a), 3).unwrap();
        assert_eq!(c.index, b.index, "reused");
        assert!(!t.is_live(b) && t.is_live(c));
        assert_eq!(t.add(Some(b), 4), Err(Gone));
        assert_eq!(t.revoke(b, |_, _| {}), Err(Gone));
        assert_eq!(t.capacity(), 2);
    }

    #[test]
    fn a_freed_id_stays_dead_across_moves_and_shrinks() {
        let mut t = DerivTree::new();
        let root = t.add(None, 0u32).unwrap();
        let ids: Vec<NodeId> = (1..1000).map(|i| t.add(Some(root), i).unwrap()).collect();
        let (gone, kept) = ids.split_at(500);
        for &id in gone {
            t.remove(id).unwrap();
        }
        // Reused places, moved nodes: a freed identifier names none of them.
        let again: Vec<NodeId> = (0..300).map(|i| t.add(Some(root), 5000 + i).unwrap()).collect();
        for &id in kept.iter().chain(&again) {
            t.remove(id).unwrap();
        }
        let last: Vec<NodeId> = (0..2000).map(|i| t.add(Some(root), 9000 + i).unwrap()).collect();
        assert!(ids.iter().chain(&again).all(|&id| !t.is_live(id) && t.home(id).is_none() && t.remove(id).is_none()));
        assert!(last.iter().all(|&id| t.is_live(id)));
    }

    #[test]
    fn revoking_a_deep_chain_and_a_wide_fan_is_linear() {
        let mut t = DerivTree::new();
        let root = t.add(None, 0u32).unwrap();
        let mut last = root;
        for i in 1..100_000 {
            last = t.add(Some(last), i).unwrap();
        }
        for i in 0..100_000 {
            t.add(Some(root), i).unwrap();
        }
        let mut n = 0;
        assert_eq!(t.revoke(root, |_, _| n += 1), Ok(199_999));
        assert_eq!(n, 199_999);
        assert_eq!(t.len(), 1);
    }

    /// A pseudo-random `rnd(n)` in `0..n` from `seed` (xorshift).
    fn xorshift(mut seed: u64) -> impl FnMut(usize) -> usize {
        move |n| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        }
    }

    /// Bursts of copies and deletions big enough to move nodes: the owners' identifiers, kept
    /// up to date through `on_move` as the kernel keeps its slots', are always found where they
    /// say (no scan); identifiers kept from when each node was made find the same node through
    /// `refresh`; the tree agrees with the model (parents, homes) and stays within about four
    /// times its live nodes.
    #[test]
    fn moved_nodes_keep_their_place_in_the_tree() {
        let mut rnd = xorshift(0x2545_f491_4f6c_dd1du64);
        let mut moves = 0;
        for _round in 0..40 {
            let mut t = DerivTree::new();
            let mut m = Model::default();
            let mut owners: BTreeMap<u32, NodeId> = BTreeMap::new();
            let mut first: BTreeMap<u32, NodeId> = BTreeMap::new();
            let mut next = 0u32;
            for phase in 0..6 {
                // Grow to a few hundred, then delete (or revoke) most of it, at random places.
                let target = 100 + rnd(400);
                while owners.len() < target {
                    let live: Vec<u32> = owners.keys().copied().collect();
                    let p = if live.is_empty() || rnd(8) == 0 { None } else { Some(live[rnd(live.len())]) };
                    let id = t.add(p.map(|p| owners[&p]), next).unwrap();
                    owners.insert(next, id);
                    first.insert(next, id);
                    m.parent.insert(next, p);
                    next += 1;
                }
                let mut on_move = |h: &u32, id: NodeId, owners: &mut BTreeMap<u32, NodeId>| {
                    let old = owners.insert(*h, id).expect("an owned node moved");
                    assert_eq!(old, id, "same node");
                    moves += 1;
                };
                while owners.len() > target / 8 {
                    let live: Vec<u32> = owners.keys().copied().collect();
                    let x = live[rnd(live.len())];
                    if phase % 2 == 1 && rnd(4) == 0 {
                        let want = m.descendants(x);
                        let mut got = vec![];
                        let mut moved = vec![];
                        loop {
                            let id = owners[&x];
                            let (_, more) = t
                                .revoke_some_polling(id, 3, |_, h| got.push(h), || {}, |h, id| {
                                    moved.push((*h, id));
                                })
                                .unwrap();
                            for (h, id) in moved.drain(..) {
                                on_move(&h, id, &mut owners);
                            }
                            if !more {
                                break;
                            }
                        }
                        got.sort();
                        assert_eq!(got, want);
                        for d in want {
                            m.parent.remove(&d);
                            owners.remove(&d);
                        }
                    } else {
                        let mut moved = vec![];
                        assert_eq!(
                            t.remove_polling(owners[&x], || {}, |h, id| {
                                moved.push((*h, id));
                            }),
                            Some(x)
                        );
                        owners.remove(&x);
                        m.remove(x);
                        for (h, id) in moved {
                            on_move(&h, id, &mut owners);
                        }
                    }
                }
                assert_eq!(t.len(), owners.len());
                for (&x, &id) in &owners {
                    assert!(t.node(id).is_some(), "{x}: the owner's identifier is up to date");
                    assert_eq!(t.refresh(first[&x]).map(|i| i.index), Some(id.index), "{x}: found by its first identifier");
                    assert_eq!(t.home(first[&x]), Some(&x));
                    let p = t.parent(id).map(|p| *t.home(p).unwrap());
                    assert_eq!(p, m.parent[&x], "parent of {x}");
                }
                for (x, id) in &first {
                    if !owners.contains_key(x) {
                        assert!(!t.is_live(*id), "{x} was freed");
                    }
                }
                assert!(t.capacity() <= 4 * t.len() + 64, "{} places for {} live", t.capacity(), t.len());
            }
        }
        assert!(moves > 1000, "nodes moved: {moves}");
    }

    /// Random sequences against the model: the same capabilities live, the same parents, and
    /// each revocation deletes exactly the model's descendants.
    #[test]
    fn matches_the_model() {
        let mut rnd = xorshift(0x9e37_79b9_7f4a_7c15u64);
        for _round in 0..200 {
            let mut t = DerivTree::new();
            let mut m = Model::default();
            let mut ids: BTreeMap<u32, NodeId> = BTreeMap::new();
            let mut next = 0u32;
            for _ in 0..200 {
                let live: Vec<u32> = ids.keys().copied().collect();
                match rnd(10) {
                    0 | 1 => {
                        let id = t.add(None, next).unwrap();
                        ids.insert(next, id);
                        m.parent.insert(next, None);
                        next += 1;
                    }
                    2..=5 if !live.is_empty() => {
                        let p = live[rnd(live.len())];
                        let id = t.add(Some(ids[&p]), next).unwrap();
                        ids.insert(next, id);
                        m.parent.insert(next, Some(p));
                        next += 1;
                    }
                    6 | 7 if !live.is_empty() => {
                        let x = live[rnd(live.len())];
                        assert_eq!(t.remove(ids[&x]), Some(x));
                        ids.remove(&x);
                        m.remove(x);
                    }
                    op @ (8 | 9) if !live.is_empty() => {
                        let x = live[rnd(live.len())];
                        let want = m.descendants(x);
                        let mut got = vec![];
                        // 9: in batches of two, as the kernel revokes (in batches, dropping
                        // what each removed after the tree's lock).
                        let n = if op == 8 {
                            t.revoke(ids[&x], |_, h| got.push(h)).unwrap()
                        } else {
                            let mut n = 0;
                            loop {
                                let (k, more) = t.revoke_some(ids[&x], 2, |_, h| got.push(h)).unwrap();
                                assert!(k <= 2);
                                n += k;
                                if !more {
                                    break n;
                                }
                            }
                        };
                        got.sort();
                        assert_eq!(got, want);
                        assert_eq!(n, want.len());
                        for d in want {
                            m.parent.remove(&d);
                            assert!(!t.is_live(ids.remove(&d).unwrap()));
                        }
                    }
                    _ => {}
                }
                assert_eq!(t.len(), ids.len());
                for (&x, &id) in &ids {
                    assert_eq!(t.home(id), Some(&x));
                    let p = t.parent(id).map(|p| *t.home(p).unwrap());
                    assert_eq!(p, m.parent[&x], "parent of {x}");
                }
            }
        }
    }
}
