//! Faults of user threads: the kernel reports what happened (decoding a page fault's error
//! code) and stops the thread (`Faulted`, a transition that a kill made before it wins over).
use rl4_arch::{cpu, println};

use crate::{sched, thread};

/// Reports a fault of the running thread and stops it.
pub fn fault_current(vector: u64, error: u64) {
    crate::timeline::event(crate::timeline::Kind::Fault, vector, error);
    let Some(t) = sched::current() else { return };
    let r = t.regs.get();
    let name = rl4_arch::idt::exception_name(vector);
    if vector == 14 {
        println!(
            "thread {} (task {}) stopped: {name} at rip={:#x}, address {:#x}, error {:#x} ({}{}{})",
            t.id,
            t.task.id,
            r.rip,
            cpu::cr2(),
            error,
            if error & 1 != 0 { "protection" } else { "not mapped" },
            if error & 2 != 0 { ", write" } else { ", read" },
            if error & 16 != 0 { ", instruction fetch" } else { "" }
        );
    } else {
        println!("thread {} (task {}) stopped: {name} (vector {vector}) at rip={:#x}, error {error:#x}", t.id, t.task.id, r.rip);
    }
    thread::fault(&t);
}
