//! Issue 17, iterative teardown (docs/security.md, "Destroying a deep object graph"): the
//! kernel destroys objects one at a time from a work list, so the depth of what one deletion
//! frees never reaches the kernel stack.
//!
//! * `teardown-task-chain`: a chain of 10,000 tasks, each task's capability table holding the
//!   only capability to the next; deleting the head's capability frees the whole chain.
//! * `teardown-endpoint-chain`: a chain of endpoints, each held only by the capability in
//!   flight of a sender blocked on the one before; deleting the first endpoint wakes its
//!   sender, whose message's capability was the last reference to the next endpoint, and so
//!   on down the chain.
//!
//! Each checks afterwards that the memory budget is back where it was, no thread is left over
//! and the kernel's consistency check (`KernelCheck`) finds nothing. On the kernel before the
//! fix both ended in a double fault on a kernel stack overflow (3,000 tasks; 2,000 endpoints).
use rl4_abi::ipc::{FOREVER, NO_SLOT, Tag};
use rl4_abi::{Rights, Sys, ThreadState, stat};
use rl4_user::sys;

use crate::space::*;
use crate::tests::{report, state};

/// Tasks in the task chain.
const TASK_CHAIN: u64 = 10_000;
/// Endpoints in the endpoint chain (the kernel before the fix overflowed its stack at 2,000).
const EP_CHAIN: u64 = 10_000;

fn budget() -> u64 {
    sys::memory_info(MEMORY).map(|m| m.0).unwrap_or(0)
}

fn threads() -> u64 {
    sys::stat(MACHINE, stat::THREADS).unwrap_or(0)
}

/// The kernel's consistency check: its violation count (`u64::MAX` if it failed to run).
fn violations() -> u64 {
    match sys::kernel_check(MACHINE) {
        Ok([v, _, _]) => v,
        Err(_) => u64::MAX,
    }
}

/// Waits (up to 5 s) until the budget and the number of threads are back to `left0` and
/// `threads0`.
fn settled(left0: u64, threads0: u64) -> bool {
    wait_ms(5000, || budget() == left0 && threads() == threads0)
}

fn test_task_chain() {
    const NAME: &str = "teardown-task-chain";
    wait_ms(3000, || threads() == 1);
    let (left0, threads0) = (budget(), threads());
    let (head, a, b) = (slot(), slot(), slot());
    let t0 = rl4_user::rdtsc();
    // head -> t1 -> t2 -> ...: each new task's capability goes into the previous task's table
    // (its slot 0), then the root task lets go of its own copy.
    let mut made = 1u64;
    let mut err = sys::task_create(MEMORY, head).err();
    let (mut prev, mut next) = (head, a);
    while err.is_none() && made < TASK_CHAIN {
        let r = sys::task_create(MEMORY, next).and_then(|_| sys::cap_copy(next, prev, 0, Rights::ALL));
        if let Err(e) = r {
            err = Some(e);
            break;
        }
        made += 1;
        if prev != head {
            let _ = sys::cap_delete(prev);
        }
        prev = next;
        next = if next == a { b } else { a };
    }
    let per_task = (left0 - budget()) / made.max(1);
    let _ = sys::cap_delete(prev);
    let t1 = rl4_user::rdtsc();
    // The whole chain hangs off `head` now: one deletion frees it all.
    let del = sys::cap_delete(head);
    let t2 = rl4_user::rdtsc();
    let back = settled(left0, threads0);
    let v = violations();
    for s in [head, a, b] {
        release(s);
    }
    let ms = |d: u64| d * 1000 / tsc_hz();
    report(
        NAME,
        err.is_none() && made == TASK_CHAIN && del.is_ok() && back && v == 0,
        format_args!(
            "a chain of {made} tasks ({per_task} bytes of budget each, made in {} ms; error {err:?}), head deleted in {} ms: {del:?}; \
             budget back: {back} ({} KiB short), KernelCheck violations: {v}",
            ms(t1 - t0),
            ms(t2 - t1),
            left0.saturating_sub(budget()) / 1024
        ),
    );
}

// A sender that needs no stack: `Send` on the endpoint in slot `rdi`, carrying the capability
// in slot `rsi`, waiting forever; then it exits whatever the result.
core::arch::global_asm!(
    ".pushsection .text.td_sender, \"ax\"",
    ".global td_sender",
    "td_sender:",
    "    mov r13, rsi",
    "    mov rsi, {tag}",
    "    mov r12, {forever}",
    "    mov r14, {no_slot}",
    "    mov eax, {send}",
    "    syscall",
    "    mov eax, {exit}",
    "    syscall",
    "    ud2",
    ".popsection",
    tag = const Tag::new(1, 0, 1).0,
    forever = const FOREVER,
    no_slot = const NO_SLOT,
    send = const Sys::Send as u64,
    exit = const Sys::ThreadExit as u64,
);

unsafe extern "C" {
    fn td_sender();
}

fn test_endpoint_chain() {
    const NAME: &str = "teardown-endpoint-chain";
    wait_ms(3000, || threads() == 1);
    let (left0, threads0) = (budget(), threads());
    let (head, a, b, th) = (slot(), slot(), slot(), slot());
    let entry = td_sender as *const () as u64;
    let t0 = rl4_user::rdtsc();
    // Sender i blocks on endpoint i carrying endpoint i+1; then the root task deletes its own
    // capability to endpoint i (but the first): endpoint i+1 lives on only in that message.
    let mut err = sys::endpoint_create(MEMORY, head).err().map(|e| ("endpoint", e));
    let (mut cur, mut next) = (head, a);
    let mut made = 0u64;
    while err.is_none() && made < EP_CHAIN {
        if let Err(e) = sys::endpoint_create(MEMORY, next) {
            err = Some(("endpoint", e));
            break;
        }
        // One priority above the root thread, on its CPU: it runs (and blocks) at once.
        let r = sys::thread_create(MEMORY, TASK, entry, 0, ROOT_PRIO + 1, 0, th)
            .and_then(|_| sys::thread_set_args(th, cur, next))
            .and_then(|_| sys::thread_resume(th));
        if let Err(e) = r {
            err = Some(("thread", e));
            break;
        }
        if !wait_ms(2000, || state(th) == Some(ThreadState::BlockedSend)) {
            err = Some(("sender never blocked", rl4_abi::Error::Timeout));
            break;
        }
        let _ = sys::cap_delete(th);
        made += 1;
        if cur != head {
            let _ = sys::cap_delete(cur);
        }
        cur = next;
        next = if next == a { b } else { a };
    }
    let _ = sys::cap_delete(cur);
    let t1 = rl4_user::rdtsc();
    // Only `head` is left in the root task's table: deleting it starts the cascade.
    let del = sys::cap_delete(head);
    let t2 = rl4_user::rdtsc();
    let back = settled(left0, threads0);
    let v = violations();
    for s in [head, a, b, th] {
        release(s);
    }
    let ms = |d: u64| d * 1000 / tsc_hz();
    report(
        NAME,
        err.is_none() && made == EP_CHAIN && del.is_ok() && back && v == 0,
        format_args!(
            "{made} endpoints, each held only by the capability in flight of a sender blocked on the one before \
             (made in {} ms; error {err:?}), first deleted in {} ms: {del:?}; budget and threads back: {back} \
             ({} KiB short, {} threads live), KernelCheck violations: {v}",
            ms(t1 - t0),
            ms(t2 - t1),
            left0.saturating_sub(budget()) / 1024,
            threads()
        ),
    );
}

/// `which`: `teardown-tasks` or `teardown-endpoints` runs one of them, anything else both.
pub fn run(which: &str) {
    if which != "teardown-endpoints" {
        test_task_chain();
    }
    if which != "teardown-tasks" {
        test_endpoint_chain();
    }
}
