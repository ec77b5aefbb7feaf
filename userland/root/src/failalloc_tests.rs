//! Issue 17, "exhausting memory never panics", by construction: with the kernel option
//! `failalloc=SEED/N` one in N of the kernel heap allocations made inside system calls fails
//! on purpose (docs/memory.md, "Allocation failure injection"). The root task asks for its own
//! calls to fail too (`measure::FAILALLOC`), then makes every kind of call that allocates, in
//! loops: frames and mappings, tasks and their address spaces, endpoints, notifications,
//! threads, capability copies, mints and revocations, capability copies into a new task (its
//! table's shadow), IPC with a capability transferred, bursts of threads waiting on a
//! notification and an endpoint, waits with timeouts, an interrupt line bound and unbound,
//! port ranges, fault handlers, a device page. Each call must work or answer `OutOfMemory` (nothing else: a
//! failure must not show up as another error, and none may panic the kernel). Afterwards,
//! with the failures off again: every thread gone, the budget back to the byte, `KernelCheck`
//! clean, the kernel heap in use back within `rl4_abi::HEAP_ALLOWANCE` of its start and within
//! its bound, and some allocations did fail (else the test proves nothing).
use rl4_abi::ipc::{FOREVER, NO_SLOT, Tag};
use rl4_abi::{Error, IRQ_CPU_CALLER, Rights, Sys, ThreadState, measure, root_slots, stat};
use rl4_user::sys::{self, Msg};

use crate::space::*;
use crate::tests::{report, state};

/// Rounds of every kind of call.
const ROUNDS: u64 = 150;
/// Threads per waiter burst.
const BURST: u64 = 6;
/// Where the test maps frames in the root task.
const VA: u64 = 0x0000_5f00_0000_0000;

// Threads that need no stack. `fa_blocker`: system call `rsi` (`Wait` or `Send`) on the object
// in slot `rdi`, an empty message, waiting forever, then exit. `fa_receiver`: `Recv` on the
// endpoint in slot `rdi` taking a capability into slot `rsi`, then exit. Each exits only if its
// call answered success or `OutOfMemory`; any other answer is an invalid instruction, which
// leaves the thread `Faulted` (no handler) for the test to see ([`ended`]).
core::arch::global_asm!(
    ".pushsection .text.fa_blocker, \"ax\"",
    ".global fa_blocker",
    "fa_blocker:",
    "    mov rax, rsi",
    "    xor esi, esi",
    "    mov r12, {forever}",
    "    mov r13, {no_slot}",
    "    mov r14, {no_slot}",
    "    syscall",
    "    jmp 2f",
    ".global fa_receiver",
    "fa_receiver:",
    "    mov r14, rsi",
    "    mov eax, {recv}",
    "    xor esi, esi",
    "    mov r12, {forever}",
    "    mov r13, {no_slot}",
    "    syscall",
    "2:",
    "    test rax, rax",
    "    jz 3f",
    "    cmp rax, {oom}",
    "    jne 4f",
    "3:",
    "    mov eax, {exit}",
    "    syscall",
    "4:",
    "    ud2",
    ".popsection",
    forever = const FOREVER,
    no_slot = const NO_SLOT,
    oom = const Error::OutOfMemory as u64,
    recv = const Sys::Recv as u64,
    exit = const Sys::ThreadExit as u64,
);

unsafe extern "C" {
    fn fa_blocker();
    fn fa_receiver();
}

/// The kinds of call counted.
const KINDS: [&str; 17] = [
    "FrameAlloc",
    "Map",
    "TaskCreate",
    "TaskAddressSpace",
    "CapCopy",
    "CapMint",
    "CapRevoke",
    "EndpointCreate",
    "NotificationCreate",
    "ThreadCreate",
    "waiter",
    "IPC+cap",
    "timeout",
    "IrqGet/Bind",
    "IoPortGet",
    "FaultHandler",
    "DeviceMemGet",
];

struct Tally {
    ok: [u64; KINDS.len()],
    oom: [u64; KINDS.len()],
    /// Answers other than `Ok` and `OutOfMemory` where only those may come.
    bad: u64,
}

impl Tally {
    /// Counts `r` for kind `k`; returns whether it worked.
    fn note<T>(&mut self, k: usize, what: &str, r: Result<T, Error>) -> bool {
        match r {
            Ok(_) => {
                self.ok[k] += 1;
                true
            }
            Err(Error::OutOfMemory) => {
                self.oom[k] += 1;
                false
            }
            Err(e) => {
                self.wrong(k, format_args!("({what}) answered {e:?}"));
                false
            }
        }
    }

    /// Counts a wrong outcome of kind `k`, told as `what` (the first few are printed).
    fn wrong(&mut self, k: usize, what: core::fmt::Arguments) {
        if self.bad < 5 {
            rl4_user::println!("failalloc: {}: {what}", KINDS[k]);
        }
        self.bad += 1;
    }
}

fn threads() -> u64 {
    sys::stat(MACHINE, stat::THREADS).unwrap_or(0)
}

fn uncharged() -> u64 {
    sys::memory_info_all(MEMORY).map(|m| m[2]).unwrap_or(0)
}

fn heap_in_use() -> u64 {
    sys::stat(MACHINE, stat::HEAP_IN_USE).unwrap_or(u64::MAX)
}

/// Starts `fa_blocker` (or `fa_receiver`) with arguments `a0`, `a1` in root slot `th`, one
/// priority above the root thread on its CPU, so that it runs at once; waits until it blocked
/// or ended. Whether it blocks.
fn start(t: &mut Tally, k: usize, entry: unsafe extern "C" fn(), a0: u64, a1: u64, th: u64) -> bool {
    let r = sys::thread_create(MEMORY, TASK, entry as *const () as u64, 0, ROOT_PRIO + 1, 0, th);
    if !t.note(9, "a thread", r) {
        return false;
    }
    let r = sys::thread_set_args(th, a0, a1).and_then(|_| sys::thread_resume(th));
    if let Err(e) = r {
        t.note::<()>(k, "set args, resume", Err(e));
        return false;
    }
    wait_ms(2000, || matches!(state(th), Some(s) if s != ThreadState::Runnable && s != ThreadState::Running));
    let s = state(th);
    // A thread whose own call failed for want of memory ended (its exit is all it did); one
    // whose call answered anything else stopped on its invalid instruction.
    if s == Some(ThreadState::Faulted) {
        t.wrong(k, format_args!("a thread stopped at once: its own call answered neither success nor OutOfMemory"));
    }
    matches!(s, Some(ThreadState::BlockedNotify | ThreadState::BlockedSend | ThreadState::BlockedRecv))
}

/// Waits until the thread in slot `th`, woken (or sent to), has ended; counts as a bad answer a
/// thread whose call answered neither success nor `OutOfMemory` (it stopped `Faulted`) or that
/// never ended (its wake-up lost).
fn ended(t: &mut Tally, k: usize, th: u64) {
    let done = || matches!(state(th), Some(ThreadState::Dead | ThreadState::Faulted));
    wait_ms(2000, done);
    match state(th) {
        Some(ThreadState::Dead) => {}
        Some(ThreadState::Faulted) => {
            t.wrong(k, format_args!("a woken thread stopped: its call answered neither success nor OutOfMemory"));
        }
        s => t.wrong(k, format_args!("a woken thread did not end within 2 s ({s:?})")),
    }
}

fn round(t: &mut Tally, r: u64, hpet: u64) {
    let (f, tk, sp, ep, ntf, c1, c2, th, got) = (slot(), slot(), slot(), slot(), slot(), slot(), slot(), slot(), slot());
    // Frames and mappings (page tables, the space's map entry).
    if t.note(0, "frame", sys::frame_alloc(MEMORY, f)) {
        // One address (its page tables were made before the budget was measured).
        if t.note(1, "map", sys::map(SPACE, f, VA, Rights::READ.union(Rights::WRITE))) {
            let _ = sys::unmap(SPACE, VA);
        }
    }
let have_ep = t.note(7, "endpoint", sys::endpoint_create(MEMORY, ep));
    let have_ntf = t.note(8, "notification", sys::notification_create(MEMORY, ntf));
    // A task, its address space, capabilities copied and minted into it (its first endpoint
    // capability makes its table's shadow).
    if t.note(2, "task", sys::task_create(MEMORY, tk)) {
        t.note(3, "its space", sys::task_space(tk, sp));
        if have_ep {
            t.note(4, "into the task", sys::cap_copy(ep, tk, 0, Rights::ALL));
            t.note(5, "into the task", sys::cap_mint(ep, tk, 1, Rights::ALL, r + 1));
        }
        if r % 4 == 0 {
            let _ = sys::task_kill(tk);
        }
    }
    if have_ep && have_ntf {
        // Derived capabilities in the root task, then revoked.
        t.note(4, "a copy", sys::cap_copy(ep, TASK, c1, Rights::ALL));
        t.note(5, "a mint", sys::cap_mint(ntf, TASK, c2, Rights::ALL, 7));
        t.note(6, "revoke", sys::cap_revoke(ep));
        t.note(6, "revoke", sys::cap_revoke(ntf));
        // A burst of waiters on the notification and the endpoint, then all woken.
        let mut blocked = [0u64; BURST as usize];
        let mut n = 0;
        for i in 0..BURST {
            let w = slot();
            let (obj, call) = if i % 2 == 0 { (ntf, Sys::Wait) } else { (ep, Sys::Send) };
            if start(t, 10, fa_blocker, obj, call as u64, w) {
                t.ok[10] += 1;
                blocked[n] = w;
                n += 1;
            } else {
                release(w);
            }
        }
        // Every waiter woken (as many signals and receives as waiters: each signal wakes one
        // waiter of the notification, each receive takes one sender's message), then each
        // must have ended with its call answered success.
        for _ in &blocked[..n] {
            let _ = sys::signal(ntf, 1);
            let _ = sys::nb_recv(ep);
        }
        for &w in &blocked[..n] {
            ended(t, 10, w);
            release(w);
        }
        // IPC with a capability transferred: a receiver takes the notification capability into
        // root slot `got`.
        if start(t, 11, fa_receiver, ep, got, th) {
            let m = Msg { tag: Tag::new(1, 1, 1), badge: 0, w: [r, 0, 0, 0] };
            t.note(11, "send with a capability", sys::ipc(Sys::Send, ep, &m, FOREVER, ntf, NO_SLOT));
            // It has ended once what it received is in `got` (a receiver that only became
            // runnable has not taken the capability into its slot yet).
            let dead = || matches!(state(th), Some(ThreadState::Dead | ThreadState::Faulted));
            if !wait_ms(500, dead) && matches!(state(th), Some(ThreadState::BlockedRecv)) {
                let _ = sys::nb_send(ep, &Msg { tag: Tag::new(1, 0, 0), badge: 0, w: [0; 4] });
            }
            ended(t, 11, th);
        }
        release(th);
        // Waits with a timeout (the CPU's deadline list).
        match sys::wait(ntf, 1) {
            Err(Error::Timeout) | Ok(_) => t.ok[12] += 1,
            e => {
                t.note(12, "wait with a timeout", e);
            }
        }
        match sys::recv_timeout(ep, 1) {
            Err(Error::Timeout) | Ok(_) => t.ok[12] += 1,
            e => {
                t.note(12, "receive with a timeout", e);
            }
        }
        // An interrupt line (COM2's, 3) bound to the notification and unbound.
        let irq = slot();
        if t.note(13, "irq 3", sys::irq_get(root_slots::DEVICES, 3, irq)) {
            if t.note(13, "bind", sys::irq_bind(irq, ntf, 1, IRQ_CPU_CALLER)) {
                let _ = sys::irq_unbind(irq);
            }
        }
        release(irq);
        // A thread with a fault handler, never started.
        if t.note(9, "a thread", sys::thread_create(MEMORY, TASK, 0, 0, 1, 0, th)) {
            t.note(15, "fault handler", sys::thread_set_fault_handler(th, ep));
        }
        release(th);
    }
    let ports = slot();
    t.note(14, "ports", sys::ioport_get(root_slots::DEVICES, 0x2f8, 8, ports));
    // A device page (the HPET's registers): its frame object, given back at once.
    if hpet != 0 {
        let d = slot();
        t.note(16, "the HPET page", sys::device_mem_get(root_slots::DEVICES, hpet & !0xfff, d));
        release(d);
    }
    for s in [f, tk, sp, ep, ntf, c1, c2, got, ports] {
        release(s);
    }
}

pub fn run(bi: &rl4_abi::BootInfo) {
    const NAME: &str = "failalloc-every-call";
    wait_ms(3000, || threads() == 1);
    // The page tables behind `VA` stay with the root task: made before the budget is measured.
    let f = slot();
    if sys::frame_alloc(MEMORY, f).and_then(|_| sys::map(SPACE, f, VA, Rights::READ)).is_ok() {
        let _ = sys::unmap(SPACE, VA);
    }
    release(f);
    // So is the notification the root task sleeps on (made at its first sleep).
    crate::stress::sleep_ms(1);
    let (left0, threads0, heap0, held0) = (uncharged(), threads(), heap_in_use(), sys::stat(MACHINE, stat::HEAP_BYTES).unwrap_or(0));
    let failed0 = sys::stat(MACHINE, stat::FAILED_ALLOCS).unwrap_or(0);
    let occupied = crate::space::occupied_slots;
    let occ0 = occupied();
    let one_in = match sys::measure(MACHINE, measure::FAILALLOC, 1) {
        Ok([n, _, _]) => n,
        Err(e) => {
            report(NAME, false, format_args!("the kernel does not fail allocations ({e:?}): boot it with failalloc=SEED/N"));
            return;
        }
    };
    let mut t = Tally { ok: [0; KINDS.len()], oom: [0; KINDS.len()], bad: 0 };
    let t0 = rl4_user::rdtsc();
    for r in 0..ROUNDS {
        round(&mut t, r, bi.hpet);
    }
    let off = sys::measure(MACHINE, measure::FAILALLOC, 0);
    let ms = (rl4_user::rdtsc() - t0) * 1000 / tsc_hz();
    let failed = sys::stat(MACHINE, stat::FAILED_ALLOCS).unwrap_or(0) - failed0;
    let back = wait_ms(5000, || threads() == threads0 && uncharged() == left0);
    let v = match sys::kernel_check(MACHINE) {
        Ok([v, _, _]) => v,
        Err(_) => u64::MAX,
    };
    let (heap1, bound1) = (heap_in_use(), sys::stat(MACHINE, stat::HEAP_BOUND).unwrap_or(0));
    let held1 = sys::stat(MACHINE, stat::HEAP_BYTES).unwrap_or(0);
    let occ1 = occupied();
    for i in 0..256u64 {
        if (occ0[(i / 64) as usize] ^ occ1[(i / 64) as usize]) >> (i % 64) & 1 != 0 {
            rl4_user::println!("failalloc: root slot {i} changed: {:?}", sys::cap_identify(i));
        }
    }
    // Every kind worked at least once, and the failures reached the calls.
    let all_worked = t.ok.iter().enumerate().all(|(k, &n)| n > 0 || (k == 16 && bi.hpet == 0));
    let ooms: u64 = t.oom.iter().sum();
    for (k, name) in KINDS.iter().enumerate() {
        rl4_user::println!("failalloc: {name}: {} ok, {} OutOfMemory", t.ok[k], t.oom[k]);
    }
    report(
        NAME,
        off.is_ok() && t.bad == 0 && all_worked && failed > 0 && ooms > 0 && back && v == 0 && heap1 <= heap0 + rl4_abi::HEAP_ALLOWANCE && heap1 <= bound1,
        format_args!(
            "one in {one_in}: {ROUNDS} rounds of every allocating call in {ms} ms; {failed} allocations failed on purpose, {ooms} calls \
             answered OutOfMemory, {} other answers; every kind worked: {all_worked}; threads and budget back: {back} ({} bytes \
             short, {} threads); KernelCheck violations: {v}; heap in use {} -> {} KiB (bound {} KiB), held {} -> {} KiB",
            t.bad,
            left0 as i64 - uncharged() as i64,
            threads() as i64 - threads0 as i64,
            heap0 / 1024,
            heap1 / 1024,
            bound1 / 1024,
            held0 / 1024,
            held1 / 1024
        ),
    );
}
