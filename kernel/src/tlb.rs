//! TLB consistency across CPUs: which address space each CPU has loaded, PCIDs, and shoot-downs.
//!
//! Each CPU records the PML4 its CR3 holds (an idle CPU keeps the last user space loaded: a
//! CR3 write is the dearest step of a switch under TCG). Removing a mapping, or destroying a
//! space, asks every CPU that has that space loaded to flush (or to load the kernel's tables)
//! through a request word and an IPI, and waits until each has answered. A CPU that spins with
//! interrupts off keeps answering requests addressed to it, so no two shoot-downs wait on each
//! other. The shoot-down lock is taken holding no other lock (`lock.rs`).
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use rl4_arch::{cpu, paging};
use rl4_core::pcid::{PcidAllocator, PcidCache};
use rl4_smp::{MAX_CPUS, cpus, lapic};

use crate::count::Global;
use crate::lock::{GlobalMutex, Level, Mutex};
use crate::obj::Space;
use crate::sched::{self, CpuSched};

/// A CPU's address-space and TLB state.
pub struct CpuTlb {
    /// The PML4 this CPU's CR3 holds (the kernel's, or a user space kept loaded while idle).
    pub(crate) loaded_pml4: AtomicU64,
    /// The generation of I/O port ranges this CPU's permission bitmap holds (`device.rs`).
    pub(crate) io_generation: AtomicU64,
    pcids: Option<Mutex<PcidCache, { Level::OBJECT }>>,
    /// TLB shootdown request: a PML4 address, bit 0 = the space is being destroyed.
    pub(crate) tlb_request: AtomicU64,
    tlb_done: AtomicU64,
}

impl CpuTlb {
    pub fn new(pcid: bool) -> Self {
        if pcid {
            PCID_ON.store(true, Ordering::Relaxed);
            PCIDS.lock().get_or_insert_with(PcidAllocator::new);
        }
        CpuTlb {
            loaded_pml4: AtomicU64::new(paging::kernel_pml4()),
            io_generation: AtomicU64::new(0),
            pcids: pcid.then(|| Mutex::new(PcidCache::new())),
            tlb_request: AtomicU64::new(0),
            tlb_done: AtomicU64::new(0),
        }
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

/// Makes `sp` the address space this CPU translates with.
#[inline(always)]
pub(crate) fn load_space(cs: &CpuSched, sp: &Space) {
    // The I/O permission bitmap follows the space (`device.rs`): one compare when it agrees.
    crate::device::sync(&cs.tlb.io_generation, sp);
    match &cs.tlb.pcids {
        None => {
            // Without PCIDs a CR3 write flushes the TLB (thousands of cycles under TCG): never
            // write it when it already holds the right space.
            if cs.tlb.loaded_pml4.load(Ordering::Relaxed) != sp.pml4 {
                paging::load_cr3(sp.pml4, 0, false);
                cs.tlb.loaded_pml4.store(sp.pml4, Ordering::Relaxed);
            }
        }
        Some(cache) => {
            let g = sp.generation.load(Ordering::Acquire);
            let flush = cache.lock().switch_needs_flush(sp.pcid, g);
            if flush || cs.tlb.loaded_pml4.load(Ordering::Relaxed) != sp.pml4 {
                paging::load_cr3(sp.pml4, sp.pcid, !flush);
                cs.tlb.loaded_pml4.store(sp.pml4, Ordering::Relaxed);
            }
        }
    }
}


/// Runs this CPU's pending TLB request (a CPU that spins with interrupts off must keep doing
/// this, or a shootdown waiting for it never ends).
pub(crate) fn service_tlb_here() {
    service_tlb(sched::this_cpu());
}

/// Runs a TLB request addressed to this CPU, if any.
pub(crate) fn service_tlb(cs: &CpuSched) {
    let req = cs.tlb.tlb_request.swap(0, Ordering::AcqRel);
    if req == 0 {
        return;
    }
    let pml4 = req & !1;
    if cs.tlb.loaded_pml4.load(Ordering::Relaxed) == pml4 {
        if req & 1 != 0 {
            let k = paging::kernel_pml4();
            paging::load_cr3(k, 0, false);
            cs.tlb.loaded_pml4.store(k, Ordering::Relaxed);
        } else {
            paging::flush_tlb_all_user();
        }
    }
    cs.tlb.tlb_done.fetch_add(1, Ordering::AcqRel);
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
        service_tlb(cs);
        cpu::relax();
    };
    let req = pml4 | destroy as u64;
    let mut waiting: Vec<(usize, u64)> = Vec::new();
    for i in 0..MAX_CPUS {
        let Some(c) = sched::get(i) else { continue };
        if c.tlb.loaded_pml4.load(Ordering::Acquire) != pml4 {
            continue;
        }
        if i == me() as usize {
            c.tlb.tlb_request.store(req, Ordering::Release);
            service_tlb(c);
            continue;
        }
        let done = c.tlb.tlb_done.load(Ordering::Acquire);
        c.tlb.tlb_request.store(req, Ordering::Release);
        cpus::send_ipi(i, lapic::VEC_TLB);
        waiting.push((i, done));
    }
    for (i, done) in waiting {
        let Some(c) = sched::get(i) else { continue };
        while c.tlb.tlb_done.load(Ordering::Acquire) == done {
            service_tlb(cs);
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
    shootdown(sp.pml4, false);
}

/// Before the page tables at `pml4` are freed: no CPU may still have them in CR3.
pub fn forget_space(pml4: u64) {
    shootdown(pml4, true);
}

