//! The derivation tree of one object's capabilities: which capability was copied or minted
//! from which, so that `CapRevoke` can delete everything derived from one capability in time
//! proportional to what it deletes.
//!
//! A node is one capability in a slot; its *home* (`H`: the kernel's task and slot) says where.
//! The original capability of an object is a root; a copy, a mint or a capability received
//! through IPC is a child of the capability it came from. Nodes live in one vector, linked by
//! index (parent, first child, siblings both ways), and are reused through a free list; a
//! [`NodeId`] carries the slot's generation, so an identifier kept after its node was freed
//! (and perhaps reused) is recognised as gone.
//!
//! Deleting a capability ([`DerivTree::remove`]) hands its children to its parent, so that
//! revoking the parent still reaches them, and no node outlives its capability: the tree holds
//! exactly one node per capability in a slot. [`DerivTree::revoke`] frees every descendant of
//! a node, top down, with no recursion, no allocation and no cursor between batches.
use crate::paged::PagedVec;

const NONE: u32 = u32::MAX;

/// How many children [`DerivTree::remove_polling`] hands up between two calls of its `poll`.
pub const POLL_EVERY: usize = 64;

/// A node of a [`DerivTree`]: index and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeId {
    index: u32,
    /// Never repeats for one index: a node whose generation reaches `u32::MAX` is retired
    /// instead of reused (else, after 2^32 copies and deletions, a stale identifier would
    /// name a live node again).
    generation: u32,
}

struct Node<H> {
    generation: u32,
    parent: u32,
    first_child: u32,
    prev: u32,
    /// Next sibling; for a free node, the next free one.
    next: u32,
    /// Revocations of this node under way ([`DerivTree::begin_revoke`]): another revocation
    /// that reaches it takes its children first and leaves the node itself until it has none.
    revoking: u32,
    /// `None`: the node is free.
    home: Option<H>,
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
    /// [`under_revocation`](Self::under_revocation) looks at nothing).
    revocations: u32,
    /// The generation a node appended to the vector starts with: above that of every node
    /// the vector dropped when it shrank, so an identifier of a dropped node never names a
    /// new one.
    fresh_generation: u32,
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

    pub const fn new() -> Self {
        DerivTree {
            nodes: PagedVec::new(),
            free: NONE,
            live: 0,
            freed: 0,
            revocations: 0,
            fresh_generation: 0,
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

    fn node(&self, id: NodeId) -> Option<&Node<H>> {
        self.nodes.get(id.index as usize).filter(|n| n.generation == id.generation && n.home.is_some())
    }

    /// Whether `id` still names a capability.
    pub fn is_live(&self, id: NodeId) -> bool {
        self.node(id).is_some()
    }

    /// Where `id`'s capability lives.
    pub fn home(&self, id: NodeId) -> Option<&H> {
        self.node(id).and_then(|n| n.home.as_ref())
    }

    /// The parent of `id`, if it is live and not a root.
    pub fn parent(&self, id: NodeId) -> Option<NodeId> {
        let n = self.node(id)?;
        (n.parent != NONE).then(|| NodeId { index: n.parent, generation: self.nodes[n.parent as usize].generation })
    }

    /// Makes room for one more node, so that the next [`add`](Self::add) allocates nothing;
    /// `Err` if there is no memory for it.
    pub fn reserve(&mut self) -> Result<(), ()> {
        if self.free != NONE { Ok(()) } else { self.nodes.try_reserve_one() }
    }

    /// A new node: a root (`parent` `None`) or a child of the live node `parent`.
    pub fn add(&mut self, parent: Option<NodeId>, home: H) -> Result<NodeId, Gone> {
        let p = match parent {
            None => NONE,
            Some(p) if self.is_live(p) => p.index,
            Some(_) => return Err(Gone),
        };
        let index = if self.free != NONE {
            let i = self.free;
            self.free = self.nodes[i as usize].next;
            i
        } else {
            let node = Node { generation: self.fresh_generation, parent: NONE, first_child: NONE, prev: NONE, next: NONE, revoking: 0, home: None };
            // Only without a `reserve` first, and with no memory: no node.
            if self.nodes.try_push(node).is_err() {
                return Err(Gone);
            }
            (self.nodes.len() - 1) as u32
        };
        let next = if p == NONE { NONE } else { self.nodes[p as usize].first_child };
        {
            let n = &mut self.nodes[index as usize];
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
        Ok(NodeId { index, generation: self.nodes[index as usize].generation })
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
        self.revocations -= n.revoking;
        n.revoking = 0;
        self.live -= 1;
        let home = n.home.take().expect("a live node");
        if n.generation == u32::MAX {
            // Retired: this index is never handed out again.
            return home;
        }
        n.generation += 1;
        n.next = self.free;
        self.free = i;
        self.freed += 1;
        home
    }

    /// Gives memory back after a burst: once at most a quarter of the vector's nodes are
    /// live, its last node is free and a quarter of them were freed since the last look, the
    /// free nodes at the end of the vector are dropped if they are at least half of it, and the
    /// vector's capacity shrinks with them. (Nodes cannot move, identifiers name them by index: a live node near
    /// the end keeps the vector long; a retired one too.) The free list is rebuilt in address
    /// order, so the lowest free nodes are used first and the end stays free. Time: the nodes
    /// looked at, at most the frees since the last look times four.
    fn maybe_shrink(&mut self, poll: &mut impl FnMut()) {
        let len = self.nodes.len();
        if len < 64 || 4 * self.live > len {
            return;
        }
        let last = &self.nodes[len - 1];
        if last.home.is_some() || last.generation == u32::MAX || 4 * self.freed < len {
            return;
        }
        self.freed = 0;
        // Every pass below calls `poll` after each [`POLL_EVERY`] nodes: the tree's lock is held,
        // interrupts off, and a task decides how long the vector is (a hostile review of the
        // twentieth session: three passes over 100,000 nodes in one go).
        let mut keep = len;
        while keep > len / 2 {
            let n = &self.nodes[keep - 1];
            if n.home.is_some() || n.generation == u32::MAX {
                return;
            }
            keep -= 1;
            if keep % POLL_EVERY == 0 {
                poll();
            }
        }
        while keep > 0 && self.nodes[keep - 1].home.is_none() && self.nodes[keep - 1].generation != u32::MAX {
            keep -= 1;
            if keep % POLL_EVERY == 0 {
                poll();
            }
        }
        let mut top = 0;
        for i in keep..len {
            top = top.max(self.nodes[i].generation);
            if i % POLL_EVERY == 0 {
                poll();
            }
        }
        self.fresh_generation = self.fresh_generation.max(top);
        while self.nodes.len() > keep {
            self.nodes.truncate(keep.max(self.nodes.len().saturating_sub(POLL_EVERY)));
            poll();
        }
        // Frees whole pieces: allocates nothing.
        self.nodes.shrink();
        self.free = NONE;
        for i in (0..keep).rev() {
            let n = &mut self.nodes[i];
            if n.home.is_none() && n.generation != u32::MAX {
                n.next = self.free;
                self.free = i as u32;
            }
            if i % POLL_EVERY == 0 {
                poll();
            }
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
    /// (roots, if it was one). Returns its home. Time: its number of children.
    pub fn remove(&mut self, id: NodeId) -> Option<H> {
        self.remove_polling(id, || {})
    }

    /// [`remove`](Self::remove), calling `poll` after every [`POLL_EVERY`] children handed up
    /// (the kernel answers other CPUs' TLB shoot-downs there: a task decides how many children
    /// a capability has, and the tree's lock is held, interrupts off, throughout).
    pub fn remove_polling(&mut self, id: NodeId, mut poll: impl FnMut()) -> Option<H> {
        self.node(id)?;
        let i = id.index;
        self.hand_children_up(i, &mut poll);
        self.unlink(i);
        let home = self.release(i);
        self.maybe_shrink(&mut poll);
        Some(home)
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
                self.end_revoke(id);
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
        self.node(id).ok_or(Gone)?;
        if self.revocations == u32::MAX {
            // (Never: one per revoking call under way.) Refused rather than miscounted.
            return Err(Gone);
        }
        self.revocations += 1;
        let n = &mut self.nodes[id.index as usize];
        n.revoking += 1;
        Ok(())
    }

    /// Whether `id` or one of its ancestors is being revoked ([`begin_revoke`](Self::begin_revoke)
    /// to [`end_revoke`](Self::end_revoke)): then nothing may be derived from `id` — a copy
    /// made below a revocation under way would be one more capability for it to delete, and
    /// copies made as fast as it deletes them would keep it from ever ending (`CapRevoke` works
    /// in batches, letting go of the tree's lock in between). No step while the tree has no
    /// revocation under way; else one per ancestor, `poll` called after every [`POLL_EVERY`]
    /// (the kernel answers other CPUs' TLB shoot-downs there). `false` for a node that is gone.
    pub fn under_revocation(&self, id: NodeId, mut poll: impl FnMut()) -> bool {
        if self.revocations == 0 || self.node(id).is_none() {
            return false;
        }
        let mut x = id.index;
        let mut k = 0;
        while x != NONE {
            let n = &self.nodes[x as usize];
            if n.revoking > 0 {
                return true;
            }
            x = n.parent;
            k += 1;
            if k % POLL_EVERY == 0 {
                poll();
            }
        }
        false
    }

    /// The revocation of `id` that [`begin_revoke`](Self::begin_revoke) announced is over
    /// (nothing to do if `id` is gone meanwhile).
    pub fn end_revoke(&mut self, id: NodeId) {
        if self.node(id).is_some() {
            let n = &mut self.nodes[id.index as usize];
            if n.revoking > 0 {
                n.revoking -= 1;
                self.revocations -= 1;
            }
        }
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
        self.revoke_some_polling(id, limit, f, || {})
    }

    /// [`revoke_some`](Self::revoke_some), calling `poll` after every [`POLL_EVERY`] nodes the
    /// vector's shrinking at the end of the revocation looks at (the kernel answers other
    /// CPUs' TLB shoot-downs there).
    pub fn revoke_some_polling(
        &mut self,
        id: NodeId,
        limit: usize,
        mut f: impl FnMut(NodeId, H),
        mut poll: impl FnMut(),
    ) -> Result<(usize, bool), Gone> {
        self.node(id).ok_or(Gone)?;
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
            let gone = NodeId { index: x, generation: self.nodes[x as usize].generation };
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
            self.maybe_shrink(&mut poll);
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
        let under = |t: &DerivTree<u32>, id| t.under_revocation(id, || {});
        assert!(!under(&t, b));
        t.begin_revoke(a).unwrap();
        assert!(under(&t, a) && under(&t, b));
        assert!(!under(&t, root) && !under(&t, other));
        t.begin_revoke(a).unwrap();
        t.end_revoke(a);
        assert!(under(&t, b), "one of two revocations of a still under way");
        t.end_revoke(a);
        assert!(!under(&t, b) && t.revocations == 0);
        // A revoking node that is freed ends its revocations.
        t.begin_revoke(b).unwrap();
        t.begin_revoke(b).unwrap();
        assert!(t.remove(b).is_some());
        assert_eq!(t.revocations, 0);
        assert!(!under(&t, a));
        // A deep chain: one step per ancestor, polled every POLL_EVERY.
        let mut last = other;
        for i in 0..1000 {
            last = t.add(Some(last), 10 + i).unwrap();
        }
        t.begin_revoke(other).unwrap();
        let mut polls = 0;
        assert!(t.under_revocation(last, || polls += 1));
        assert_eq!(polls, 1000 / POLL_EVERY);
        // Gone: not under revocation (the kernel refuses it as gone first).
        t.end_revoke(other);
        assert!(!under(&t, b));
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
                    if !(refuse && t.under_revocation(src, || {})) {
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

    #[test]
    fn a_live_node_at_the_end_keeps_the_vector() {
        let mut t = DerivTree::new();
        let root = t.add(None, 0u32).unwrap();
        let ids: Vec<NodeId> = (1..1000).map(|i| t.add(Some(root), i).unwrap()).collect();
        for &id in &ids[..998] {
            t.remove(id).unwrap();
        }
        assert_eq!(t.capacity(), 1000);
        assert!(t.is_live(ids[998]));
        // The lowest free nodes are used first once the list was rebuilt.
        t.remove(ids[998]).unwrap();
        assert!(t.capacity() <= 64);
        let n = t.add(Some(root), 7).unwrap();
        assert!(n.index < 64);
    }

    /// The shrink a deletion or a revocation ends with polls as it goes (the kernel answers TLB
    /// shoot-downs there): never more than [`POLL_EVERY`] nodes between two polls, counted by
    /// the nodes the passes look at.
    #[test]
    fn shrinking_polls_every_few_nodes() {
        for revoke in [false, true] {
            let mut t = DerivTree::new();
            let root = t.add(None, 0u32).unwrap();
            let ids: Vec<NodeId> = (1..20_000).map(|i| t.add(Some(root), i).unwrap()).collect();
            // The vector's last node goes last: nothing shrinks before.
            let (polls, before) = if revoke {
                let mut polls = 0;
                let mut more = true;
                while more {
                    polls = 0;
                    more = t.revoke_some_polling(root, 100_000, |_, _| {}, || polls += 1).unwrap().1;
                }
                (polls, 20_000)
            } else {
                for &id in &ids[..ids.len() - 1] {
                    t.remove(id).unwrap();
                }
                assert_eq!(t.capacity(), 20_000);
                let mut polls = 0;
                t.remove_polling(ids[ids.len() - 1], || polls += 1).unwrap();
                (polls, 20_000)
            };
            assert!(t.capacity() <= 64, "shrunk ({})", t.capacity());
            // Four passes: the scan down from the end, the generations, the truncation, the free
            // list (each at least a poll per POLL_EVERY nodes it looks at).
            assert!(polls >= 3 * before / POLL_EVERY, "{polls} polls for {before} nodes (revoke: {revoke})");
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
            assert_eq!(t.remove_polling(b, || polls += 1), Some(1));
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
    fn a_node_whose_generation_ran_out_is_retired() {
        let mut t = DerivTree::new();
        let a = t.add(None, 1).unwrap();
        let b = t.add(Some(a), 2).unwrap();
        t.nodes[b.index as usize].generation = u32::MAX;
        let old = NodeId { index: b.index, generation: u32::MAX };
        assert_eq!(t.remove(old), Some(2));
        let c = t.add(Some(a), 3).unwrap();
        assert_ne!(c.index, b.index, "the retired index is not reused");
        assert!(!t.is_live(old) && t.is_live(c));
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

    /// Random sequences against the model: the same capabilities live, the same parents, and
    /// each revocation deletes exactly the model's descendants.
    #[test]
    fn matches_the_model() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
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
