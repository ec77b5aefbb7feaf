//! Per-CPU IDT and the report of every CPU exception.
//!
//! Every exception vector (0..=31 that the CPU defines) gets a handler that reports the
//! exception's name and vector, the error code, RIP/CS/RFLAGS/RSP, CR2 for a page fault, and the
//! CPU id, then panics (the kernel never takes an exception on purpose yet; user-mode faults are
//! handled by a later layer). NMIs are the exception: when [`HALT_ON_NMI`] is set (a panic on
//! another CPU is stopping the machine) the CPU halts for good, otherwise the NMI is reported
//! and ignored. Device and IPI vectors are installed by the caller.
use crate::gdt::{IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI};
use core::sync::atomic::{AtomicBool, Ordering};
use x86_64::structures::idt::{
    HandlerFunc, InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode,
};

/// Set by the panic path before it NMIs the other CPUs.
pub static HALT_ON_NMI: AtomicBool = AtomicBool::new(false);

/// Builds a CPU's IDT: all exceptions, plus `vectors` (vector number, handler).
pub fn build(idt: &mut InterruptDescriptorTable, vectors: &[(u8, HandlerFunc)]) {
    idt.divide_error.set_handler_fn(divide_error);
    idt.debug.set_handler_fn(debug);
    // SAFETY: the IST slots are filled with valid stacks in every CPU's TSS before its IDT is
    // loaded (see `gdt::CpuTables::set_ist`).
    unsafe {
        idt.non_maskable_interrupt.set_handler_fn(nmi).set_stack_index(IST_NMI);
        idt.double_fault.set_handler_fn(double_fault).set_stack_index(IST_DOUBLE_FAULT);
        idt.machine_check.set_handler_fn(machine_check).set_stack_index(IST_MACHINE_CHECK);
    }
    idt.breakpoint.set_handler_fn(breakpoint);
    idt.overflow.set_handler_fn(overflow);
    idt.bound_range_exceeded.set_handler_fn(bound_range);
    idt.invalid_opcode.set_handler_fn(invalid_opcode);
    idt.device_not_available.set_handler_fn(device_not_available);
    idt.invalid_tss.set_handler_fn(invalid_tss);
    idt.segment_not_present.set_handler_fn(segment_not_present);
    idt.stack_segment_fault.set_handler_fn(stack_segment_fault);
    idt.general_protection_fault.set_handler_fn(general_protection);
    idt.page_fault.set_handler_fn(page_fault);
    idt.x87_floating_point.set_handler_fn(x87_fp);
    idt.alignment_check.set_handler_fn(alignment_check);
    idt.simd_floating_point.set_handler_fn(simd_fp);
    idt.virtualization.set_handler_fn(virtualization);
    idt.cp_protection_exception.set_handler_fn(control_protection);
    idt.security_exception.set_handler_fn(security);
    for &(v, h) in vectors {
        idt[v].set_handler_fn(h);
    }
}

#[cold]
fn fatal(name: &str, vector: u8, f: &InterruptStackFrame, error: Option<u64>, cr2: Option<u64>) -> ! {
    let cpu = crate::percpu::cpu_index();
    let rip = f.instruction_pointer.as_u64();
    let mode = if f.code_segment.rpl() as u8 == 0 { "kernel" } else { "user" };
    match (error, cr2) {
        (Some(e), Some(a)) => panic!(
            "CPU exception {name} (vector {vector}) on cpu {cpu} in {mode} mode: error={e:#x} rip={rip:#x} cr2={a:#x} rsp={:#x} rflags={:#x}",
            f.stack_pointer.as_u64(),
            f.cpu_flags.bits()
        ),
        (Some(e), None) => panic!(
            "CPU exception {name} (vector {vector}) on cpu {cpu} in {mode} mode: error={e:#x} rip={rip:#x} rsp={:#x} rflags={:#x}",
            f.stack_pointer.as_u64(),
            f.cpu_flags.bits()
        ),
        _ => panic!(
            "CPU exception {name} (vector {vector}) on cpu {cpu} in {mode} mode: rip={rip:#x} rsp={:#x} rflags={:#x}",
            f.stack_pointer.as_u64(),
            f.cpu_flags.bits()
        ),
    }
}

macro_rules! exception {
    ($fn:ident, $name:literal, $v:literal) => {
        extern "x86-interrupt" fn $fn(f: InterruptStackFrame) {
            fatal($name, $v, &f, None, None)
        }
    };
    ($fn:ident, $name:literal, $v:literal, error) => {
        extern "x86-interrupt" fn $fn(f: InterruptStackFrame, e: u64) {
            fatal($name, $v, &f, Some(e), None)
        }
    };
}

exception!(divide_error, "#DE divide error", 0);
exception!(debug, "#DB debug", 1);
exception!(breakpoint, "#BP breakpoint", 3);
exception!(overflow, "#OF overflow", 4);
exception!(bound_range, "#BR bound range exceeded", 5);
exception!(invalid_opcode, "#UD invalid opcode", 6);
exception!(device_not_available, "#NM device not available", 7);
exception!(invalid_tss, "#TS invalid TSS", 10, error);
exception!(segment_not_present, "#NP segment not present", 11, error);
exception!(stack_segment_fault, "#SS stack-segment fault", 12, error);
exception!(general_protection, "#GP general protection", 13, error);
exception!(x87_fp, "#MF x87 floating point", 16);
exception!(alignment_check, "#AC alignment check", 17, error);
exception!(simd_fp, "#XM SIMD floating point", 19);
exception!(virtualization, "#VE virtualization", 20);
exception!(control_protection, "#CP control protection", 21, error);
exception!(security, "#SX security", 30, error);

extern "x86-interrupt" fn double_fault(f: InterruptStackFrame, e: u64) -> ! {
    fatal("#DF double fault", 8, &f, Some(e), None)
}

extern "x86-interrupt" fn machine_check(f: InterruptStackFrame) -> ! {
    fatal("#MC machine check", 18, &f, None, None)
}

extern "x86-interrupt" fn page_fault(f: InterruptStackFrame, e: PageFaultErrorCode) {
    fatal("#PF page fault", 14, &f, Some(e.bits()), Some(crate::cpu::cr2()))
}

extern "x86-interrupt" fn nmi(f: InterruptStackFrame) {
    if HALT_ON_NMI.load(Ordering::Acquire) {
        crate::cpu::halt_forever();
    }
    crate::println!("NMI at rip={:#x}, ignored", f.instruction_pointer.as_u64());
}
