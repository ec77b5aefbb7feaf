//! The local APIC of each CPU, through the `x2apic` crate.
//!
//! x2APIC (MSR) mode where CPUID offers it, xAPIC (MMIO, mapped uncached by the BSP) otherwise;
//! the crate picks the mode from CPUID and every CPU of one machine agrees. One quirk is
//! handled here: in xAPIC mode the destination APIC id sits in bits 24..31 of the ICR's high
//! half, while the crate writes the destination it is given into the high half as is.
//!
//! The timer runs in TSC-deadline mode where CPUID has it (re-armed on every tick) and in
//! periodic mode otherwise (its rate calibrated against the TSC on the BSP).
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use rl4_arch::{cpu, time};
use x2apic::lapic::{LocalApic, LocalApicBuilder, TimerDivide, TimerMode};

pub const VEC_TIMER: u8 = 0x30;
pub const VEC_RESCHED: u8 = 0x31;
pub const VEC_TLB: u8 = 0x32;
pub const VEC_PING: u8 = 0x33;
pub const VEC_PONG: u8 = 0x34;
/// Stop and wait: the kernel's consistency check holds every other CPU still.
pub const VEC_FREEZE: u8 = 0x35;
pub const VEC_ERROR: u8 = 0xfe;
pub const VEC_SPURIOUS: u8 = 0xff;

static X2APIC: AtomicBool = AtomicBool::new(false);
static XAPIC_BASE: AtomicU64 = AtomicU64::new(0);
static DEADLINE: AtomicBool = AtomicBool::new(false);
/// TSC ticks between two timer interrupts (TSC-deadline mode).
static PERIOD_TSC: AtomicU64 = AtomicU64::new(0);
/// Initial count for one period (periodic mode, divide by 16).
static PERIOD_COUNT: AtomicU64 = AtomicU64::new(0);
/// [`Config::unmask_unused_lvts`].
static UNMASK_UNUSED: AtomicBool = AtomicBool::new(false);

/// Machine-wide local APIC set-up, decided once on the BSP.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub x2apic: bool,
    pub tsc_deadline: bool,
    /// Virtual address of the xAPIC registers (0 in x2APIC mode).
    pub xapic_base: u64,
    pub hz: u32,
    /// For a test (`inject=lvt`): every CPU unmasks the LVT entries the kernel does not use
    /// (with the vector 0x62, which nothing sends) right before [`mask_unused_lvts`], as
    /// firmware may leave them.
    pub unmask_unused_lvts: bool,
}

/// Acknowledges the interrupt being handled on this CPU straight through the registers, for a
/// CPU whose `LocalApic` value is not installed yet (`cpus::eoi`): the bootstrap CPU while
/// [`configure`] calibrates the timer with interrupts open. Nothing before `configure` chose
/// the mode (no interrupt can be taken then: the local APIC is not enabled).
pub fn eoi_raw() {
    // SAFETY: an interrupt was delivered, so this CPU's local APIC is enabled in the mode
    // `configure` recorded before it opened interrupts. Writing 0 to EOI ends the highest
    // in-service interrupt, or does nothing.
    unsafe { EOI.write(0) };
}

/// A local APIC register of this CPU, named by its xAPIC offset: in x2APIC mode it is MSR
/// 0x800 + offset / 16, in xAPIC mode the 32-bit word at that offset of the register page the
/// kernel maps uncached at `XAPIC_BASE` (the crate's `set_xapic_base`). For the registers the
/// `x2apic` crate does not reach, or not as the kernel needs.
#[derive(Clone, Copy)]
struct Reg(u64);

const ID: Reg = Reg(0x20);
const VERSION: Reg = Reg(0x30);
const EOI: Reg = Reg(0xb0);
const LVT_CMCI: Reg = Reg(0x2f0);
const LVT_THERMAL: Reg = Reg(0x330);
const LVT_PERF: Reg = Reg(0x340);
const ESR: Reg = Reg(0x280);
const LVT_LINT0: Reg = Reg(0x350);
const LVT_LINT1: Reg = Reg(0x360);
const LVT_ERROR: Reg = Reg(0x370);

impl Reg {
    /// Writes `v` (nothing in xAPIC mode before `configure` recorded the page).
    ///
    /// # Safety
    /// This CPU's local APIC is enabled in the mode `configure` recorded, and the write is one
    /// this module means (these registers are written by no other code).
    unsafe fn write(self, v: u32) {
        if is_x2apic() {
            // SAFETY: the caller's; the MSR is this register's x2APIC alias.
            unsafe { x86_64::registers::model_specific::Msr::new(0x800 + (self.0 >> 4) as u32).write(v as u64) };
        } else {
            let base = XAPIC_BASE.load(Ordering::Relaxed);
            if base != 0 {
                // SAFETY: the caller's; `base` maps the register page, the offset is aligned.
                unsafe { ((base + self.0) as *mut u32).write_volatile(v) };
            }
        }
    }

    /// Reads the register (0 in xAPIC mode before `configure` recorded the page).
    ///
    /// # Safety
    /// As for [`Reg::write`].
    unsafe fn read(self) -> u32 {
        if is_x2apic() {
            // SAFETY: the caller's; the MSR is this register's x2APIC alias.
            unsafe { x86_64::registers::model_specific::Msr::new(0x800 + (self.0 >> 4) as u32).read() as u32 }
        } else {
            let base = XAPIC_BASE.load(Ordering::Relaxed);
            if base == 0 {
                return 0;
            }
            // SAFETY: the caller's; `base` maps the register page, the offset is aligned.
            unsafe { ((base + self.0) as *const u32).read_volatile() }
        }
    }
}

/// Whether `vector` is pending on this CPU: requested and not yet taken (its bit in the
/// interrupt request register). For the consistency check, which asks a CPU stopped with
/// interrupts off whether an interrupt it sent itself still waits.
pub fn pending(vector: u8) -> bool {
    // SAFETY: a read of one of this CPU's interrupt request registers (no side effect), in the
    // mode `configure` recorded.
    let irr = unsafe { Reg(0x200 + 0x10 * (vector as u64 / 32)).read() };
    irr & 1 << (vector % 32) != 0
}

/// This CPU's local APIC ID as its APIC reports it (after [`configure`] on the bootstrap CPU):
/// in xAPIC mode bits 31:24 of the ID register, which firmware may have rewritten (some
/// xAPICs take writes), so that it need not be the initial ID CPUID reports; in x2APIC mode
/// the 32-bit ID, read-only, CPUID.0Bh's.
pub fn own_id() -> u32 {
    // SAFETY: a read of this CPU's ID register, in the mode `configure` recorded.
    let v = unsafe { ID.read() };
    if is_x2apic() { v } else { v >> 24 }
}

/// For a test (`inject=bspid`): writes this CPU's xAPIC ID register, as firmware that moved
/// the ID would have; false in x2APIC mode, where the register is read-only.
pub fn set_own_xapic_id(id: u8) -> bool {
    if is_x2apic() {
        return false;
    }
    // SAFETY: this CPU's ID register in xAPIC mode (recorded by `configure`); nothing else
    // writes it, and the kernel reads it only through `own_id`.
    unsafe { ID.write((id as u32) << 24) };
    true
}

pub fn is_x2apic() -> bool {
    X2APIC.load(Ordering::Relaxed)
}

pub fn uses_tsc_deadline() -> bool {
    DEADLINE.load(Ordering::Relaxed)
}

fn builder(mode: TimerMode, initial: u32) -> LocalApic {
    let mut b = LocalApicBuilder::new();
    b.timer_vector(VEC_TIMER as usize)
        .error_vector(VEC_ERROR as usize)
        .spurious_vector(VEC_SPURIOUS as usize)
        .timer_mode(mode)
        .timer_divide(TimerDivide::Div16)
        .timer_initial(initial);
    let base = XAPIC_BASE.load(Ordering::Relaxed);
    if base != 0 {
        b.set_xapic_base(base);
    }
    match b.build() {
        Ok(l) => l,
        Err(e) => panic!("local APIC: {e}"),
    }
}

/// The local interrupt pins' LVT entries the kernel wants on CPU `index`: LINT0 (a PC's 8259
/// output, which the kernel does not use) masked; LINT1 (a PC's NMI line: a board's IOCHK/SERR
/// or a BMC's diagnostic NMI) delivered as an NMI on the bootstrap CPU only (as the MP
/// specification's virtual-wire wiring has it; one CPU reports it, and the kernel ignores it)
/// and masked on the others. The `x2apic` crate's `enable` writes 0 to both: unmasked, fixed
/// delivery, vector 0 — an "illegal vector" APIC error for every signal, a platform NMI lost.
/// (The MADT's local APIC NMI entries are not read: the PC wiring is assumed.)
pub fn lint_wanted(index: usize) -> (u32, u32) {
    const MASKED: u32 = 1 << 16;
    const NMI: u32 = 0b100 << 8; // delivery mode NMI, edge, unmasked
    (MASKED, if index == 0 { NMI } else { MASKED })
}

/// The LVT bits compared on read-back: vector, delivery mode, polarity, trigger, mask (not the
/// delivery status, bit 12, or remote IRR, bit 14, which the APIC changes).
const LVT_SET_BITS: u32 = 0x1_afff;

/// Sets this CPU's LINT0 and LINT1 entries ([`lint_wanted`]) and reads them back
/// ([`LVT_SET_BITS`]), packed LINT0 | LINT1 << 32.
fn set_lint_pins() -> u64 {
    let (w0, w1) = lint_wanted(rl4_arch::percpu::cpu_index() as usize);
    // SAFETY: this CPU's APIC is enabled (`enable` ran) in the configured mode; LINT0 and LINT1
    // are written by no other code.
    unsafe {
        LVT_LINT0.write(w0);
        LVT_LINT1.write(w1);
        (LVT_LINT0.read() & LVT_SET_BITS) as u64 | ((LVT_LINT1.read() & LVT_SET_BITS) as u64) << 32
    }
}

/// An LVT entry's mask bit.
const LVT_MASKED: u32 = 1 << 16;

/// The LVT entries the kernel does not use, masked: the performance counters' (there when the
/// version register's "max LVT entry" field, the number of entries less one, is at least 4),
/// the thermal sensor's (at least 5) and the corrected machine-check interrupt's (at least 6),
/// as Linux's `clear_local_APIC` counts them. Reset masks them, but firmware (or a kernel before
/// this one) may leave them unmasked with a vector of its own, or as NMIs. An entry the count
/// says is not there is not written (in x2APIC mode its MSR would fault). Returns that field,
/// the entries masked (bit 8 performance, 9 thermal, 10 CMCI) and whether each of them read
/// back masked (bit 16). (Before the thirty-first session they were left as found.)
fn mask_unused_lvts() -> u32 {
    // SAFETY: this CPU's APIC is enabled (`enable` ran) in the configured mode; the version
    // register is read-only, and these three entries are written by no other code.
    unsafe {
        let max = (VERSION.read() >> 16) & 0xff;
        let mut masked = 0;
        let mut ok = true;
        for (bit, reg, least) in [(1u32, LVT_PERF, 4u32), (2, LVT_THERMAL, 5), (4, LVT_CMCI, 6)] {
            if max >= least {
                if UNMASK_UNUSED.load(Ordering::Relaxed) {
                    reg.write(0x62);
                }
                reg.write(LVT_MASKED);
                ok &= reg.read() & LVT_MASKED != 0;
                masked |= bit;
            }
        }
        max | masked << 8 | (ok as u32) << 16
    }
}

/// [`mask_unused_lvts`]'s result in words: "performance/thermal masked (max LVT 5)", or with
/// "NOT MASKED" if one read back unmasked.
pub struct UnusedLvts(pub u32);

impl core::fmt::Display for UnusedLvts {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (max, masked, ok) = (self.0 & 0xff, self.0 >> 8 & 7, self.0 >> 16 & 1 != 0);
        let mut first = true;
        for (bit, name) in [(1, "performance"), (2, "thermal"), (4, "CMCI")] {
            if masked & bit != 0 {
                f.write_str(if first { "" } else { "/" })?;
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("none")?;
        }
        write!(f, " {} (max LVT {max})", if ok { "masked" } else { "NOT MASKED" })
    }
}

/// What the `x2apic` crate's `enable` leaves undone, made right after it on every CPU.
///
/// The crate writes the LVT entries (and unmasks the timer) before it sets the APIC
/// software-enable bit. While that bit is clear every LVT mask bit reads as set and a write
/// that clears one is ignored (Intel SDM vol. 3A, "Local APIC State After It Has Been Software
/// Disabled"; KVM does the same; QEMU's TCG model does not). After INIT every CPU's APIC is
/// software-disabled. So on real machines and under KVM no application processor's timer ever
/// fired, and neither did the bootstrap CPU's when firmware left its APIC disabled (before the
/// twenty-seventh session; a review found it, and a KVM boot showed "cpu 1: timer NOT
/// TICKING"). Here the timer is unmasked again, and the error entry is set up: the crate only
/// writes its vector, leaving it masked from reset, so APIC errors (an illegal vector sent or
/// received, a send or receive that was not accepted) were never reported.
///
/// # Safety
/// `l` is this CPU's local APIC, just enabled; the timer and error vectors have handlers.
unsafe fn after_enable(l: &mut LocalApic) {
    // SAFETY: the caller's; the APIC is software-enabled now, so the unmask holds. A write of 0
    // to the error status clears what was recorded; the error entry gets its vector, fixed
    // delivery, unmasked.
    unsafe {
        l.enable_timer();
        ESR.write(0);
        LVT_ERROR.write(VEC_ERROR as u32);
    }
}

/// This CPU's APIC error status, as the error interrupt found it: the register is written (which
/// latches the errors recorded since, and clears the ones before) and then read, as the manuals
/// ask.
pub fn take_error_status() -> u32 {
    // SAFETY: an error interrupt came, so this CPU's APIC is enabled in the configured mode;
    // writing 0 to the error status is what the manuals ask before the read.
    unsafe {
        ESR.write(0);
        ESR.read()
    }
}

/// Timer interrupts seen by `timer_tick` (all CPUs), for the calibration below.
static FIRED: AtomicU64 = AtomicU64::new(0);

/// Records the machine-wide configuration and, for periodic mode, calibrates the timer on the
/// calling CPU (the BSP) against the TSC. Returns the timer's input rate in Hz (after divide)
/// for periodic mode, or the TSC rate for deadline mode.
///
/// The calibration never reads the timer's current count: it arms a one-shot count, waits
/// until the interrupt arrives and times that with the TSC (the shortest of three tries). (Reading the count through the
/// x2APIC MSR aborts QEMU in icount mode, "Bad icount read".) The timer vector must already
/// have its handler in this CPU's IDT, and that handler must call [`timer_tick`].
pub fn configure(c: Config) -> u64 {
    X2APIC.store(c.x2apic, Ordering::Relaxed);
    XAPIC_BASE.store(c.xapic_base, Ordering::Relaxed);
    UNMASK_UNUSED.store(c.unmask_unused_lvts, Ordering::Relaxed);
    DEADLINE.store(c.tsc_deadline, Ordering::Relaxed);
    let hz = c.hz.max(1) as u64;
    if c.tsc_deadline {
        PERIOD_TSC.store(time::tsc_hz() / hz, Ordering::Relaxed);
        return time::tsc_hz();
    }
    let mut l = builder(TimerMode::OneShot, 0);
    // SAFETY: programs this CPU's own local APIC with the timer stopped (initial count 0).
    unsafe {
        l.enable();
        after_enable(&mut l);
    }
    set_lint_pins();
    fence_before_icr();
    // Firmware may leave the other CPUs in a park loop of its own (OVMF's keeps waking them);
    // emulated, they take host time from this CPU and the interrupts timed below arrive late.
    // INIT puts them all in wait-for-SIPI, where they stay until `init_sipi_sipi` starts them.
    // SAFETY: no other CPU runs kernel code yet; an INIT only resets the others to the state
    // the start-up sequence expects.
    unsafe { l.send_init_ipi_all() };
    wait_idle(&l);
    let tsc_hz = time::tsc_hz();
    // Times one one-shot count of `count` with the TSC, from arming to the interrupt.
    let mut one_shot = |count: u64| {
        let before = FIRED.load(Ordering::Acquire);
        let t0 = cpu::rdtsc();
        // SAFETY: arms this CPU's one-shot timer; its vector has a handler.
        unsafe { l.set_timer_initial(count as u32) };
        let mut timed_out = false;
        // Polled with interrupts let in, never halted: a timer that never fires (one that
        // stops while its CPU halts, as some CPUs' do in deeper C-states, or a broken one) would
        // leave a halted CPU nothing to wake it (no other interrupt source is set up yet), and
        // the 2 s limit below could never be checked.
        while FIRED.load(Ordering::Acquire) == before {
            if cpu::rdtsc() - t0 > 2 * tsc_hz {
                timed_out = true;
                break;
            }
            cpu::take_interrupts();
            cpu::relax();
        }
        let dt = cpu::rdtsc() - t0;
        // SAFETY: stops the timer and acknowledges its interrupt (the handler cannot, as this
        // CPU's APIC handle is not installed yet).
        unsafe {
            l.set_timer_initial(0);
            if !timed_out {
                l.end_of_interrupt();
            }
        }
        if timed_out {
            panic!("local APIC timer calibration: no interrupt within 2 s (count {count})");
        }
        dt
    };
    // The interrupt can only come late (an emulated CPU held back by its host, an SMI), never
    // early: the shortest of three tries of a count is the closest to the truth, and a count
    // is used once even that one took 10 ms.
    let mut rate = 0;
    for shift in [16u32, 20, 24, 28, 31] {
        let count = 1u64 << shift;
        let dt = (0..3).map(|_| one_shot(count)).min().unwrap_or(u64::MAX);
        if dt >= tsc_hz / 100 {
            rate = (count as u128 * tsc_hz as u128 / dt as u128) as u64;
            break;
        }
    }
    // A timer whose every count fired at once (broken, or an emulator's) measured nothing: a
    // periodic count of 1 from it would interrupt every CPU without end (before the
    // forty-third session it was set so; a review found it).
    if rate == 0 {
        panic!("local APIC timer calibration: even 2^31 counts fired within 10 ms: no usable timer rate");
    }
    PERIOD_COUNT.store((rate / hz).clamp(1, u32::MAX as u64), Ordering::Relaxed);
    rate
}

/// Called from the timer interrupt on every CPU: counts it and re-arms a TSC-deadline timer.
pub fn timer_tick() {
    FIRED.fetch_add(1, Ordering::Release);
    if uses_tsc_deadline() {
        cpu::set_tsc_deadline(cpu::rdtsc() + PERIOD_TSC.load(Ordering::Relaxed));
    }
}

/// Brings up the calling CPU's local APIC with the machine-wide configuration and starts its
/// timer; with it, what its LINT0 and LINT1 entries read back as once set ([`set_lint_pins`]),
/// and what [`mask_unused_lvts`] did.
pub fn enable_this_cpu() -> (LocalApic, u64, u32) {
    let deadline = uses_tsc_deadline();
    let mode = if deadline { TimerMode::TscDeadline } else { TimerMode::Periodic };
    let mut l = builder(mode, PERIOD_COUNT.load(Ordering::Relaxed) as u32);
    // SAFETY: programs this CPU's own local APIC (software enable, LVT vectors, timer); the
    // vectors have handlers in this CPU's IDT.
    unsafe {
        l.enable();
        after_enable(&mut l);
    }
    let lint = set_lint_pins();
    let unused = mask_unused_lvts();
    if deadline {
        // The LVT write that chose TSC-deadline mode (a memory-mapped one in xAPIC mode) comes
        // before the first deadline's `wrmsr`, as the manuals ask (SDM vol. 3A, "TSC-Deadline
        // Mode": MFENCE between them).
        core::sync::atomic::fence(Ordering::SeqCst);
        cpu::set_tsc_deadline(cpu::rdtsc() + PERIOD_TSC.load(Ordering::Relaxed));
    }
    (l, lint, unused)
}

fn dest(apic_id: u32) -> u32 {
    if is_x2apic() { apic_id } else { apic_id << 24 }
}

fn wait_idle(l: &LocalApic) {
    if !is_x2apic() {
        // SAFETY: reads the ICR delivery-status bit of this CPU's APIC.
        time::wait_until(100_000, || unsafe { !l.get_ipi_delivery_status() });
    }
}

/// Before an interrupt command: in x2APIC mode the ICR is an MSR whose `wrmsr` is not
/// serialising, so the IPI could reach its target before this CPU's earlier stores (a request,
/// a mailbox entry) are visible there. The SDM (vol. 3A, "x2APIC Register Availability"; Linux's
/// `weak_wrmsr_fence`) asks for `MFENCE; LFENCE` first: the stores are globally visible and every
/// earlier instruction has completed before the `wrmsr` starts. (The IPIs between running CPUs
/// also follow a locked instruction, which orders the stores but is not documented to hold the
/// `wrmsr` back; the AP start's INIT and STARTUP follow plain stores.)
/// A memory-mapped ICR (xAPIC) is uncacheable, ordered after earlier stores already.
#[inline]
fn fence_before_icr() {
    if is_x2apic() {
        // SAFETY: two fences; no memory or register is changed.
        unsafe { core::arch::asm!("mfence", "lfence", options(nostack, preserves_flags)) };
    }
}

/// Sends a fixed IPI with `vector` to the CPU with `apic_id`.
pub fn send_ipi(l: &mut LocalApic, vector: u8, apic_id: u32) {
    fence_before_icr();
    // SAFETY: a fixed-delivery IPI to a vector every CPU's IDT handles.
    unsafe { l.send_ipi(vector, dest(apic_id)) };
    wait_idle(l);
}

/// Sends an NMI to the CPU with APIC ID `apic_id`.
pub fn send_nmi(l: &mut LocalApic, apic_id: u32) {
    fence_before_icr();
    // SAFETY: an NMI to a CPU the kernel runs (the caller's choice); its NMI handler runs on
    // its own IST stack.
    unsafe { l.send_nmi(dest(apic_id)) };
    wait_idle(l);
}

/// INIT, then two STARTUPs (Intel SDM vol. 3A §9.4.4.1, "INIT-SIPI-SIPI"); the second STARTUP
/// is skipped once `started` reports that the AP runs. `page` is the trampoline's physical
/// address (4 KiB aligned, below 1 MiB).
pub fn init_sipi_sipi(l: &mut LocalApic, apic_id: u32, page: u64, started: impl Fn() -> bool) {
    let vector = (page >> 12) as u8;
    fence_before_icr();
    // SAFETY: INIT and STARTUP IPIs to a CPU that is not running (it is in wait-for-SIPI after
    // firmware hand-off, or was never started); the trampoline page holds valid real-mode code.
    unsafe { l.send_init_ipi(dest(apic_id)) };
    wait_idle(l);
    time::delay_us(10_000);
    for _ in 0..2 {
        if started() {
            break;
        }
        fence_before_icr();
        // SAFETY: as above.
        unsafe { l.send_sipi(vector, dest(apic_id)) };
        wait_idle(l);
        time::wait_until(200, &started);
    }
}
