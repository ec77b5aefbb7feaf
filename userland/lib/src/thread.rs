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

/// Maps `pages` fresh zeroed frames from [`env::MEMORY`] at `va` in this program's space; all
/// or nothing: on an error the pages it mapped are unmapped again (their frames, held by the
/// mappings alone, go back to the budget).
pub fn map_fresh(va: u64, pages: u64) -> Result<(), Error> {
    let f = slots::alloc().ok_or(Error::SlotOccupied)?;
    let mut r = Ok(());
    let mut mapped = 0;
    while mapped < pages {
        r = sys::frame_alloc(env::MEMORY, f).and_then(|_| sys::map(env::SPACE, f, va + mapped * PAGE_SIZE, Rights::READ.union(Rights::WRITE)));
        // The mapping keeps the frame; the slot is reused for the next one.
        let _ = sys::cap_delete(f);
        if r.is_err() {
            break;
        }
        mapped += 1;
    }
    slots::free(f);
    if r.is_err() {
        unmap(va, mapped);
    }
    r
}

/// Unmaps `pages` pages at `va` in this program's space (what [`map_fresh`] mapped).
pub fn unmap(va: u64, pages: u64) {
    for i in 0..pages {
        let _ = sys::unmap(env::SPACE, va + i * PAGE_SIZE);
    }
}

/// Starts `f(arg)` on CPU `cpu` at priority `prio` (at most the creator's) as a new thread of
/// this program, with its own stack and IPC buffer. The thread ends when `f` returns; its region
/// (17 pages of the budget and 1 MiB of address space) is not given back: spawn a pool of
/// threads, not one per request. If it cannot start, what it mapped goes back.
pub fn spawn(f: fn(u64), arg: u64, cpu: u64, prio: u64) -> Result<Thread, Error> {
    let base = env::THREADS_BASE + NEXT.fetch_add(1, Ordering::Relaxed) * REGION;
    let stack = base + 2 * PAGE_SIZE;
    map_fresh(base, 1)?;
    if let Err(e) = map_fresh(stack, STACK_PAGES) {
        unmap(base, 1);
        return Err(e);
    }
    let top = stack + STACK_PAGES * PAGE_SIZE;
    let made = slots::alloc().ok_or(Error::SlotOccupied).and_then(|t| {
        let r = sys::thread_create(env::MEMORY, env::TASK, crate::thread_entry(), top, prio, cpu, t)
            .and_then(|_| sys::thread_set_args(t, f as *const () as u64, arg))
            .and_then(|_| sys::set_ipc_buffer(t, base))
            .and_then(|_| sys::thread_resume(t));
        if r.is_err() {
            // A thread made but not started goes with its capability.
            let _ = sys::cap_delete(t);
            slots::free(t);
        }
        r.map(|_| t)
    });
    match made {
        Ok(t) => Ok(Thread(t)),
        Err(e) => {
            // Nothing runs on the region: its pages go back.
            unmap(base, 1);
            unmap(stack, STACK_PAGES);
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
