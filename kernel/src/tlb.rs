//! TLB consistency across CPUs: which address space each CPU has loaded, PCIDs, and shoot-downs.
//!
//! Each CPU records the PML4 its CR3 holds (an idle CPU keeps the last user space loaded: a
//! CR3 write is the dearest step of a switch under TCG). Removing a mapping, or destroying a
//! space, asks every CPU that has that space loaded to flush (or to load the kernel's tables)
//! through a request word and an IPI, and waits until each has answered. A CPU that spins with
//! interrupts off keeps answering requests addressed to it, so no two shoot-downs wait on each
//! other. The shoot-down lock is taken holding no other lock (`lock.rs`).
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use rl4_arch::paging::{self, PageTableRoot, RootRef};
use rl4_arch::cpu;
use rl4_core::pcid::{PcidAllocator, PcidCache};
use rl4_core::tlbsync::{self, CpuTlbShared, Mmu};
use rl4_smp::{MAX_CPUS, cpus, lapic};

use crate::count::Global;
use crate::lock::{GlobalMutex, Level, Mutex};
use crate::obj::Space;
use crate::sched;

/// A CPU's address-space and TLB state.
pub struct CpuTlb {
    /// The root it has loaded and the shoot-down request word (`rl4_core::tlbsync`).
    pub(crate) shared: CpuTlbShared,
    /// The generation of I/O port ranges this CPU's permission bitmap holds (`device.rs`).
    pub(crate) io_generation: AtomicU64,
    /// This CPU sent itself the reschedule interrupt to re-read its ranges and has not taken it
    /// yet (`device::resync_later`).
    pub(crate) io_owed: AtomicBool,
    pcids: Option<Mutex<PcidCache, { Level::OBJECT }>>,
}

impl CpuTlb {
    /// A CPU's state, with PCIDs if `pcid`: `None` if the heap has no room for their tables
    /// (the CPU's cache of generations, the first time the allocator of PCIDs).
    pub fn try_new(pcid: bool) -> Option<Self> {
        let pcids = if pcid {
            let cache = PcidCache::try_new()?;
            let mut a = PCIDS.lock();
            if a.is_none() {
                *a = Some(PcidAllocator::try_new()?);
            }
            Some(Mutex::new(cache))
        } else {
            None
        };
        Some(CpuTlb { shared: CpuTlbShared::new(paging::kernel_pml4()), io_generation: AtomicU64::new(0), io_owed: AtomicBool::new(false), pcids })
    }

    /// Whether it was made with PCIDs.
    pub fn with_pcids(&self) -> bool {
        self.pcids.is_some()
    }

    /// The CPU it is made for does not use PCIDs after all (its own CPUID says so): drops their
    /// table. Before the CPU runs anything.
    pub fn drop_pcids(&mut self) {
        self.pcids = None;
    }

    /// The CPU starts: with PCIDs if it was made with them (every CPU's address-space switches
    /// then look at PCIDs).
    pub fn start(&self) {
        if self.pcids.is_some() {
            PCID_ON.store(true, Ordering::Relaxed);
        }
    }
}

/// This CPU's MMU for `tlbsync`: a CR3 write (serialising, and a compiler barrier: the `asm!`
/// in `paging::load_cr3` is not `nomem`) and the full user flush.
struct Cr3;

impl Mmu<RootRef<'_>> for Cr3 {
    #[inline(always)]
    fn write_root(&mut self, root: RootRef<'_>, pcid: u16, keep: bool) {
        paging::load_cr3(root, pcid, keep);
    }
    fn flush_user(&mut self) {
        paging::flush_tlb_all_user();
    }
}

static PCID_ON: AtomicBool = AtomicBool::new(false);
static PCIDS: GlobalMutex<Option<PcidAllocator>, { Level::OBJECT }> = GlobalMutex::new(Global::Pcids, None);
static SHOOTDOWN: GlobalMutex<(), { Level::SHOOTDOWN }> = GlobalMutex::new(Global::Shootdown, ());

fn me() -> u32 {
    rl4_arch::percpu::cpu_index()
}

/// A PCID and generation for a new space (PCID 0 and generation 0 without PCIDs).
pub fn pcid_alloc() -> (u16, u64) {
    if !PCID_ON.load(Ordering::Relaxed) {
        return (0, 0);
    }
    let mut a = PCIDS.lock();
    let a = a.as_mut().expect("PCID allocator");
    a.alloc().unwrap_or_else(|| (0, a.generation()))
}

pub fn pcid_free(pcid: u16) {
    if pcid != 0 {
        if let Some(a) = PCIDS.lock().as_mut() {
            a.free(pcid)
        }
    }
}

/// Makes `sp` the address space this CPU translates with: its root is published before the
/// CR3 write and, with PCIDs, the generation re-read after it (`rl4_core::tlbsync` argues the
/// order; `kernel/core/tests/tlb_loom.rs` checks it).
#[inline(always)]
pub(crate) fn load_space(cs: sched::Here, sp: &Space) {
    match &cs.tlb.pcids {
        None => cs.tlb.shared.switch(&mut Cr3, None, sp.pml4.loadable(), 0, &sp.generation),
        Some(cache) => cs.tlb.shared.switch(&mut Cr3, Some(&mut cache.lock()), sp.pml4.loadable(), sp.pcid, &sp.generation),
    }
    // The I/O permission bitmap follows the space (`device.rs`): one compare when it agrees.
    // After the root is published and the CR3 write (serialising) or, without a write, a root
    // published before an earlier one: a change of `sp`'s ranges either finds this CPU's root
    // is `sp`'s (and interrupts it) or is seen here (`device::Resync`).
    crate::device::sync(&cs.tlb.io_generation, sp);
}

/// Runs this CPU's pending TLB request and answers the questions of CPUs that closed I/O-port
/// ranges (`device::answer_asked`): a CPU that spins with interrupts off waiting for another
/// CPU's progress must keep doing both, or a shoot-down, or a close, waiting for it never ends
/// — and the CPU it waits for may be that closer (since the thirty-eighth session: a review
/// found a kill's wait for another kill, and `with_queue_locked`'s, each waiting for a CPU
/// that waited for their answer).
pub(crate) fn service_tlb_here() {
    serve_others(sched::this_cpu());
}

/// [`service_tlb_here`] once this CPU's scheduler is set up (a contended lock's wait calls it,
/// which may come before, while a CPU starts).
pub(crate) fn service_tlb_if_up() {
    if let Some(cs) = sched::this_cpu_if_up() {
        serve_others(cs);
    }
}

/// [`service_tlb_here`] with this CPU's scheduler at hand: for the loops whose length a task
/// decides (a burst of expiring deadlines, a list of requests) and the shoot-down's own waits,
/// so that a closer waits for one step of them at most (the review of the thirty-eighth
/// session's diff: they answered shoot-downs only). (The idle loop and the TLB interrupt call
/// [`service_tlb`] alone: the reschedule interrupt answers there.)
pub(crate) fn serve_others(cs: sched::Here) {
    service_tlb(cs);
    crate::device::answer_asked();
}

/// Runs a TLB request addressed to this CPU, if any.
pub(crate) fn service_tlb(cs: sched::Here) {
    // A plain load first: the idle loop comes here every round, and an exchange (a locked
    // instruction) plus the kernel root's look-up are for when a request waits.
    if cs.tlb.shared.request_pending() {
        cs.tlb.shared.service(&mut Cr3, paging::kernel_root().loadable());
    }
}

/// The TLB shootdown IPI.
pub fn tlb_interrupt() {
    service_tlb(sched::this_cpu());
    cpus::eoi();
}

/// Makes every CPU drop the TLB entries of `pml4` (`destroy`: and stop using it as CR3), and
/// waits until they have.
fn shootdown(pml4: u64, destroy: bool) {
    let cs = sched::this_cpu();
    let guard = loop {
        if let Some(g) = SHOOTDOWN.try_lock() {
            break g;
        }
        serve_others(cs);
        cpu::relax();
    };
    // The page tables (and the generation) changed before this fence, and every CPU's
    // published root is read after it: see `rl4_core::tlbsync`.
    tlbsync::shooter_fence();
    // The CPUs asked, on the stack (2 KiB): a shoot-down allocates nothing, so an `Unmap` or
    // a space's destruction cannot fail for want of memory.
    let mut waiting = [0u64; MAX_CPUS / 64];
    let mut since = [0u64; MAX_CPUS];
    for i in 0..MAX_CPUS {
        let Some(c) = sched::get(i) else { continue };
        let Some(s) = c.tlb.shared.post(pml4, destroy) else { continue };
        if i == me() as usize {
            service_tlb(cs);
        } else {
            cpus::send_ipi(i, lapic::VEC_TLB);
            waiting[i / 64] |= 1 << (i % 64);
            since[i] = s;
        }
    }
    for i in (0..MAX_CPUS).filter(|&i| waiting[i / 64] >> (i % 64) & 1 != 0) {
        let since = since[i];
        let Some(c) = sched::get(i) else { continue };
        while !c.tlb.shared.answered(since) {
            serve_others(cs);
            cpu::relax();
        }
    }
    drop(guard);
}

/// After a mapping of `sp` was removed: no CPU may keep the old translation.
pub fn flush_space(sp: &Space) {
    if PCID_ON.load(Ordering::Relaxed) {
        let g = PCIDS.lock().as_mut().map_or(0, |a| a.generation());
        sp.generation.store(g, Ordering::Release);
    }
    shootdown(sp.pml4.addr(), false);
}

/// Before the page tables of `root` are freed: no CPU may still have them in CR3.
pub fn forget_space(root: &PageTableRoot) {
    shootdown(root.addr(), true);
}

