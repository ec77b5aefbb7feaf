//! The per-CPU anchor: `GS` points at a [`CpuHeader`] on every CPU.
//!
//! This is rl4's one per-CPU mechanism. The header holds what the lowest layers need with one
//! `gs:`-relative load (CPU index, APIC id, kernel stack for the syscall entry); `rl4-smp`
//! embeds it as the first field of its per-CPU block, and every other per-CPU structure is an
//! array indexed by [`cpu_index`]. Before a CPU's block exists, `GS` points at a static header
//! for CPU 0 ([`install_early`]), so the console can always say which CPU is talking.
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use x86_64::VirtAddr;
use x86_64::registers::model_specific::GsBase;

/// The start of every CPU's per-CPU block (`#[repr(C)]`: offsets are read from assembly).
#[repr(C)]
pub struct CpuHeader {
    /// Virtual address of this header (gs:0), so `gs:0` yields a plain pointer.
    self_addr: AtomicU64,
    /// Dense CPU index, 0 = bootstrap CPU (gs:8).
    index: AtomicU32,
    /// Local APIC id (gs:12).
    apic_id: AtomicU32,
    /// Top of this CPU's kernel stack (gs:16).
    pub kernel_stack_top: AtomicU64,
    /// Scratch slot for the user stack pointer at syscall entry (gs:24).
    pub user_rsp: AtomicU64,
    /// One past the end of the running thread's saved registers (gs:32): the syscall and
    /// trap entries store the user registers just below it.
    pub regs_end: AtomicU64,
    /// Non-zero: return to user mode with `iretq` instead of `sysretq` (gs:40).
    pub resume_iret: AtomicU64,
    /// The kernel's lock levels this CPU holds, one bit each (gs:48; see the kernel's
    /// `lock.rs`). Only this CPU touches it, with interrupts off.
    pub locks_held: AtomicU64,
}

impl CpuHeader {
    pub const fn new(index: u32, apic_id: u32) -> Self {
        CpuHeader {
            self_addr: AtomicU64::new(0),
            index: AtomicU32::new(index),
            apic_id: AtomicU32::new(apic_id),
            kernel_stack_top: AtomicU64::new(0),
            user_rsp: AtomicU64::new(0),
            regs_end: AtomicU64::new(0),
            resume_iret: AtomicU64::new(0),
            locks_held: AtomicU64::new(0),
        }
    }
    pub fn index(&self) -> u32 {
        self.index.load(Ordering::Relaxed)
    }
    pub fn apic_id(&self) -> u32 {
        self.apic_id.load(Ordering::Relaxed)
    }
}

static EARLY: CpuHeader = CpuHeader::new(0, 0);

/// Points `GS` at the static header of CPU 0. Called first thing on the BSP.
pub fn install_early() {
    install(&EARLY);
}

/// Points this CPU's `GS` base at `header`, which must live for the rest of the kernel's life.
pub fn install(header: &'static CpuHeader) {
    let addr = header as *const CpuHeader as u64;
    header.self_addr.store(addr, Ordering::Relaxed);
    GsBase::write(VirtAddr::new(addr));
}

/// The current CPU's header.
#[inline]
pub fn current() -> &'static CpuHeader {
    let addr: u64;
    // SAFETY: GS always points at a live, 'static `CpuHeader` (`install_early` runs before any
    // code that can reach here); reading gs:0 has no side effects.
    unsafe { core::arch::asm!("mov {}, gs:[0]", out(reg) addr, options(nostack, readonly, preserves_flags)) };
    if addr == 0 {
        return &EARLY;
    }
    // SAFETY: `self_addr` was stored by `install` from a `&'static CpuHeader`.
    unsafe { &*(addr as *const CpuHeader) }
}

/// The current CPU's dense index (0 = bootstrap CPU).
#[inline]
pub fn cpu_index() -> u32 {
    let v: u32;
    // SAFETY: as in `current`: gs:8 is the `index` field of a live header.
    unsafe { core::arch::asm!("mov {:e}, gs:[8]", out(reg) v, options(nostack, readonly, preserves_flags)) };
    v
}
