//! Per-thread FPU and SIMD state: x87, MMX, SSE and AVX registers.
//!
//! Every CPU is set up by [`init_this_cpu`] from its own CPUID, whatever firmware left in its
//! control registers: `CR0.MP` and `CR0.NE` set, `CR0.EM` and `CR0.TS` clear, `CR4.OSFXSR |
//! OSXMMEXCPT`, and where the CPU has `XSAVE`, `CR4.OSXSAVE` with `XCR0 = x87 | SSE`, plus AVX
//! when the CPU has it. Other components the CPU may offer (MPX, AVX-512, PKRU, AMX...) are left
//! off: their instructions raise `#UD` in user mode, and their state needs no saving. Without
//! `XSAVE`, `FXSAVE`/`FXRSTOR` (512 bytes, x87 and SSE) are used.
//!
//! The size of a save area comes from CPUID leaf 0xD (EBX, once XCR0 is set; at least what the
//! standard layout of the enabled components takes), checked against [`MAX_AREA`]; every CPU
//! must agree with the bootstrap CPU on the mechanism, the components and the size (a machine
//! whose CPUs differ stops at boot). On AMD CPUs that restore the x87 error pointers only with
//! an exception pending, they are set to the kernel's own values before each load, so that no
//! thread reads the last one's ([`load_image`]).
//!
//! A thread's registers live in its [`FpuState`]: a 64-byte aligned area, created holding the
//! clean default state (`FCW` 0x37f, `MXCSR` 0x1f80, every register zero). A thread that has
//! used these registers (see below) has them saved when it leaves a CPU and restored when it is
//! switched in (eager switching: [`FpuState::leave`], [`FpuState::enter`]).
//!
//! **First use.** A thread that has never run an FPU or SIMD instruction (every program built for
//! a soft-float target, as rl4's own are) has nothing to save or load. It runs with `CR0.TS` set
//! over registers that hold the default state and nothing else (never another thread's values:
//! there is nothing for a speculative read to leak, unlike lazy switching). Its first such
//! instruction raises `#NM`; [`FpuState::first_use`] then clears `TS` (the registers already
//! hold the thread's state, the default) and the thread is switched eagerly from then on. Each
//! CPU records in its per-CPU header (`gs:72`, `percpu::fpu_off`) whether `TS` is set; a switch
//! changes `TS` only between a thread that uses the registers and one that does not, and before
//! a thread that does not runs where one that did ran, the registers are reset to the default.
extern crate alloc;

use alloc::vec::Vec;
use core::arch::x86_64::{__cpuid, __cpuid_count};
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};
use x86_64::registers::xcontrol::{XCr0, XCr0Flags};

/// One 64-byte block of a save area (`XSAVE` and `XRSTOR` need 64-byte alignment).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Block([u8; 64]);

/// The largest save area rl4 accepts from CPUID (x87 + SSE + AVX take 832 bytes).
pub const MAX_AREA: usize = 4096;
/// The `FXSAVE` image (also the legacy region of an `XSAVE` area).
const LEGACY: usize = 512;
/// Offsets in the legacy region.
const FCW: usize = 0;
const MXCSR: usize = 24;
/// The x87 control word and MXCSR of a new thread (all exceptions masked, round to nearest).
pub const DEFAULT_FCW: u16 = 0x037f;
pub const DEFAULT_MXCSR: u32 = 0x1f80;

/// A save area as large as any rl4 accepts, holding the default state: what [`FpuState::new`]
/// copies, and what a CPU loads before it runs a thread that has not used these registers
/// where one that has ran (an `XSAVE` header of zero: every component in its initial state;
/// `FTW` 0, every x87 register empty; the two control registers' defaults).
#[repr(C, align(64))]
struct Image([Block; MAX_AREA / 64]);
static DEFAULT: Image = {
    let mut b = [Block([0; 64]); MAX_AREA / 64];
    let fcw = DEFAULT_FCW.to_le_bytes();
    let mxcsr = DEFAULT_MXCSR.to_le_bytes();
    b[0].0[FCW] = fcw[0];
    b[0].0[FCW + 1] = fcw[1];
    let mut i = 0;
    while i < 4 {
        b[0].0[MXCSR + i] = mxcsr[i];
        i += 1;
    }
    Image(b)
};

/// How the registers are saved and restored on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mechanism {
    /// `FXSAVE64` / `FXRSTOR64`: x87, MMX and SSE.
    Fxsave = 1,
    /// `XSAVE64` / `XRSTOR64`.
    Xsave = 2,
    /// `XSAVEOPT64` / `XRSTOR64` (skips components the thread did not change since its restore).
    Xsaveopt = 3,
}

/// What [`init_this_cpu`] set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub mechanism: Mechanism,
    /// The state components saved (XCR0's bits: 1 x87, 2 SSE, 4 AVX; 0 with `FXSAVE`).
    pub components: u64,
    /// Bytes of a save area.
    pub size: u32,
    /// The x87 error pointers (last instruction and operand, opcode) are set to the kernel's
    /// own values before each load (AMD CPUs without `XSaveErPtr`: see [`load_image`]).
    pub clear_error_pointers: bool,
    /// The CPU reports XSAVE, but QEMU's TCG could not turn it on (see [`init_this_cpu`]):
    /// FXSAVE instead.
    pub tcg_quirk: bool,
}

/// The bootstrap CPU's configuration, which every CPU must match (0: not set up yet).
static MECHANISM: AtomicU8 = AtomicU8::new(0);
static SIZE: AtomicU32 = AtomicU32::new(0);
static XCR0_BITS: AtomicU32 = AtomicU32::new(0);
static CLEAR_ERROR_POINTERS: AtomicBool = AtomicBool::new(false);
static TCG_QUIRK: AtomicBool = AtomicBool::new(false);

/// Sets up this CPU's FPU, SSE and (where present) XSAVE and AVX from CPUID, and returns what it
/// set up. The first call (the bootstrap CPU, before any thread exists) fixes the configuration;
/// a later call whose CPU would differ (an application processor of a machine whose CPUs'
/// CPUID disagree) returns what it found instead, as an error, and its CPU must not run
/// threads: their save areas are sized for the first (before the thirty-fifth session an
/// assertion that stopped the machine).
pub fn init_this_cpu() -> Result<Config, Config> {
    let l1 = __cpuid(1);
    let has_fxsr = l1.edx & (1 << 24) != 0;
    // XSAVE needs leaf 0xD to size its area: a CPU whose highest basic leaf is below it (Intel's
    // "Limit CPUID Maxval", which firmware may leave on) answers leaf 0xD with another leaf's
    // values; it is run with FXSAVE, and AVX stays off.
    let cpu_xsave = l1.ecx & (1 << 26) != 0 && __cpuid(0).eax >= 0xd;
    // QEMU's TCG takes `CR4.OSXSAVE` for a reserved bit when CPUID leaf 0xD sub-leaf 1 lists
    // none of XSAVEOPT, XSAVEC, XGETBV1 and XSAVES (its models of AMD's family 15h, Opteron_G4
    // and Opteron_G5, have none), and rather than raise #GP it runs the `mov cr4` again for
    // ever: the boot hung there until the forty-second session. Under TCG such a CPU model is
    // run with FXSAVE (and AVX stays off); hardware and other hypervisors are not affected.
    let tcg_quirk = cpu_xsave && crate::cpu::is_tcg() && __cpuid_count(0xd, 1).eax & 0xf == 0;
    let has_xsave = cpu_xsave && !tcg_quirk;
    let has_avx = l1.ecx & (1 << 28) != 0;
    assert!(has_fxsr, "this CPU has no FXSAVE (every x86_64 CPU should)");
    // SAFETY: MP|NE and clearing EM|TS only change how x87/SSE instructions and their
    // exceptions behave (native #MF, no #NM); the kernel itself runs no such instruction.
    unsafe {
        Cr0::update(|c| {
            c.insert(Cr0Flags::MONITOR_COPROCESSOR | Cr0Flags::NUMERIC_ERROR);
            c.remove(Cr0Flags::EMULATE_COPROCESSOR | Cr0Flags::TASK_SWITCHED);
        })
    };
    // SAFETY: OSFXSR/OSXMMEXCPT enable SSE and its #XM exception (vector 19, which user mode
    // gets as a fault); OSXSAVE only where CPUID reports XSAVE.
    unsafe {
        Cr4::update(|c| {
            c.insert(Cr4Flags::OSFXSR | Cr4Flags::OSXMMEXCPT_ENABLE);
            c.set(Cr4Flags::OSXSAVE, has_xsave);
        })
    };
    let clear_error_pointers = leaks_error_pointers();
    let config = if has_xsave {
        let supported = __cpuid_count(0xd, 0);
        let mut want = XCr0Flags::X87 | XCr0Flags::SSE;
        if has_avx && supported.eax & (1 << 2) != 0 {
            want |= XCr0Flags::AVX;
        }
        // SAFETY: CR4.OSXSAVE is set; x87 and SSE are always valid, AVX only with SSE and only
        // when CPUID leaf 0xD lists it; every other bit is written as zero (`write_raw`: no
        // read of the old value is needed).
        unsafe { XCr0::write_raw(want.bits()) };
        // EBX of leaf 0xD now gives the size for the components just enabled; the standard
        // layout `XSAVE` writes in needs at least the legacy area, the 64-byte header and each
        // enabled component at its own offset (sub-leaf i: size in EAX, offset in EBX), which
        // a hypervisor's or a capped CPUID may contradict: the larger wins (a smaller area
        // would be written past its end).
        let mut size = __cpuid_count(0xd, 0).ebx.max(LEGACY as u32 + 64);
        if want.contains(XCr0Flags::AVX) {
            let avx = __cpuid_count(0xd, 2);
            size = size.max(avx.ebx.saturating_add(avx.eax));
        }
        let opt = __cpuid_count(0xd, 1).eax & 1 != 0;
        Config {
            mechanism: if opt { Mechanism::Xsaveopt } else { Mechanism::Xsave },
            components: want.bits(),
            size,
            clear_error_pointers,
            tcg_quirk,
        }
    } else {
        Config { mechanism: Mechanism::Fxsave, components: 0, size: LEGACY as u32, clear_error_pointers, tcg_quirk }
    };
    // A later CPU is compared with the first, whose area is in bounds.
    if MECHANISM.load(Ordering::Acquire) != 0 {
        return if config_of_bsp() == config { Ok(config) } else { Err(config) };
    }
    assert!(
        (LEGACY as u32..=MAX_AREA as u32).contains(&config.size),
        "CPUID leaf 0xD gives an FPU save area of {} bytes (rl4 accepts {LEGACY}..={MAX_AREA})",
        config.size
    );
    SIZE.store(config.size, Ordering::Release);
    XCR0_BITS.store(config.components as u32, Ordering::Release);
    CLEAR_ERROR_POINTERS.store(config.clear_error_pointers, Ordering::Release);
    TCG_QUIRK.store(config.tcg_quirk, Ordering::Release);
    MECHANISM.store(config.mechanism as u8, Ordering::Release);
    Ok(config)
}

/// The configuration every CPU shares (after the bootstrap CPU's [`init_this_cpu`]).
pub fn config_of_bsp() -> Config {
    let mechanism = match MECHANISM.load(Ordering::Acquire) {
        1 => Mechanism::Fxsave,
        2 => Mechanism::Xsave,
        3 => Mechanism::Xsaveopt,
        _ => panic!("FPU not set up yet"),
    };
    Config {
        mechanism,
        components: XCR0_BITS.load(Ordering::Acquire) as u64,
        size: SIZE.load(Ordering::Acquire),
        clear_error_pointers: CLEAR_ERROR_POINTERS.load(Ordering::Acquire),
        tcg_quirk: TCG_QUIRK.load(Ordering::Acquire),
    }
}

/// Whether this CPU keeps the x87 error pointers (FIP, FDP, FOP) of the thread that ran before
/// across a restore: AMD CPUs before Zen 2 save and load them with `FXSAVE`/`XSAVE` only while
/// an x87 exception is pending (FSW.ES), so that the next thread could read the last one's
/// instruction and operand addresses with `fnstenv` or `fxsave` (CVE-2006-1056; Linux's
/// `X86_BUG_FXSAVE_LEAK`). CPUID 0x8000_0008 EBX bit 2 (`XSaveErPtr`) says a CPU always does.
fn leaks_error_pointers() -> bool {
    crate::cpu::is_amd() && crate::cpu::cpuid(0x8000_0008).is_none_or(|(_, ebx, ..)| ebx & 1 << 2 == 0)
}

/// Bytes of one thread's save area (what a thread's budget is charged for it).
pub fn area_bytes() -> u64 {
    SIZE.load(Ordering::Relaxed) as u64
}

/// What [`FpuState::enter`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entered {
    /// The thread's registers were loaded from its area.
    Loaded,
    /// The thread uses the registers and this CPU still held them: nothing loaded.
    Kept,
    /// The thread has not used the registers: `CR0.TS` is set over the default state.
    Unused,
}

/// A thread's FPU/SIMD registers while it does not run.
///
/// Access protocol (what makes the `Sync` below sound), the same as `entry::RegsCell`'s: the area
/// is written when it is made (before the thread is published), and afterwards only by
/// [`FpuState::save`] on the CPU that runs the thread, as it leaves that CPU, and read only by
/// [`FpuState::restore`] on the CPU that switches it in, or by [`FpuState::load`] on the CPU
/// that runs it (the kernel's FPU floor measurement, between a save and the thread's return).
/// Neither runs for a thread that has not used the registers (its area keeps the default),
/// except between [`FpuState::claim`] and [`FpuState::unclaim`], on the CPU that runs it. The kernel never runs one thread on two
/// CPUs, and a thread moves between CPUs only through its lock and a CPU's queue, which order the
/// save before the next restore.
pub struct FpuState {
    area: core::cell::UnsafeCell<Vec<Block>>,
    /// The stamp of the CPU that last saved into the area, as that save left it (0: never
    /// saved). Equal to a CPU's current stamp (`percpu::fpu_stamp`) only while that CPU's
    /// registers still hold what the area holds: [`FpuState::restore`] then loads nothing.
    stamp: AtomicU64,
    /// Whether the thread has used these registers (set by [`FpuState::first_use`] on the CPU
    /// that runs it, or for a while by [`FpuState::claim`], undone by [`FpuState::unclaim`];
    /// read where it is switched, ordered like the area).
    used: AtomicBool,
}

// SAFETY: see the access protocol above.
unsafe impl Sync for FpuState {}

impl FpuState {
    /// A save area holding the default state, or `None` if the kernel heap has no room.
    pub fn new() -> Option<FpuState> {
        let size = SIZE.load(Ordering::Relaxed) as usize;
        assert!(size >= LEGACY, "FpuState::new before fpu::init_this_cpu");
        let blocks = size.div_ceil(64);
        let mut v: Vec<Block> = Vec::new();
        v.try_reserve_exact(blocks).ok()?;
        v.extend_from_slice(&DEFAULT.0[..blocks]);
        Some(FpuState { area: core::cell::UnsafeCell::new(v), stamp: AtomicU64::new(0), used: AtomicBool::new(false) })
    }

    /// Whether the thread has used its FPU/SIMD registers (see the module's "First use").
    #[inline(always)]
    pub fn used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    /// The running thread leaves this CPU: its registers go into the area if it uses them.
    #[inline(always)]
    pub fn leave(&self) {
        if self.used() {
            self.save();
        }
    }

    /// The thread becomes this CPU's running thread: its registers are loaded if it uses them
    /// (unless this CPU still holds them, see [`FpuState::restore`]), with `CR0.TS` clear;
    /// otherwise `CR0.TS` is set, over registers reset to the default if a thread that used them
    /// ran here since they last were. Says which of the three it was.
    #[inline(always)]
    pub fn enter(&self) -> Entered {
        if self.used() {
            if crate::percpu::fpu_off() {
                turn_on();
            }
            if self.restore() { Entered::Kept } else { Entered::Loaded }
        } else {
            if !crate::percpu::fpu_off() {
                turn_off();
            }
            Entered::Unused
        }
    }

    /// A direct switch from the running thread (its state: `self`) to the thread whose state
    /// is `to`: [`FpuState::leave`] then `to`'s [`FpuState::enter`], with one test when neither
    /// has used the registers. Then there is nothing to do: while a thread that has not used
    /// them runs, `CR0.TS` is set over the default state (`fpu_off`: every way a thread becomes
    /// current goes through `enter`, here or in the scheduler's switch; `TS` is cleared only by
    /// `enter` for a thread that has used them and by `first_use`, which marks it so; `unclaim`
    /// changes the flag and `TS` together), and the next one keeps it so. `check`: a checking
    /// kernel's (the kernel's `lockcheck` build, which `scripts/test`'s `*-lockcheck` suites run)
    /// assertion that `TS` is set indeed when it skips (a load and a test more).
    #[inline(always)]
    pub fn switch_to(&self, to: &FpuState, check: bool) -> Entered {
        if !(self.used() | to.used()) {
            assert!(!check || crate::percpu::fpu_off(), "fpu: a thread that never used the registers ran with CR0.TS clear");
            return Entered::Unused;
        }
        self.leave();
        to.enter()
    }

    /// `#NM` in user mode while this thread runs: if it had not used its registers, it does
    /// now (the registers hold the default state, which is its state: they stay) and `true`;
    /// `false` if the trap has another cause (the caller treats it as a fault).
    pub fn first_use(&self) -> bool {
        if self.used() || !crate::percpu::fpu_off() {
            return false;
        }
        self.used.store(true, Ordering::Relaxed);
        turn_on();
        true
    }

    /// Makes the running thread one that uses its registers for a while, as its first FPU
    /// instruction would (for the kernel's own measurements); `true` if it did not before, and
    /// then [`FpuState::unclaim`] must follow before the thread returns to user mode.
    pub fn claim(&self) -> bool {
        self.first_use()
    }

    /// Undoes [`FpuState::claim`] (the thread ran no FPU instruction of its own meanwhile: its
    /// state is the default, which the registers are reset to).
    pub fn unclaim(&self) {
        self.used.store(false, Ordering::Relaxed);
        turn_off();
    }

    /// Saves this CPU's registers into the area: call it on the CPU that runs the thread, as the
    /// thread leaves it (see the access protocol).
    #[inline(always)]
    fn save(&self) {
        // SAFETY: per the access protocol nobody else touches the area now.
        let area = unsafe { &mut *self.area.get() };
        let p = area.as_mut_ptr() as *mut u8;
        debug_assert!(area.len() * 64 >= SIZE.load(Ordering::Relaxed) as usize);
        // XSAVEOPT, the common case, in line; the others out of line.
        if MECHANISM.load(Ordering::Relaxed) == Mechanism::Xsaveopt as u8 {
            // SAFETY (both): `p` is 64-byte aligned (`Block`) and the area holds at least the
            // size CPUID gave for the components XCR0 enables (EDX:EAX = all of them), or 512
            // bytes for FXSAVE. The instruction writes only there.
            unsafe {
                core::arch::asm!("xsaveopt64 [{}]", in(reg) p, in("eax") u32::MAX, in("edx") u32::MAX, options(nostack, preserves_flags))
            }
        } else {
            // SAFETY: as above.
            unsafe { save_other(p) }
        }
        // The area and this CPU's registers agree now, under a stamp no CPU used before.
        self.stamp.store(crate::percpu::next_fpu_stamp(), Ordering::Relaxed);
    }

    /// Loads the area into this CPU's registers: call it on the CPU that switches the thread in.
    /// Loads nothing if they hold it already: this CPU made the area's last save and has saved
    /// or loaded no other area since (the stamps agree), as when a thread that blocked resumes
    /// on a CPU that ran nothing else meanwhile (it idled, or waited for a cross-CPU reply).
    /// The kernel itself never touches these registers (soft-float target).
    /// Returns whether it loaded nothing.
    #[inline(always)]
    fn restore(&self) -> bool {
        if self.stamp.load(Ordering::Relaxed) == crate::percpu::fpu_stamp() {
            return true;
        }
        self.load();
        false
    }

    /// Loads the area into this CPU's registers whatever they hold (see [`FpuState::restore`]),
    /// on the CPU that runs the thread, once it uses them ([`FpuState::claim`]: `CR0.TS` clear).
    #[inline]
    pub fn load(&self) {
        // SAFETY: per the access protocol nobody writes the area now.
        let area = unsafe { &*self.area.get() };
        // SAFETY: the area is 64-byte aligned and holds either the default image made by `new`
        // or what `save` wrote on a CPU of the same configuration.
        unsafe { load_image(area.as_ptr() as *const u8) }
    }
}

/// Loads the save-area image at `p` into this CPU's registers (`XRSTOR64`, or `FXRSTOR64`
/// without `XSAVE`), and gives the CPU a new FPU stamp: no area's stamp may match it any more.
/// With `CR0.TS` set it raises `#NM` in the kernel (a kernel bug, which stops the kernel):
/// callers load only while it is clear.
///
/// # Safety
/// `p` is 64-byte aligned, at least the configured size, and a valid image for the mechanism
/// (an `XSAVE` header without reserved bits, `MXCSR` without reserved bits).
#[inline(always)]
unsafe fn load_image(p: *const u8) {
    if CLEAR_ERROR_POINTERS.load(Ordering::Relaxed) {
        clear_error_pointers();
    }
    if MECHANISM.load(Ordering::Relaxed) >= Mechanism::Xsave as u8 {
        // SAFETY: the caller's.
        unsafe {
            core::arch::asm!("xrstor64 [{}]", in(reg) p, in("eax") u32::MAX, in("edx") u32::MAX, options(nostack, preserves_flags, readonly))
        }
    } else {
        // SAFETY: the caller's.
        unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) p, options(nostack, preserves_flags, readonly)) }
    }
    crate::percpu::bump_fpu_stamp();
}

/// Sets the x87 error pointers to the kernel's own values (this instruction, [`ERROR_POINTER_WORD`])
/// before a load that may not set them ([`leaks_error_pointers`]), as Linux does: pending
/// exceptions cleared (no exception can be raised here or left pending), the register stack
/// emptied (the load cannot overflow it), then an integer load from kernel memory, which sets
/// FIP, FDP and FOP. The next thread may see those: kernel addresses, no thread's.
#[cold]
#[inline(never)]
fn clear_error_pointers() {
    // SAFETY: `CR0.TS` is clear at every load (`load_image`'s callers), so none of these raise
    // `#NM`; `fnclex` and `emms` change only x87 state, which the load that follows replaces
    // whole; `fild` reads four bytes of a static.
    unsafe {
        core::arch::asm!(
            "fnclex",
            "emms",
            "fild dword ptr [{}]",
            in(reg) &ERROR_POINTER_WORD,
            out("st(0)") _, out("st(1)") _, out("st(2)") _, out("st(3)") _,
            out("st(4)") _, out("st(5)") _, out("st(6)") _, out("st(7)") _,
            options(nostack, readonly, preserves_flags)
        )
    };
}

/// What [`clear_error_pointers`] loads (any readable word).
static ERROR_POINTER_WORD: u32 = 0;

/// Clears `CR0.TS` on this CPU (its registers hold the default state, now the running thread's).
#[cold]
#[inline(never)]
fn turn_on() {
    // SAFETY: `clts` only lets FPU/SIMD instructions run without `#NM`; the registers hold the
    // default state (see `turn_off`), no other thread's values.
    unsafe { core::arch::asm!("clts", options(nostack, preserves_flags)) };
    crate::percpu::set_fpu_off(false);
}

/// Resets this CPU's registers to the default state (they may hold the thread's that ran last,
/// saved already) and sets `CR0.TS`: the next thread does not use them.
#[cold]
#[inline(never)]
fn turn_off() {
    // SAFETY: `DEFAULT` is 64-byte aligned, `MAX_AREA` bytes (at least any configured size), a
    // valid image for both mechanisms (header zero, MXCSR without reserved bits). (`TS` is
    // clear: `fpu_off` was not set.)
    unsafe { load_image(DEFAULT.0.as_ptr() as *const u8) };
    // SAFETY: setting TS only makes the next FPU/SIMD instruction raise `#NM` (user mode: the
    // thread's first use; the kernel runs none, and saves or loads only with TS clear).
    unsafe { Cr0::update(|c| c.insert(Cr0Flags::TASK_SWITCHED)) };
    crate::percpu::set_fpu_off(true);
}

/// Whether this CPU's FPU/SIMD registers are off in hardware (`CR0.TS` set: the next such
/// instruction raises `#NM`), read from the control register itself, not from the per-CPU record
/// (`percpu::fpu_off`): for the consistency check, which holds the two, and a running thread's
/// first use, against each other.
pub fn off_in_hardware() -> bool {
    Cr0::read().contains(Cr0Flags::TASK_SWITCHED)
}

/// `FpuState::save` with `XSAVE` or `FXSAVE` (CPUs without `XSAVEOPT`).
///
/// # Safety
/// As for the instructions in `FpuState::save`: `p` is a 64-byte aligned save area of at least
/// the configured size that nobody else touches now.
#[cold]
#[inline(never)]
unsafe fn save_other(p: *mut u8) {
    if MECHANISM.load(Ordering::Relaxed) == Mechanism::Xsave as u8 {
        // SAFETY: the caller's.
        unsafe { core::arch::asm!("xsave64 [{}]", in(reg) p, in("eax") u32::MAX, in("edx") u32::MAX, options(nostack, preserves_flags)) }
    } else {
        // SAFETY: the caller's.
        unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) p, options(nostack, preserves_flags)) }
    }
}
