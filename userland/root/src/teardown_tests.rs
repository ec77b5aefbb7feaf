//! Issue 17, iterative teardown (docs/security.md, "Destroying a deep object graph"): the
//! kernel destroys objects one at a time from a work list, so the depth of what one deletion
//! frees never reaches the kernel stack.
//!
//! * `teardown-task-chain`: a chain of 10,000 tasks (fewer where memory is short: each test sizes
//!   what it makes by the budget it finds, [`sized`]), each task's capability table holding the
//!   only capability to the next; deleting the head's capability frees the whole chain.
//! * `teardown-endpoint-chain`: what was a chain of endpoints, each held only by the capability
//!   in flight of a sender blocked on the one before. Since the thirty-fourth session a
//!   capability in flight keeps nothing alive, so no chain forms: each endpoint dies as the
//!   root task deletes its own capability, and its sender is let go (`PartnerGone`); the test
//!   checks that no chain stands (at most one sender left) and that the first endpoint's
//!   deletion ends the last.
//!
//! Each checks afterwards that the memory budget is back where it was, no thread is left over
//! and the kernel's consistency check (`KernelCheck`) finds nothing. On the kernel before the
//! fix both ended in a double fault on a kernel stack overflow (3,000 tasks; 2,000 endpoints).
//! (A deep chain of objects that destroy each other is made by `teardown-task-chain`, and by
//! the fuzzer's deep graphs.)
use rl4_abi::ipc::{FOREVER, NO_SLOT, Tag};
use rl4_abi::{PAGE_SIZE, Rights, Sys, ThreadState, stat};
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

/// The budget's uncharged bytes (`MemoryInfo`'s third answer: not limited by free memory).
fn uncharged() -> u64 {
    sys::memory_info_all(MEMORY).map(|m| m[2]).unwrap_or(0)
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
    let held0 = heap().2;
    let (head, a, b) = (slot(), slot(), slot());
    // A task with its space, and the derivation node of its capability's copy.
    // Two at least: the head and a task its table holds.
    let want = sized(TASK_CHAIN, rl4_abi::cost::TASK + rl4_abi::cost::SPACE + rl4_abi::cost::DERIV_NODE).max(2);
    let t0 = rl4_user::rdtsc();
    // head -> t1 -> t2 -> ...: each new task's capability goes into the previous task's table
    // (its slot 0), then the root task lets go of its own copy.
    let mut made = 1u64;
    let mut err = sys::task_create(MEMORY, head).err();
    let (mut prev, mut next) = (head, a);
    while err.is_none() && made < want {
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
    let held1 = heap().2;
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
    // The heap gives its memory back: what it holds ends within `HELD_SLACK` of its start.
    let held2 = heap().2;
    let ms = |d: u64| d * 1000 / tsc_hz();
    report(
        NAME,
        err.is_none() && made == want && del.is_ok() && back && v == 0 && held2 <= held0 + HELD_SLACK,
        format_args!(
            "a chain of {made} tasks (of {want}; {TASK_CHAIN} where memory allows; {per_task} bytes of budget each, made in {} ms; error {err:?}), head deleted in {} ms: {del:?}; \
             budget back: {back} ({} KiB short), KernelCheck violations: {v}; kernel heap held {} KiB -> {} KiB with the chain -> {} KiB",
            ms(t1 - t0),
            ms(t2 - t1),
            left0.saturating_sub(budget()) / 1024,
            held0 / 1024,
            held1 / 1024,
            held2 / 1024
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
    // A thread, an endpoint, and the capability in flight's derivation nodes.
    let want = sized(EP_CHAIN, rl4_abi::cost::THREAD + rl4_abi::cost::ENDPOINT + 2 * rl4_abi::cost::DERIV_NODE);
    let t0 = rl4_user::rdtsc();
    // Sender i blocks on endpoint i carrying endpoint i+1; then the root task deletes its own
    // capability to endpoint i (but the first): the capability in flight that names endpoint i
    // keeps nothing alive (its source, the root task's, is gone: it can never arrive), so
    // endpoint i dies and sender i gets `PartnerGone` and exits. (Before the thirty-fourth
    // session it lived on in that message, and the 10,000 made a chain that the first
    // deletion took down link by link.)
    let mut err = sys::endpoint_create(MEMORY, head).err().map(|e| ("endpoint", e));
    let (mut cur, mut next) = (head, a);
    let mut made = 0u64;
    while err.is_none() && made < want {
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
    // A thread made but not started (an error above) goes too: it is no part of the chain.
    let _ = sys::cap_delete(th);
    // Every sender but the first has been let go (its endpoint died with the root task's
    // capability): one thread more than before at most.
    let standing = wait_ms(3000, || threads() <= threads0 + 1);
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
        err.is_none() && made == want && standing && del.is_ok() && back && v == 0,
        format_args!(
            "{made} endpoints (of {want}; {EP_CHAIN} where memory allows), each named only by the capability in flight of a sender blocked on the one before \
             (made in {} ms; error {err:?}); no chain stands (each died with the root task's capability, its sender let go): {standing}; first deleted in {} ms: {del:?}; budget and threads back: {back} \
             ({} KiB short, {} threads live), KernelCheck violations: {v}",
            ms(t1 - t0),
            ms(t2 - t1),
            left0.saturating_sub(budget()) / 1024,
            threads()
        ),
    );
}

// A thread that needs no stack: system call `rsi` (`Wait` or `Send`) on the object in slot
// `rdi`, an empty message, waiting forever; then it exits whatever the result.
core::arch::global_asm!(
    ".pushsection .text.td_blocker, \"ax\"",
    ".global td_blocker",
    "td_blocker:",
    "    mov rax, rsi",
    "    xor esi, esi",
    "    mov r12, {forever}",
    "    mov r13, {no_slot}",
    "    mov r14, {no_slot}",
    "    syscall",
    "    mov eax, {exit}",
    "    syscall",
    "    ud2",
    ".popsection",
    forever = const FOREVER,
    no_slot = const NO_SLOT,
    exit = const Sys::ThreadExit as u64,
);

unsafe extern "C" {
    fn td_blocker();
}

/// Threads per burst, and bursts.
const BURST: u64 = 6_000;
const BURSTS: u64 = 2;

/// One burst: `n` threads (even), half waiting on the notification in `ntf`, half sending to
/// the endpoint in `ep`; then every one is woken (signals, receives) and exits. Returns the
/// first error.
fn burst(ntf: u64, ep: u64, th: u64, n: u64) -> Result<(), (&'static str, rl4_abi::Error)> {
    let entry = td_blocker as *const () as u64;
    for i in 0..n {
        let (obj, call, want) =
            if i % 2 == 0 { (ntf, Sys::Wait, ThreadState::BlockedNotify) } else { (ep, Sys::Send, ThreadState::BlockedSend) };
        // One priority above the root thread, on its CPU: it runs and blocks at once.
        sys::thread_create(MEMORY, TASK, entry, 0, ROOT_PRIO + 1, 0, th)
            .and_then(|_| sys::thread_set_args(th, obj, call as u64))
            .and_then(|_| sys::thread_resume(th))
            .map_err(|e| ("thread", e))?;
        if state(th) != Some(want) && !wait_ms(2000, || state(th) == Some(want)) {
            return Err(("a thread never blocked", rl4_abi::Error::Timeout));
        }
        let _ = sys::cap_delete(th);
    }
    for _ in 0..n / 2 {
        sys::signal(ntf, 1).map_err(|e| ("signal", e))?;
        sys::nb_recv(ep).map_err(|e| ("receive", e))?;
    }
    if !wait_ms(5000, || threads() == 1) {
        return Err(("threads left over", rl4_abi::Error::Timeout));
    }
    Ok(())
}

/// How far above its start the memory the kernel heap holds (`stat::HEAP_BYTES`) may end after
/// a burst of objects is freed: objects that outlive the burst keep their arena frames (one
/// page each at worst), the heap keeps a few spare frames, registries keep their slack.
const HELD_SLACK: u64 = 512 * 1024;
/// The same after memory was exhausted with every kind of object in turn (the kernel's own
/// lists grew to their largest meanwhile, and what they keep is scattered over more pages).
const HELD_SLACK_EXHAUSTED: u64 = 1024 * 1024;

fn heap() -> (u64, u64, u64) {
    let s = |w| sys::stat(MACHINE, w).unwrap_or(u64::MAX);
    (s(stat::HEAP_IN_USE), s(stat::HEAP_BOUND), s(stat::HEAP_BYTES))
}

/// Issue 17: the kernel heap must stay within what live objects are charged for. Bursts of 6,000
/// threads (fewer where memory is short: [`sized`]) block on one notification and one endpoint,
/// then all are woken and exit (18,000 threads in all, the first burst to warm up). Afterwards the
/// heap in use is where it was after the first burst (within 64 KiB), its span has not grown, the
/// budget is back, and `KernelCheck` (which compares the heap in use with the live objects' heap
/// shares plus a fixed allowance) is clean. The kernel before the fix kept every dead thread's
/// allocation alive through weak references until a registry's next pruning, and every queue's
/// buffer at its largest burst.
fn test_heap_cycles() {
    const NAME: &str = "heap-bounded-thread-bursts";
    wait_ms(3000, || threads() == 1);
    let (ntf, ep, th) = (slot(), slot(), slot());
    let left0 = budget();
    // Even: half wait, half send.
    let n = sized(BURST, rl4_abi::cost::THREAD).max(2) & !1;
    let held_start = heap().2;
    let t0 = rl4_user::rdtsc();
    let mut err = sys::notification_create(MEMORY, ntf).and_then(|_| sys::endpoint_create(MEMORY, ep)).err().map(|e| ("objects", e));
    if err.is_none() {
        err = burst(ntf, ep, th, n).err();
    }
    let (h0, bound0, span0) = heap();
    let mut done = 0;
    while err.is_none() && done < BURSTS {
        err = burst(ntf, ep, th, n).err();
        done += 1;
    }
    let (h1, bound1, span1) = heap();
    for s in [ntf, ep, th] {
        release(s);
    }
    let back = wait_ms(3000, || budget() == left0);
    let v = violations();
    let held_end = heap().2;
    let ms = (rl4_user::rdtsc() - t0) * 1000 / tsc_hz();
    report(
        NAME,
        err.is_none()
            && h1 <= h0 + 64 * 1024
            && h1 <= bound1
            && span1 <= span0 + HELD_SLACK
            && held_end <= held_start + HELD_SLACK
            && back
            && v == 0,
        format_args!(
            "{} bursts of {n} threads (of {BURST} where memory allows) on a notification and an endpoint ({ms} ms; error {err:?}): heap in use {} KiB after the \
             first (bound {} KiB), {} KiB after the last (bound {} KiB); heap held {} KiB at the start, {} KiB after the first \
             burst, {} KiB after the last, {} KiB after deletion; budget back: {back}; KernelCheck violations: {v}",
            done + 1,
            h0 / 1024,
            bound0 / 1024,
            h1 / 1024,
            bound1 / 1024,
            held_start / 1024,
            span0 / 1024,
            span1 / 1024,
            held_end / 1024
        ),
    );
}

/// `which`: `teardown-tasks`, `teardown-endpoints` or `teardown-heap` runs one of them,
/// anything else all.
pub fn run(which: &str) {
    let one = |n: &str| !which.starts_with("teardown-") || which == n;
    if one("teardown-tasks") {
        test_task_chain();
    }
    if one("teardown-endpoints") {
        test_endpoint_chain();
    }
    if one("teardown-heap") {
        test_heap_cycles();
    }
    if one("teardown-honest") {
        test_memory_info_honest();
    }
    if one("teardown-deriv") {
        test_root_node_charged();
        test_failed_copies_leave_no_root();
        test_vector_follows_live_nodes();
    }
    // Only when asked for: it exhausts the whole budget (the `exhaust-*` suites, at 64 MiB).
    if which == "teardown-exhaust" {
        test_exhaustion_all();
    }
    // Only when asked for: it takes every frame (the `fragmented-*` suite, at 64 MiB).
    if which == "teardown-fragmented" {
        test_fragmented_memory();
    }
}

/// Capabilities kept in a chain of holder tasks (slots 0..255 of each; slot 255 holds the
/// next holder), so that any number of objects outlive their root-task slot and one deletion
/// frees them all.
struct Holders {
    head: u64,
    cur: u64,
    used: u64,
}

impl Holders {
    fn new() -> Result<Holders, rl4_abi::Error> {
        let head = slot();
        sys::task_create(MEMORY, head)?;
        Ok(Holders { head, cur: head, used: 0 })
    }

    /// Moves the capability in root slot `s` into the current holder (a new holder when it is
    /// full); `s` is empty afterwards whatever the result.
    fn keep(&mut self, s: u64) -> Result<(), rl4_abi::Error> {
        let r = (|| {
            if self.used == 255 {
                let n = slot();
                if let Err(e) = sys::task_create(MEMORY, n).and_then(|_| sys::cap_copy(n, self.cur, 255, Rights::ALL)) {
                    release(n);
                    return Err(e);
                }
                if self.cur != self.head {
                    release(self.cur);
                }
                (self.cur, self.used) = (n, 0);
            }
            sys::cap_copy(s, self.cur, self.used, Rights::ALL)?;
            self.used += 1;
            Ok(())
        })();
        let _ = sys::cap_delete(s);
        r
    }

    fn release(self) {
        if self.cur != self.head {
            release(self.cur);
        }
        release(self.head);
    }
}

/// Makes objects of one kind with `make` (into root slot `s`) and keeps them until `make` or
/// keeping one fails; returns how many and the error.
fn exhaust(mut make: impl FnMut(u64) -> Result<(), rl4_abi::Error>) -> (u64, rl4_abi::Error, Option<Holders>) {
    let mut h = match Holders::new() {
        Ok(h) => h,
        Err(e) => return (0, e, None),
    };
    let s = slot();
    let mut n = 0;
    let err = loop {
        if let Err(e) = make(s).and_then(|_| h.keep(s)) {
            break e;
        }
        n += 1;
    };
    release(s);
    (n, err, Some(h))
}

/// Issue 17, "exhausting memory never panics": one kind after another, a task makes objects
/// with every system call that makes the kernel allocate (frames, threads, tasks, endpoints,
/// notifications, capability copies that grow one derivation tree, threads waiting in an
/// endpoint's and a notification's queues) until the call answers `OutOfMemory`; each kind's
/// objects are then deleted, and the budget must come back. The frames are kept while every
/// other kind runs once more, with the budget or the kernel's memory already exhausted. Run
/// also at `-m 64M` with the root budget overcommitted (`overcommit=`), where the kernel runs
/// out of frames before the budget runs out: the calls must answer `OutOfMemory` then too.
/// At the end: budget back, `KernelCheck` clean, the heap's memory back near its start.
fn test_exhaustion_all() {
    const NAME: &str = "kernel-memory-exhaustion";
    // `wait_ms` sleeps on the root task's private notification once it has yielded 64 times,
    // made (and charged, 384 bytes, in the first free root slot) at its first use: made now,
    // so that it is in the baseline (it was the "384 bytes short, a notification in root
    // slot 9" of earlier runs, made by the first wait long enough to sleep).
    crate::stress::sleep_ms(1);
    wait_ms(3000, || threads() == 1);
    // The notification the root task sleeps on is made at its first sleep (`stress::sleep_ms`):
    // before the budget and the slots are measured, not during the test (it was the
    // unexplained 384 bytes and root-slot notification of docs/memory.md).
    crate::stress::sleep_ms(1);
    let (left0, threads0) = (uncharged(), threads());
    let held0 = heap().2;
    let occupied = crate::space::occupied_slots;
    let occ0 = occupied();
    let ep0 = slot();
    let entry = td_blocker as *const () as u64;
    let mut lines: [(&str, u64, Option<rl4_abi::Error>); 14] = [("", 0, None); 14];
    let mut ok = sys::endpoint_create(MEMORY, ep0).is_ok();
    // Its root derivation node (charged to this task while `ep0` is in its slot) made now, by a
    // first copy, so that each kind's budget comes back to where it started.
    let tmp = slot();
    ok &= sys::cap_copy(ep0, TASK, tmp, Rights::ALL).is_ok();
    release(tmp);
    let waiters = |ntf: u64, ep: u64| -> (u64, rl4_abi::Error) {
        let th = slot();
        let mut n = 0u64;
        let err = loop {
            let (obj, call, want) =
                if n % 2 == 0 { (ntf, Sys::Wait, ThreadState::BlockedNotify) } else { (ep, Sys::Send, ThreadState::BlockedSend) };
            let r = sys::thread_create(MEMORY, TASK, entry, 0, ROOT_PRIO + 1, 0, th)
                .and_then(|_| sys::thread_set_args(th, obj, call as u64))
                .and_then(|_| sys::thread_resume(th));
            if let Err(e) = r {
                break e;
            }
            // It blocks at once, or its call failed and it ended.
            wait_ms(2000, || matches!(state(th), Some(s) if s == want || s == ThreadState::Dead));
            let blocked = state(th) == Some(want);
            let _ = sys::cap_delete(th);
            if !blocked {
                break rl4_abi::Error::OutOfMemory;
            }
            n += 1;
        };
        release(th);
        (n, err)
    };
    let round = |lines: &mut [(&'static str, u64, Option<rl4_abi::Error>)], first: usize| -> bool {
        let mut good = true;
        let kinds: [(&'static str, &mut dyn FnMut(u64) -> Result<(), rl4_abi::Error>); 5] = [
            ("threads", &mut |s| sys::thread_create(MEMORY, TASK, entry, 0, ROOT_PRIO, 0, s)),
            ("tasks", &mut |s| sys::task_create(MEMORY, s)),
            ("endpoints", &mut |s| sys::endpoint_create(MEMORY, s)),
            ("notifications", &mut |s| sys::notification_create(MEMORY, s)),
            ("copies", &mut |s| sys::cap_copy(ep0, TASK, s, Rights::ALL)),
        ];
        for (i, (what, make)) in kinds.into_iter().enumerate() {
            let before = uncharged();
            let (n, e, h) = exhaust(make);
            if let Some(h) = h {
                h.release();
            }
            let back = wait_ms(5000, || uncharged() == before && threads() == threads0);
            lines[first + i] = (what, n, Some(e));
            rl4_user::println!(
                "exhaustion: {what}: {n} until {e:?}, then the budget back: {back} ({} bytes short, {} threads, {threads0} before)",
                before as i64 - uncharged() as i64,
                threads()
            );

            good &= e == rl4_abi::Error::OutOfMemory && back;
        }
        let (ntf, ep) = (slot(), slot());
        let made = sys::notification_create(MEMORY, ntf).and_then(|_| sys::endpoint_create(MEMORY, ep));
        let (n, e) = if made.is_ok() { waiters(ntf, ep) } else { (0, made.err().unwrap_or(rl4_abi::Error::OutOfMemory)) };
        // The consistency check with the budget spent on waiters (thousands of threads, each
        // an entry of its maps): it checks, or answers `OutOfMemory`; it never stops the
        // kernel (before the thirty-fourth session its maps' nodes were allocated without a
        // way to fail: a review found it).
        let checked = sys::kernel_check(MACHINE);
        rl4_user::println!("exhaustion: the consistency check with {n} waiters: {checked:?}");
        good &= matches!(checked, Ok([0, _, _]) | Err(rl4_abi::Error::OutOfMemory));
        for _ in 0..n {
            let _ = sys::signal(ntf, 1);
            let _ = sys::nb_recv(ep);
        }
        let done = wait_ms(10_000, || threads() == threads0);
        release(ntf);
        release(ep);
        lines[first + 5] = ("waiters", n, Some(e));
        good & (e == rl4_abi::Error::OutOfMemory) & done
    };
    ok &= round(&mut lines, 0);
    // Frames until they run out, kept; then every kind again with nothing left.
    let (frames, ferr, fh) = exhaust(|s| sys::frame_alloc(MEMORY, s));
    lines[12] = ("frames", frames, Some(ferr));
    ok &= ferr == rl4_abi::Error::OutOfMemory;
    let left_full = budget();
    ok &= round(&mut lines[6..], 0);
    if let Some(h) = fh {
        h.release();
    }
    release(ep0);
    let back = wait_ms(5000, || uncharged() == left0 && threads() == threads0);
    let v = violations();
    let held1 = heap().2;
    let occ1 = occupied();
    for i in 0..256u64 {
        let (a, b) = (occ0[(i / 64) as usize] >> (i % 64) & 1, occ1[(i / 64) as usize] >> (i % 64) & 1);
        if a != b {
            rl4_user::println!("exhaustion: root slot {i} was {a}, is {b}: {:?}", sys::cap_identify(i));
        }
    }
    report(
        NAME,
        ok && back && v == 0 && held1 <= held0 + HELD_SLACK_EXHAUSTED,
        format_args!(
            "until OutOfMemory, from a full budget: {}; {} frames ({:?}, {} KiB of budget shown left); then with the frames kept: {}; \
             budget back: {back} ({} bytes short, {} threads left), KernelCheck violations: {v}, kernel heap held {} -> {} KiB",
            Lines(&lines[..6]),
            frames,
            ferr,
            left_full / 1024,
            Lines(&lines[6..12]),
            left0 as i64 - uncharged() as i64,
            threads(),
            held0 / 1024,
            held1 / 1024
        ),
    );
}

struct Lines<'a>(&'a [(&'a str, u64, Option<rl4_abi::Error>)]);

impl core::fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, (what, n, e)) in self.0.iter().enumerate() {
            write!(f, "{}{n} {what} ({e:?})", if i > 0 { ", " } else { "" })?;
        }
        Ok(())
    }
}

/// Issue 17, "`MemoryInfo` stays honest": after a burst of 4,000 tasks (fewer where memory is
/// short: [`sized`]) is made and deleted,
/// what `MemoryInfo` reports left can be had: that many bytes' worth of frames (each with its
/// mapping, as charged) are allocated and mapped without an error. On a kernel whose heap kept
/// the burst's pages, the frame allocator ran dry first.
fn test_memory_info_honest() {
    const NAME: &str = "memory-info-honest";
    wait_ms(3000, || threads() == 1);
    let left0 = budget();
    // A task with its space, and its place in a holder (a holder task per 255).
    let tasks = sized(4000, rl4_abi::cost::TASK + rl4_abi::cost::SPACE + rl4_abi::cost::DERIV_NODE + rl4_abi::cost::TASK / 255);
    let (h, e) = match Holders::new() {
        Ok(mut h) => {
            let s = slot();
            let mut e = None;
            for _ in 0..tasks {
                if let Err(x) = sys::task_create(MEMORY, s).and_then(|_| h.keep(s)) {
                    e = Some(x);
                    break;
                }
            }
            release(s);
            (Some(h), e)
        }
        Err(x) => (None, Some(x)),
    };
    if let Some(h) = h {
        h.release();
    }
    let back = wait_ms(5000, || budget() == left0);
    // The task whose space the frames go into is made first: what is left after it is what
    // must be had.
    let c = slot();
    let space = slot();
    let mut err = sys::task_create(MEMORY, c).and_then(|_| sys::task_space(c, space)).err();
    // Every frame costs its record and its mapping, and a page table per 512 pages (8 bytes a
    // page; 16 are counted); the page tables above the first are kept back (3 pages).
    let left = budget();
    let per = rl4_abi::cost::FRAME + rl4_abi::cost::MAP + 16;
    let want = left.saturating_sub(3 * PAGE_SIZE) / per;
    let mut got = 0u64;
    let f = slot();
    while err.is_none() && got < want {
        let r = sys::frame_alloc(MEMORY, f).and_then(|_| sys::map(space, f, 0x1000_0000_0000 + got * PAGE_SIZE, Rights::READ));
        let _ = sys::cap_delete(f);
        match r {
            Ok(()) => got += 1,
            Err(x) => err = Some(x),
        }
    }
    // And no more than the estimate kept back can be had beyond it: a `MemoryInfo` that showed
    // less than there is passed before (a review of the thirty-seventh session).
    let mut extra = 0u64;
    while err.is_none() && extra <= want {
        let r = sys::frame_alloc(MEMORY, f).and_then(|_| sys::map(space, f, 0x1000_0000_0000 + (got + extra) * PAGE_SIZE, Rights::READ));
        let _ = sys::cap_delete(f);
        if r.is_err() {
            break;
        }
        extra += 1;
    }
    let most_extra = (want * 16 + 4 * PAGE_SIZE) / per + 1;
    release(f);
    release(space);
    release(c);
    let again = wait_ms(5000, || budget() == left0);
    let v = violations();
    report(
        NAME,
        e.is_none() && back && err.is_none() && got == want && extra <= most_extra && again && v == 0,
        format_args!(
            "after {tasks} tasks (4,000 where memory allows) made and deleted ({e:?}), MemoryInfo shows {} KiB left: {got} of {want} frames allocated and mapped \
             ({err:?}), then {extra} more (at most {most_extra}); budget back: {back} {again}; KernelCheck violations: {v}",
            left / 1024
        ),
    );
}

/// Issue 17, "`MemoryInfo` stays honest with free memory fragmented": every frame is taken
/// (frames kept alternately by two holder chains, so that neighbours go to different chains),
/// then one chain is let go: what is free is mostly single frames between frames still in use.
/// Then tasks, threads and endpoints are made, in rounds, as long as `MemoryInfo` says the
/// next one fits (its cost, the two derivation nodes its copy into a holder may be charged,
/// and a new holder task when one is full): none of them may fail, and at the end less than
/// one round's worth may be left. On a kernel whose capability tables (14 KiB) and registries
/// need physically contiguous frames, `TaskCreate` answered `OutOfMemory` while `MemoryInfo`
/// still showed megabytes.
fn test_fragmented_memory() {
    const NAME: &str = "fragmented-memory-honest";
    // `wait_ms` sleeps on the root task's private notification once it has yielded 64 times,
    // made (and charged, 384 bytes, in the first free root slot) at its first use: made now,
    // so that it is in the baseline (it was the "384 bytes short, a notification in root
    // slot 9" of earlier runs, made by the first wait long enough to sleep).
    crate::stress::sleep_ms(1);
    use rl4_abi::cost;
    wait_ms(3000, || threads() == 1);
    let (left0, threads0) = (uncharged(), threads());
    // Every frame, alternately into two chains of holders.
    let mut frames = 0u64;
    let ferr;
    let chains = Holders::new().and_then(|a| Holders::new().map(|b| (a, b)));
    let (mut a, b) = match chains {
        Ok((mut a, mut b)) => {
            let s = slot();
            loop {
                let h = if frames % 2 == 0 { &mut a } else { &mut b };
                if let Err(e) = sys::frame_alloc(MEMORY, s).and_then(|_| h.keep(s)) {
                    ferr = Some(e);
                    break;
                }
                frames += 1;
            }
            release(s);
            (Some(a), Some(b))
        }
        Err(e) => {
            ferr = Some(e);
            (None, None)
        }
    };
    if let Some(b) = b {
        b.release();
    }
    // Until the chain's memory is back (the budget stops moving).
    let mut prev = u64::MAX;
    wait_ms(3000, || {
        let u = uncharged();
        let same = u == prev;
        prev = u;
        same
    });
    let promised = budget();
    let free = sys::stat(MACHINE, stat::FREE_FRAMES).unwrap_or(0);
    // Tasks, threads and endpoints while MemoryInfo says the next one fits.
    let deriv = 2 * cost::DERIV_NODE;
    let kinds: [(&str, u64); 3] = [("task", cost::TASK), ("thread", cost::THREAD), ("endpoint", cost::ENDPOINT)];
    let round = [0usize, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2];
    let mut made = [0u64; 3];
    let mut fail: Option<(&str, rl4_abi::Error, u64)> = None;
    let mut keep = Holders::new().map_err(|e| fail = Some(("holder", e, budget()))).ok();
    let s = slot();
    let entry = td_blocker as *const () as u64;
    if let Some(h) = keep.as_mut() {
        'outer: loop {
            for &k in &round {
                let (what, c) = kinds[k];
                let need = c + deriv + if h.used == 255 { cost::TASK + deriv } else { 0 };
                let shown = budget();
                if shown < need {
                    break 'outer;
                }
                let r = match k {
                    0 => sys::task_create(MEMORY, s),
                    1 => sys::thread_create(MEMORY, TASK, entry, 0, ROOT_PRIO, 0, s),
                    _ => sys::endpoint_create(MEMORY, s),
                };
                if let Err(e) = r.and_then(|_| h.keep(s)) {
                    fail = Some((what, e, shown));
                    break 'outer;
                }
                made[k] += 1;
            }
        }
    }
    release(s);
    let left = budget();
    if let Some(h) = keep {
        h.release();
    }
    if let Some(a) = a.take() {
        a.release();
    }
    let back = wait_ms(5000, || uncharged() == left0 && threads() == threads0);
    let v = violations();
    // What one round costs at most: every kind once with its nodes and a new holder.
    let slack = cost::TASK + cost::THREAD + cost::ENDPOINT + 3 * deriv + cost::TASK;
    report(
        NAME,
        ferr == Some(rl4_abi::Error::OutOfMemory) && fail.is_none() && made[0] > 0 && left < slack && back && v == 0,
        format_args!(
            "{frames} frames taken ({ferr:?}), every other one freed: {free} frames free, MemoryInfo promised {} KiB; then {} tasks, {} threads, {} \
             endpoints made while it said they fit, failure: {fail:?} (what, error, bytes shown); {} KiB left at the end \
             (less than {} KiB wanted); budget back: {back}; KernelCheck violations: {v}",
            promised / 1024,
            made[0],
            made[1],
            made[2],
            left / 1024,
            slack / 1024
        ),
    );
}

/// Issue 17, "nothing derivation-related is uncharged": the first copy of an original
/// capability makes two derivation nodes (the original's root node and the copy's), and both
/// are charged to the task whose slots hold them; deleting the copy gives one back, deleting
/// the original the other: the budget ends exactly where it started. On the kernel before, the
/// root node was charged to nobody (the budget moved by one node, not two).
fn test_root_node_charged() {
    const NAME: &str = "derivation-root-node-charged";
    // `wait_ms` sleeps on the root task's private notification once it has yielded 64 times,
    // made (and charged, 384 bytes, in the first free root slot) at its first use: made now,
    // so that it is in the baseline (it was the "384 bytes short, a notification in root
    // slot 9" of earlier runs, made by the first wait long enough to sleep).
    crate::stress::sleep_ms(1);
    wait_ms(3000, || threads() == 1);
    use rl4_abi::cost::{DERIV_NODE, ENDPOINT};
    let (e, c1, c2) = (slot(), slot(), slot());
    let u0 = uncharged();
    let made = sys::endpoint_create(MEMORY, e);
    let u1 = uncharged();
    let first = sys::cap_copy(e, TASK, c1, Rights::ALL);
    let u2 = uncharged();
    let second = sys::cap_copy(e, TASK, c2, Rights::SEND);
    let u3 = uncharged();
    release(c1);
    release(c2);
    let u4 = uncharged();
    release(e);
    let back = wait_ms(2000, || uncharged() == u0);
    let u5 = uncharged();
    report(
        NAME,
        made.is_ok()
            && first.is_ok()
            && second.is_ok()
            && u0 - u1 == ENDPOINT
            && u1 - u2 == 2 * DERIV_NODE
            && u2 - u3 == DERIV_NODE
            && u1 - u4 == DERIV_NODE
            && back,
        format_args!(
            "charged: endpoint {} (want {ENDPOINT}), first copy {} (want {}: root node and copy), second copy {} (want \
             {DERIV_NODE}); after deleting both copies {} still charged beyond the endpoint (want {DERIV_NODE}: the root node); \
             after deleting the original {} short of the start ({made:?} {first:?} {second:?})",
            u0 - u1,
            u1 - u2,
            2 * DERIV_NODE,
            u2 - u3,
            u1 - u4,
            u0 as i64 - u5 as i64
        ),
    );
}

static VF_EP: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static VF_CAP: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static VF_RESULT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(u64::MAX);

/// Sends one message on `VF_EP` carrying the capability in `VF_CAP`, blocking until received.
fn vf_sender(_: u64) {
    use core::sync::atomic::Ordering::SeqCst;
    while VF_EP.load(SeqCst) == 0 {
        sys::yield_now();
    }
    let msg = sys::Msg { tag: Tag::new(3, 0, 1), badge: 0, w: [0; 4] };
    let r = sys::ipc(Sys::Send, VF_EP.load(SeqCst), &msg, FOREVER, VF_CAP.load(SeqCst), u64::MAX);
    VF_RESULT.store(match r { Ok(_) => 0, Err(e) => e as u64 }, SeqCst);
}

/// A derivation tree's vector follows its live nodes, whichever node is last (a hostile review
/// of the twentieth session). Each of 32 rounds makes an endpoint, 2,048 copies of it in eight
/// scratch tasks, then one more copy into a keeper task (the vector's last node), and deletes
/// the scratch tasks and the original: only the keeper's copy stays, and only it is charged.
/// The kernel heap in use must grow by less than what each round keeps is charged (the
/// endpoint and the kept copy's node) and 512 bytes. On the kernel before, a live last node kept each vector at its
/// 2,050 nodes, about 96 KiB a round that no budget paid for (3 MiB in all; repeated, it took
/// the heap past its bound). Then a capability in flight whose node moves before it arrives: a
/// sender blocks carrying the last copy of a tree, the rest is deleted (the node moves down),
/// the message arrives with the capability, and revoking the original deletes both the moved
/// copy (its slot was told where its node went) and the one that arrived. Budget, threads and
/// `KernelCheck` back.
fn test_vector_follows_live_nodes() {
    use core::sync::atomic::Ordering::SeqCst;
    const NAME: &str = "derivation-vector-follows-live-nodes";
    const SCRATCH: usize = 8;
    const ROUNDS: u64 = 32;
    // What a round may leave: what it is charged for (the endpoint and the kept copy's node)
    // and 512 bytes (the endpoint's registry entry, heap tags).
    const PER_ROUND: u64 = rl4_abi::cost::ENDPOINT + rl4_abi::cost::DERIV_NODE + 512;
    wait_ms(3000, || threads() == 1);
    // The sender of the second part is made first (it waits for `VF_EP`), so that the stack the
    // root task keeps for it (`space::stack`) is out of the comparison at the end.
    VF_EP.store(0, SeqCst);
    VF_RESULT.store(u64::MAX, SeqCst);
    let t = spawn(vf_sender, 0, ROOT_PRIO, cpus() - 1);
    // (A thread costs 4 KiB and its FPU/SIMD save area, as large as the CPU's.)
    let thread_bytes = sys::stat(MACHINE, stat::THREAD_BYTES).unwrap_or(rl4_abi::cost::THREAD);
    let (left0, threads0) = (uncharged() + thread_bytes, threads() - 1);
    let (keeper, e) = (slot(), slot());
    let scratch: [u64; SCRATCH] = core::array::from_fn(|_| slot());
    let fill = |obj: u64| -> Result<(), rl4_abi::Error> {
        for &t in &scratch {
            sys::task_create(MEMORY, t)?;
            for i in 0..256 {
                sys::cap_copy(obj, t, i, Rights::ALL)?;
            }
        }
        Ok(())
    };
    let empty = || {
        for &t in &scratch {
            let _ = sys::cap_delete(t);
        }
    };
    // A round's tasks, their tables' shadows and 2,049 nodes: a budget that cannot pay for one
    // round (and a quarter more) cannot run the test (a small machine: `-m 24M`, whose root task
    // has some 700 KiB left here; it failed there before the thirty-eighth session, against
    // docs/running.md's word that every test passes at that size).
    let round_cost = SCRATCH as u64 * (rl4_abi::cost::TASK + rl4_abi::cost::CAP_SHADOW) + (SCRATCH as u64 * 256 + 1) * rl4_abi::cost::DERIV_NODE;
    if uncharged() < round_cost + round_cost / 4 {
        let left = uncharged();
        VF_EP.store(u64::MAX, SeqCst);
        release(t);
        for s in [keeper, e] {
            release(s);
        }
        for s in scratch {
            release(s);
        }
        rl4_user::println!(
            "test {NAME} ... skipped (the budget left, {} KiB, cannot pay for one round of {} KiB and a quarter more)",
            left / 1024,
            round_cost / 1024
        );
        return;
    }
    let mut err = sys::task_create(MEMORY, keeper).err();
    let h0 = heap().0;
    let mut rounds = 0;
    for r in 0..ROUNDS {
        if err.is_some() {
            break;
        }
        let step = (|| {
            sys::endpoint_create(MEMORY, e)?;
            fill(e)?;
            sys::cap_copy(e, keeper, r, Rights::ALL)
        })();
        empty();
        let _ = sys::cap_delete(e);
        match step {
            Ok(()) => rounds += 1,
            Err(x) => err = Some(x),
        }
    }
    let grown = heap().0 as i64 - h0 as i64;
    // The keeper's capabilities' nodes moved: its slots were told (the consistency check holds
    // every slot's identifier current).
    let v_kept = violations();
    // A capability in flight across a move of its node.
    let (x, obj, copy, into) = (slot(), slot(), slot(), slot());
    let set = (|| {
        sys::endpoint_create(MEMORY, x)?;
        sys::endpoint_create(MEMORY, obj)?;
        fill(obj)?;
        sys::cap_copy(obj, TASK, copy, Rights::ALL)
    })();
    VF_CAP.store(copy, SeqCst);
    VF_EP.store(x, SeqCst);
    let blocked = wait_ms(2000, || state(t) == Some(ThreadState::BlockedSend));
    empty();
    let m = sys::ipc(Sys::Recv, x, &sys::Msg::default(), tsc_hz() * 2, u64::MAX, into);
    let caps = m.map(|m| m.tag.caps()).unwrap_or(99);
    let arrived = sys::cap_identify(into).is_ok();
    wait_ms(2000, || VF_RESULT.load(SeqCst) != u64::MAX);
    let sent = VF_RESULT.load(SeqCst);
    let revoked = sys::cap_revoke(obj);
    let gone = sys::cap_identify(copy).is_err() && sys::cap_identify(into).is_err();
    wait_ms(2000, || matches!(state(t), Some(ThreadState::Dead)));
    for s in [t, x, obj, copy, into, keeper, e] {
        release(s);
    }
    for s in scratch {
        release(s);
    }
    let back = wait_ms(5000, || uncharged() == left0 && threads() == threads0);
    let v = violations();
    report(
        NAME,
        err.is_none()
            && rounds == ROUNDS
            && grown < (ROUNDS * PER_ROUND) as i64
            && v_kept == 0
            && set.is_ok()
            && blocked
            && caps == 1
            && arrived
            && sent == 0
            && revoked == Ok(2)
            && gone
            && back
            && v == 0,
        format_args!(
            "{rounds} rounds of 2,049 copies with the last one kept ({err:?}): kernel heap grew {} KiB (less than {} KiB wanted), \
             KernelCheck violations with the kept nodes moved: {v_kept}; \
             in flight across a move: set up {set:?}, sender blocked {blocked}, tag caps {caps} (want 1), arrived {arrived}, send \
             result {sent} (want 0), revoking the original {revoked:?} (want Ok(2)), both gone {gone}; budget and threads back: \
             {back} ({} bytes short, {} threads more); KernelCheck violations: {v}",
            grown / 1024,
            ROUNDS * PER_ROUND / 1024,
            left0 as i64 - uncharged() as i64,
            threads() as i64 - threads0 as i64
        ),
    );
}

/// A copy the kernel refuses changes nothing, the budget included: a `CapCopy` or `CapMint` into
/// a slot out of range or taken, a `TaskAddressSpace` into such a slot, and a send of a
/// capability through an endpoint capability without `GRANT` or with a tag the kernel refuses
/// each leave the source an original in no derivation tree, with no root node charged (a later
/// successful copy then charges both nodes, as `derivation-root-node-charged` checks). On the kernel before, each made the
/// source's root node first and failed after: 384 bytes of the budget gone per source (a
/// hostile review of the seventeenth session found it).
fn test_failed_copies_leave_no_root() {
    const NAME: &str = "failed-copies-leave-no-root-node";
    use rl4_abi::cost::DERIV_NODE;
    wait_ms(3000, || threads() == 1);
    let (e, taken, nogrant, f, t, c) = (slot(), slot(), slot(), slot(), slot(), slot());
    let made = (|| -> Result<(), rl4_abi::Error> {
        sys::endpoint_create(MEMORY, e)?;
        sys::endpoint_create(MEMORY, taken)?;
        sys::frame_alloc(MEMORY, f)?;
        sys::task_create(MEMORY, t)?;
        // An endpoint capability without GRANT (its original gets its root now: not counted).
        sys::cap_copy(taken, TASK, nogrant, Rights::SEND)
    })();
    let u0 = uncharged();
    let far = rl4_abi::CAP_SLOTS as u64 + 7;
    let mut answers = [Ok(()); 8];
    answers[0] = sys::cap_copy(e, TASK, far, Rights::ALL);
    answers[1] = sys::cap_copy(e, TASK, taken, Rights::ALL);
    answers[2] = sys::cap_mint(e, TASK, far, Rights::ALL, 5);
    answers[3] = sys::cap_mint(e, TASK, taken, Rights::ALL, 5);
    answers[4] = sys::task_space(t, far);
    answers[5] = sys::task_space(t, taken);
    let m = sys::Msg { tag: Tag::new(1, 0, 1), badge: 0, w: [0; 4] };
    answers[6] = sys::ipc(Sys::NbSend, nogrant, &m, 0, f, NO_SLOT).map(|_| ());
    // Through an endpoint capability with GRANT, with a reserved bit of the tag set.
    let bad = sys::Msg { tag: Tag(Tag::new(1, 0, 1).0 | 1 << 12), badge: 0, w: [0; 4] };
    answers[7] = sys::ipc(Sys::NbSend, e, &bad, 0, f, NO_SLOT).map(|_| ());
    let u1 = uncharged();
    // Each source is still an original in no tree: its first real copy charges two nodes.
    let before = uncharged();
    let copied = sys::cap_copy(e, TASK, c, Rights::ALL);
    let two = before - uncharged();
    release(c);
    let refused = answers.iter().all(|a| a.is_err());
    for s in [e, taken, nogrant, f, t] {
        release(s);
    }
    report(
        NAME,
        made.is_ok() && refused && u1 == u0 && copied.is_ok() && two == 2 * DERIV_NODE,
        format_args!(
            "set up {made:?}; refused copies {answers:?} (all errors wanted) changed the budget by {} bytes (want 0); \
             the first copy afterwards charged {two} (want {}: root node and copy) {copied:?}",
            u0 as i64 - u1 as i64,
            2 * DERIV_NODE
        ),
    );
}
