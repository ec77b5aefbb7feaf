//! The address-space switch and TLB shoot-down protocol between CPUs, as pure logic over an
//! [`Mmu`] the kernel implements with CR3 writes and the loom models with plain variables.
//!
//! Each CPU publishes the root page table it has loaded ([`CpuTlbShared::loaded`]). A CPU that
//! removes a mapping from a space (or destroys it) first changes the page tables (and, with
//! PCIDs, gives the space a new *generation*, see [`crate::pcid`]), then asks every CPU that
//! has the space loaded to flush ([`CpuTlbShared::post`]) and waits for each answer; CPUs that
//! do not have it loaded are skipped, and the page's frame is freed afterwards. Skipping is
//! safe only if a CPU that loads the space *concurrently* cannot keep a translation from
//! before the change. That is a store-buffering pattern:
//!
//! ```text
//!   shooter                                   loader (switch)
//!   change PTEs; new generation               loaded := root
//!   fence (SeqCst)                            CR3 write (serialising: a full fence)
//!   read loaded  →  skip unless == root       TLB fills; read generation again
//! ```
//!
//! With a fence on each side between the write and the read, at least one side sees the
//! other's write: either the shooter sees `root` and interrupts the loader, or the loader's
//! TLB fills (which can only begin after its CR3 write) read the changed PTEs and its second
//! read of the generation sees the new one and flushes the PCID's older entries.
//!
//! Publishing the new root first opens the opposite window: `loaded` already names the new root
//! while CR3 still holds the old one, and a shooter destroying the old space would free page
//! tables a CR3 still points at. So the switch also publishes the root it is *leaving* (before
//! the new one, cleared after the CR3 write), and a shooter asks a CPU that has the root loaded
//! or is leaving it; the CPU answers only after its switch (it runs the request with
//! interrupts on, or from a spin loop, never inside a switch).
//!
//! The kernel used to write CR3 first and publish `loaded` after it, with the generation read
//! only before the write: a shooter reading `loaded` between the two skipped the CPU, which
//! then ran on with a translation (kept through the PCID no-flush bit, or filled speculatively
//! between the CR3 write and the PTE change) to a frame about to be freed. The loom models in
//! `tests/tlb_loom.rs` find that execution for the old order and none for this one.
//!
//! The loader's fence costs nothing extra: the CR3 write it needs anyway is serialising, so the
//! protocol adds no locked instruction to the switch (two plain stores for `leaving`; with
//! PCIDs the kernel still locks its per-CPU PCID record). When the space is already loaded and (with PCIDs) its
//! generation unchanged, nothing is written: `loaded` has held `root` since an earlier switch,
//! so every shooter sees it.
#![allow(unexpected_cfgs)] // `cfg(loom)`: set by RUSTFLAGS for the loom models only.

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering, fence};
#[cfg(not(loom))]
use core::sync::atomic::{AtomicU64, Ordering, fence};

use crate::pcid::PcidCache;

/// What the protocol needs of the memory-management unit of the CPU running it.
/// A root page table as [`Mmu::write_root`] loads it: the kernel's is a type only the paging
/// code can make (`rl4_arch::paging::RootRef`, a borrow of a `PageTableRoot`), so that loading
/// one needs no `unsafe`; this protocol only compares and publishes the address. Passed by
/// value (`Copy`), so that the address stays in a register across the stores that publish it.
pub trait Root: Copy {
    fn addr(&self) -> u64;
}

impl Root for u64 {
    #[inline(always)]
    fn addr(&self) -> u64 {
        *self
    }
}

pub trait Mmu<R: Root> {
    /// Loads `root` with PCID `pcid` (0 without PCIDs); `keep` keeps the PCID's TLB entries
    /// (CR3's no-flush bit), else they are dropped. It must order every earlier store before
    /// every later load, as a `SeqCst` fence does: a CR3 write is serialising, and the
    /// kernel's `asm!` for it is a compiler barrier too; a model implements it with `fence`.
    fn write_root(&mut self, root: R, pcid: u16, keep: bool);
    /// Drops every user TLB entry of this CPU, all PCIDs.
    fn flush_user(&mut self);
}

/// One CPU's part of the protocol that other CPUs read and write.
pub struct CpuTlbShared {
    /// The root this CPU has loaded (the kernel's, or a user space kept loaded while idle).
    loaded: AtomicU64,
    /// During a switch, from before `loaded` names the new root until the CR3 write is done:
    /// the root being left, which CR3 still holds (0 otherwise). A space being destroyed must
    /// not be freed while a CPU is leaving it either.
    leaving: AtomicU64,
    /// A shoot-down request: a root, bit 0 = the space is being destroyed (load the kernel's).
    request: AtomicU64,
    /// Requests answered so far.
    done: AtomicU64,
}

impl CpuTlbShared {
    pub fn new(root: u64) -> Self {
        CpuTlbShared {
            loaded: AtomicU64::new(root),
            leaving: AtomicU64::new(0),
            request: AtomicU64::new(0),
            done: AtomicU64::new(0),
        }
    }

    /// The root this CPU has loaded.
    #[inline]
    pub fn loaded(&self) -> u64 {
        self.loaded.load(Ordering::Relaxed)
    }

    /// Whether a request waits for this CPU.
    #[inline]
    pub fn request_pending(&self) -> bool {
        self.request.load(Ordering::Relaxed) != 0
    }

    /// This CPU switches to `root` with PCID `pcid` (its [`PcidCache`] in `pcids`, `None`
    /// without PCIDs), whose current generation is in `generation`. Only the CPU that owns
    /// `self` calls this, with interrupts off.
    #[inline(always)]
    pub fn switch<R: Root, M: Mmu<R>>(&self, mmu: &mut M, pcids: Option<&mut PcidCache>, table: R, pcid: u16, generation: &AtomicU64) {
        let root = table.addr();
        let was = self.loaded.load(Ordering::Relaxed);
        let Some(cache) = pcids else {
            // Without PCIDs a CR3 write flushes every user entry: never write it when it holds
            // the right space already (the dearest step of a switch under TCG).
            if was != root {
                self.publish(root, was);
                mmu.write_root(table, 0, false);
                self.left();
            }
            return;
        };
        let mut g = generation.load(Ordering::Acquire);
        let flush = cache.switch_needs_flush(pcid, g);
        if !flush && was == root {
            return;
        }
        self.publish(root, was);
        mmu.write_root(table, pcid, !flush);
        if was != root {
            self.left();
        }
        // After the serialising write: a generation changed since the first read belongs to a
        // shooter that may have skipped this CPU; drop the entries kept from before it.
        loop {
            let now = generation.load(Ordering::Acquire);
            if now == g {
                break;
            }
            g = now;
            cache.switch_needs_flush(pcid, g);
            mmu.write_root(table, pcid, false);
        }
    }

    /// `loaded := root`, before the CR3 write (see the module's comment), which is the fence
    /// that orders this store before the reads after it ([`Mmu::write_root`]).
    /// `leaving := was` first: a shooter that sees the new root (Acquire) sees that too.
    #[inline(always)]
    fn publish(&self, root: u64, was: u64) {
        if was != root {
            self.leaving.store(was, Ordering::Relaxed);
            self.loaded.store(root, Ordering::Release);
        }
    }

    /// After the CR3 write: the old root is no longer in CR3.
    #[inline(always)]
    fn left(&self) {
        self.leaving.store(0, Ordering::Release);
    }

    /// Answers a request addressed to this CPU, if any (from the shoot-down interrupt, and
    /// from any loop that spins with interrupts off). `kernel_root` is loaded when the space
    /// being destroyed is this CPU's.
    pub fn service<R: Root, M: Mmu<R>>(&self, mmu: &mut M, kernel_root: R) {
        let req = self.request.swap(0, Ordering::AcqRel);
        if req == 0 {
            return;
        }
        let root = req & !1;
        if self.loaded.load(Ordering::Relaxed) == root {
            if req & 1 != 0 {
                self.loaded.store(kernel_root.addr(), Ordering::Relaxed);
                mmu.write_root(kernel_root, 0, false);
            } else {
                mmu.flush_user();
            }
        }
        self.done.fetch_add(1, Ordering::AcqRel);
    }

    /// The shooter's side, after it changed the page tables of `root` (and its generation),
    /// after [`shooter_fence`]: whether this CPU must act. If so, the request is posted and
    /// the answer count to wait past is returned; the caller then interrupts the CPU (or, for
    /// itself, services the request at once) and waits with [`Self::answered`]. One shooter
    /// at a time (the kernel's shoot-down lock).
    /// A CPU in the middle of a switch away from `root` (its CR3 may still hold it) is asked
    /// too; it answers after the switch, when CR3 no longer does.
    pub fn post(&self, root: u64, destroy: bool) -> Option<u64> {
        if self.loaded.load(Ordering::Acquire) != root && self.leaving.load(Ordering::Acquire) != root {
            return None;
        }
        let done = self.done.load(Ordering::Acquire);
        self.request.store(root | destroy as u64, Ordering::Release);
        Some(done)
    }

    /// Whether the CPU answered since [`Self::post`] returned `since`.
    pub fn answered(&self, since: u64) -> bool {
        self.done.load(Ordering::Acquire) != since
    }
}

/// The shooter's fence between its page-table (and generation) changes and its reads of the
/// CPUs' [`CpuTlbShared::loaded`].
#[inline]
pub fn shooter_fence() {
    fence(Ordering::SeqCst);
}
