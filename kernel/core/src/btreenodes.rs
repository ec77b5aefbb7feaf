//! How many nodes one insertion into a `BTreeMap` may allocate: the bound by which the kernel
//! stocks, before a `Map` changes anything, the nodes its space's map may need (`BTreeMap` has
//! no fallible insertion; `kernel/src/mem.rs`, `MapNodes`).
//!
//! The standard library's B-tree (B = 6) keeps 1 to 11 keys in every node and at least 5 in
//! every node but the root, after any sequence of insertions and removals. An insertion splits
//! at most every node on its path and adds a root: with a tree of `h` levels, `h + 1` nodes at
//! most (one, the first leaf, into an empty map). A tree of `h ≥ 2` levels holds at least
//! `2 · 6^(h−2)` leaves of 5 keys each, so `10 · 6^(h−2) ≤ len`. `tests/btree_nodes.rs` checks
//! the bound against the real `BTreeMap` (random insertions and removals, every allocation
//! counted), and that every node of the kernel's map fits [`NODE_BLOCK`] bytes.

/// Bytes of one stocked block: at least the largest node of a map from `u64` to a 16-byte,
/// 8-aligned value (an internal node: 11 keys, 11 values, 12 edges, the parent link and two
/// `u16`s; 376 bytes with this toolchain).
pub const NODE_BLOCK: usize = 384;
/// The alignment every block has (a node's: 8).
pub const NODE_ALIGN: usize = 8;

/// The most nodes inserting one entry into a `BTreeMap` that holds `len` entries allocates.
pub const fn insert_nodes(len: usize) -> usize {
    // Levels the tree may have: 1, and one more for each `10 · 6^(h−2) ≤ len`.
    let mut levels = 1;
    let mut least: u128 = 10; // The fewest entries a tree of `levels + 1` levels holds.
    while least <= len as u128 {
        levels += 1;
        least *= 6;
    }
    levels + 1
}

/// The most [`insert_nodes`] answers for any length.
pub const MOST_INSERT_NODES: usize = insert_nodes(usize::MAX);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_grows_by_one_level_per_factor_of_six() {
        assert_eq!(insert_nodes(0), 2);
        assert_eq!(insert_nodes(9), 2);
        assert_eq!(insert_nodes(10), 3);
        assert_eq!(insert_nodes(59), 3);
        assert_eq!(insert_nodes(60), 4);
        assert_eq!(insert_nodes(359), 4);
        assert_eq!(insert_nodes(360), 5);
        assert_eq!(MOST_INSERT_NODES, 26);
    }
}
