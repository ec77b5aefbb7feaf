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
    /// The kernel's locks this CPU holds (gs:40; see the kernel's `lock.rs`): a count, or one
    /// bit per lock level in a `lockcheck` kernel. Only this CPU touches it, with interrupts off.
    pub locks_held: AtomicU64,
    /// The kernel's per-CPU scheduler block, as an address (gs:48; 0 until it is made).
    kernel_block: AtomicU64,
    /// Returns to user mode so far (gs:56): the entry code adds one on every way back to user
    /// mode, after the kernel's last access for that entry to anything a grace period protects
    /// (the exit's first instruction: the register loads after it read the running thread's
    /// block, which its reference in this CPU's current slot keeps); other CPUs read it to tell
    /// that this one has left the kernel since some moment (the kernel's `qsbr.rs`).
    exits: AtomicU64,
    /// The FPU stamp of this CPU (gs:64; see `fpu.rs`): changed at every save and every load of
    /// a thread's FPU/SIMD registers on this CPU, each time to a value no CPU used before; equal
    /// to a save area's stamp only while this CPU's registers still hold what that area holds.
    fpu_stamp: AtomicU64,
    /// Non-zero while this CPU runs with `CR0.TS` set and its FPU/SIMD registers hold the
    /// default state (gs:72; see `fpu.rs`): the running thread has never used them.
    fpu_off: AtomicU64,
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
            locks_held: AtomicU64::new(0),
            kernel_block: AtomicU64::new(0),
            exits: AtomicU64::new(0),
            fpu_stamp: AtomicU64::new(FPU_STAMP_STEP + 2 * index as u64 + 1),
            fpu_off: AtomicU64::new(0),
        }
    }
    /// How many times this CPU has returned to user mode (read by any CPU).
    #[inline]
    pub fn exits(&self) -> u64 {
        self.exits.load(Ordering::Acquire)
    }
    /// Counts a quiescent point of this CPU that is not a return to user mode (its idle loop,
    /// or a wait that holds nothing read without a lock). Only the CPU itself calls it.
    #[inline]
    pub fn count_exit(&self) {
        self.exits.store(self.exits.load(Ordering::Relaxed) + 1, Ordering::Release);
    }
    pub fn index(&self) -> u32 {
        self.index.load(Ordering::Relaxed)
    }
    pub fn apic_id(&self) -> u32 {
        self.apic_id.load(Ordering::Relaxed)
    }
    /// Records the APIC ID the CPU's own local APIC reports, where it differs from the one the
    /// header was made with (the bootstrap CPU's, read from CPUID before its APIC was up).
    pub fn set_apic_id(&self, id: u32) {
        self.apic_id.store(id, Ordering::Relaxed);
    }
}

static EARLY: CpuHeader = CpuHeader::new(0, 0);

/// Points `GS` at the static header of CPU 0. Called first thing on the BSP.
pub fn install_early() {
    install(&EARLY);
}

/// Points this CPU's `GS` base at `header`, which must live for the rest of the kernel's life.
pub fn install(header: &'static CpuHeader) {
    assert!(2 * (header.index() as u64) < FPU_STAMP_STEP, "CPU index {} above the FPU stamps' range", header.index());
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

/// The lock levels this CPU holds (`gs:40`, see `CpuHeader::locks_held`).
#[inline(always)]
pub fn locks_held() -> u64 {
    let v: u64;
    // SAFETY: gs:40 is the `locks_held` field of this CPU's live header (`install_early` runs
    // first); a plain load.
    unsafe { core::arch::asm!("mov {}, gs:[40]", out(reg) v, options(nostack, readonly, preserves_flags)) };
    v
}

/// Sets the lock levels this CPU holds.
#[inline(always)]
pub fn set_locks_held(v: u64) {
    // SAFETY: as in `locks_held`; only this CPU touches its field, with interrupts off.
    unsafe { core::arch::asm!("mov gs:[40], {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Counts one more lock held (one instruction: `inc qword ptr gs:[40]`).
#[inline(always)]
pub fn inc_locks_held() {
    // SAFETY: as in `set_locks_held`.
    unsafe { core::arch::asm!("inc qword ptr gs:[40]", options(nostack)) };
}

/// Counts one lock less (`dec qword ptr gs:[40]`).
#[inline(always)]
pub fn dec_locks_held() {
    // SAFETY: as in `set_locks_held`.
    unsafe { core::arch::asm!("dec qword ptr gs:[40]", options(nostack)) };
}

/// Clears the lock levels not in `mask` (one instruction: `and gs:[40], mask`).
#[inline(always)]
pub fn clear_locks_held(mask: u64) {
    // SAFETY: as in `set_locks_held`.
    unsafe { core::arch::asm!("and gs:[40], {}", in(reg) mask, options(nostack)) };
}

const _: () = assert!(core::mem::offset_of!(CpuHeader, index) == 8);
const _: () = assert!(core::mem::offset_of!(CpuHeader, kernel_stack_top) == 16);
const _: () = assert!(core::mem::offset_of!(CpuHeader, user_rsp) == 24);
const _: () = assert!(core::mem::offset_of!(CpuHeader, locks_held) == 40);
const _: () = assert!(core::mem::offset_of!(CpuHeader, kernel_block) == 48);
const _: () = assert!(core::mem::offset_of!(CpuHeader, exits) == 56);
const _: () = assert!(core::mem::offset_of!(CpuHeader, fpu_stamp) == 64);
const _: () = assert!(core::mem::offset_of!(CpuHeader, fpu_off) == 72);

/// Whether this CPU runs with its FPU/SIMD registers off (gs:72, see `fpu.rs`): one load.
#[inline(always)]
pub fn fpu_off() -> bool {
    let v: u64;
    // SAFETY: a plain load of this CPU's header field (gs:72).
    unsafe { core::arch::asm!("mov {}, gs:[72]", out(reg) v, options(nostack, readonly, preserves_flags)) };
    v != 0
}

/// Records whether this CPU's FPU/SIMD registers are off (gs:72); only `fpu.rs` calls it, next
/// to the `CR0.TS` change it records.
#[inline(always)]
pub(crate) fn set_fpu_off(off: bool) {
    // SAFETY: only this CPU writes its header field, with interrupts off in the kernel.
    unsafe { core::arch::asm!("mov qword ptr gs:[72], {}", in(reg) off as u64, options(nostack, preserves_flags)) };
}

/// What a CPU adds to its FPU stamp at each change. CPU `i`'s stamps are `2i + 1 + k * STEP`
/// (`k >= 1`, modulo 2^64): odd, so never 0 (the stamp of an area never saved) even after the
/// counter wraps, and distinct modulo `STEP` for distinct CPUs (`i` < 256), so no two CPUs
/// ever make the same stamp. One CPU repeats a stamp after 2^55 changes; a switch that loads
/// makes two (a save and a load): 114 years at ten million such switches a second.
pub const FPU_STAMP_STEP: u64 = 2 * crate::ioport::MAX_CPUS as u64;
const _: () = assert!(FPU_STAMP_STEP.is_power_of_two() && FPU_STAMP_STEP <= 1 << 9);

/// This CPU's FPU stamp (gs:64): one load.
#[inline(always)]
pub fn fpu_stamp() -> u64 {
    let v: u64;
    // SAFETY: a plain load of this CPU's header field (gs:64).
    unsafe { core::arch::asm!("mov {}, gs:[64]", out(reg) v, options(nostack, readonly, preserves_flags)) };
    v
}

/// Gives this CPU's FPU stamp a value never used before (one add).
#[inline(always)]
pub fn bump_fpu_stamp() {
    // SAFETY: only this CPU writes its header field, with interrupts off in the kernel.
    unsafe { core::arch::asm!("add qword ptr gs:[64], {step}", step = const FPU_STAMP_STEP, options(nostack)) };
}

/// Gives this CPU's FPU stamp a value never used before and returns it (one add, one load).
#[inline(always)]
pub fn next_fpu_stamp() -> u64 {
    let v: u64;
    // SAFETY: only this CPU writes its header field, with interrupts off in the kernel.
    unsafe {
        core::arch::asm!("add qword ptr gs:[64], {step}", "mov {v}, gs:[64]", step = const FPU_STAMP_STEP, v = out(reg) v, options(nostack))
    };
    v
}

/// Records the address of this CPU's kernel block (`gs:48`), once (a second call panics).
///
/// # Safety
/// `addr` is the address of this CPU's own kernel block, which lives at that address for the
/// rest of the kernel's life: the kernel turns the word back into a reference to this CPU's
/// scheduler without further checks (`sched::this`).
pub unsafe fn set_kernel_block(addr: u64) {
    let b = &current().kernel_block;
    assert!(b.load(Ordering::Relaxed) == 0, "the kernel block of CPU {} is set already", cpu_index());
    b.store(addr, Ordering::Relaxed);
}

/// The address recorded by [`set_kernel_block`] on this CPU (0 if none): one `gs:` load.
#[inline(always)]
pub fn kernel_block() -> u64 {
    let v: u64;
    // SAFETY: a plain load of this CPU's header field (gs:48).
    unsafe { core::arch::asm!("mov {}, gs:[48]", out(reg) v, options(nostack, readonly, preserves_flags)) };
    v
}
const _: () = assert!(core::mem::offset_of!(CpuHeader, regs_end) == 32);

/// `gs:32`: the end of the running thread's register block ([`set_regs_end`]).
#[inline(always)]
pub fn regs_end() -> u64 {
    let v: u64;
    // SAFETY: a plain load of this CPU's header field (gs:32).
    unsafe { core::arch::asm!("mov {}, gs:[32]", out(reg) v, options(nostack, readonly, preserves_flags)) };
    v
}

/// Sets `gs:32`: the end of the running thread's register block (its resume word follows it).
#[inline(always)]
pub fn set_regs_end(regs_end: u64) {
    // SAFETY: gs:32 is a field of this CPU's live header; only this CPU writes it.
    unsafe { core::arch::asm!("mov gs:[32], {}", in(reg) regs_end, options(nostack, preserves_flags)) };
}

/// A value that only one CPU ever touches, in the kernel with interrupts off (a scheduler's
/// current-thread slot): no lock, no locked instruction. The API moves values in and out and
/// lends only a shared view to a closure that must not change the value (`inspect`), so no two
/// accesses can overlap even on the owning CPU; a checked call (`replace`, `take`, `inspect`)
/// from another CPU panics (a kernel bug), and the `unsafe` `replace_owned` and `inspect_owned`
/// leave that check to their caller (the kernel's `sched::Here`, which only the owner holds).
/// The consistency check reads it through [`CpuOwned::peek`] while the owner is stopped.
pub struct CpuOwned<T> {
    owner: u32,
    cell: core::cell::UnsafeCell<T>,
}

// SAFETY: only the owning CPU reaches the value (checked at every access of `replace`, `take`
// and `inspect`; `replace_owned` and `inspect_owned` leave it to their callers, whose safety
// condition is exactly that), one access at a time
// (the API lends no reference, and the owner runs the kernel with interrupts off); `peek` is
// `unsafe` and documents its own condition. `T: Send` because the value is made on one CPU and
// may be dropped on another.
unsafe impl<T: Send> Sync for CpuOwned<T> {}

impl<T> CpuOwned<T> {
    /// A value owned by CPU `owner`.
    pub const fn new(owner: u32, v: T) -> Self {
        CpuOwned { owner, cell: core::cell::UnsafeCell::new(v) }
    }

    #[inline(always)]
    fn check(&self) {
        assert!(cpu_index() == self.owner, "a CPU-owned value used by another CPU");
    }

    /// Puts `v` in and returns what was there.
    #[inline(always)]
    pub fn replace(&self, v: T) -> T {
        self.check();
        // SAFETY: the owner, one access at a time (see the `Sync` impl); the reference lives
        // for this statement only.
        unsafe { core::mem::replace(&mut *self.cell.get(), v) }
    }

    /// Takes the value out, leaving the default.
    #[inline(always)]
    pub fn take(&self) -> T
    where
        T: Default,
    {
        self.replace(T::default())
    }

    /// Applies `f` to a shared view of the value. `f` may look at the value again (a nested
    /// `inspect` or `peek`) but must not change it (`replace`/`take` on this value inside `f`
    /// would alias the view): the kernel passes comparisons, clones of reference-counted
    /// pointers, and system calls that never switch threads.
    #[inline(always)]
    pub fn inspect<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        self.check();
        // SAFETY: the owner; nothing can change the value while `f` looks at it, since every
        // mutation goes through `replace` on this CPU, which `f` does not call.
        f(unsafe { &*self.cell.get() })
    }

    /// [`CpuOwned::replace`] without the check of the CPU.
    ///
    /// # Safety
    /// The caller runs on the owning CPU (a type only that CPU can hold proves it).
    #[inline(always)]
    pub unsafe fn replace_owned(&self, v: T) -> T {
        // SAFETY: the owner, per the caller; one access at a time as in `replace`.
        unsafe { core::mem::replace(&mut *self.cell.get(), v) }
    }

    /// Puts `v` in without reading what was there: the caller knows the slot holds nothing
    /// that needs dropping (a value there would be leaked, never dropped twice).
    ///
    /// # Safety
    /// As for [`CpuOwned::replace_owned`].
    #[inline(always)]
    pub unsafe fn put_owned(&self, v: T) {
        // SAFETY: the owner, per the caller; one access at a time as in `replace`. The old
        // value is overwritten without being read (at worst a leak, which is safe).
        unsafe { core::ptr::write(self.cell.get(), v) }
    }

    /// [`CpuOwned::inspect`] without the check of the CPU.
    ///
    /// # Safety
    /// As for [`CpuOwned::replace_owned`].
    #[inline(always)]
    pub unsafe fn inspect_owned<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        // SAFETY: the owner, per the caller; as in `inspect`.
        f(unsafe { &*self.cell.get() })
    }

    /// The value, from any CPU.
    ///
    /// # Safety
    /// The owning CPU must be stopped outside any access to it (the consistency check's freeze)
    /// for as long as the reference lives.
    pub unsafe fn peek(&self) -> &T {
        // SAFETY: per the caller's guarantee nobody writes it meanwhile.
        unsafe { &*self.cell.get() }
    }
}

/// A value that only one CPU ever touches, in the kernel with interrupts off, and that the
/// owner changes in place (a scheduler's run queue, too large to move in and out like a
/// [`CpuOwned`]): no lock, no locked instruction. [`CpuCell::with`] lends it mutably for the
/// length of a closure; a second loan while one is out (the closure reaching the same value
/// again) or a call from another CPU panics (a kernel bug), so no two references ever alias.
/// The consistency check reads it through [`CpuCell::peek`] while the owner is stopped.
pub struct CpuCell<T> {
    owner: u32,
    lent: core::cell::Cell<bool>,
    cell: core::cell::UnsafeCell<T>,
}

// SAFETY: only the owning CPU reaches the value (checked at every access), through one loan at
// a time (checked: `lent`, which only the owner reads and writes); `peek` is `unsafe` and
// documents its own condition. `T: Send` because the value is made on one CPU and may be
// dropped on another.
unsafe impl<T: Send> Sync for CpuCell<T> {}

impl<T> CpuCell<T> {
    /// A value owned by CPU `owner`.
    pub const fn new(owner: u32, v: T) -> Self {
        CpuCell { owner, lent: core::cell::Cell::new(false), cell: core::cell::UnsafeCell::new(v) }
    }

    /// Runs `f` on the value (the owning CPU only; `f` must not reach this value again).
    #[inline(always)]
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        assert!(cpu_index() == self.owner && !self.lent.get(), "a CPU-owned value used by another CPU or lent twice");
        self.lent.set(true);
        // SAFETY: the owner, and no other loan is out (checked above; `lent` stays set until
        // `f` is done, so a nested call panics instead of aliasing); interrupts are off in the
        // kernel, so nothing else runs on this CPU meanwhile.
        let r = f(unsafe { &mut *self.cell.get() });
        self.lent.set(false);
        r
    }

    /// The value, from any CPU.
    ///
    /// # Safety
    /// The owning CPU must be stopped outside any loan of it (the consistency check's freeze)
    /// for as long as the reference lives.
    pub unsafe fn peek(&self) -> &T {
        // SAFETY: per the caller's guarantee nobody writes it meanwhile.
        unsafe { &*self.cell.get() }
    }
}
