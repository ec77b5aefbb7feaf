//! Per-CPU IDT and the report of every CPU exception taken in kernel mode.
//!
//! Exceptions and every interrupt vector (those rl4 does not use too) enter through the stubs in [`crate::entry`]
//! (which tell user mode from kernel mode). An exception in kernel mode is a kernel bug:
//! [`kernel_exception`] reports its name and vector, the error code, RIP/RSP/RFLAGS, CR2 for a
//! page fault and the CPU, then panics. NMI, double fault and machine check run on their own
//! IST stacks through separate handlers, which first make sure `GS` is the kernel's (they can
//! arrive in the middle of an entry or exit, before or after `swapgs`). When [`HALT_ON_NMI`] is
//! set (a panic or a `Shutdown` on another CPU, the [`STOPPER`], is stopping the machine) an
//! NMI halts the CPU for good; on the stopper it is ignored without a line.
use crate::entry::KernelFrame;
use crate::gdt::{IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI};
use core::sync::atomic::{AtomicBool, Ordering};
use x86_64::registers::model_specific::GsBase;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame};

/// Set by the panic path before it NMIs the other CPUs.
pub static HALT_ON_NMI: AtomicBool = AtomicBool::new(false);

/// The CPU that stops the others (`rl4_smp::cpus::stop_others`; `usize::MAX`: none yet): it
/// does not halt in an NMI of its own (a platform's, through LINT1) while it ends the machine.
pub static STOPPER: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(usize::MAX);

/// CPUs that took an NMI with [`HALT_ON_NMI`] set and halt in its handler (for a shutdown to
/// wait for: `rl4_smp::cpus::wait_stopped`).
pub static HALTED_ON_NMI: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Builds a CPU's IDT.
pub fn build(idt: &mut InterruptDescriptorTable) {
    fill(idt, true);
}

/// Fills `idt`: the entry stubs, and NMI, #DF and #MC handlers, on their IST stacks if `ist`
/// (a CPU whose TSS is loaded), else on the running stack (the boot's first IDT).
fn fill(idt: &mut InterruptDescriptorTable, ist: bool) {
    crate::entry::install_stubs(idt, ist);
    let nmi = idt.non_maskable_interrupt.set_handler_fn(nmi);
    if ist {
        // SAFETY: the IST slots are filled with valid stacks in every CPU's TSS before its IDT
        // is loaded (see `gdt::CpuTables::set_ist`).
        unsafe { nmi.set_stack_index(IST_NMI) };
    }
    let df = idt.double_fault.set_handler_fn(double_fault);
    if ist {
        // SAFETY: as above.
        unsafe { df.set_stack_index(IST_DOUBLE_FAULT) };
    }
    let mc = idt.machine_check.set_handler_fn(machine_check);
    if ist {
        // SAFETY: as above.
        unsafe { mc.set_stack_index(IST_MACHINE_CHECK) };
    }
}

/// The bootstrap CPU's first IDT, from the kernel's entry until its own is loaded
/// (`smp::cpus::init_this_cpu`): the same stubs and handlers, on the running stack (no TSS is
/// loaded yet, so no IST). Before the twenty-sixth session there was none in that window (the
/// boot information parsed, the frame bitmap and the direct map built): an NMI (a board's
/// IOCHK/SERR on LINT1) or a kernel exception there went through whatever the boot loader had
/// left in IDTR and reset the machine without a word.
static EARLY: spin::Once<InterruptDescriptorTable> = spin::Once::new();

/// Loads [`EARLY`] on this CPU (the bootstrap CPU, at the kernel's entry, `GS` already set),
/// after the first GDT (`gdt::load_early`): its gates name that GDT's code selector, 0x08, which
/// is kernel code in the CPU's own GDT too.
pub fn load_early() {
    crate::gdt::load_early();
    EARLY
        .call_once(|| {
            let mut idt = InterruptDescriptorTable::new();
            fill(&mut idt, false);
            idt
        })
        .load();
}

/// The name of exception vector `v`.
pub fn exception_name(v: u64) -> &'static str {
    match v {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range exceeded",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack-segment fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 floating point",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD floating point",
        20 => "#VE virtualization",
        21 => "#CP control protection",
        30 => "#SX security",
        _ => "unknown exception",
    }
}

/// Whether vector `v` pushes an error code.
pub fn has_error_code(v: u64) -> bool {
    matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// An exception in kernel mode: report and panic.
#[cold]
pub fn kernel_exception(f: &KernelFrame) -> ! {
    // An exception between the exit's `swapgs` and its `sysretq`/`iretq` arrives in kernel mode
    // with the user's GS (base 0): the report's per-CPU reads would go through user address 0
    // (since the forty-third session it swaps first, as the IST handlers do; a review found it).
    ensure_kernel_gs();
    let cpu = crate::percpu::cpu_index();
    let name = exception_name(f.vector);
    let v = f.vector;
    let (rip, rsp, fl) = (f.rip, f.rsp, f.rflags);
    match (v, has_error_code(v)) {
        (14, _) => panic!(
            "CPU exception {name} (vector {v}) on cpu {cpu} in kernel mode: error={:#x} rip={rip:#x} cr2={:#x} rsp={rsp:#x} rflags={fl:#x}",
            f.error,
            crate::cpu::cr2()
        ),
        (_, true) => panic!(
            "CPU exception {name} (vector {v}) on cpu {cpu} in kernel mode: error={:#x} rip={rip:#x} rsp={rsp:#x} rflags={fl:#x}",
            f.error
        ),
        _ => panic!("CPU exception {name} (vector {v}) on cpu {cpu} in kernel mode: rip={rip:#x} rsp={rsp:#x} rflags={fl:#x}"),
    }
}

/// Makes `GS` the kernel's if the trap arrived with the user's (user `GS` base is always 0 in
/// rl4, the kernel's is a higher-half address). Returns whether it swapped.
fn ensure_kernel_gs() -> bool {
    if (GsBase::read().as_u64() as i64) >= 0 {
        // SAFETY: GS base is the user's (0), so KERNEL_GS_BASE holds this CPU's block.
        unsafe { core::arch::asm!("swapgs", options(nostack, preserves_flags)) };
        true
    } else {
        false
    }
}

fn restore_gs(swapped: bool) {
    if swapped {
        // SAFETY: undoes the swap in `ensure_kernel_gs` before returning to the interrupted code.
        unsafe { core::arch::asm!("swapgs", options(nostack, preserves_flags)) };
    }
}

#[cold]
fn ist_fatal(name: &str, vector: u8, f: &InterruptStackFrame, error: Option<u64>) -> ! {
    ensure_kernel_gs();
    let cpu = crate::percpu::cpu_index();
    let mode = if f.code_segment.rpl() as u8 == 0 { "kernel" } else { "user" };
    panic!(
        "CPU exception {name} (vector {vector}) on cpu {cpu} in {mode} mode: error={:#x} rip={:#x} rsp={:#x} rflags={:#x}",
        error.unwrap_or(0),
        f.instruction_pointer.as_u64(),
        f.stack_pointer.as_u64(),
        f.cpu_flags.bits()
    )
}

extern "x86-interrupt" fn double_fault(f: InterruptStackFrame, e: u64) -> ! {
    crate::entry::close_user_access();
    ist_fatal("#DF double fault", 8, &f, Some(e))
}

extern "x86-interrupt" fn machine_check(f: InterruptStackFrame) -> ! {
    crate::entry::close_user_access();
    ist_fatal("#MC machine check", 18, &f, None)
}

extern "x86-interrupt" fn nmi(f: InterruptStackFrame) {
    crate::entry::close_user_access();
    let swapped = ensure_kernel_gs();
    if HALT_ON_NMI.load(Ordering::Acquire) {
        if STOPPER.load(Ordering::SeqCst) != crate::percpu::cpu_index() as usize {
            HALTED_ON_NMI.fetch_add(1, Ordering::SeqCst);
            crate::cpu::halt_forever();
        }
        // The stopper itself: back to ending the machine, with no line (a CPU it halted may
        // have halted holding the console, which a line here would wait for without end).
        restore_gs(swapped);
        return;
    }
    crate::println!("NMI at rip={:#x}, ignored", f.instruction_pointer.as_u64());
    restore_gs(swapped);
}
