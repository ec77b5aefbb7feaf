//! rl4's user library: the program entry, a panic handler, typed system calls over the ABI
//! crate, console printing, and helpers to make threads and map memory.
//!
//! A program defines `#[unsafe(no_mangle)] fn rl4_main(a0: u64, a1: u64)`; `_start` calls it
//! with the two argument registers its creator set and ends the thread when it returns. Nothing here defines a number
//! the kernel defines: they all come from `rl4_abi`.
#![no_std]

pub mod fpu;
pub mod fuzz;
pub mod storm;
pub mod sys;
pub mod worker;

use core::fmt::{self, Write};
pub use rl4_abi as abi;
use rl4_abi::root_slots;

/// Capability slot of the machine (console) capability, by convention in every task.
pub const MACHINE: u64 = root_slots::MACHINE;

/// Formats into a fixed buffer and writes it with one `ConsoleWrite`.
pub struct Line {
    buf: [u8; 2048],
    len: usize,
}

impl Line {
    pub const fn new() -> Self {
        Line { buf: [0; 2048], len: 0 }
    }
    pub fn flush(&mut self) {
        if self.len > 0 {
            let _ = sys::console_write(MACHINE, &self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

#[doc(hidden)]
pub fn print_fmt(args: fmt::Arguments<'_>) {
    let mut l = Line::new();
    let _ = l.write_fmt(args);
    l.flush();
}

/// Prints one line on the kernel console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::print_fmt(format_args!($($arg)*)) };
}

unsafe extern "Rust" {
    fn rl4_main(a0: u64, a1: u64);
}

/// Program entry: `rdi`/`rsi` hold the arguments the creator set (the root task gets its
/// `BootInfo` address).
#[unsafe(no_mangle)]
extern "C" fn _start(a0: u64, a1: u64) -> ! {
    // SAFETY: every rl4 program defines `rl4_main` with this signature.
    unsafe { rl4_main(a0, a1) };
    sys::thread_exit()
}

/// Entry of threads made by [`spawn`]: calls `f(arg)`, then ends the thread.
extern "C" fn thread_start(f: u64, arg: u64) -> ! {
    // SAFETY: `spawn` passes a `fn(u64)` as `f`.
    let f: fn(u64) = unsafe { core::mem::transmute::<usize, fn(u64)>(f as usize) };
    f(arg);
    sys::thread_exit()
}

/// The address new threads of this program start at (see [`spawn`]).
pub fn thread_entry() -> u64 {
    thread_start as *const () as u64
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut l = Line::new();
    let _ = write!(l, "user panic: {}", info.message());
    if let Some(loc) = info.location() {
        let _ = write!(l, " at {}:{}", loc.file(), loc.line());
    }
    l.flush();
    sys::thread_exit()
}

/// Reads the time-stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: RDTSC is allowed in user mode (CR4.TSD is clear) and has no side effects.
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    ((hi as u64) << 32) | lo as u64
}
