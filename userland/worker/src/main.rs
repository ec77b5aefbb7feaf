//! A program the root task runs in a task of its own, to test isolation and faults.
//!
//! `a0` says what to do (`rl4_user::worker`), `a1` is its operand:
//! * [`READ`]: read the word at `a1` and report it (faults if `a1` is not readable here);
//! * [`WRITE`]: write a word to `a1` (faults if `a1` is not writable here);
//! * [`SPIN`]: add one to the word at `a1` forever;
//! * [`HELLO`]: print a line and end the thread;
//! * [`EXIT_TASK`]: end the whole task;
//! * [`PRIVILEGED`], [`INVALID_OPCODE`], [`DIVIDE_ZERO`]: take that fault;
//! * [`ECHO`]: serve the endpoint in slot [`EP_SLOT`] forever, answering each message with every
//!   word `w[i]` turned into `w[i] ^ ECHO_KEY ^ i` and the label plus one (`a1` is this thread's
//!   IPC buffer, already registered);
//! * [`CALL`]: call the endpoint in slot [`EP_SLOT`] once and report the outcome;
//! * [`STAMP`]: serve the endpoint in slot [`EP_SLOT`], replying with two time stamps: the TSC
//!   right after the message arrived and right before the reply leaves (one-way latencies).
#![no_std]
#![no_main]

use rl4_user::worker::*;
use rl4_user::{println, sys};


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
        ECHO => echo(addr),
        STAMP => stamp(),
        CALL => {
            let r = sys::call(EP_SLOT, &sys::Msg::default());
            println!("worker: call returned {:?}", r.map(|m| m.tag));
        }
        _ => println!("worker: unknown command {cmd}"),
    }
}

fn echo(buffer: u64) {
    use rl4_user::abi::ipc::Tag;
    let mut m = match sys::recv(EP_SLOT) {
        Ok(m) => m,
        Err(e) => return println!("worker: echo recv failed: {e}"),
    };
    loop {
        let len = m.tag.len();
        let mut r = sys::Msg { tag: Tag::new(m.tag.label() + 1, len, 0), badge: 0, w: [0; 4] };
        for i in 0..4 {
            r.w[i] = m.w[i] ^ ECHO_KEY ^ i as u64;
        }
        for i in 4..len {
            let p = (buffer + i * 8) as *mut u64;
            // SAFETY: `buffer` is this thread's IPC buffer page, mapped writable; i < 128.
            unsafe { p.write_volatile(p.read_volatile() ^ ECHO_KEY ^ i) };
        }
        m = match sys::reply_recv(EP_SLOT, &r) {
            Ok(m) => m,
            Err(e) => return println!("worker: echo reply_recv failed: {e}"),
        };
    }
}

fn stamp() {
    use rl4_user::abi::ipc::Tag;
    if sys::recv(EP_SLOT).is_err() {
        return;
    }
    let mut arrived = rl4_user::rdtsc();
    loop {
        let r = sys::Msg { tag: Tag::new(0, 2, 0), badge: 0, w: [arrived, rl4_user::rdtsc(), 0, 0] };
        if sys::reply_recv(EP_SLOT, &r).is_err() {
            return;
        }
        arrived = rl4_user::rdtsc();
    }
}
