//! The panic path, on any CPU: report, backtrace, stop every other CPU, fail.
//!
//! The report holds the console (taking it over if this CPU already held it when it panicked),
//! so it is never mixed with other output. The backtrace follows the frame-pointer chain (the
//! kernel is built with `-C force-frame-pointers=yes`); every frame pointer is checked to be
//! mapped, aligned and growing before it is followed. `scripts/symbolize` turns the addresses
//! into function names. A second CPU that panics meanwhile only prints its message and halts.
use core::fmt::Write;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};
use rl4_arch::{console, cpu, paging, percpu};

static PANICKING: AtomicBool = AtomicBool::new(false);
/// The CPU whose panic came first (`usize::MAX`: none).
static PANICKER: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(usize::MAX);

/// Whether a CPU has begun a panic (`Shutdown` then halts rather than end the machine with
/// success).
pub fn panicking() -> bool {
    PANICKING.load(Ordering::Acquire)
}

const MAX_FRAMES: usize = 32;

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let me = percpu::cpu_index();
    let first = !PANICKING.swap(true, Ordering::AcqRel);
    if first {
        PANICKER.store(me as usize, Ordering::SeqCst);
    } else if PANICKER.load(Ordering::SeqCst) == me as usize {
        // A panic within this CPU's own report or stop: nobody else will end the machine.
        console::print_line_stopped(format_args!("panic: a second panic on the panicking CPU; exiting with failure"));
        cpu::exit(cpu::QemuExit::Failure);
    }
    {
        let mut g = console::lock(true);
        let _ = write!(g, "[cpu{me}] PANIC on cpu {me}: {}", info.message());
        if let Some(l) = info.location() {
            let _ = write!(g, " at {}:{}", l.file(), l.line());
        }
        let _ = writeln!(g);
        let _ = writeln!(g, "[cpu{me}] backtrace:");
        paging::backtrace(cpu::frame_pointer(), MAX_FRAMES, |i, ret| {
            let _ = writeln!(g, "[cpu{me}]   #{i:<2} {ret:#018x}");
        });
    }
    if !first {
        cpu::halt_forever();
    }
    if rl4_smp::cpus::stop_others() {
        console::print_line_stopped(format_args!("panic: all other CPUs stopped; exiting with failure"));
    } else {
        console::print_line_stopped(format_args!("panic: no local APIC on this CPU yet to stop the others with; exiting with failure"));
    }
    cpu::exit(cpu::QemuExit::Failure)
}

/// Prints the calling CPU's return addresses (for reports of broken rules, not only panics).
pub fn backtrace_here() {
    let me = percpu::cpu_index();
    let mut g = console::lock(false);
    paging::backtrace(cpu::frame_pointer(), 12, |i, ret| {
        let _ = writeln!(g, "[cpu{me}]   #{i:<2} {ret:#018x}");
    });
}
