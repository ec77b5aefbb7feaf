//! Threads of a program started by the root task.
//!
//! [`spawn`] gives each new thread a region of [`REGION`] bytes above
//! [`crate::env::THREADS_BASE`]: its IPC buffer page, an unmapped guard page, then its stack.
//! [`crate::IpcBuffer::current`] finds the calling thread's buffer from its stack pointer, so every
//! thread (the first one included) reaches its own.
use core::sync::atomic::{AtomicU64, Ordering};
use rl4_abi::{Error, PAGE_SIZE, Rights};

use crate::cap::Thread;
use crate::{env, slots, sys};

/// Bytes of address space per spawned thread.
pub const REGION: u64 = 1 << 20;
/// Stack pages of a spawned thread.
pub const STACK_PAGES: u64 = 16;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Maps `pages` fresh zeroed frames from [`env::MEMORY`] at `va` in this program's space.
pub fn map_fresh(va: u64, pages: u64) -> Result<(), Error> {
    let f = slots::alloc().ok_or(Error::SlotOccupied)?;
    let mut r = Ok(());
    for i in 0..pages {
        r = sys::frame_alloc(env::MEMORY, f).and_then(|_| sys::map(env::SPACE, f, va + i * PAGE_SIZE, Rights::READ.union(Rights::WRITE)));
        // The mapping keeps the frame; the slot is reused for the next one.
        let _ = sys::cap_delete(f);
        if r.is_err() {
            break;
        }
    }
    slots::free(f);
    r
}

/// Starts `f(arg)` on CPU `cpu` at priority `prio` (at most the creator's) as a new thread of
/// this program, with its own stack and IPC buffer. The thread ends when `f` returns.
pub fn spawn(f: fn(u64), arg: u64, cpu: u64, prio: u64) -> Result<Thread, Error> {
    let base = env::THREADS_BASE + NEXT.fetch_add(1, Ordering::Relaxed) * REGION;
    map_fresh(base, 1)?;
    map_fresh(base + 2 * PAGE_SIZE, STACK_PAGES)?;
    let top = base + (2 + STACK_PAGES) * PAGE_SIZE;
    let t = slots::alloc().ok_or(Error::SlotOccupied)?;
    let r = sys::thread_create(env::MEMORY, env::TASK, crate::thread_entry(), top, prio, cpu, t)
        .and_then(|_| sys::thread_set_args(t, f as *const () as u64, arg))
        .and_then(|_| sys::set_ipc_buffer(t, base))
        .and_then(|_| sys::thread_resume(t));
    match r {
        Ok(()) => Ok(Thread(t)),
        Err(e) => {
            slots::free(t);
            Err(e)
        }
    }
}

/// The IPC buffer of the thread whose stack holds `sp`.
pub(crate) fn buffer_for(sp: u64) -> u64 {
    if sp >= env::THREADS_BASE && sp < env::IPC_BUFFER {
        (sp - 1) & !(REGION - 1)
    } else {
        env::IPC_BUFFER
    }
}
