//! A program the root task runs in a task of its own, to test isolation and faults.
//!
//! `a0` says what to do, `a1` is its operand:
//! * [`READ`]: read the word at `a1` and report it (faults if `a1` is not readable here);
//! * [`WRITE`]: write a word to `a1` (faults if `a1` is not writable here);
//! * [`SPIN`]: add one to the word at `a1` forever;
//! * [`HELLO`]: print a line and end the thread;
//! * [`EXIT_TASK`]: end the whole task.
#![no_std]
#![no_main]

use rl4_user::{println, sys};

pub const READ: u64 = 1;
pub const WRITE: u64 = 2;
pub const SPIN: u64 = 3;
pub const HELLO: u64 = 4;
pub const EXIT_TASK: u64 = 5;

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
        _ => println!("worker: unknown command {cmd}"),
    }
}
