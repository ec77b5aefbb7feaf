//! Pure kernel logic that needs no hardware: the kernel command line, the physical memory map,
//! the physical frame allocator, capability tables, run queues, PCID bookkeeping, the TLB
//! shoot-down protocol, a CPU's answers to other CPUs' questions and the fault reports' rate limit.
//!
//! Everything here compiles for the host as well as for `x86_64-unknown-none` and is unit-tested
//! with a plain `cargo test` (run by `scripts/test`). Nothing in this crate touches hardware;
//! the kernel hands it plain numbers and slices. No modules but `mailbox` and `wlist` (intrusive
//! lists of `Arc`s) contain `unsafe` code (but for the run queue's tests, which implement the
//! intrusive-link trait for their items).
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

pub mod asks;
pub mod btreenodes;
pub mod captable;
pub mod cmdline;
pub mod conout;
pub mod deadlines;
pub mod deriv;
pub mod device;
pub mod frames;
#[allow(unsafe_code)]
pub mod homelock;
pub mod life;
#[allow(unsafe_code)]
pub mod mailbox;
pub mod memmap;
pub mod paged;
pub mod pcid;
pub mod qsbr;
pub mod ratelimit;
pub mod replypoll;
pub mod runqueue;
#[cfg(test)]
#[allow(unsafe_code)]
mod test_alloc;
pub mod tlbsync;
#[allow(unsafe_code)]
pub mod wlist;

/// The size of a page and of a physical frame.
pub const PAGE_SIZE: u64 = 4096;

/// Rounds `x` down to a multiple of `align` (a power of two).
#[inline]
pub const fn align_down(x: u64, align: u64) -> u64 {
    x & !(align - 1)
}

/// Rounds `x` up to a multiple of `align` (a power of two), saturating at the top of the
/// address space instead of wrapping.
#[inline]
pub const fn align_up(x: u64, align: u64) -> u64 {
    match x.checked_add(align - 1) {
        Some(v) => v & !(align - 1),
        None => u64::MAX & !(align - 1),
    }
}
