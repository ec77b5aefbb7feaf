//! Per-CPU blocks: one [`Cpu`] per running CPU, reached through `GS` on that CPU and through
//! [`get`] from the others.
//!
//! A `Cpu` starts with the architecture's [`CpuHeader`] (what `GS` points at), then holds the
//! CPU's local APIC handle, its counters and state flags. Other per-CPU data of higher layers
//! lives in arrays indexed by the CPU index. Blocks are created by the BSP
//! before the CPU starts, with everything the CPU's own set-up needs memory for (its stacks,
//! descriptor tables and IDT: [`create`] fails, and the CPU is not started, when memory runs
//! short; [`init_this_cpu`] on the CPU then cannot fail), and live forever.
use alloc::boxed::Box;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use crossbeam_utils::CachePadded;
use rl4_arch::gdt::{CpuTables, IST_DEBUG, IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI};
use rl4_arch::paging::{self, FrameSource, MapError};
use rl4_arch::percpu::{self, CpuHeader};
use x2apic::lapic::LocalApic;
use x86_64::structures::idt::InterruptDescriptorTable;

use crate::MAX_CPUS;
use crate::lapic;

/// Pages of each IST stack (double fault, NMI, machine check, debug).
pub const IST_PAGES: u64 = 4;
/// Pages of each CPU's kernel stack.
pub const STACK_PAGES: u64 = 16;

#[repr(C, align(64))]
pub struct Cpu {
    /// Must stay first: `GS` points here.
    pub header: CpuHeader,
    pub index: u32,
    /// Top of this CPU's kernel stack (guard page below).
    pub stack_top: u64,
    /// Only touched by the CPU itself, with interrupts off.
    lapic: UnsafeCell<Option<LocalApic>>,
    /// Set by the CPU once its descriptor tables, GS and local APIC are up.
    pub online: AtomicBool,
    /// Set by an application processor that stays offline ([`refuse`]): what it lacks, as
    /// `rl4_arch::cpu::Lack`'s code (0: nothing).
    refused: core::sync::atomic::AtomicU8,
    pub ticks: CachePadded<AtomicU64>,
    pub ipis: AtomicU64,
    /// Set by the CPU once its IDT is loaded (its NMI handler can run): from then on
    /// [`stop_others`] stops it.
    idt_ready: AtomicBool,
    /// Its LINT0 and LINT1 entries as they read back once set (LINT0 | LINT1 << 32; 0 before).
    lint: AtomicU64,
    /// What its local APIC's set-up did with the LVT entries the kernel does not use
    /// (`lapic::mask_unused_lvts`; 0 before).
    pub unused_lvts: core::sync::atomic::AtomicU32,
    /// What [`create`] made for [`init_this_cpu`], which takes it (only the CPU itself, once).
    prepared: UnsafeCell<Option<Prepared>>,
}

/// A CPU's descriptor tables (with its IST stacks set) and IDT, made before it starts.
struct Prepared {
    tables: &'static mut CpuTables,
    idt: &'static mut InterruptDescriptorTable,
}

// SAFETY: the only non-thread-safe fields, `lapic` and `prepared`, are accessed solely by the
// CPU the block belongs to (through `this()`, with interrupts off; `prepared` once, by
// `init_this_cpu`, after `create` wrote it before the block was published); everything else is
// atomic or immutable.
unsafe impl Sync for Cpu {}

impl Cpu {
    /// Its local APIC ID (the one IPIs and interrupt routes name): the MADT's for an
    /// application processor; the bootstrap CPU's as its own APIC reports it once up
    /// (`own_apic_id`, which may differ from CPUID's on firmware that moved it).
    pub fn apic_id(&self) -> u32 {
        self.header.apic_id()
    }

    /// Whether its LINT0 and LINT1 entries read back as the kernel set them
    /// ([`lapic::lint_wanted`]) once its local APIC came up.
    pub fn lint_as_set(&self) -> bool {
        let (w0, w1) = lapic::lint_wanted(self.index as usize);
        self.lint.load(Ordering::Relaxed) == w0 as u64 | (w1 as u64) << 32
    }
}

static CPUS: [AtomicPtr<Cpu>; MAX_CPUS] = [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Creates the block for CPU `index` with its kernel stack, IST stacks, descriptor tables and
/// IDT, and registers it. Out of memory (frames or kernel heap): `Err`, and nothing is
/// registered (the stacks mapped and the tables made before the failure stay, unused: at most
/// one CPU's, once, at boot — the caller starts no further CPU).
pub fn create(index: usize, apic_id: u32, frames: &mut impl FrameSource) -> Result<&'static Cpu, MapError> {
    assert!(index < MAX_CPUS && CPUS[index].load(Ordering::Acquire).is_null());
    let stack_top = paging::map_stack(frames, STACK_PAGES)?;
    let tables = Box::leak(Box::try_new(CpuTables::new()).map_err(|_| MapError::OutOfMemory)?);
    tables.set_ist(IST_DOUBLE_FAULT, paging::map_stack(frames, IST_PAGES)?);
    tables.set_ist(IST_NMI, paging::map_stack(frames, IST_PAGES)?);
    tables.set_ist(IST_MACHINE_CHECK, paging::map_stack(frames, IST_PAGES)?);
    tables.set_ist(IST_DEBUG, paging::map_stack(frames, IST_PAGES)?);
    tables.set_kernel_stack(stack_top);
    let idt = Box::leak(Box::try_new(InterruptDescriptorTable::new()).map_err(|_| MapError::OutOfMemory)?);
    let cpu = Box::try_new(Cpu {
        header: CpuHeader::new(index as u32, apic_id),
        index: index as u32,
        stack_top,
        lapic: UnsafeCell::new(None),
        online: AtomicBool::new(false),
        refused: core::sync::atomic::AtomicU8::new(0),
        ticks: CachePadded::new(AtomicU64::new(0)),
        ipis: AtomicU64::new(0),
        idt_ready: AtomicBool::new(false),
        lint: AtomicU64::new(0),
        unused_lvts: core::sync::atomic::AtomicU32::new(0),
        prepared: UnsafeCell::new(Some(Prepared { tables, idt })),
    })
    .map_err(|_| MapError::OutOfMemory)?;
    let cpu = Box::leak(cpu);
    cpu.header.kernel_stack_top.store(stack_top, Ordering::Relaxed);
    CPUS[index].store(cpu, Ordering::Release);
    COUNT.fetch_max(index + 1, Ordering::AcqRel);
    Ok(cpu)
}

/// CPU `index`'s block, if it was created.
pub fn get(index: usize) -> Option<&'static Cpu> {
    let p = CPUS.get(index)?.load(Ordering::Acquire);
    // SAFETY: non-null entries point at leaked (so 'static) blocks made by `create`.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// One more than the highest CPU index created.
pub fn count() -> usize {
    COUNT.load(Ordering::Acquire)
}

/// The calling CPU's block. Panics if `init_this_cpu` has not run here.
pub fn this() -> &'static Cpu {
    let i = percpu::cpu_index() as usize;
    let c = get(i).expect("per-CPU block not created");
    assert!(core::ptr::eq(percpu::current(), &c.header), "GS does not point at this CPU's block yet");
    c
}

/// Runs `f` with the calling CPU's local APIC (`None` before it is enabled here).
pub fn with_lapic<R>(f: impl FnOnce(Option<&mut LocalApic>) -> R) -> R {
    let i = percpu::cpu_index() as usize;
    match get(i).filter(|c| core::ptr::eq(percpu::current(), &c.header)) {
        // SAFETY: the block belongs to the calling CPU, and the kernel runs with interrupts
        // off, so nothing else on this CPU holds a reference into `lapic` (interrupt handlers
        // reach it only from the idle loop, where no reference is held).
        Some(c) => f(unsafe { &mut *c.lapic.get() }.as_mut()),
        None => f(None),
    }
}

/// Makes `cpu` the calling CPU: its GDT and TSS (with IST stacks), IDT and `GS`, all made by
/// [`create`] (before the twenty-fifth session an application processor made them itself and
/// panicked — the whole machine stopped — when memory ran short: a machine with many CPUs and
/// little memory did not boot; a review found it). Called once per CPU, on that CPU.
pub fn init_this_cpu(cpu: &'static Cpu) {
    // `GS` first: an application processor arrives with a `GS` base of 0, and the panic
    // handler reads the CPU's index through `GS` (gs:8).
    percpu::install(&cpu.header);
    // SAFETY: `prepared` is this CPU's (the block's CPU is the caller, once), written by
    // `create` before the block was published.
    let Prepared { tables, idt } = unsafe { (*cpu.prepared.get()).take() }.expect("a CPU's tables are made once by create and taken once");
    let sel = tables.load();
    rl4_arch::ioport::register(cpu.index as usize, sel.iomap);

    rl4_arch::idt::build(idt);
    let idt: &'static InterruptDescriptorTable = idt;
    idt.load();
    // Either a panicking CPU sees this flag and sends this one an NMI, or this one sees the
    // panic's flag here and stops (both sides store, then load, sequentially consistent).
    cpu.idt_ready.store(true, Ordering::SeqCst);
    if rl4_arch::idt::HALT_ON_NMI.load(Ordering::SeqCst) {
        rl4_arch::cpu::halt_forever();
    }
    rl4_arch::entry::init_syscall();
    rl4_arch::entry::check_debug_trap();
}

/// What the application processor `cpu` said it lacks as it stayed offline ([`refuse`]).
pub fn refused(cpu: &Cpu) -> Option<rl4_arch::cpu::Lack> {
    rl4_arch::cpu::Lack::from_code(cpu.refused.load(Ordering::Acquire))
}

/// An application processor that lacks what the bootstrap CPU set up for every CPU (`why`)
/// stays offline: it says so in its block, for the CPU that started it ([`crate::boot::start_ap`]),
/// and halts with interrupts off for good. It has set up its own descriptor tables, `GS` and
/// I/O bitmap only ([`init_this_cpu`]); other CPUs leave it alone, as it never comes `online`
/// and has no scheduler (but a panic's [`stop_others`] sends it the NMI it sends every CPU
/// whose IDT is loaded, which halts it again). Its block and stacks stay its own, unused.
pub fn refuse(cpu: &'static Cpu, why: rl4_arch::cpu::Lack) -> ! {
    assert!(core::ptr::eq(percpu::current(), &cpu.header), "refuse on a foreign CPU");
    cpu.refused.store(why as u8, Ordering::Release);
    rl4_arch::cpu::halt_forever()
}

/// Enables the calling CPU's local APIC and timer (after [`lapic::configure`] ran on the BSP)
/// and marks the CPU online.
pub fn enable_lapic_this_cpu(cpu: &'static Cpu) {
    assert!(core::ptr::eq(percpu::current(), &cpu.header), "enable_lapic_this_cpu on a foreign CPU");
    let (l, lint, unused) = lapic::enable_this_cpu();
    cpu.lint.store(lint, Ordering::Relaxed);
    cpu.unused_lvts.store(unused, Ordering::Relaxed);
    // SAFETY: the block belongs to this CPU (checked above) and interrupts are off.
    unsafe { *cpu.lapic.get() = Some(l) };
    cpu.online.store(true, Ordering::Release);
}

/// Acknowledges the interrupt being handled on this CPU (through the registers while its
/// `LocalApic` is not installed yet: a stray interrupt in the bootstrap CPU's timer
/// calibration, `lapic::eoi_raw`).
pub fn eoi() {
    with_lapic(|l| match l {
        // SAFETY: acknowledges the interrupt being handled on this CPU's APIC.
        Some(l) => unsafe { l.end_of_interrupt() },
        None => lapic::eoi_raw(),
    });
}

/// The timer interrupt's CPU-level work: count the tick, re-arm, acknowledge.
pub fn timer_interrupt() {
    if let Some(c) = get(percpu::cpu_index() as usize) {
        c.ticks.fetch_add(1, Ordering::Relaxed);
    }
    lapic::timer_tick();
    eoi();
}

/// The reschedule IPI's CPU-level work: count it, acknowledge.
pub fn resched_interrupt() {
    if let Some(c) = get(percpu::cpu_index() as usize) {
        c.ipis.fetch_add(1, Ordering::Relaxed);
    }
    eoi();
}

/// APIC error interrupts so far, all CPUs (for the rate limit of their reports).
static APIC_ERRORS: AtomicU64 = AtomicU64::new(0);

/// The local APIC error interrupt: report the error status (the first 16, then one in 1,024: a
/// device whose MSI names an illegal vector could raise one per interrupt, and a console line
/// holds the CPU for milliseconds), acknowledge.
pub fn error_interrupt() {
    let esr = lapic::take_error_status();
    let n = APIC_ERRORS.fetch_add(1, Ordering::Relaxed);
    if n < 16 || n % 1024 == 0 {
        rl4_arch::println!("local APIC error, ESR={esr:#x} ({} so far)", n + 1);
    }
    eoi();
}

/// IPIs sent by `send_ipi`, all CPUs.
pub static IPIS_SENT: AtomicU64 = AtomicU64::new(0);

/// Sends `vector` to CPU `index`.
pub fn send_ipi(index: usize, vector: u8) {
    IPIS_SENT.fetch_add(1, Ordering::Relaxed);
    if let Some(target) = get(index) {
        with_lapic(|l| {
            if let Some(l) = l {
                lapic::send_ipi(l, vector, target.apic_id())
            }
        });
    }
}

/// Sends the reschedule IPI to CPU `index`.
pub fn send_resched(index: usize) {
    send_ipi(index, lapic::VEC_RESCHED);
}

/// Stops every other CPU the kernel took over: they halt in their NMI handler. Used by the panic
/// and shutdown paths. Each CPU whose IDT is loaded gets its NMI by its APIC ID (one that loads
/// its IDT later halts there, seeing the flag set first): a broadcast also reached CPUs the
/// kernel never took over (one that answered its start late and parked in the trampoline with no
/// IDT, one left out by `maxcpus=` in the firmware's park loop), which an NMI can make
/// triple-fault — a machine reset that, under `-no-reboot`, ends QEMU with exit status 0.
/// Returns false if this CPU has no local APIC yet to send them with (a panic early in its
/// set-up): the others then run on. One CPU stops the others: one that calls this after another
/// did (two `Shutdown`s, or a `Shutdown` and a panic, at once) halts instead of sending its own
/// (before the forty-third session both sent, and each could halt in the other's NMI, the
/// machine then never ending; a review found it).
pub fn stop_others() -> bool {
    let me = rl4_arch::percpu::cpu_index() as usize;
    with_lapic(|l| {
        // No local APIC, no NMIs: the flag stays down too (a CPU still starting, or a platform
        // NMI, must not halt for a stop that does not happen).
        let Some(l) = l else { return false };
        if rl4_arch::idt::STOPPER.compare_exchange(usize::MAX, me, Ordering::SeqCst, Ordering::SeqCst).is_err_and(|s| s != me) {
            rl4_arch::cpu::halt_forever();
        }
        rl4_arch::idt::HALT_ON_NMI.store(true, Ordering::SeqCst);
        for i in (0..count()).filter(|&i| i != me) {
            if let Some(c) = get(i).filter(|c| c.idt_ready.load(Ordering::SeqCst)) {
                lapic::send_nmi(l, c.apic_id());
                STOPS_SENT.fetch_add(1, Ordering::SeqCst);
            }
        }
        true
    })
}

/// NMIs [`stop_others`] sent.
static STOPS_SENT: AtomicUsize = AtomicUsize::new(0);

/// Waits up to `us` microseconds for every CPU [`stop_others`] sent its NMI to halt in the
/// handler (`rl4_arch::idt::HALTED_ON_NMI`); whether all did. (A CPU that loaded its IDT after
/// the flag was set, and was sent none, halts before it runs anything.)
pub fn wait_stopped(us: u64) -> bool {
    rl4_arch::time::wait_until(us, || rl4_arch::idt::HALTED_ON_NMI.load(Ordering::SeqCst) >= STOPS_SENT.load(Ordering::SeqCst))
}
