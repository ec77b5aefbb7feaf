//! The serial console on COM1, shared by all CPUs.
//!
//! Every line starts with `[cpuN]` (the kernel's) or `[cpuN task T]` (a user task's
//! `ConsoleWrite`, [`print_user_line`]) and is written while holding the console lock, so lines
//! from different CPUs never mix, and no task can print a line that looks like the kernel's or
//! another task's. The lock records its owner: a CPU that faults or panics while it
//! already holds the lock (or finds it held for a very long time) takes it over instead of
//! deadlocking, so the panic report always gets out.
use crate::percpu;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU32, Ordering};
use spin::Once;
use uart_16550::SerialPort;

const COM1: u16 = 0x3f8;
const NOBODY: u32 = u32::MAX;

struct Console {
    owner: AtomicU32,
}

static CONSOLE: Console = Console { owner: AtomicU32::new(NOBODY) };
static PORT_READY: Once<()> = Once::new();

/// Writes bytes to COM1. Only used by the lock holder.
struct Port;

impl Write for Port {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // SAFETY: COM1 is the standard 16550 at 0x3f8, which `init` has programmed; the console
        // lock serialises its users but for a take-over (a fault or panic report, or a CPU that
        // stopped every other), which may interleave bytes with a holder's but cannot make a
        // port access unsafe.
        let mut p = unsafe { SerialPort::new(COM1) };
        for b in s.bytes() {
            if b == b'\n' {
                p.send(b'\r');
            }
            p.send(b);
        }
        Ok(())
    }
}

/// Programs COM1 (115200 8N1). Idempotent.
pub fn init() {
    PORT_READY.call_once(|| {
        // SAFETY: see `Port::write_str`; this runs once, before any output.
        let mut p = unsafe { SerialPort::new(COM1) };
        p.init();
        // `uart_16550`'s set-up leaves divisor 3 (38400 baud): 115200 is divisor 1, as GRUB
        // and firmware set the line (before the thirty-sixth session the kernel's log came at
        // 38400 on hardware after a loader's at 115200; QEMU ignores the rate; a review found
        // it). Line control 0x83: the divisor latch open, 8N1; then 0x03, closed.
        for (offset, value) in [(3, 0x83u8), (0, 1), (1, 0), (3, 0x03)] {
            // SAFETY: COM1's line-control and divisor-latch registers (as above); nothing
            // else uses the port yet.
            unsafe { x86_64::instructions::port::Port::<u8>::new(COM1 + offset).write(value) };
        }
    });
}

/// Holds the console for one whole line (or one multi-line report).
pub struct Guard {
    took_over: bool,
}

/// Takes the console. `steal` is for fault and panic paths: after a bounded wait (or at once if
/// this CPU already holds it) the console is taken over instead of waited for.
pub fn lock(steal: bool) -> Guard {
    lock_while(steal, || {})
}

/// [`lock`], running `wait` at every round of the wait (a CPU that waits with interrupts off
/// for a user task's turn at the console still answers what other CPUs wait for from it: the
/// kernel passes its TLB shoot-down service).
fn lock_while(steal: bool, mut wait: impl FnMut()) -> Guard {
    let me = percpu::cpu_index();
    if CONSOLE.owner.load(Ordering::Relaxed) == me {
        return Guard { took_over: true };
    }
    let mut spins: u64 = 0;
    loop {
        if CONSOLE.owner.compare_exchange_weak(NOBODY, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return Guard { took_over: false };
        }
        wait();
        core::hint::spin_loop();
        spins += 1;
        if steal && spins > 50_000_000 {
            CONSOLE.owner.store(me, Ordering::Release);
            return Guard { took_over: true };
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.took_over {
            CONSOLE.owner.store(NOBODY, Ordering::Release);
        }
    }
}

impl Write for Guard {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        Port.write_str(s)
    }
}

/// Takes the console at once, whoever holds it: for a CPU that has stopped every other
/// (`rl4_smp::cpus::stop_others`, NMIs that halt each where it is). A CPU halted while it held
/// the console never lets it go, and waiting for it would hang the panic or shutdown path (a
/// review found a task's output line taken between the panic report and the stop).
pub fn take_over() -> Guard {
    CONSOLE.owner.store(percpu::cpu_index(), Ordering::Release);
    Guard { took_over: true }
}

/// [`print_line`] after every other CPU stopped ([`take_over`]).
pub fn print_line_stopped(args: fmt::Arguments<'_>) {
    let mut g = take_over();
    let _ = write!(g, "[cpu{}] ", percpu::cpu_index());
    let _ = g.write_fmt(args);
    let _ = g.write_str("\n");
}

/// Writes one `[cpuN] ...` line.
pub fn print_line(args: fmt::Arguments<'_>) {
    let mut g = lock(false);
    let _ = write!(g, "[cpu{}] ", percpu::cpu_index());
    let _ = g.write_fmt(args);
    let _ = g.write_str("\n");
}

pub use rl4_core::conout::OneLine;

/// Writes one line of a user task's output as `[cpuN task T] text`. `text` holds no line
/// break (the caller splits at `\n`); every other control character (`\r` included, which
/// some readers take as a line break) and the Unicode line separators become `?`, so that the
/// prefix is always at the start of what any reader calls a line.
pub fn print_user_line(task: u64, text: &str, mut wait: impl FnMut()) {
    let g = lock_while(false, &mut wait);
    // `wait` runs after every `PACE` bytes written, prefix and `?`s counted: the line takes up
    // to about 90 ms of a real UART with interrupts off, and what other CPUs wait for from this
    // one (a TLB shoot-down) is answered meanwhile too, within 8 bytes' time (0.7 ms at 115200
    // baud; 64 bytes, 5.6 ms, before the twenty-second session: every other CPU's `Unmap`
    // waited behind the shoot-down lock's holder as long).
    let mut p = Paced { g, since: 0, wait };
    let _ = write!(p, "[cpu{} task {task}] {}\n", percpu::cpu_index(), OneLine(text.as_bytes()));
}

/// Bytes written between two runs of a paced writer's `wait` (a plain load when no shoot-down
/// waits).
const PACE: usize = 8;

/// The console held, with `wait` run after every [`PACE`] bytes written through it.
struct Paced<F: FnMut()> {
    g: Guard,
    since: usize,
    wait: F,
}

impl<F: FnMut()> Write for Paced<F> {
    fn write_str(&mut self, mut s: &str) -> fmt::Result {
        while !s.is_empty() {
            let mut n = s.len().min(PACE - self.since);
            while !s.is_char_boundary(n) {
                n += 1;
            }
            self.g.write_str(&s[..n])?;
            self.since += n;
            if self.since >= PACE {
                (self.wait)();
                self.since = 0;
            }
            s = &s[n..];
        }
        Ok(())
    }
}

/// Prints one line on the serial console, prefixed with the current CPU.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::console::print_line(format_args!($($arg)*)) };
}
