//! Threads of a program started by the root task.
//!
//! [`spawn`] gives each new thread a region of [`REGION`] bytes above
//! [`crate::env::THREADS_BASE`]: its IPC buffer page, an unmapped guard page, then its stack.
//! [`crate::IpcBuffer::current`] finds the calling thread's buffer from its stack pointer, so every
//! thread (the first one included) reaches its own. [`Spawned::join`] waits for a thread to end
//! and gives its region (its pages go back to the budget; the region to the next [`spawn`]) and
//! its capability slot back.
use core::sync::atomic::{AtomicU64, Ordering};
use rl4_abi::{Error, PAGE_SIZE, Rights};

use crate::cap::Thread;
use crate::{env, slots, sys};

/// The longest wait between two looks of [`Spawned::join`]: 2^31 TSC ticks (about a second at
/// 2 GHz). A `FOREVER` poll would nap for ever on a notification nothing signals.
pub const MOST_POLL: u64 = 1 << 31;

/// Bytes of address space per spawned thread.
pub const REGION: u64 = 1 << 20;
/// Stack pages of a spawned thread.
pub const STACK_PAGES: u64 = 16;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Regions given back ([`Spawned::join`], or a [`spawn`] that failed), for the next spawns to
/// take before a new one (0: empty). As many as the capability table has slots: each region
/// in use belongs to a [`Spawned`], which holds a slot, so every region given back finds room
/// (before the thirty-fourth session 64: past them a region was never used again, and a
/// program spawning and joining batches of more than 64 lost address space for good, a
/// review found).
static FREE: [AtomicU64; rl4_abi::CAP_SLOTS as usize] = [const { AtomicU64::new(0) }; rl4_abi::CAP_SLOTS as usize];

/// Most regions ever made: they must end below the first thread's IPC buffer, where
/// [`crate::IpcBuffer::current`] looks for a spawned thread's.
const MOST_REGIONS: u64 = (env::IPC_BUFFER - env::THREADS_BASE) / REGION;

/// A region for a new thread: one given back, else a new one (`OutOfMemory` if none is left).
fn take_region() -> Result<u64, Error> {
    for r in &FREE {
        let base = r.swap(0, Ordering::AcqRel);
        if base != 0 {
            return Ok(base);
        }
    }
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    if n >= MOST_REGIONS {
        return Err(Error::OutOfMemory);
    }
    Ok(env::THREADS_BASE + n * REGION)
}

/// Gives a region back (nothing of it is mapped any more).
fn give_region(base: u64) {
    for r in &FREE {
        if r.compare_exchange(0, base, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            return;
        }
    }
}

/// The notification [`nap`] waits on, made the first time (its slot plus one; 0: not yet).
static NAP: AtomicU64 = AtomicU64::new(0);

/// Sleeps for about `tsc` TSC ticks (until the first timer tick after them): a wait on a
/// notification of this program's that nothing signals, made the first time from the budget
/// and a free slot. `Err` if it could not be made.
pub fn nap(tsc: u64) -> Result<(), Error> {
    let n = match NAP.load(Ordering::Acquire) {
        0 => {
            let s = slots::alloc().ok_or(Error::SlotOccupied)?;
            if let Err(e) = sys::notification_create(env::MEMORY, s) {
                slots::free(s);
                return Err(e);
            }
            match NAP.compare_exchange(0, s + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => s,
                Err(other) => {
                    slots::free(s);
                    other - 1
                }
            }
        }
        n => n - 1,
    };
    // (A timeout of 0 would only look at the word: at least one tick.)
    match sys::wait(n, tsc.max(1)) {
        Ok(_) | Err(Error::Timeout) | Err(Error::Interrupted) => Ok(()),
        Err(e) => Err(e),
    }
}

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
        // SAFETY: the pages just mapped here, which nothing uses yet.
        unsafe { unmap(va, mapped) };
    }
    r
}

/// Unmaps `pages` pages at `va` in this program's space (what [`map_fresh`] mapped).
///
/// # Safety
/// Nothing of the program may live in those pages any more (no stack, heap or static data, no
/// reference into them): they read as unmapped from then on.
pub unsafe fn unmap(va: u64, pages: u64) {
    for i in 0..pages {
        let _ = sys::unmap(env::SPACE, va + i * PAGE_SIZE);
    }
}

/// Starts `f(arg)` on CPU `cpu` at priority `prio` (at most the creator's) as a new thread of
/// this program, with its own stack and IPC buffer. The thread ends when `f` returns; its region
/// (17 pages of the budget and 1 MiB of address space) and its capability slot stay taken until
/// [`Spawned::join`] gives them back. If it cannot start, what it mapped goes back.
pub fn spawn(f: fn(u64), arg: u64, cpu: u64, prio: u64) -> Result<Spawned, Error> {
    let base = take_region()?;
    let stack = base + 2 * PAGE_SIZE;
    if let Err(e) = map_fresh(base, 1) {
        give_region(base);
        return Err(e);
    }
    if let Err(e) = map_fresh(stack, STACK_PAGES) {
        // SAFETY: the buffer page just mapped, which nothing uses yet.
        unsafe { unmap(base, 1) };
        give_region(base);
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
        Ok(t) => Ok(Spawned { thread: Thread(t), base }),
        Err(e) => {
            // Nothing runs on the region: its pages go back.
            // SAFETY: the region's pages, which no thread ran on.
            unsafe {
                unmap(base, 1);
                unmap(stack, STACK_PAGES);
            }
            give_region(base);
            Err(e)
        }
    }
}

/// A thread [`spawn`] started: its capability, and its region until [`Spawned::join`]. Dropped
/// unjoined, its region, pages and slot stay taken for as long as the program runs.
#[derive(Debug)]
#[must_use = "a thread's stack, buffer and slot come back only through `join`"]
pub struct Spawned {
    thread: Thread,
    base: u64,
}

impl Spawned {
    /// Its capability (for `info`, `suspend`, `set_priority`...). A copy kept past
    /// [`Spawned::join`] names whatever the freed slot holds next.
    pub fn thread(&self) -> Thread {
        self.thread
    }

    /// Waits until the thread has ended (`Dead`: its function returned, or it called
    /// `ThreadExit`), checking every `poll` TSC ticks at most (rounded up to the timer's tick:
    /// [`nap`]) and at most `timeout` ticks in all ([`rl4_abi::ipc::FOREVER`]: no limit); then
    /// unmaps its IPC buffer and stack (their frames go back to the budget), gives its region to
    /// the next [`spawn`], and deletes its capability. On `Timeout` (still running after
    /// `timeout`), or an error from `ThreadInfo` or [`nap`], the handle comes back with it, and
    /// nothing changed. A thread that stopped on a fault (a panic in its function ends in one)
    /// is never joined either: the handle comes back at once with `InvalidState` (before the
    /// thirty-fourth session `join` waited for it, for ever with `FOREVER`; a review found it).
    /// A thread that never ends (waiting for ever, suspended) is never joined; deleting its
    /// capability ends it (a thread goes with its last capability) and gives the slot back, not
    /// its region. A `poll` of [`MOST_POLL`] ticks or more (`FOREVER` included) polls every
    /// [`MOST_POLL`] ticks.
    pub fn join(self, poll: u64, timeout: u64) -> Result<(), (Spawned, Error)> {
        let start = crate::rdtsc();
        let poll = poll.min(MOST_POLL);
        loop {
            match self.thread.info() {
                Ok((rl4_abi::ThreadState::Dead, _, _)) => break,
                Ok((rl4_abi::ThreadState::Faulted, _, _)) => return Err((self, Error::InvalidState)),
                Ok(_) => {}
                Err(e) => return Err((self, e)),
            }
            if timeout != rl4_abi::ipc::FOREVER && crate::rdtsc().wrapping_sub(start) >= timeout {
                return Err((self, Error::Timeout));
            }
            if let Err(e) = nap(poll) {
                return Err((self, e));
            }
        }
        // SAFETY: the thread is `Dead` (it never runs again), and nothing else of the program
        // lives in its buffer page or its stack.
        unsafe {
            unmap(self.base, 1);
            unmap(self.base + 2 * PAGE_SIZE, STACK_PAGES);
        }
        give_region(self.base);
        slots::free(self.thread.0);
        Ok(())
    }
}

/// The IPC buffer of the thread whose stack holds `sp`: a [`spawn`]ed thread's, or the first
/// thread's; `None` for a stack neither of them is on (a thread made with
/// [`crate::sys::thread_create`] and a stack of its own: before the twenty-seventh session it
/// was given the first thread's buffer, and wrote over that thread's messages).
pub(crate) fn buffer_for(sp: u64) -> Option<u64> {
    if sp >= env::THREADS_BASE && sp < env::IPC_BUFFER {
        Some((sp - 1) & !(REGION - 1))
    } else if sp > env::STACK_TOP - env::STACK_PAGES * PAGE_SIZE && sp <= env::STACK_TOP {
        Some(env::IPC_BUFFER)
    } else {
        None
    }
}
