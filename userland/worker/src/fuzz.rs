//! The fuzzer: the `worker` program's `FUZZ` command (the root task's side is
//! `userland/root/src/fuzz.rs`; the layout both use is `rl4_user::fuzz`).
//!
//! A fuzzer task runs several fuzzing threads (the first, which the root task starts, makes the
//! others). Each issues system calls chosen to get deep into the kernel: it keeps a shadow of
//! its capability table (which kind of object each slot holds: what it made, what the root task
//! gave it, what it found by `CapIdentify`), so that most calls name a slot of the right type,
//! a free destination slot, a mapped address of its own, a priority it may give, a CPU that
//! exists; a minority of arguments (and one call in sixteen entirely) are hostile values
//! instead: slots out of range or empty, pointers into the kernel, non-canonical or unmapped,
//! lengths around every limit, reserved bits. With the root task's `cross` option it holds
//! capabilities to the other fuzzers' tasks and first threads, and suspends, resumes, moves,
//! re-prioritises and (rarely) kills them, creates helper threads in their tasks, and copies
//! capabilities into their tables. It sets IPC buffers and sends long messages, waits with
//! every kind of timeout including `FOREVER` (the root task's watchdog ends a task whose
//! thread makes no call for 2 s), and starts helper threads (tiny loops of blocking IPC calls,
//! in assembly, which need no stack) that gather on the shared endpoints and notifications.
//!
//! Nothing the calls do is off limits for the fuzzer itself (deleting its capabilities,
//! unmapping its code, ending its task), but it never copies a capability into a task other
//! than its own or another fuzzer's: a task made by `TaskCreate` that held a capability to
//! itself would never be freed (the kernel documents such a cycle as the task's own leak), and
//! the run checks that every byte comes back once the fuzzers are gone. The shadow cannot
//! promise that (threads racing on a slot make it stale), so slot numbers do: see
//! [`guard_destinations`]. The one exception is `fuzz/deep.rs`, whose builders link chains of
//! tasks, endpoints and derived capabilities (each new task only into the one made before it,
//! so no cycle), take them down at random times, and race on their slots from the task's
//! other threads.
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use rl4_user::abi::ipc::{FOREVER, NO_SLOT, Tag};
use rl4_user::abi::{CAP_SLOTS, Error, ObjType, PAGE_SIZE, Rights, Sys};
use rl4_user::fuzz::{FLAG_CROSS, MAX_THREADS, PAGE, slot, va, word};

mod deep;

// ---- the shadow of the capability table (shared by the task's threads) -----------------------

const EMPTY: u8 = 0;
const UNKNOWN: u8 = 1;
/// This task (slot 0 and copies of it).
const OWN_TASK: u8 = 2;
/// Another fuzzer's task (from the root task: no `GRANT`).
const PEER_TASK: u8 = 3;
/// A task this task made (`TaskCreate`): never a destination of a copy.
const SUB_TASK: u8 = 4;
/// A task capability of unknown origin (found with `GRANT`): never a destination of a copy.
const FOREIGN_TASK: u8 = 5;
const SPACE: u8 = 6;
/// A thread of this task (made here, or a copy of one).
const OWN_THREAD: u8 = 7;
/// A thread found in the table (another fuzzer's, given by the root task or copied in).
const PEER_THREAD: u8 = 8;
const FRAME: u8 = 9;
const MEMORY: u8 = 10;
const MACHINE: u8 = 11;
const EP: u8 = 12;
const EP_BADGED: u8 = 13;
const NOTE: u8 = 14;
const NOTE_BADGED: u8 = 15;
/// An `IoPort` capability (the root task's, copied about).
const IOPORT: u8 = 16;
/// An `Irq` capability (COM2's line, the root task's, copied about).
const IRQ: u8 = 17;
const KINDS: usize = 18;

static KIND: [AtomicU8; CAP_SLOTS as usize] = [const { AtomicU8::new(UNKNOWN) }; CAP_SLOTS as usize];
/// For slots 0..128: a bit set per kind.
static MASK: [[AtomicU64; 2]; KINDS] = [const { [const { AtomicU64::new(0) }; 2] }; KINDS];
/// The task's seed and configuration (set by the first thread before it starts the others).
static SEED: AtomicU64 = AtomicU64::new(0);
static FLAGS: AtomicU64 = AtomicU64::new(0);
static CPUS: AtomicU64 = AtomicU64::new(1);

fn kind(s: u64) -> u8 {
    if s < CAP_SLOTS { KIND[s as usize].load(Relaxed) } else { EMPTY }
}

fn set_kind(s: u64, k: u8) {
    if s >= CAP_SLOTS {
        return;
    }
    let old = KIND[s as usize].swap(k, Relaxed);
    if s < 128 && old != k {
        let (w, b) = ((s / 64) as usize, 1u64 << (s % 64));
        MASK[old as usize][w].fetch_and(!b, Relaxed);
        MASK[k as usize][w].fetch_or(b, Relaxed);
    }
}

/// The kind `CapIdentify`'s answer means (keeping what this task knows better).
fn kind_of(s: u64, ty: u64, rights: u64, badge: u64) -> u8 {
    let old = kind(s);
    let grant = rights & Rights::GRANT.0 != 0;
    match ObjType::try_from(ty) {
        Ok(ObjType::Task) if matches!(old, OWN_TASK | SUB_TASK | PEER_TASK) => old,
        Ok(ObjType::Task) => {
            if grant {
                FOREIGN_TASK
            } else {
                PEER_TASK
            }
        }
        Ok(ObjType::AddressSpace) => SPACE,
        Ok(ObjType::Thread) if old == OWN_THREAD => OWN_THREAD,
        Ok(ObjType::Thread) => PEER_THREAD,
        Ok(ObjType::Frame) => FRAME,
        Ok(ObjType::Memory) => MEMORY,
        Ok(ObjType::Machine) => MACHINE,
        Ok(ObjType::Endpoint) => {
            if badge != 0 {
                EP_BADGED
            } else {
                EP
            }
        }
        Ok(ObjType::Notification) => {
            if badge != 0 {
                NOTE_BADGED
            } else {
                NOTE
            }
        }
        Ok(ObjType::IoPort) => IOPORT,
        Ok(ObjType::Irq) => IRQ,
        // The fuzzer's tasks are given no other device capability.
        Ok(ObjType::Devices) | Err(_) => UNKNOWN,
    }
}

fn is_task(k: u8) -> bool {
    matches!(k, OWN_TASK | PEER_TASK | SUB_TASK | FOREIGN_TASK)
}

fn cross() -> bool {
    FLAGS.load(Relaxed) & FLAG_CROSS != 0
}

// ---- the counters page -------------------------------------------------------------------------

fn counter(i: usize) -> &'static AtomicU64 {
    // SAFETY: the root task maps the counters page at `PAGE` before the fuzzer starts; if a
    // call unmapped it, this access faults and the kernel stops the thread (fair game).
    unsafe { &*((PAGE as *const AtomicU64).add(i)) }
}

fn add(i: usize, v: u64) {
    counter(i).fetch_add(v, Relaxed);
}

// ---- raw system calls ----------------------------------------------------------------------------

/// A system call with every argument register: `rax` in, (`rax`, `rdi`, `rsi`, `rdx`) out (as
/// `rl4_user::sys::raw_full`), checking that the kernel kept what the ABI says it keeps: `rbx`,
/// `rbp`, `r12` to `r15` and `xmm5`, loaded with values that change from call to call, and `r10`,
/// `r8`, `r9` after a call that is not IPC (which may return message words there). A change is
/// counted (`word::REGS_CHANGED`, which fails the run), with the call (`word::REGS_CHANGED_CALL`;
/// a fuzzer has no right to print).
#[inline(always)]
fn raw(n: u64, a: &[u64; 6], timeout: u64, r13: u64, r14: u64) -> (u64, u64, u64, u64) {
    static CANARY: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let k = CANARY.fetch_add(0x6a09_e667_f3bc_c909, Relaxed);
    let (rax, rdi, rsi, rdx, r10, r8, r9): (u64, u64, u64, u64, u64, u64, u64);
    let (o12, o13, o14, o15, kept): (u64, u64, u64, u64, u64);
    // SAFETY: `syscall` enters the kernel, which checks every argument; the block saves and
    // restores `rbx` and `rbp` itself (on the stack: no `nostack`), declares every other register
    // it or the kernel writes, and leaves in `rcx` the difference between what `rbx`, `rbp` and
    // `xmm5` held before and after.
    unsafe {
        core::arch::asm!(
            "push rbx",
            "push rbp",
            "mov rbx, r15",
            "mov rbp, r15",
            "not rbp",
            "movq xmm5, r15",
            "syscall",
            "mov rcx, rbx",
            "xor rcx, r15",
            "mov r11, rbp",
            "not r11",
            "xor r11, r15",
            "or rcx, r11",
            "movq r11, xmm5",
            "xor r11, r15",
            "or rcx, r11",
            "pop rbp",
            "pop rbx",
            inlateout("rax") n => rax,
            inlateout("rdi") a[0] => rdi,
            inlateout("rsi") a[1] => rsi,
            inlateout("rdx") a[2] => rdx,
            inlateout("r10") a[3] => r10,
            inlateout("r8") a[4] => r8,
            inlateout("r9") a[5] => r9,
            inlateout("r12") timeout => o12,
            inlateout("r13") r13 => o13,
            inlateout("r14") r14 => o14,
            inlateout("r15") k => o15,
            lateout("rcx") kept,
            lateout("r11") _,
            out("xmm5") _,
        );
    }
    let ipc = [Sys::Send, Sys::NbSend, Sys::Call, Sys::Recv, Sys::NbRecv, Sys::Reply, Sys::ReplyRecv].iter().any(|&s| s as u64 == n);
    let changed = kept != 0 || o12 != timeout || o13 != r13 || o14 != r14 || o15 != k || (!ipc && (r10, r8, r9) != (a[3], a[4], a[5]));
    if changed {
        add(word::REGS_CHANGED, 1);
        counter(word::REGS_CHANGED_CALL).fetch_max(n.min(255) + 1, Relaxed);
    }
    (rax, rdi, rsi, rdx)
}

// ---- helper threads ------------------------------------------------------------------------------

// Helper threads: a loop of one blocking IPC call on the object in slot `rdi`, with timeout
// `rsi`, in the task they were created in (every fuzzer task holds the shared endpoints and
// notifications in the same slots, and runs this program at the same addresses). They use no
// stack and count their calls in the counters page of their task. A result other than success,
// `Timeout`, `NoCaller` or `PartnerGone` ends the thread (its object is gone or of another type),
// and so does the root task's `STOP` word.
core::arch::global_asm!(
    ".pushsection .text.fz_helpers, \"ax\"",
    ".global fz_helper_server",
    "fz_helper_server:",
    "    mov ebp, {reply_recv}",
    "    jmp 2f",
    ".global fz_helper_client",
    "fz_helper_client:",
    "    mov ebp, {call}",
    "    jmp 2f",
    ".global fz_helper_sender",
    "fz_helper_sender:",
    "    mov ebp, {send}",
    "    jmp 2f",
    ".global fz_helper_receiver",
    "fz_helper_receiver:",
    "    mov ebp, {recv}",
    "    jmp 2f",
    ".global fz_helper_waiter",
    "fz_helper_waiter:",
    "    mov ebp, {wait}",
    // With the direction flag set (they use no string instruction): the kernel must not
    // inherit it from their system calls or from the interrupts that find them running.
    "2:  std",
    "    mov rbx, rdi",
    "    mov r15, rsi",
    "    mov r13, -1",
    "    mov r14, -1",
    "3:  mov rcx, {page}",
    "    cmp qword ptr [rcx + {stop}], 0",
    "    jne 4f",
    "    mov rdi, rbx",
    "    mov esi, 2",
    "    mov r12, r15",
    "    mov eax, ebp",
    "    syscall",
    "    mov rcx, {page}",
    "    lock inc qword ptr [rcx + {helper_calls}]",
    "    test rax, rax",
    "    jz 3b",
    "    cmp rax, {timeout}",
    "    je 3b",
    "    cmp rax, {no_caller}",
    "    je 3b",
    "    cmp rax, {partner_gone}",
    "    je 3b",
    "4:  mov eax, {exit}",
    "    syscall",
    "    ud2",
    ".popsection",
    reply_recv = const Sys::ReplyRecv as u64,
    call = const Sys::Call as u64,
    send = const Sys::Send as u64,
    recv = const Sys::Recv as u64,
    wait = const Sys::Wait as u64,
    exit = const Sys::ThreadExit as u64,
    page = const PAGE,
    helper_calls = const word::HELPER_CALLS * 8,
    stop = const word::STOP * 8,
    timeout = const Error::Timeout as u64,
    no_caller = const Error::NoCaller as u64,
    partner_gone = const Error::PartnerGone as u64,
);

unsafe extern "C" {
    fn fz_helper_server();
    fn fz_helper_client();
    fn fz_helper_sender();
    fn fz_helper_receiver();
    fn fz_helper_waiter();
}

/// A helper's entry and whether it waits on a notification (else an endpoint).
fn helper(k: u64) -> (u64, bool) {
    match k % 5 {
        0 => (fz_helper_server as *const () as u64, false),
        1 => (fz_helper_client as *const () as u64, false),
        2 => (fz_helper_sender as *const () as u64, false),
        3 => (fz_helper_receiver as *const () as u64, false),
        _ => (fz_helper_waiter as *const () as u64, true),
    }
}

// ---- one fuzzing thread --------------------------------------------------------------------------

/// What a successful call changes in the shadow.
#[derive(Clone, Copy)]
enum Effect {
    None,
    /// The slot now holds this kind.
    Set(u64, u8),
    /// A copy within this task's table: the destination gets the source's kind.
    Copy(u64, u64),
    /// The slot is empty now.
    Clear(u64),
    /// Capabilities anywhere in the table may be gone (`CapRevoke`): look again at every slot
    /// believed full.
    Rescan,
}

#[derive(Clone, Copy)]
struct Req {
    n: u64,
    a: [u64; 6],
    timeout: u64,
    r13: u64,
    r14: u64,
    /// Aimed at another fuzzer's task or thread.
    cross: bool,
    /// Issued even without `cross` (the deep builders' own deletions of threads they made,
    /// which owe no reply: see [`Fz::exec`]), and with the slots it writes unchecked (the
    /// builders' own slots, the set-up's: see [`guard_destinations`]).
    force: bool,
    effect: Effect,
}

impl Req {
    fn new(n: Sys, a: [u64; 6]) -> Req {
        Req { n: n as u64, a, timeout: 0, r13: NO_SLOT, r14: NO_SLOT, cross: false, force: false, effect: Effect::None }
    }
}

struct Fz {
    x: u64,
    /// This thread's index and its own thread slot.
    t: usize,
    me: u64,
    /// Its IPC buffer.
    buf: u64,
    cpus: u64,
    /// It received a message (perhaps a call, whose caller now waits for its reply).
    received: bool,
    scratch: [u64; 64],
}

/// The priority fuzzer threads run at (their maximum controlled priority).
const PRIO: u64 = 50;
/// A fuzzing thread builds a deep object graph once in this many rounds (`deep.rs`).
const DEEP_EVERY: u64 = 1024;

impl Fz {
    fn rnd(&mut self) -> u64 {
        self.x ^= self.x << 13;
        self.x ^= self.x >> 7;
        self.x ^= self.x << 17;
        self.x
    }

    /// True once in `n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.rnd() % n == 0
    }

    fn pick_of<const N: usize>(&mut self, xs: [u64; N]) -> u64 {
        xs[(self.rnd() % N as u64) as usize]
    }

    /// A hostile value for argument `i`, as the first fuzzer made them: small and large slots,
    /// pointers of every kind, lengths around the limits, anything.
    fn hostile(&mut self, i: u64) -> u64 {
        let k = self.rnd();
        match (k >> 60) % 8 {
            0 => k % 16,
            1 => k % 300,
            2 => self.scratch.as_mut_ptr() as u64 + (k % 64) * 8 * (i & 1),
            3 => [0, 0x1000, 0xffff_8000_0000_0000, 0x0000_8000_0000_0000, 0x7fff_ffff_f000, u64::MAX][(k % 6) as usize],
            4 => [0, 1, 4, 5, 128, 129, 4096, 4097, 1 << 20][(k % 9) as usize],
            5 => k,
            6 => (k % 300) << 32 | (k >> 8) % 300,
            _ => k % 32,
        }
    }

    /// `v`, or once in 16 a hostile value.
    fn or_hostile(&mut self, i: u64, v: u64) -> u64 {
        if self.one_in(16) { self.hostile(i) } else { v }
    }

    /// A slot holding one of `kinds` (among slots 0..128), else any small slot.
    fn slot_of(&mut self, kinds: &[u8]) -> u64 {
        self.find(kinds, 0, 128).unwrap_or_else(|| self.rnd() % 32)
    }

    fn find(&mut self, kinds: &[u8], lo: u64, hi: u64) -> Option<u64> {
        let range = |w: u64| -> u64 {
            let (a, b) = (lo.saturating_sub(w * 64).min(64), hi.saturating_sub(w * 64).min(64));
            let upto = |n: u64| if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
            upto(b) & !upto(a)
        };
        let mut m = [0u64; 2];
        for &k in kinds {
            for (w, mw) in m.iter_mut().enumerate() {
                *mw |= MASK[k as usize][w].load(Relaxed) & range(w as u64);
            }
        }
        let total = m[0].count_ones() as u64 + m[1].count_ones() as u64;
        if total == 0 {
            return None;
        }
        let mut r = self.rnd() % total;
        for (w, mut bits) in m.into_iter().enumerate() {
            let c = bits.count_ones() as u64;
            if r >= c {
                r -= c;
                continue;
            }
            for _ in 0..r {
                bits &= bits - 1;
            }
            return Some(w as u64 * 64 + bits.trailing_zeros() as u64);
        }
        None
    }

    /// A free slot of this task's own range (or, if none is known, any there).
    fn free(&mut self) -> u64 {
        self.find(&[EMPTY], slot::OWN, slot::PEERS).unwrap_or_else(|| slot::OWN + self.rnd() % (slot::PEERS - slot::OWN))
    }

    /// The memory budget (the slot it was given, or a copy if that one was deleted).
    fn memory(&mut self) -> u64 {
        if kind(slot::MEMORY) == MEMORY { slot::MEMORY } else { self.slot_of(&[MEMORY]) }
    }

    /// An endpoint: mostly one of the shared ones (where partners are), else one it made.
    fn ep(&mut self) -> u64 {
        if self.one_in(3) {
            return self.slot_of(&[EP, EP_BADGED]);
        }
        let s = self.pick_of(slot::SHARED_EPS);
        if matches!(kind(s), EP | EP_BADGED) { s } else { self.slot_of(&[EP, EP_BADGED]) }
    }

    /// A slot of another fuzzer's table for a copy: mostly above the slots fuzzers use (likely
    /// free), sometimes among them (where it finds and uses it).
    fn peer_slot(&mut self) -> u64 {
        if self.one_in(4) { slot::OWN + self.rnd() % (slot::PEERS - slot::OWN) } else { slot::INBOX + self.rnd() % (CAP_SLOTS - slot::INBOX) }
    }

    /// A task a copy may go to: this task, or (with `cross`) another fuzzer's; never a task
    /// this one made (none there: a slot out of range).
    fn dst_task(&mut self) -> (u64, bool) {
        if cross() && self.one_in(3) {
            if let Some(s) = self.find(&[PEER_TASK], slot::PEERS, slot::PEERS_END) {
                return (s, true);
            }
        }
        (if kind(slot::TASK) == OWN_TASK { slot::TASK } else { CAP_SLOTS + 1 }, false)
    }

    /// A thread to act on: mostly another fuzzer's (with `cross`) or a helper of this task.
    fn thread(&mut self) -> (u64, bool) {
        let peers: &[u8] = if cross() { &[PEER_THREAD] } else { &[] };
        if !peers.is_empty() && self.one_in(2) {
            if let Some(s) = self.find(peers, 0, 128) {
                return (s, true);
            }
        }
        // Mostly helpers (a fuzzing thread suspended or starved ends its task); this thread
        // itself seldom.
        if !self.one_in(4) {
            if let Some(s) = self.find(&[OWN_THREAD], slot::OWN, 128) {
                return (s, false);
            }
        }
        for _ in 0..4 {
            let s = self.slot_of(&[OWN_THREAD]);
            if s != self.me || self.one_in(64) {
                return (s, false);
            }
        }
        (self.rnd() % 32, false)
    }

    /// A timeout: mostly 0 (a wait with a deadline lasts until a timer tick at least, and the
    /// fuzzer would mostly sleep), sometimes a deadline, sometimes `FOREVER` where partners are
    /// likely (the shared objects).
    fn timeout(&mut self, forever_ok: bool) -> u64 {
        match self.rnd() % 16 {
            0..=9 => 0,
            10..=11 => self.rnd() % 100_000,
            12 => self.rnd() % 10_000_000,
            _ if forever_ok => FOREVER,
            _ => self.rnd() % 100_000,
        }
    }

    /// A message tag: mostly valid (up to 4 words, or up to 128 through the IPC buffer),
    /// sometimes with reserved bits or too long.
    fn tag(&mut self) -> u64 {
        let label = self.rnd() & 0xffff;
        match self.rnd() % 16 {
            0..=6 => Tag::new(label, self.rnd() % 5, 0).0,
            7..=12 => Tag::new(label, 5 + self.rnd() % 124, 0).0,
            13 => Tag::new(label, [128, 129, 200, 511][(self.rnd() % 4) as usize], 0).0,
            14 => Tag::new(label, self.rnd() % 5, 0).0 | 1 << (10 + self.rnd() % 6),
            _ => self.rnd(),
        }
    }

    /// A helper's timeout: `FOREVER` or a deadline, never 0 (a helper that polls spins).
    fn helper_timeout(&mut self) -> u64 {
        if self.one_in(2) { FOREVER } else { 100_000 + self.rnd() % 10_000_000 }
    }

    fn cpu(&mut self) -> u64 {
        if self.one_in(16) { self.hostile(1) % 300 } else { self.rnd() % self.cpus }
    }

    /// A priority for a helper: mostly the fuzzers' own (the IPC pairs, at that priority too,
    /// keep every CPU busy: a thread below it does not run), else any it may give, sometimes one
    /// above its own limit.
    fn prio(&mut self) -> u64 {
        match self.rnd() % 16 {
            0 => PRIO + 1 + self.rnd() % 250,
            1 => self.rnd(),
            2..=5 => self.rnd() % (PRIO + 1),
            _ => PRIO,
        }
    }

    /// A priority for a thread that may be a fuzzing thread (this task's or another fuzzer's
    /// first): mostly the one they run at, since the IPC pairs (at that priority too) keep
    /// every CPU busy and a fuzzing thread set lower would make no call any more.
    fn prio_of(&mut self, t: u64) -> u64 {
        let fuzzing = kind(t) == PEER_THREAD || t == slot::THREAD || (slot::THREADS..slot::OWN).contains(&t);
        if !fuzzing || self.one_in(16) { self.prio() } else { PRIO }
    }

    fn rights(&mut self) -> u64 {
        match self.rnd() % 16 {
            0 => self.rnd(),
            1 => Rights::ALL.0,
            _ => self.rnd() & Rights::ALL.0,
        }
    }

    /// A page of the window (mapped or not), or a page of this thread's own memory.
    fn page(&mut self) -> u64 {
        match self.rnd() % 16 {
            0 => self.buf,
            1 => self.hostile(2),
            _ => va::WINDOW + (self.rnd() % va::WINDOW_PAGES) * PAGE_SIZE,
        }
    }

    // ---- issuing calls -------------------------------------------------------------------------

    /// Issues `c`, counts it, and brings the shadow up to date with what it did.
    fn exec(&mut self, c: Req) -> u64 {
        self.exec_out(c).0
    }

    /// As [`Fz::exec`], and the call's first three results (`rax`, `rdi`, `rsi`): the error
    /// code and the values a call answers.
    fn exec_out(&mut self, c: Req) -> (u64, u64, u64) {
        let n = c.n;
        // Without `cross`, no call that ends this task while its other threads run, and no
        // deletion of a thread capability: a thread destroyed that way (suspended or inactive,
        // its last capability gone) leaves the caller it owed a reply waiting for good on
        // today's kernel.
        if !cross()
            && !c.force
            && (n == Sys::TaskExit as u64
                || (n == Sys::TaskKill as u64 && kind(c.a[0]) != SUB_TASK)
                || (n == Sys::CapDelete as u64 && matches!(kind(c.a[0]), OWN_THREAD | PEER_THREAD | UNKNOWN)))
        {
            return (u64::MAX, 0, 0);
        }
        let mut c = c;
        if !c.force {
            guard_destinations(&mut c);
        }
        let removal = n == Sys::CapDelete as u64 || n == Sys::CapRevoke as u64;
        if removal {
            counter(word::CAP_REMOVALS).fetch_add(1, core::sync::atomic::Ordering::SeqCst);
        }
        let ends_self = n == Sys::ThreadExit as u64 || n == Sys::TaskExit as u64;
        if ends_self {
            counter(word::ACTIVE + self.t).store(0, Relaxed);
        }
        let forever = c.timeout == FOREVER && is_blocking(n);
        if forever {
            add(word::FOREVER_CALLS, 1);
        }
        counter(word::TIMEOUT + self.t).store(if is_blocking(n) && !forever { c.timeout } else { u64::MAX }, Relaxed);
        counter(word::CURRENT + self.t).store(n.min(255) | (forever as u64) << 8, Relaxed);
        let t0 = rl4_user::rdtsc();
        let (rax, rdi, rsi, _) = raw(n, &c.a, c.timeout, c.r13, c.r14);
        if removal {
            counter(word::REMOVALS_DONE).fetch_add(1, core::sync::atomic::Ordering::SeqCst);
        }
        if n < word::CYCLE_CALLS as u64 {
            add(word::CYCLES + n as usize, rl4_user::rdtsc() - t0);
        }
        add(word::CALLS, 1);
        add(word::RESULTS + rax.min(31) as usize, 1);
        let k = n.min(63) as usize;
        add(word::PER_CALL + k, 1);
        if c.cross {
            add(word::CROSS_CALLS + k, 1);
        }
        if rax == Error::EmptySlot as u64 || rax == Error::SlotOutOfRange as u64 {
            add(word::FIRST_CHECK + k, 1);
        }
        let p = counter(word::PROGRESS + self.t);
        p.store(p.load(Relaxed) + 1, Relaxed);
        if rax == 0 {
            add(word::PER_CALL_OK + k, 1);
            if c.cross {
                add(word::CROSS_OK + k, 1);
            }
            match c.effect {
                Effect::None => {}
                Effect::Set(s, kd) => set_kind(s, kd),
                Effect::Copy(src, dst) => {
                    let kd = kind(src);
                    // A badge given by CapMint shows in the copy.
                    let kd = if n == Sys::CapMint as u64 && c.a[4] != 0 {
                        match kd {
                            EP => EP_BADGED,
                            NOTE => NOTE_BADGED,
                            x => x,
                        }
                    } else {
                        kd
                    };
                    set_kind(dst, kd);
                }
                Effect::Clear(s) => set_kind(s, EMPTY),
                Effect::Rescan => {
                    for s in 0..128 {
                        if kind(s) != EMPTY {
                            self.identify(s);
                        }
                    }
                }
            }
            if is_receive(n) {
                self.received = n != Sys::Call as u64;
                let tag = Tag(rsi);
                if tag.len() > 4 {
                    add(word::LONG_RECEIVED, 1);
                }
                if tag.caps() == 1 && c.r14 < CAP_SLOTS {
                    add(word::CAPS_RECEIVED, 1);
                    self.identify(c.r14);
                }
            }
            if is_send(n) && Tag(c.a[1]).len() > 4 {
                add(word::LONG_SENT, 1);
            }
        } else if rax == Error::EmptySlot as u64 || rax == Error::WrongType as u64 || rax == Error::SlotOccupied as u64 {
            // The shadow was wrong (or another thread changed the table): look again, now and
            // then (the error may come from another argument).
            if c.a[0] < 128 && self.one_in(4) {
                self.identify(c.a[0]);
            }
        }
        (rax, rdi, rsi)
    }

    /// Looks at what `s` holds (a call of its own, counted).
    fn identify(&mut self, s: u64) {
        let (rax, ty, rights, badge) = raw(Sys::CapIdentify as u64, &[s, 0, 0, 0, 0, 0], 0, NO_SLOT, NO_SLOT);
        add(word::CALLS, 1);
        add(word::RESULTS + rax.min(31) as usize, 1);
        add(word::PER_CALL + Sys::CapIdentify as usize, 1);
        if rax == 0 {
            add(word::PER_CALL_OK + Sys::CapIdentify as usize, 1);
            set_kind(s, kind_of(s, ty, rights, badge));
        } else if rax == Error::EmptySlot as u64 {
            set_kind(s, EMPTY);
        }
    }

    // ---- the calls -------------------------------------------------------------------------------

    /// One call of number `n` with arguments that mostly make sense.
    fn build(&mut self, n: Sys) -> Req {
        use Sys::*;
        let mut c = Req::new(n, [0; 6]);
        match n {
            Null | Yield | CpuInfo | ThreadExit | TaskExit => {}
            ConsoleWrite => {
                // The machine capability has no console right: only the checks run.
                let p = self.hostile(1);
                c.a = [slot::MACHINE, p, self.rnd() % 5000, 0, 0, 0];
            }
            CapCopy | CapMint => {
                let src = self.slot_of(if n == CapMint { &[EP, NOTE, EP_BADGED, NOTE_BADGED] } else { &ANY });
                let (dst_task, peer) = self.dst_task();
                let dst = if peer { self.peer_slot() } else { self.free() };
                let rights = self.rights();
                // Now and then a small badge, which `EndpointCancelBadged` names too.
                let badge = match self.rnd() % 8 {
                    0 | 1 => 0,
                    2 | 3 => 1 + self.rnd() % 8,
                    _ => self.rnd(),
                };
                let src = self.or_hostile(0, src);
                c.a = [src, dst_task, self.or_hostile(2, dst), keep_grant(src, rights), badge, 0];
                c.cross = peer;
                if !peer {
                    c.effect = Effect::Copy(c.a[0], c.a[2]);
                }
            }
            CapDelete => {
                // Mostly what it made or was given; now and then anything, its own task
                // included (it may end up cutting off its own branch: fair game).
                let s = match self.rnd() % 256 {
                    0..=15 => self.hostile(0) | slot::OWN,
                    16 => self.rnd() % slot::OWN,
                    _ => self.find(&ANY, slot::OWN, 128).unwrap_or(slot::OWN),
                };
                c.a = [s, 0, 0, 0, 0, 0];
                c.effect = Effect::Clear(s);
            }
            CapRevoke => {
                // Mostly what it made or copied (and gave away); the shared endpoints too, whose
                // copies other fuzzers received from it through IPC.
                let s = match self.rnd() % 16 {
                    0 => self.hostile(0),
                    1..=3 => self.pick_of(slot::SHARED),
                    _ => self.find(&ANY, slot::OWN, 128).unwrap_or(slot::OWN),
                };
                c.a = [s, 0, 0, 0, 0, 0];
                c.effect = Effect::Rescan;
            }
            CapIdentify => {
                let s = self.rnd() % 128;
                c.a = [self.or_hostile(0, s), 0, 0, 0, 0, 0];
            }
            TaskCreate | FrameAlloc | EndpointCreate | NotificationCreate => {
                let d = self.free();
                let m = self.memory();
                c.a = [self.or_hostile(0, m), self.or_hostile(1, d), 0, 0, 0, 0];
                let kd = match n {
                    TaskCreate => SUB_TASK,
                    FrameAlloc => FRAME,
                    EndpointCreate => EP,
                    _ => NOTE,
                };
                c.effect = Effect::Set(c.a[1], kd);
            }
            TaskAddressSpace => {
                let t = self.slot_of(&[OWN_TASK, PEER_TASK, SUB_TASK, FOREIGN_TASK]);
                let d = self.free();
                c.a = [self.or_hostile(0, t), self.or_hostile(1, d), 0, 0, 0, 0];
                c.cross = kind(t) == PEER_TASK;
                c.effect = Effect::Set(c.a[1], SPACE);
            }
            Map => {
                let sp = if self.one_in(4) { self.slot_of(&[SPACE]) } else { slot::SPACE };
                let f = self.slot_of(&[FRAME]);
                let r = match self.rnd() % 8 {
                    0 => self.rights(),
                    1 => (Rights::READ.union(Rights::EXECUTE)).0,
                    2 => Rights::READ.0,
                    _ => (Rights::READ.union(Rights::WRITE)).0,
                };
                c.a = [self.or_hostile(0, sp), self.or_hostile(1, f), self.page(), r, 0, 0];
            }
            Unmap => {
                let sp = if self.one_in(4) { self.slot_of(&[SPACE]) } else { slot::SPACE };
                c.a = [self.or_hostile(0, sp), self.page(), 0, 0, 0, 0];
            }
            ThreadCreate => {
                // A helper thread (stays inactive unless someone resumes it).
                let (task, peer) = self.create_target();
                let (entry, _) = helper(self.rnd());
                let entry = if self.one_in(8) { self.hostile(2) } else { entry };
                let d = self.free();
                let m = self.memory();
                c.a = [self.or_hostile(0, m), task, entry, 0, self.prio() | self.cpu() << 32, self.or_hostile(5, d)];
                c.cross = peer;
                c.effect = Effect::Set(c.a[5], OWN_THREAD);
            }
            ThreadResume | ThreadSuspend | ThreadInfo => {
                let (t, peer) = self.thread();
                c.a = [self.or_hostile(0, t), 0, 0, 0, 0, 0];
                c.cross = peer;
            }
            ThreadSetPriority => {
                let (t, peer) = self.thread();
                let p = self.prio_of(t);
                c.a = [self.or_hostile(0, t), p, 0, 0, 0, 0];
                c.cross = peer;
            }
            ThreadSetAffinity => {
                let (t, peer) = self.thread();
                c.a = [self.or_hostile(0, t), self.cpu(), 0, 0, 0, 0];
                c.cross = peer;
            }
            ThreadSetFaultHandler => {
                // Mostly helpers (which fault at once in a task of their own): their faults go
                // to endpoints where fuzzers receive and reply whatever they reply.
                let (t, peer) = self.thread();
                let ep = if self.one_in(4) { NO_SLOT } else { self.ep() };
                c.a = [self.or_hostile(0, t), self.or_hostile(1, ep), 0, 0, 0, 0];
                c.cross = peer;
            }
            ThreadSetArg => {
                // Helpers made here and not started yet, mostly.
                let (t, peer) = if self.one_in(8) { self.thread() } else { (self.slot_of(&[OWN_THREAD]), false) };
                let s = self.pick_of(slot::SHARED);
                let timeout = self.helper_timeout();
                c.a = [self.or_hostile(0, t), s, timeout, 0, 0, 0];
                c.cross = peer;
            }
            TaskKill => {
                // Mostly tasks it made; another fuzzer's now and then (it is replaced).
                let (t, peer) = if cross() && self.one_in(24) {
                    match self.find(&[PEER_TASK], 0, 128) {
                        Some(s) => (s, true),
                        None => (self.slot_of(&[SUB_TASK]), false),
                    }
                } else if self.one_in(64) {
                    (self.slot_of(&[OWN_TASK]), false)
                } else {
                    (self.slot_of(&[SUB_TASK, FOREIGN_TASK]), false)
                };
                c.a = [self.or_hostile(0, t), 0, 0, 0, 0, 0];
                c.cross = peer;
            }
            Shutdown => c.a = [self.or_hostile(0, slot::MACHINE), self.rnd() % 2, 0, 0, 0, 0],
            MemoryInfo => {
                let s = self.slot_of(&[MEMORY]);
                c.a = [self.or_hostile(0, s), 0, 0, 0, 0, 0];
            }
            Stat => c.a = [self.or_hostile(0, slot::MACHINE), self.rnd() % 12, 0, 0, 0, 0],
            Measure => c.a = [self.or_hostile(0, slot::MACHINE), [0, 1, 2, 3, 4, 6][self.rnd() as usize % 6], self.rnd() % 3000, 0, 0, 0],
            KernelCheck => c.a = [self.or_hostile(0, slot::MACHINE), 0, 0, 0, 0, 0],
            // The port capability the fuzzer started with, or a copy of it, mostly.
            IoPortOpen | IoPortClose if !self.one_in(4) => {
                let s = self.slot_of(&[IOPORT]);
                c.a = [self.or_hostile(0, s), 0, 0, 0, 0, 0];
            }
            // COM2's line, which the root task's kicker makes raise its interrupt: bound to a
            // notification of this task's (shared ones included) with one bit, on a CPU index
            // up to one past the last (which `IrqBind` refuses) or the caller's, acknowledged
            // and unbound, mostly through a slot that holds it.
            IrqBind if !self.one_in(4) => {
                let s = self.slot_of(&[IRQ]);
                let n = self.slot_of(&[NOTE, NOTE_BADGED]);
                let bits = if self.one_in(32) { 0 } else { 1 << (self.rnd() % 64) };
                let cpu = if self.one_in(4) { rl4_user::abi::IRQ_CPU_CALLER } else { self.rnd() % (self.cpus + 1) };
                c.a = [self.or_hostile(0, s), self.or_hostile(1, n), bits, cpu, 0, 0];
            }
            IrqAck | IrqUnbind if !self.one_in(4) => {
                let s = self.slot_of(&[IRQ]);
                c.a = [self.or_hostile(0, s), 0, 0, 0, 0, 0];
            }
            // No other device capability here: only the kernel's checks run (any slot, any
            // numbers).
            IrqGet | IrqBind | IrqAck | IrqUnbind | IoPortGet | IoPortOpen | IoPortClose | DeviceMemGet => {
                let s = self.rnd() % 128;
                c.a = [self.or_hostile(0, s), self.rnd() % 20, self.rnd() % 0x1_0000, self.rnd() % 8, 0, 0];
            }
            EndpointCancelBadged => {
                // Mostly the shared endpoints, where other fuzzers' badged sends queue; a badge
                // of the few small ones, any, or none (refused).
                let ep = self.ep();
                let badge = match self.rnd() % 8 {
                    0 => 0,
                    1 | 2 => self.rnd(),
                    _ => 1 + self.rnd() % 8,
                };
                c.a = [self.or_hostile(0, ep), badge, 0, 0, 0, 0];
            }
            Signal => {
                let s = self.slot_of(&[NOTE, NOTE_BADGED]);
                let bits = if self.one_in(16) { 0 } else { 1 << (self.rnd() % 64) };
                c.a = [self.or_hostile(0, s), bits, 0, 0, 0, 0];
            }
            Poll => {
                let s = self.slot_of(&[NOTE, NOTE_BADGED]);
                c.a = [self.or_hostile(0, s), 0, 0, 0, 0, 0];
            }
            Wait => {
                let s = self.slot_of(&[NOTE, NOTE_BADGED]);
                c.a = [self.or_hostile(0, s), 0, 0, 0, 0, 0];
                c.timeout = self.timeout(slot::SHARED_NOTES.contains(&s));
            }
            SetIpcBuffer => {
                let (t, b) = match self.rnd() % 8 {
                    0 => {
                        let (t, _) = self.thread();
                        (t, self.page())
                    }
                    1 => (self.me, self.page()),
                    _ => (self.me, self.buf),
                };
                c.a = [self.or_hostile(0, t), b, 0, 0, 0, 0];
            }
            Send | NbSend | Call | Recv | NbRecv | Reply | ReplyRecv => {
                // Mostly the shared endpoints, where partners (other fuzzers, helpers) are.
                let ep = self.ep();
                let tag = self.tag();
                let mut tag = if matches!(n, Recv | NbRecv) { 0 } else { tag };
                let shared = slot::SHARED_EPS.contains(&ep);
                if matches!(n, Send | NbSend | Call) && self.one_in(6) {
                    // With a capability (needs GRANT; its rights travel with it).
                    let s = self.slot_of(&ANY);
                    if cross() || !matches!(kind(s), OWN_TASK | OWN_THREAD | PEER_TASK | PEER_THREAD) {
                        tag |= 1 << 9;
                        c.r13 = s;
                    }
                }
                c.a = [self.or_hostile(0, ep), tag, self.rnd(), self.rnd(), self.rnd(), self.rnd()];
                c.timeout = match n {
                    NbSend | NbRecv | Reply => 0,
                    _ => self.timeout(shared),
                };
                if self.one_in(3) {
                    c.r14 = self.free();
                }
            }
        }
        c
    }

    /// Where a helper thread goes: this task mostly, another fuzzer's with `cross`, or a task
    /// it made (whose empty space makes the helper fault at once).
    fn create_target(&mut self) -> (u64, bool) {
        match self.rnd() % 8 {
            0 if cross() => match self.find(&[PEER_TASK], 0, 128) {
                Some(s) => (s, true),
                None => (slot::TASK, false),
            },
            1 if cross() => (self.slot_of(&[SUB_TASK]), false),
            _ => (self.find(&[OWN_TASK], 0, 128).unwrap_or(slot::TASK), false),
        }
    }

    /// One call of the first fuzzer's kind: any number, any arguments.
    fn wild(&mut self) -> Req {
        let r = self.rnd();
        let n = match r % 16 {
            0 => self.rnd(),
            1..=2 => self.rnd() % 64,
            _ => self.rnd() % Sys::ALL.len() as u64,
        };
        let mut c = Req::new(Sys::Null, [0; 6]);
        c.n = n;
        for i in 0..6 {
            c.a[i] = if i == 0 && self.one_in(2) { self.rnd() % 16 } else { self.hostile(i as u64) };
        }
        c.timeout = self.timeout(false);
        c.r13 = self.rnd() % 300;
        c.r14 = self.rnd() % 300;
        // Never a copy into a task this fuzzer made (see the module's comment), never a
        // capability to a task or thread through IPC without `cross`.
        if n == Sys::CapCopy as u64 || n == Sys::CapMint as u64 {
            c.a[3] = keep_grant(c.a[0], c.a[3]);
            if !matches!(kind(c.a[1]), OWN_TASK | PEER_TASK | EMPTY) {
                c.a[1] = CAP_SLOTS + 1;
            }
        }
        if !cross() && is_task_or_thread(kind(c.r13)) {
            c.r13 = NO_SLOT;
        }
        c
    }

    // ---- short scenarios: a few calls that reach states one call seldom does ----------------

    /// A copy (`CapCopy`) or a badged copy (`CapMint`) of the capability in one of the task's
    /// first slots (`TASK .. OWN`) or the badged endpoint's (`slot::BADGED`) — slots a call may
    /// empty but none fills again once the fuzzer runs (the root task fills them all before the
    /// fuzzer starts; a slot found empty is passed over) — into this thread's private slot
    /// (`slot::PRIVATE + t`, which no other call writes), held to what the ABI promises: the
    /// same type, the source's rights and the mask's common part, the source's badge or the
    /// given one; `CapMint` of an object other than an endpoint or a notification is
    /// `WrongType`, of a badged capability `InvalidState`. A success whose copy is not there is
    /// wrong unless a deletion or revocation of the task's ran meanwhile, or began before and had
    /// not ended (`word::CAP_REMOVALS`, `word::REMOVALS_DONE`). Judged only when the source reads
    /// the same before and after; refusals that depend on what others do (`OutOfMemory`, `Busy`,
    /// `EmptySlot`, a dead task's `InvalidState`) are passed over, and only the successes judged
    /// count as made well (`COPIES_OK`, `MINTS_OK`: a run must see both).
    fn check_copy(&mut self) {
        use Sys::*;
        let p = slot::PRIVATE + self.t as u64;
        let id = |s: u64| {
            let (rax, ty, rights, badge) = raw(CapIdentify as u64, &[s, 0, 0, 0, 0, 0], 0, NO_SLOT, NO_SLOT);
            (rax == 0).then_some((ty, rights, badge))
        };
        let mut c = Req::new(CapDelete, [p, 0, 0, 0, 0, 0]);
        c.force = true;
        self.exec(c);
        let s = if self.one_in(4) { slot::BADGED } else { self.rnd() % slot::OWN };
        let Some((ty, rights, b)) = id(s) else { return };
        // Without `cross` no capability to a task or thread is deleted (see `exec_out`): the
        // copy's deletion would end the task or the thread if a sibling deleted the source.
        if !cross() && (ty == ObjType::Task as u64 || ty == ObjType::Thread as u64) {
            return;
        }
        let mask = self.rnd() & Rights::ALL.0;
        let mint = self.one_in(2);
        let badge = if self.one_in(4) { 0 } else { self.rnd() };
        // A removal begun before the copy and not ended, or begun after it, shows as more begun
        // after the look at the copy than ended before the copy.
        let done = counter(word::REMOVALS_DONE).load(core::sync::atomic::Ordering::SeqCst);
        let mut c = Req::new(if mint { CapMint } else { CapCopy }, [s, slot::TASK, p, mask, badge, 0]);
        c.force = true;
        let r = self.exec(c);
        let copy = id(p);
        let undisturbed = counter(word::CAP_REMOVALS).load(core::sync::atomic::Ordering::SeqCst) == done;
        if id(s) != Some((ty, rights, b)) {
            return;
        }
        let ipc_obj = ty == ObjType::Endpoint as u64 || ty == ObjType::Notification as u64;
        let want = if mint && !ipc_obj {
            Err(Error::WrongType as u64)
        } else if mint && b != 0 {
            Err(Error::InvalidState as u64)
        } else {
            Ok((ty, rights & mask, if mint { badge } else { b }))
        };
        let others = [Error::OutOfMemory, Error::Busy, Error::InvalidState, Error::EmptySlot].map(|e| e as u64);
        // (Judged, wrong.)
        let (judged, wrong) = match (r, want) {
            (0, Ok(w)) => match copy {
                Some(got) => (true, got != w),
                None => (undisturbed, undisturbed),
            },
            (0, Err(_)) => (true, true),
            (e, Err(w)) if e == w => (true, false),
            (e, _) => (!others.contains(&e), !others.contains(&e)),
        };
        if judged {
            add(word::CAPS_CHECKED, 1);
        }
        if wrong {
            add(word::CAPS_WRONG, 1);
        } else if r == 0 && judged {
            add(if mint { word::MINTS_OK } else { word::COPIES_OK }, 1);
        }
        let mut c = Req::new(CapDelete, [p, 0, 0, 0, 0, 0]);
        c.force = true;
        self.exec(c);
    }

    fn scenario(&mut self) {
        use Sys::*;
        match self.rnd() % 8 {
            7 => self.check_copy(),
            0 | 6 => {
                // A helper thread, started: a loop of blocking calls on a shared object.
                let (task, peer) = self.create_target();
                let k = self.rnd();
                let (entry, on_note) = helper(k);
                let d = self.free();
                let mut c = Req::new(ThreadCreate, [self.memory(), task, entry, 0, self.prio() | self.cpu() << 32, d]);
                c.cross = peer;
                c.effect = Effect::Set(d, OWN_THREAD);
                if self.exec(c) != 0 {
                    return;
                }
                // Receiving helpers gather mostly on the first shared endpoint, sending ones on
                // the second, so that long queues of waiters build up there (the fuzzing threads
                // take them one at a time); the third gets both.
                let obj = match k % 5 {
                    _ if on_note => self.pick_of(slot::SHARED_NOTES),
                    _ if self.one_in(4) => slot::SHARED_EPS[2],
                    0 | 3 => slot::SHARED_EPS[0],
                    _ => slot::SHARED_EPS[1],
                };
                let timeout = self.helper_timeout();
                self.exec(Req::new(ThreadSetArg, [d, obj, timeout, 0, 0, 0]));
                if self.exec(Req::new(ThreadResume, [d, 0, 0, 0, 0, 0])) == 0 {
                    add(word::HELPERS_STARTED, 1);
                }
            }
            1 => {
                // A thread pushed around: suspended, moved, re-prioritised, looked at, resumed.
                let (t, peer) = self.thread();
                for n in [ThreadSuspend, ThreadSetAffinity, ThreadSetPriority, ThreadInfo, ThreadResume] {
                    let a1 = match n {
                        ThreadSetAffinity => self.cpu(),
                        ThreadSetPriority => self.prio_of(t),
                        _ => 0,
                    };
                    let mut c = Req::new(n, [t, a1, 0, 0, 0, 0]);
                    c.cross = peer;
                    self.exec(c);
                }
            }
            2 => {
                // A badged copy of a new endpoint or notification, given to another task.
                let d = self.free();
                let note = self.one_in(2);
                let mut c = Req::new(if note { NotificationCreate } else { EndpointCreate }, [self.memory(), d, 0, 0, 0, 0]);
                c.effect = Effect::Set(d, if note { NOTE } else { EP });
                if self.exec(c) != 0 {
                    return;
                }
                let (dst_task, peer) = self.dst_task();
                let d2 = if peer { self.peer_slot() } else { self.free() };
                let mut c = Req::new(CapMint, [d, dst_task, d2, self.rights() | Rights::GRANT.0, self.rnd() | 1, 0]);
                c.cross = peer;
                if !peer {
                    c.effect = Effect::Copy(d, d2);
                }
                self.exec(c);
                if self.one_in(2) {
                    let mut c = Req::new(CapDelete, [d, 0, 0, 0, 0, 0]);
                    c.effect = Effect::Clear(d);
                    self.exec(c);
                }
            }
            3 => {
                // A frame mapped into the window, used as the IPC buffer for a long message,
                // then this thread's own buffer again.
                let d = self.free();
                let mut c = Req::new(FrameAlloc, [self.memory(), d, 0, 0, 0, 0]);
                c.effect = Effect::Set(d, FRAME);
                if self.exec(c) != 0 {
                    return;
                }
                let page = va::WINDOW + (self.rnd() % va::WINDOW_PAGES) * PAGE_SIZE;
                self.exec(Req::new(Map, [slot::SPACE, d, page, Rights::READ.union(Rights::WRITE).0, 0, 0]));
                let me = self.me;
                self.exec(Req::new(SetIpcBuffer, [me, page, 0, 0, 0, 0]));
                let ep = self.pick_of(slot::SHARED_EPS);
                let n = if self.one_in(2) { Call } else { Send };
                let mut c = Req::new(n, [ep, Tag::new(7, 5 + self.rnd() % 124, 0).0, 1, 2, 3, 4]);
                c.timeout = self.rnd() % 10_000_000;
                self.exec(c);
                let buf = self.buf;
                self.exec(Req::new(SetIpcBuffer, [me, buf, 0, 0, 0, 0]));
                if self.one_in(2) {
                    self.exec(Req::new(Unmap, [slot::SPACE, page, 0, 0, 0, 0]));
                }
                let mut c = Req::new(CapDelete, [d, 0, 0, 0, 0, 0]);
                c.effect = Effect::Clear(d);
                self.exec(c);
            }
            4 => {
                // A task made, given a page and a thread (which faults in its empty space, or
                // waits inactive), then killed.
                let d = self.free();
                let mut c = Req::new(TaskCreate, [self.memory(), d, 0, 0, 0, 0]);
                c.effect = Effect::Set(d, SUB_TASK);
                if self.exec(c) != 0 {
                    return;
                }
                let sp = self.free();
                let mut c = Req::new(TaskAddressSpace, [d, sp, 0, 0, 0, 0]);
                c.effect = Effect::Set(sp, SPACE);
                self.exec(c);
                if let Some(f) = self.find(&[FRAME], 0, 128) {
                    self.exec(Req::new(Map, [sp, f, 0x40_0000, Rights::READ.union(Rights::EXECUTE).0, 0, 0]));
                }
                let th = self.free();
                let mut c = Req::new(ThreadCreate, [self.memory(), d, 0x40_0000, 0, self.prio() | self.cpu() << 32, th]);
                c.effect = Effect::Set(th, OWN_THREAD);
                // (Started only with `cross`: killing a task while its thread faults is one of
                // the races `cross=0` keeps out.)
                if self.exec(c) == 0 && cross() && self.one_in(2) {
                    self.exec(Req::new(ThreadResume, [th, 0, 0, 0, 0, 0]));
                }
                if self.one_in(2) {
                    self.exec(Req::new(TaskKill, [d, 0, 0, 0, 0, 0]));
                }
                for s in [th, sp, d] {
                    let mut c = Req::new(CapDelete, [s, 0, 0, 0, 0, 0]);
                    c.effect = Effect::Clear(s);
                    self.exec(c);
                }
            }
            _ => {
                // A burst on one shared endpoint: several receives and sends in a row, so that
                // queues fill and drain.
                let ep = self.pick_of(slot::SHARED_EPS);
                for _ in 0..4 {
                    let n = self.pick_of([Send as u64, Call as u64, Recv as u64, ReplyRecv as u64, NbSend as u64, NbRecv as u64]);
                    let n = Sys::try_from(n).unwrap_or(Null);
                    let mut c = self.build(n);
                    c.a[0] = ep;
                    self.exec(c);
                }
            }
        }
    }

    /// Stops for good at the root task's request (see `word::STOP`).
    fn park(&mut self) -> ! {
        counter(word::ACTIVE + self.t).store(2, Relaxed);
        loop {
            raw(Sys::ThreadSuspend as u64, &[self.me, 0, 0, 0, 0, 0], 0, NO_SLOT, NO_SLOT);
            raw(Sys::Yield as u64, &[0; 6], 0, NO_SLOT, NO_SLOT);
        }
    }

    fn run(&mut self) -> ! {
        counter(word::ACTIVE + self.t).store(1, Relaxed);
        let mut since_look = 0u32;
        loop {
            if counter(word::STOP).load(Relaxed) != 0 {
                self.park();
            }
            let r = self.rnd();
            // Now and then a fault instead of a call, at any point of the other fuzzers' work
            // (the thread stops; what it held must be cleaned up).
            if r % 8192 == 0 {
                counter(word::ACTIVE + self.t).store(0, Relaxed);
                add(word::FAULTS_TAKEN, 1);
                let a = self.hostile(0);
                take_fault(self.rnd(), a);
                counter(word::ACTIVE + self.t).store(1, Relaxed);
            }
            if self.received {
                // Mostly answer what it received, as a server would (a caller waits).
                self.received = false;
                if !self.one_in(4) {
                    let tag = if self.one_in(4) { Tag::new(1, 5 + self.rnd() % 124, 0).0 } else { Tag::new(1, self.rnd() % 5, 0).0 };
                    self.exec(Req::new(Sys::Reply, [0, tag, 1, 2, 3, 4]));
                    continue;
                }
            }
            // Now and then a deep object graph built and torn down (`deep.rs`), and while one
            // stands or is being built, one round in eight a call racing on its slots.
            if r % DEEP_EVERY == 1 {
                self.deep();
                continue;
            }
            if r % 8 == 2 {
                self.race();
                continue;
            }
            match (r >> 8) % 16 {
                0 => {
                    let c = self.wild();
                    // Ending itself is allowed, but rarely.
                    if !(is_end(c.n) && !self.one_in(64)) {
                        self.exec(c);
                    }
                }
                1 => self.scenario(),
                _ => {
                    let n = self.choose();
                    let c = self.build(n);
                    self.exec(c);
                }
            }
            // Find capabilities others put into this table.
            since_look += 1;
            if since_look >= 256 {
                since_look = 0;
                take_peers();
                if let Some(s) = self.find(&[EMPTY, UNKNOWN], slot::OWN, 128) {
                    self.identify(s);
                }
            }
        }
    }

    /// A system-call number, weighted toward the calls that get deep.
    fn choose(&mut self) -> Sys {
        let total: u64 = WEIGHTS.iter().map(|w| w.1 as u64).sum();
        let mut r = self.rnd() % total;
        for &(s, w) in WEIGHTS {
            if r < w as u64 {
                return s;
            }
            r -= w as u64;
        }
        Sys::Null
    }
}

/// Every kind of capability.
const ANY: [u8; 16] = [OWN_TASK, PEER_TASK, SUB_TASK, FOREIGN_TASK, SPACE, OWN_THREAD, PEER_THREAD, FRAME, MEMORY, MACHINE, EP, EP_BADGED, NOTE, NOTE_BADGED, IOPORT, IRQ];

/// How often each call is chosen (out of the sum).
const WEIGHTS: &[(Sys, u16)] = &[
    (Sys::Send, 40),
    (Sys::NbSend, 25),
    (Sys::Recv, 30),
    (Sys::NbRecv, 25),
    (Sys::Call, 45),
    (Sys::Reply, 25),
    (Sys::ReplyRecv, 35),
    (Sys::Signal, 30),
    (Sys::Wait, 25),
    (Sys::Poll, 15),
    (Sys::CapCopy, 40),
    (Sys::CapMint, 25),
    (Sys::CapDelete, 35),
    (Sys::CapIdentify, 5),
    (Sys::CapRevoke, 4),
    (Sys::EndpointCancelBadged, 4),
    (Sys::EndpointCreate, 20),
    (Sys::NotificationCreate, 15),
    (Sys::FrameAlloc, 25),
    (Sys::TaskCreate, 8),
    (Sys::TaskAddressSpace, 10),
    (Sys::Map, 40),
    (Sys::Unmap, 30),
    (Sys::SetIpcBuffer, 20),
    (Sys::ThreadCreate, 20),
    (Sys::ThreadResume, 30),
    (Sys::ThreadSuspend, 20),
    (Sys::ThreadSetPriority, 30),
    (Sys::ThreadSetAffinity, 35),
    (Sys::ThreadSetArg, 10),
    (Sys::ThreadSetFaultHandler, 8),
    (Sys::ThreadInfo, 20),
    (Sys::TaskKill, 4),
    (Sys::Null, 4),
    (Sys::Yield, 3),
    (Sys::CpuInfo, 4),
    (Sys::MemoryInfo, 4),
    (Sys::Stat, 4),
    (Sys::ConsoleWrite, 3),
    (Sys::Shutdown, 2),
    (Sys::Measure, 2),
    (Sys::KernelCheck, 2),
    (Sys::IrqGet, 1),
    (Sys::IrqBind, 6),
    (Sys::IrqAck, 12),
    (Sys::IrqUnbind, 3),
    (Sys::IoPortGet, 1),
    (Sys::IoPortOpen, 8),
    (Sys::IoPortClose, 6),
];

fn is_blocking(n: u64) -> bool {
    [Sys::Send, Sys::Call, Sys::Recv, Sys::ReplyRecv, Sys::Wait].iter().any(|&s| s as u64 == n)
}

fn is_receive(n: u64) -> bool {
    [Sys::Recv, Sys::NbRecv, Sys::Call, Sys::ReplyRecv].iter().any(|&s| s as u64 == n)
}

fn is_send(n: u64) -> bool {
    [Sys::Send, Sys::NbSend, Sys::Call].iter().any(|&s| s as u64 == n)
}

fn is_end(n: u64) -> bool {
    [Sys::ThreadExit, Sys::TaskExit, Sys::TaskKill, Sys::ThreadSuspend].iter().any(|&s| s as u64 == n)
}

/// What keeps the run's memory check honest without trusting the shadow: a task this fuzzer
/// made must never receive a capability (its own, or one of its threads', would be a cycle that
/// outlives every fuzzer: the leftover threads of issue 17's 10-minute runs were exactly that,
/// thread capabilities copied into a task made here through a slot whose shadow had gone stale
/// while the threads raced). The shadow cannot promise which task a slot holds when the call
/// runs, so the promise is made by slot numbers instead: a capability is copied (or minted)
/// only into the task in slot 0 or in one of the slots the root task fills with other fuzzers'
/// tasks (`PEERS .. PEERS_END`), and no call of any fuzzer ever writes a capability into those
/// slots (every slot a call writes, in its own table or another fuzzer's, is in `OWN .. PEERS`
/// or `INBOX ..`, which no copy's destination task is taken from and no builder reads; the
/// builders of `fuzz/deep.rs`, whose calls are forced, write only their own slots, 128 ..
/// `INBOX`, and [`Fz::check_copy`] only its thread's private slot, `PRIVATE + t`). So those
/// slots hold only what the root task put there, whatever the shadow believes, the builders'
/// slots only what the builders put there, and a private slot only its thread's copy.
/// A slot argument that breaks this becomes one out of range (the call still goes, and fails).
fn guard_destinations(c: &mut Req) {
    const OUT: u64 = CAP_SLOTS + 1;
    let writable = |s: u64| if (slot::OWN..slot::PEERS).contains(&s) || s >= slot::INBOX { s } else { OUT };
    let Ok(n) = Sys::try_from(c.n) else { return };
    use Sys::*;
    match n {
        CapCopy | CapMint => {
            if c.a[1] != slot::TASK && !(slot::PEERS..slot::PEERS_END).contains(&c.a[1]) {
                c.a[1] = OUT;
            }
            c.a[2] = writable(c.a[2]);
        }
        TaskCreate | TaskAddressSpace | FrameAlloc | EndpointCreate | NotificationCreate => c.a[1] = writable(c.a[1]),
        ThreadCreate => c.a[5] = writable(c.a[5]),
        IrqGet | DeviceMemGet => c.a[2] = writable(c.a[2]),
        IoPortGet => c.a[3] = writable(c.a[3]),
        _ => {}
    }
    if is_receive(c.n) && c.r14 != NO_SLOT {
        c.r14 = writable(c.r14);
    }
}

/// The rights mask of a copy of the capability in `src`: a copy of anything that may be a task
/// keeps `GRANT` (if its source has it). The only task capabilities without `GRANT` are then
/// the root task's to other fuzzers, and a copy of a task this one made is never mistaken for
/// one of those (and made the destination of a copy; `guard_destinations` keeps that from
/// mattering: the shadow may be stale).
fn keep_grant(src: u64, rights: u64) -> u64 {
    match kind(src) {
        SPACE | FRAME | MEMORY | MACHINE | EP | EP_BADGED | NOTE | NOTE_BADGED | IOPORT | IRQ => rights,
        _ => rights | Rights::GRANT.0,
    }
}

fn is_task_or_thread(k: u8) -> bool {
    is_task(k) || matches!(k, OWN_THREAD | PEER_THREAD)
}

/// Takes note of the capabilities to other fuzzers the root task put into the table.
fn take_peers() {
    for (w, kd) in [(word::PEER_TASKS, PEER_TASK), (word::PEER_THREADS, PEER_THREAD)] {
        let mut bits = counter(w).swap(0, Relaxed);
        while bits != 0 {
            set_kind(slot::PEERS + bits.trailing_zeros() as u64, kd);
            bits &= bits - 1;
        }
    }
}

fn seed_for(t: usize) -> u64 {
    let mut z = SEED.load(Relaxed).wrapping_add((t as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1
}

fn thread_slot(t: usize) -> u64 {
    if t == 0 { slot::THREAD } else { slot::THREADS + t as u64 - 1 }
}

fn new_fz(t: usize) -> Fz {
    Fz {
        x: seed_for(t),
        t,
        me: thread_slot(t),
        buf: va::IPC_BUFFERS + t as u64 * PAGE_SIZE,
        cpus: CPUS.load(Relaxed).max(1),
        received: false,
        scratch: [0; 64],
    }
}

/// Maps `pages` fresh frames at `at` in this task's space (the frame capabilities are deleted
/// again: the mappings keep the frames). Calls counted like any other.
fn map_pages(f: &mut Fz, at: u64, pages: u64) -> bool {
    for i in 0..pages {
        let d = f.free();
        let mut c = Req::new(Sys::FrameAlloc, [slot::MEMORY, d, 0, 0, 0, 0]);
        c.effect = Effect::Set(d, FRAME);
        if f.exec(c) != 0 {
            return false;
        }
        let ok = f.exec(Req::new(Sys::Map, [slot::SPACE, d, at + i * PAGE_SIZE, Rights::READ.union(Rights::WRITE).0, 0, 0])) == 0;
        let mut c = Req::new(Sys::CapDelete, [d, 0, 0, 0, 0, 0]);
        c.effect = Effect::Clear(d);
        f.exec(c);
        if !ok {
            return false;
        }
    }
    true
}

/// The first fuzzing thread: sets up the shadow, lets the other fuzzing threads (which the root
/// task made) go, then fuzzes.
pub fn main_thread(seed: u64) -> ! {
    SEED.store(seed, Relaxed);
    FLAGS.store(counter(word::CFG_FLAGS).load(Relaxed), Relaxed);
    CPUS.store(counter(word::CFG_CPUS).load(Relaxed).max(1), Relaxed);
    let threads = (counter(word::CFG_THREADS).load(Relaxed) as usize).clamp(1, MAX_THREADS);
    for s in 0..CAP_SLOTS {
        set_kind(s, EMPTY);
    }
    for (s, k) in [(slot::TASK, OWN_TASK), (slot::SPACE, SPACE), (slot::THREAD, OWN_THREAD), (slot::MEMORY, MEMORY), (slot::MACHINE, MACHINE)] {
        set_kind(s, k);
    }
    for s in slot::SHARED_EPS {
        set_kind(s, EP);
    }
    for s in slot::SHARED_NOTES {
        set_kind(s, NOTE);
    }
    set_kind(slot::BADGED, EP_BADGED);
    if rl4_user::sys::cap_identify(slot::PORTS_AT_START).is_ok_and(|r| r[0] == ObjType::IoPort as u64) {
        set_kind(slot::PORTS_AT_START, IOPORT);
    }
    if rl4_user::sys::cap_identify(slot::IRQ_AT_START).is_ok_and(|r| r[0] == ObjType::Irq as u64) {
        set_kind(slot::IRQ_AT_START, IRQ);
    }
    deep::init_kinds();
    let mut f = new_fz(0);
    take_peers();
    let buf = f.buf;
    if map_pages(&mut f, buf, 1) {
        let (me, buf) = (f.me, f.buf);
        f.exec(Req::new(Sys::SetIpcBuffer, [me, buf, 0, 0, 0, 0]));
    }
    // The other fuzzing threads, made by the root task in their slots (stacks and IPC buffers
    // mapped), wait for this.
    for t in 1..threads {
        if rl4_user::sys::cap_identify(thread_slot(t)).is_ok_and(|r| r[0] == ObjType::Thread as u64) {
            set_kind(thread_slot(t), OWN_THREAD);
        }
    }
    READY.store(1, core::sync::atomic::Ordering::Release);
    // A first deep object graph at once (the kind by the fuzzer's index, so that a short run
    // has every kind), while the other threads start racing.
    f.deep_of(counter(word::CFG_INDEX).load(Relaxed));
    f.run()
}

/// Set by the first fuzzing thread once the task's shadow is set up: the others wait for it.
static READY: AtomicU64 = AtomicU64::new(0);

/// Fuzzing thread `t` ≥ 1 (made by the root task: `rl4_user::worker::FUZZ_THREAD`).
pub fn other_thread(t: u64) {
    let t = t.clamp(1, MAX_THREADS as u64 - 1);
    // Active, in `Yield`, making no calls the watchdog counts while it waits: a first thread
    // held back for good (suspended by another fuzzer before its set-up, or starved) gets the
    // task ended as stuck after 2 s, rather than leave this loop spinning.
    counter(word::CURRENT + t as usize).store(Sys::Yield as u64, Relaxed);
    counter(word::TIMEOUT + t as usize).store(u64::MAX, Relaxed);
    counter(word::ACTIVE + t as usize).store(1, Relaxed);
    while READY.load(core::sync::atomic::Ordering::Acquire) == 0 {
        if counter(word::STOP).load(Relaxed) != 0 {
            // Parks as `Fz::park` does (no shadow needed).
            counter(word::ACTIVE + t as usize).store(2, Relaxed);
            loop {
                raw(Sys::ThreadSuspend as u64, &[thread_slot(t as usize), 0, 0, 0, 0, 0], 0, NO_SLOT, NO_SLOT);
                raw(Sys::Yield as u64, &[0; 6], 0, NO_SLOT, NO_SLOT);
            }
        }
        rl4_user::sys::yield_now();
    }
    let mut f = new_fz(t as usize);
    let (me, buf) = (f.me, f.buf);
    f.exec(Req::new(Sys::SetIpcBuffer, [me, buf, 0, 0, 0, 0]));
    f.run()
}

/// Takes one kind of fault (`kind` picks it) with `addr` as the address where one is needed
/// (which may be mapped after all: then nothing happens). Two kinds fault with the direction
/// and alignment-check flags set, which the kernel must not inherit (they are cleared again
/// before the `asm!` block ends, as Rust requires, if the thread gets that far).
pub fn take_fault(kind: u64, addr: u64) {
    // SAFETY (all): deliberate faults from a fuzzer thread; the kernel must stop only it.
    unsafe {
        match (kind >> 40) % 10 {
            8 => core::arch::asm!(
                "pushfq",
                "or qword ptr [rsp], 0x40400",
                "popfq",
                "mov {t}, qword ptr [{a}]",
                "pushfq",
                "and qword ptr [rsp], ~0x40400",
                "popfq",
                a = in(reg) addr,
                t = out(reg) _,
            ),
            9 => core::arch::asm!("pushfq", "or qword ptr [rsp], 0x40400", "popfq", "ud2", "pushfq", "and qword ptr [rsp], ~0x40400", "popfq"),
            0 => {
                core::ptr::read_volatile(addr as *const u64);
            }
            1 => core::ptr::write_volatile(addr as *mut u64, 0),
            2 => core::arch::asm!("ud2"),
            3 => core::arch::asm!("hlt"),
            4 => core::arch::asm!("int3"),
            5 => core::arch::asm!("xor edx, edx", "xor ecx, ecx", "div rcx", inout("rax") addr => _, out("rdx") _, out("rcx") _),
            6 => core::arch::asm!("mov cr3, {}", in(reg) addr),
            _ => {
                let f: extern "C" fn() = core::mem::transmute::<usize, extern "C" fn()>(addr as usize);
                f();
            }
        }
    }
}
