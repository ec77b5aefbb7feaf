//! CPU features, control of the current CPU, and the few legacy chips the kernel touches.
use core::arch::x86_64::{__cpuid, __cpuid_count, _rdtsc};
use x86_64::instructions::port::Port;
use x86_64::registers::model_specific::Msr;

pub use crate::features::{Features, Lack};

impl Features {
    /// This CPU's features, from its CPUID.
    pub fn read() -> Features {
        let l0 = __cpuid(0);
        let l1 = __cpuid(1);
        let mut f = Features { max_leaf: l0.eax, ..Default::default() };
        f.apic = l1.edx & (1 << 9) != 0;
        f.fxsr = l1.edx & (1 << 24) != 0;
        f.sse = l1.edx & (1 << 25) != 0;
        f.sse2 = l1.edx & (1 << 26) != 0;
        f.x2apic = l1.ecx & (1 << 21) != 0;
        f.tsc_deadline = l1.ecx & (1 << 24) != 0;
        f.pcid = l1.ecx & (1 << 17) != 0;
        f.hypervisor = l1.ecx & (1 << 31) != 0;
        f.apic_id = l1.ebx >> 24;
        if f.max_leaf >= 7 {
            let l7 = __cpuid_count(7, 0);
            f.smep = l7.ebx & (1 << 7) != 0;
            f.invpcid = l7.ebx & (1 << 10) != 0;
            f.smap = l7.ebx & (1 << 20) != 0;
        }
        if f.max_leaf >= 0xb {
            let lb = __cpuid_count(0xb, 0);
            if lb.ebx != 0 {
                f.apic_id = lb.edx;
            }
        }
        f.max_ext_leaf = __cpuid(0x8000_0000).eax;
        if f.max_ext_leaf >= 0x8000_0001 {
            let e1 = __cpuid(0x8000_0001);
            f.nx = e1.edx & (1 << 20) != 0;
            f.page1g = e1.edx & (1 << 26) != 0;
        }
        if f.max_ext_leaf >= 0x8000_0007 {
            f.invariant_tsc = __cpuid(0x8000_0007).edx & (1 << 8) != 0;
        }
        f
    }

    /// The CPU's brand string (leaves 0x8000_0002..4), trimmed.
    pub fn brand(buf: &mut [u8; 48]) -> &str {
        if __cpuid(0x8000_0000).eax < 0x8000_0004 {
            return "unknown CPU";
        }
        for (i, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
            let r = __cpuid(leaf);
            for (j, w) in [r.eax, r.ebx, r.ecx, r.edx].iter().enumerate() {
                buf[i * 16 + j * 4..i * 16 + j * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(48);
        core::str::from_utf8(&buf[..end]).unwrap_or("unknown CPU").trim()
    }
}

/// Whether CPUID's vendor string is "AuthenticAMD".
pub fn is_amd() -> bool {
    let vendor = __cpuid(0);
    (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163)
}

/// Whether this CPU is QEMU's TCG emulator: CPUID leaf 0x4000_0000 gives the vendor
/// "TCGTCGTCGTCG" (also with the hypervisor bit hidden, `-cpu ...,-hypervisor`; a CPU without
/// hypervisor leaves answers with another leaf's values, never those). Only to work around
/// what it does wrong.
pub fn is_tcg() -> bool {
    let h = __cpuid(0x4000_0000);
    (h.ebx, h.ecx, h.edx) == (0x5447_4354, 0x4354_4743, 0x4743_5447)
}

/// CPUID leaf `leaf`, sub-leaf 0, if the CPU has it: (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32) -> Option<(u32, u32, u32, u32)> {
    let max = if leaf >= 0x8000_0000 {
        __cpuid(0x8000_0000).eax
    } else if leaf >= 0x4000_0000 {
        __cpuid(0x4000_0000).eax
    } else {
        __cpuid(0).eax
    };
    if leaf > max {
        return None;
    }
    let r = __cpuid_count(leaf, 0);
    Some((r.eax, r.ebx, r.ecx, r.edx))
}

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is unprivileged here (CR4.TSD is never set) and has no side effects.
    unsafe { _rdtsc() }
}

/// Arms the local APIC TSC-deadline timer (IA32_TSC_DEADLINE).
pub fn set_tsc_deadline(tsc: u64) {
    // SAFETY: writing IA32_TSC_DEADLINE only arms or disarms this CPU's local timer; callers
    // use it only when CPUID reports the TSC-deadline feature.
    unsafe { Msr::new(0x6e0).write(tsc) };
}

/// The width of a physical address that names memory on this CPU, at most 52: MAXPHYADDR
/// (CPUID 0x8000_0008 EAX[7:0]; 36 where the leaf is missing, as the manuals say), less the
/// bits memory encryption takes when it is on (AMD SME: CPUID 0x8000_001F EBX[11:6] when
/// `SYSCFG.MemEncryptionModeEn`; Intel TME-MK: the key-ID bits of `IA32_TME_ACTIVATE` when it
/// is locked and enabled), whose addresses name the same RAM under another key, as Linux
/// counts them. A page-table entry with an address bit at or above MAXPHYADDR faults at every
/// access.
pub fn phys_bits() -> u32 {
    let raw = cpuid(0x8000_0008).map_or(36, |(eax, ..)| eax & 0xff);
    let amd = is_amd();
    let mut taken = 0;
    if amd && let Some((eax, ebx, ..)) = cpuid(0x8000_001f) && eax & 1 != 0 {
        // SAFETY: SYSCFG (0xC001_0010) exists on every AMD CPU that reports SME; reading it has
        // no side effects.
        let syscfg = unsafe { Msr::new(0xc001_0010).read() };
        if syscfg & 1 << 23 != 0 {
            taken = (ebx >> 6) & 0x3f;
        }
    }
    if !amd && cpuid(7).is_some() && __cpuid_count(7, 0).ecx & 1 << 13 != 0 {
        // SAFETY: IA32_TME_ACTIVATE (0x982) exists where CPUID.7.0:ECX[13] (TME) is set;
        // reading it has no side effects.
        let tme = unsafe { Msr::new(0x982).read() };
        if tme & 0b11 == 0b11 {
            taken = ((tme >> 32) & 0xf) as u32;
        }
    }
    raw.saturating_sub(taken).clamp(32, 52)
}

/// The physical address of this CPU's local APIC registers (IA32_APIC_BASE, bits 12 and up
/// to the 52-bit limit): where the MADT would say, for a machine without ACPI tables.
pub fn apic_base() -> u64 {
    // SAFETY: reading IA32_APIC_BASE has no side effects; every CPU with a local APIC has it,
    // and the kernel runs only on such CPUs (the bootstrap CPU's CPUID is checked first; an AP
    // is started through its APIC).
    unsafe { Msr::new(0x1b).read() & 0x000f_ffff_ffff_f000 }
}

/// `pause`, for spin loops.
#[inline]
pub fn relax() {
    core::hint::spin_loop();
}

/// Enables interrupts and halts until the next one, atomically (`sti; hlt`), then disables them
/// again: the kernel runs with interrupts off everywhere else.
pub fn idle_wait() {
    x86_64::instructions::interrupts::enable_and_hlt();
    x86_64::instructions::interrupts::disable();
}

/// Opens a one-instruction window in which pending interrupts are taken (`sti; nop; cli`), for
/// a loop that runs with interrupts off and does not halt.
pub fn take_interrupts() {
    // SAFETY: the kernel's interrupt handlers run on this CPU's kernel stack at any point where
    // the idle loop may halt (`idle_wait`); this is such a point, with the same state.
    // Not `nomem`: the handlers that run in the window write memory, so the compiler must not
    // keep a value read before it in a register across it (as `idle_wait`'s `cli` does not).
    unsafe { core::arch::asm!("sti", "nop", "cli", options(nostack)) };
}

/// Stops this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// Reads CR2 (the faulting address of the last page fault).
pub fn cr2() -> u64 {
    x86_64::registers::control::Cr2::read_raw()
}

/// The frame-pointer register of the caller's frame.
#[inline(always)]
pub fn frame_pointer() -> u64 {
    let rbp: u64;
    // SAFETY: reads a register.
    unsafe { core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack, preserves_flags)) };
    rbp
}

/// Remaps the two legacy 8259 PICs to vectors 0x20..0x2f and masks every line, so that a
/// spurious legacy interrupt can never arrive on an exception vector. rl4 uses the APICs.
pub fn disable_legacy_pic() {
    let mut cmd1: Port<u8> = Port::new(0x20);
    let mut dat1: Port<u8> = Port::new(0x21);
    let mut cmd2: Port<u8> = Port::new(0xa0);
    let mut dat2: Port<u8> = Port::new(0xa1);
    // SAFETY: the standard ICW1..ICW4 sequence on the PIC ports, then OCW1 = mask all; nothing
    // else in rl4 uses these ports.
    unsafe {
        cmd1.write(0x11);
        cmd2.write(0x11);
        dat1.write(0x20);
        dat2.write(0x28);
        dat1.write(4);
        dat2.write(2);
        dat1.write(1);
        dat2.write(1);
        dat1.write(0xff);
        dat2.write(0xff);
    }
}

/// Exit codes for QEMU's `isa-debug-exit` device (iobase 0xf4): QEMU exits with `(code << 1) | 1`.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub enum QemuExit {
    /// QEMU exit status 33.
    Success = 0x10,
    /// QEMU exit status 35.
    Failure = 0x11,
}

/// Ends the machine: tells QEMU's `isa-debug-exit` device, then (on machines without it)
/// halts this CPU.
pub fn exit(code: QemuExit) -> ! {
    let mut p: Port<u32> = Port::new(0xf4);
    // SAFETY: port 0xf4 is QEMU's debug-exit device when present; on other machines nothing
    // decodes it (writes to unclaimed ports are dropped).
    unsafe { p.write(code as u32) };
    halt_forever()
}

/// Writes `bytes` to QEMU's debug console (`isa-debugcon`, port 0xe9), one `out` per byte
/// (the kernel's event timeline dump; see the kernel's `timeline.rs`).
pub fn debugcon_write(bytes: &[u8]) {
    let mut p: Port<u8> = Port::new(0xe9);
    for &b in bytes {
        // SAFETY: port 0xe9 is QEMU's debug console when present (`-debugcon`); elsewhere
        // nothing decodes it and the write is dropped.
        unsafe { p.write(b) };
    }
}

/// Switches to the stack whose top is `top` and calls `f(arg)` there; the current stack is
/// abandoned. Used to move the BSP from its boot stack onto a guarded per-CPU stack.
pub fn run_on_stack(top: u64, f: extern "C" fn(u64) -> !, arg: u64) -> ! {
    // SAFETY: `top` is the 16-byte aligned top of a mapped, otherwise unused stack (the caller's
    // contract, checked below for alignment); `f` never returns, so nothing runs on the old stack.
    assert!(top % 16 == 0);
    unsafe {
        core::arch::asm!(
            "mov rsp, {top}",
            "xor ebp, ebp",
            "call {f}",
            "ud2",
            top = in(reg) top,
            f = in(reg) f,
            in("rdi") arg,
            options(noreturn)
        )
    }
}

/// Reads the unmapped kernel address `va` with interrupts off and the user's GS loaded, as an
/// exception in the exit's window between `swapgs` and `sysretq` would find it (`run=fault-user-gs`:
/// the report must swap to the kernel's GS before it reads any per-CPU data). Never returns:
/// the page fault's report panics.
pub fn fault_with_user_gs(va: u64) -> ! {
    // SAFETY: interrupts go off first, so nothing but the fault runs with the user's GS; the
    // page-fault handler's kernel path swaps back (`idt::kernel_exception`) and panics, so the
    // `ud2` after the load is never reached and nothing returns here.
    unsafe { core::arch::asm!("cli", "swapgs", "mov {va}, [{va}]", "ud2", va = in(reg) va, options(noreturn, nostack)) }
}

/// Reads a `u64` at kernel address `va` with a volatile load. Used by the fault self-test to
/// touch an address that is deliberately unmapped (the resulting page fault is reported and
/// stops the machine; nothing is read).
pub fn read_volatile_u64(va: u64) -> u64 {
    // SAFETY: a load from a kernel address: if it is mapped, it is RAM or a device register of
    // the kernel's own; if not, the page-fault handler reports it and panics, so no value from
    // an unmapped page is ever used.
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

