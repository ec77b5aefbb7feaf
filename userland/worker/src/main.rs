//! A program the root task runs in a task of its own, to test isolation and faults.
//!
//! `a0` says what to do, `a1` is its operand:
//! * [`READ`]: read the word at `a1` and report it (faults if `a1` is not readable here);
//! * [`WRITE`]: write a word to `a1` (faults if `a1` is not writable here);
//! * [`SPIN`]: add one to the word at `a1` forever;
//! * [`HELLO`]: print a line and end the thread;
//! * [`EXIT_TASK`]: end the whole task;
//! * [`PRIVILEGED`], [`INVALID_OPCODE`], [`DIVIDE_ZERO`]: take that fault.
#![no_std]
#![no_main]

use rl4_user::{println, sys};

pub const READ: u64 = 1;
pub const WRITE: u64 = 2;
pub const SPIN: u64 = 3;
pub const HELLO: u64 = 4;
pub const EXIT_TASK: u64 = 5;
pub const PRIVILEGED: u64 = 6;
pub const INVALID_OPCODE: u64 = 7;
pub const DIVIDE_ZERO: u64 = 8;

#[unsafe(no_mangle)]
fn rl4_main(cmd: u64, addr: u64) {
    match cmd {
        READ => {
            // SAFETY: deliberately unchecked: the test wants the kernel to stop this thread if
            // `addr` is not readable in this address space.
            let v = unsafe { core::ptr::read_volatile(addr as *const u64) };
            println!("worker: read {addr:#x} = {v:#x}");
        }
        WRITE => {
            // SAFETY: as above, for writes.
            unsafe { core::ptr::write_volatile(addr as *mut u64, 0xbad0_bad0) };
            println!("worker: wrote {addr:#x}");
        }
        SPIN => loop {
            // SAFETY: `addr` is a page the root task mapped writable here for this counter.
            let p = addr as *mut u64;
            unsafe { p.write_volatile(p.read_volatile() + 1) };
        },
        HELLO => {
            let (cpu, n) = sys::cpu_info();
            println!("worker: hello from cpu {cpu} of {n}");
        }
        EXIT_TASK => sys::task_exit(),
        // SAFETY (all three): deliberate faults; the kernel must stop this thread.
        PRIVILEGED => unsafe { core::arch::asm!("hlt") },
        INVALID_OPCODE => unsafe { core::arch::asm!("ud2") },
        DIVIDE_ZERO => unsafe {
            core::arch::asm!("xor edx, edx", "xor ecx, ecx", "div rcx", inout("rax") addr => _, out("rdx") _, out("rcx") _)
        },
        _ => println!("worker: unknown command {cmd}"),
    }
}
