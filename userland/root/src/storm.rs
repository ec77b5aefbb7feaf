//! The storms: many short rounds in which victim tasks, whose threads loop on every kind of
//! blocking system call on CPUs 1..n, are killed (and before that suspended and resumed, or
//! moved between CPUs) from CPU 0 at a random moment, while long-lived threads of the root task
//! keep serving and feeding the same endpoints.
//!
//! A round: make `tasks` victim tasks of `threads` threads each (the `worker` program's `STORM`
//! command; `rl4_user::storm` has the protocol), let them run a few milliseconds (the kill
//! storm), or suspend and resume them at random (the suspend storm), or move them between CPUs
//! and change their priorities (the affinity storm), then kill every victim task, in random
//! order. Then check:
//!
//! - every victim thread reports `Dead` (`ThreadInfo`);
//! - no victim saw an outcome its storm does not allow, nor a wrong message or reply;
//! - once the root task deleted its capabilities to the victims, live threads (`Stat(THREADS)`),
//!   the memory budget (`MemoryInfo`) and the kernel's free frames (`Stat(FREE_FRAMES)`, plus
//!   the pages the kernel heap grew by meanwhile, which it never gives back) are exactly back
//!   to what they were before the first round, and no victim counts on in the shared page;
//! - the root task's servers and feeders still work: every server answers a checked call from
//!   the root thread, and every feeder sends it a checked message, within 2 s;
//! - every `check_every` rounds and after the last: the kernel's consistency check
//!   (`KernelCheck`) finds nothing.
//!
//! The first failed check ends the storm (with `keep-going`, it is counted, the baseline is
//! taken again and the storm goes on: to see what else happens on a broken kernel). The page
//! the victims share with the root task is a fresh one each round, so that a victim that
//! outlived its round on a broken kernel cannot scribble over a later round's records.
//! See docs/running.md (`scripts/storm`) for the exact checks of each storm.
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use rl4_abi::ipc::{FOREVER, NO_SLOT};
use rl4_abi::{BootInfo, Error, PAGE_SIZE, Rights, Sys, ThreadState, stat};
use rl4_user::storm::{self as p, header, rec};
use rl4_user::sys::{self, Msg};
use rl4_user::{println, rdtsc};

use crate::space::*;
use crate::tests::{report, state};

/// Where the root task sees the shared page (the victims see it at `p::PAGE`).
const PAGE_VA: u64 = 0x0000_6d00_0000_0000;
/// The root task's page through which the worker's image is copied, once.
const SCRATCH_VA: u64 = 0x0000_6e00_0000_0000;
/// Victim stacks: one page each, below this address, a guard page apart.
const VICTIM_STACKS: u64 = 0x0000_7000_0000_0000;
const MAX_TASKS: usize = 8;
const MAX_V: usize = p::MAX_VICTIMS;
/// Priorities: the root task's threads (the root thread on CPU 0, servers and feeders) run at
/// `ROOT_PRIO` (100); victims below, the counting victim above the others so that it always
/// gets its CPU when the root task looks at its counter.
const VICTIM_PRIO_LO: u64 = 30;
const VICTIM_PRIO_HI: u64 = 90;
const SPIN_PRIO: u64 = 95;

/// Which storm.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Kill,
    Suspend,
    Affinity,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Suspend => "suspend",
            Kind::Affinity => "affinity",
        }
    }
}

/// The storms' parameters (root task arguments `rounds=`, `tasks=`, `threads=`,
/// `check-every=`, `seed=`, `keep-going`).
#[derive(Clone, Copy)]
pub struct Opts {
    pub rounds: u64,
    pub tasks: usize,
    pub threads: usize,
    pub check_every: u64,
    pub seed: u64,
    pub keep_going: bool,
    /// The kinds of victims besides the counting one (bit `1 << rl4_user::storm::K_*`;
    /// `kinds=call,send,recv,reply-recv,wait`, default all).
    pub kinds: u64,
    /// Suspend storm: leave blocked victims alone (`suspend-running-only`; for a kernel that
    /// refuses to suspend blocked threads, to look for the other defects).
    pub suspend_running_only: bool,
}

// ---- text for failure reasons -------------------------------------------------------------------

/// A line built at run time (failure reasons).
pub struct Text {
    buf: [u8; 400],
    len: usize,
}

impl Text {
    pub const fn new() -> Text {
        Text { buf: [0; 400], len: 0 }
    }
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl Write for Text {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

macro_rules! fail {
    ($($arg:tt)*) => {{
        let mut t = Text::new();
        let _ = write!(t, $($arg)*);
        return Err(t);
    }};
}

// ---- small tools ---------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

fn us_ticks(us: u64) -> u64 {
    tsc_hz() / 1_000_000 * us
}

/// Spins on this CPU for `us` microseconds, signalling the victims' notification every 100 µs
/// (cross-CPU wake-ups of the waiters while the round goes on).
fn pause_us(us: u64) {
    let now = rdtsc();
    let end = now + us_ticks(us);
    let mut next = now;
    loop {
        let t = rdtsc();
        if t >= end {
            return;
        }
        if t >= next {
            let _ = sys::signal(SHARED[2].load(SeqCst), 1 << 62);
            next = t + us_ticks(100);
        }
        core::hint::spin_loop();
    }
}

fn shared(i: usize) -> &'static AtomicU64 {
    // SAFETY: a round's page is mapped at PAGE_VA in the root task from the round's start to
    // after its last look at the victims' records (`Storm::round`), the only time this is
    // called; i < 512.
    unsafe { p::word(PAGE_VA, i) }
}

fn field(v: usize, w: usize) -> u64 {
    // SAFETY: as in `shared`; v < MAX_V, w < RECORD_WORDS.
    unsafe { p::record(PAGE_VA, v, w) }.load(SeqCst)
}

fn state_name(t: u64) -> &'static str {
    match sys::thread_info(t) {
        Ok(r) => ThreadState::try_from(r[0]).map(|s| s.name()).unwrap_or("?"),
        Err(e) => e.name(),
    }
}

fn code(r: Result<(), Error>) -> &'static str {
    match r {
        Ok(()) => "Ok",
        Err(e) => e.name(),
    }
}

/// Live threads, budget left, and the kernel's free frames plus the pages of its heap (the heap
/// grows on demand and keeps what it took; frames it took are not lost).
fn levels() -> [u64; 3] {
    let threads = sys::stat(MACHINE, stat::THREADS).unwrap_or(0);
    let left = sys::memory_info(MEMORY).map(|m| m.0).unwrap_or(0);
    let frames = sys::stat(MACHINE, stat::FREE_FRAMES).unwrap_or(0) + sys::stat(MACHINE, stat::HEAP_BYTES).unwrap_or(0) / PAGE_SIZE;
    [threads, left, frames]
}

// ---- the worker's image, loaded once ----------------------------------------------------------

/// The `worker` program's pages, copied once into frames the root task keeps; every victim task
/// maps the same frames, read-only (the victims' code writes no static data: a write would
/// fault and show as a `Faulted` victim). Loading each victim through `Child::load` would copy
/// the image every round, and its moving scratch page would leave page tables behind in the root
/// task, which would move the memory baseline.
struct Template {
    pages: [(u64, u64, Rights); 64],
    n: usize,
    entry: u64,
}

impl Template {
    fn load(bi: &BootInfo) -> Result<Template, Error> {
        let elf = program(bi, "worker")?;
        let (mut pages, mut n) = ([(0, 0, Rights::NONE); 64], 0);
        let entry = load_pages(&elf, SCRATCH_VA, |f, va, r| {
            if n == pages.len() {
                return Err(Error::OutOfMemory);
            }
            let r = if r.contains(Rights::EXECUTE) { Rights::READ.union(Rights::EXECUTE) } else { Rights::READ };
            pages[n] = (f, va, r);
            n += 1;
            Ok(true)
        });
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                // The pages kept so far go back with it.
                for &(f, _, _) in &pages[..n] {
                    release(f);
                }
                return Err(e);
            }
        };
        Ok(Template { pages, n, entry })
    }
    fn release(&self) {
        for &(f, _, _) in &self.pages[..self.n] {
            release(f);
        }
    }
}

// ---- the root task's long-lived threads ----------------------------------------------------------

/// The endpoint the victims call and send to, the endpoint they receive from, their
/// notification (slots in the root task's table).
static SHARED: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
static STOP: AtomicBool = AtomicBool::new(false);
/// Wrong messages or replies the root task's threads saw; unexpected errors (count, last code).
static HELPER_BAD: AtomicU64 = AtomicU64::new(0);
static HELPER_OTHER: AtomicU64 = AtomicU64::new(0);
static HELPER_LAST: AtomicU64 = AtomicU64::new(0);
/// Messages served and fed.
static SERVED: AtomicU64 = AtomicU64::new(0);
static FED: AtomicU64 = AtomicU64::new(0);
/// CPUs whose server or feeder answered nothing in a round trip (looked for no more with
/// `keep-going`).
static STUCK: AtomicU64 = AtomicU64::new(0);

fn helper_error(e: Error) {
    HELPER_OTHER.fetch_add(1, SeqCst);
    HELPER_LAST.store(e as u64, SeqCst);
}

/// Serves the victims' endpoint: answers every message (a `Send` needs no answer: the reply
/// finds no caller). A victim killed while it waits for the answer makes the reply fail, which
/// `ReplyRecv` passes over.
fn server(id: u64) {
    let ep = SHARED[0].load(SeqCst);
    let mut last: Option<Msg> = None;
    loop {
        let r = match last.take() {
            Some(m) => {
                // Which server answered (the root task's round trip looks for every one).
                let mut a = p::answer(&m);
                a.w[3] = id;
                sys::reply_recv(ep, &a)
            }
            None => sys::recv(ep),
        };
        match r {
            Ok(m) => {
                if !p::msg_ok(&m) {
                    HELPER_BAD.fetch_add(1, SeqCst);
                }
                SERVED.fetch_add(1, SeqCst);
                last = Some(m);
            }
            Err(_) if STOP.load(SeqCst) => return,
            Err(e) => helper_error(e),
        }
    }
}

/// Feeds the endpoint the victims receive from: calls (forever) and sends (2 ms), checking
/// every answer, and signals their notification. A victim that received a call and was killed
/// (or received again without answering) makes the call fail with `PartnerGone`.
fn feeder(id: u64) {
    let (ep, note) = (SHARED[1].load(SeqCst), SHARED[2].load(SeqCst));
    let who = 1000 + id;
    let mut seq = 0u64;
    while !STOP.load(SeqCst) {
        seq += 1;
        let _ = sys::signal(note, 1 << 61);
        if seq % 2 == 0 {
            match sys::ipc(Sys::Call, ep, &p::msg(p::L_HELPER_CALL, seq, who), FOREVER, NO_SLOT, NO_SLOT) {
                Ok(a) if p::answer_ok(&a, seq, who) => {}
                Ok(_) => {
                    HELPER_BAD.fetch_add(1, SeqCst);
                }
                Err(Error::PartnerGone) => {}
                Err(_) if STOP.load(SeqCst) => return,
                Err(e) => helper_error(e),
            }
        } else {
            match sys::ipc(Sys::Send, ep, &p::msg(p::L_HELPER_SEND, seq, who), us_ticks(2000), NO_SLOT, NO_SLOT) {
                Ok(_) | Err(Error::Timeout) => {}
                Err(_) if STOP.load(SeqCst) => return,
                Err(e) => helper_error(e),
            }
        }
        FED.fetch_add(1, SeqCst);
    }
}

/// Checked round trips with each of the root task's threads: calls to the servers until every
/// server has answered one, and messages from the feeders (each call answered) until every
/// feeder has sent one, within 2 s. `helpers`: the servers' and feeders' thread slots (server
/// on CPU c at 2c, feeder at 2c + 1).
/// `skip`: CPUs whose helpers are not looked for (after `keep-going` found them stuck).
fn round_trip(round: u64, helpers: &[u64; 16], skip: u64) -> Result<(), Text> {
    let end = rdtsc() + 2 * tsc_hz();
    let left = || end.saturating_sub(rdtsc()).max(1);
    let who = 999;
    let mut seen = 0u64;
    let want = (0..8u64).filter(|&c| c > 0 && helpers[2 * c as usize] != 0).fold(0, |m, c| m | 1 << c) & !skip;
    while seen & want != want {
        match sys::ipc(Sys::Call, SHARED[0].load(SeqCst), &p::msg(p::L_ROOT_CALL, round, who), left(), NO_SLOT, NO_SLOT) {
            Ok(a) if p::answer_ok(&a, round, who) && a.w[3] < 8 => seen |= 1 << a.w[3],
            Ok(a) => fail!("the root task's call to its servers got a wrong answer {:?}", a.w),
            Err(Error::Timeout) => {
                let c = (want & !seen).trailing_zeros();
                STUCK.fetch_or(1 << c, SeqCst);
                fail!("server on cpu {c} answered no call within 2 s (it is {})", state_name(helpers[2 * c as usize]));
            }
            Err(e) => fail!("the root task's call to its servers failed: {e}"),
        }
    }
    let mut fed = 0u64;
    while fed & want != want {
        match sys::ipc(Sys::Recv, SHARED[1].load(SeqCst), &Msg::default(), left(), NO_SLOT, NO_SLOT) {
            Ok(m) if p::msg_ok(&m) && (1001..1008).contains(&m.w[2]) => {
                fed |= 1 << (m.w[2] - 1000);
                if m.tag.label() == p::L_HELPER_CALL {
                    if let Err(e) = sys::reply(&p::answer(&m)) {
                        fail!("the root task's answer to a feeder's call failed: {e}");
                    }
                }
            }
            Ok(m) => fail!("the root task received a wrong message from a feeder: label {:#x}, {:?}", m.tag.label(), m.w),
            Err(Error::Timeout) => {
                let c = (want & !fed).trailing_zeros();
                STUCK.fetch_or(1 << c, SeqCst);
                fail!("feeder on cpu {c} sent nothing within 2 s (it is {})", state_name(helpers[2 * c as usize + 1]));
            }
            Err(e) => fail!("the root task's receive from its feeders failed: {e}"),
        }
    }
    Ok(())
}

// ---- a round ------------------------------------------------------------------------------------

#[derive(Clone, Copy, Default)]
struct Victim {
    thread: u64,
    kind: u64,
    class: u64,
    cpu: u64,
    /// Suspend storm: whether the root task holds it suspended, how often it was suspended.
    suspended: bool,
    suspends: u64,
    /// Affinity storm: where it was last moved, and its iteration count just before.
    moved_to: Option<u64>,
    moved_at: u64,
    moved_tsc: u64,
}

struct Round {
    tasks: [(u64, u64); MAX_TASKS],
    ntasks: usize,
    v: [Victim; MAX_V],
    n: usize,
}

/// What the storm counts.
#[derive(Default)]
struct Totals {
    rounds: u64,
    failed_rounds: u64,
    tasks: u64,
    victims: u64,
    outcomes: [u64; 5],
    ok_by_kind: [u64; p::KINDS as usize],
    checks: u64,
    violations: u64,
    suspends: u64,
    suspends_blocked: u64,
    resumes: u64,
    counting_checks: u64,
    moves: u64,
    cpu_checks: u64,
    /// TSC ticks spent in rounds that passed.
    passed_ticks: u64,
}

fn describe(t: &mut Text, v: &Victim, i: usize) {
    let _ = write!(
        t,
        "victim {i} ({}, timeout {}, cpu {}): {}",
        p::KIND_NAMES[v.kind as usize],
        p::TMO_NAMES[v.class as usize],
        v.cpu,
        state_name(v.thread)
    );
}

struct Storm<'a> {
    kind: Kind,
    o: Opts,
    tpl: &'a Template,
    rng: Rng,
    cpus: u64,
    base: [u64; 3],
    tot: Totals,
    helpers: [u64; 16],
    /// With `keep-going`: helpers found stuck, and the violations already reported (a later
    /// check fails only if it finds more).
    skip: u64,
    known_violations: u64,
    /// When the round's first TaskKill was made.
    killed_at: u64,
}

impl Storm<'_> {
    /// Makes the round's victim tasks and starts their threads.
    fn start(&mut self, page: u64) -> Result<Round, Text> {
        let mut r = Round { tasks: [(0, 0); MAX_TASKS], ntasks: 0, v: [Victim::default(); MAX_V], n: 0 };
        // Kinds and timeouts: every pair once per round where the round is big enough, from a
        // random starting point; victim 0 counts (it is the one whose counter is watched).
        let mut kinds = [0u64; p::KINDS as usize];
        let mut nk = 0;
        for k in 0..p::K_SPIN {
            if self.o.kinds & 1 << k != 0 {
                kinds[nk] = k;
                nk += 1;
            }
        }
        let nk = nk.max(1) as u64;
        let pairs = nk * 3;
        let offset = self.rng.below(pairs);
        let rw = Rights::READ.union(Rights::WRITE);
        for t in 0..self.o.tasks {
            let (task, space) = (slot(), slot());
            r.tasks[t] = (task, space);
            r.ntasks += 1;
            let made = (|| -> Result<(), Error> {
                sys::task_create(MEMORY, task)?;
                sys::task_space(task, space)?;
                for &(f, va, rights) in &self.tpl.pages[..self.tpl.n] {
                    sys::map(space, f, va, rights)?;
                }
                sys::map(space, page, p::PAGE, rw)?;
                sys::cap_copy(SHARED[0].load(SeqCst), task, p::EP_CALL, Rights::SEND)?;
                sys::cap_copy(SHARED[1].load(SeqCst), task, p::EP_RECV, Rights::RECEIVE)?;
                sys::cap_copy(SHARED[2].load(SeqCst), task, p::NOTE, Rights::SEND.union(Rights::RECEIVE))
            })();
            if let Err(e) = made {
                self.finish(&r);
                fail!("making victim task {t}: {e}");
            }
            for j in 0..self.o.threads {
                let i = r.n;
                let (kind, class, prio) = if i == 0 {
                    (p::K_SPIN, p::TMO_FOREVER, SPIN_PRIO)
                } else {
                    let pair = (i as u64 - 1 + offset) % pairs;
                    (kinds[(pair % nk) as usize], pair / nk, VICTIM_PRIO_LO + self.rng.below(VICTIM_PRIO_HI - VICTIM_PRIO_LO + 1))
                };
                let cpu = 1 + self.rng.below(self.cpus - 1);
                let th = slot();
                r.v[i] = Victim { thread: th, kind, class, cpu, ..Victim::default() };
                r.n += 1;
                let top = VICTIM_STACKS - j as u64 * 2 * PAGE_SIZE;
                let made = map_fresh(space, top - PAGE_SIZE, 1, rw)
                    .and_then(|_| sys::thread_create(MEMORY, task, self.tpl.entry, top, prio, cpu, th))
                    .and_then(|_| sys::thread_set_args(th, rl4_user::worker::STORM, i as u64 | kind << 8 | class << 16))
                    .and_then(|_| sys::thread_resume(th));
                if let Err(e) = made {
                    self.finish(&r);
                    fail!("starting victim {i}: {e}");
                }
            }
        }
        self.tot.tasks += r.ntasks as u64;
        self.tot.victims += r.n as u64;
        Ok(r)
    }

    /// Kills whatever of the round is left and deletes the root task's capabilities to it.
    fn finish(&self, r: &Round) {
        for &(task, space) in &r.tasks[..r.ntasks] {
            let _ = sys::task_kill(task);
            release(space);
            release(task);
        }
        for v in &r.v[..r.n] {
            release(v.thread);
        }
    }

    /// Suspend storm: suspend and resume victims at random; once per round watch the counting
    /// victim stop while suspended and go on when resumed.
    fn suspend_phase(&mut self, r: &mut Round) -> Result<(), Text> {
        let ops = r.n as u64;
        let watch_at = self.rng.below(ops);
        let mut first = Ok(());
        for op in 0..ops {
            if op == watch_at {
                first = first.and(self.watch_counter(r));
            }
            let i = self.rng.below(r.n as u64) as usize;
            first = first.and(self.suspend_op(r, i));
            pause_us(self.rng.below(300));
        }
        first
    }

    /// Resumes victim `i` if the root task holds it suspended, else suspends it.
    fn suspend_op(&mut self, r: &mut Round, i: usize) -> Result<(), Text> {
        {
            let v = &mut r.v[i];
            if v.suspended {
                let res = sys::thread_resume(v.thread);
                if res.is_err() {
                    let mut t = Text::new();
                    let _ = write!(t, "ThreadResume of a suspended victim returned {}: ", code(res));
                    describe(&mut t, v, i);
                    return Err(t);
                }
                v.suspended = false;
                self.tot.resumes += 1;
                let gone = spin_ms(1000, || state(v.thread).is_some_and(|s| !matches!(s, ThreadState::Suspended)));
                if !gone || matches!(state(v.thread), Some(ThreadState::Dead) | Some(ThreadState::Faulted)) {
                    let mut t = Text::new();
                    let _ = write!(t, "after ThreadResume returned Ok: ");
                    describe(&mut t, v, i);
                    return Err(t);
                }
            } else {
                let before = state(v.thread);
                let blocked = |s: Option<ThreadState>| {
                    matches!(s, Some(ThreadState::BlockedSend | ThreadState::BlockedRecv | ThreadState::BlockedReply | ThreadState::BlockedNotify))
                };
                if self.o.suspend_running_only && blocked(before) {
                    return Ok(());
                }
                let res = sys::thread_suspend(v.thread);
                if self.o.suspend_running_only && res == Err(Error::InvalidState) && blocked(state(v.thread)) {
                    // It blocked between the look and the suspension.
                    return Ok(());
                }
                if res.is_err() {
                    let mut t = Text::new();
                    let _ = write!(t, "ThreadSuspend of a live victim (it was {}) returned {}: ", before.map_or("?", |s| s.name()), code(res));
                    describe(&mut t, v, i);
                    return Err(t);
                }
                v.suspended = true;
                v.suspends += 1;
                self.tot.suspends += 1;
                if matches!(
                    before,
                    Some(ThreadState::BlockedSend | ThreadState::BlockedRecv | ThreadState::BlockedReply | ThreadState::BlockedNotify)
                ) {
                    self.tot.suspends_blocked += 1;
                }
                if !spin_ms(1000, || state(v.thread) == Some(ThreadState::Suspended)) {
                    let mut t = Text::new();
                    let _ = write!(t, "after ThreadSuspend returned Ok (it was {}): ", before.map_or("?", |s| s.name()));
                    describe(&mut t, v, i);
                    return Err(t);
                }
            }
        }
        Ok(())
    }

    /// The counting victim (0), suspended, must not count; resumed, it must count again.
    fn watch_counter(&mut self, r: &mut Round) -> Result<(), Text> {
        let v = &mut r.v[0];
        let count = || field(0, rec::ITERATIONS);
        if v.suspended {
            if let Err(e) = sys::thread_resume(v.thread) {
                fail!("ThreadResume of the suspended counting victim returned {e}");
            }
            v.suspended = false;
            self.tot.resumes += 1;
        }
        // It runs (it may not have started yet).
        let c0 = count();
        if !spin_ms(2000, || count() > c0) {
            fail!("the counting victim did not count within 2 s (it is {}, count {c0})", state_name(v.thread));
        }
        if let Err(e) = sys::thread_suspend(v.thread) {
            fail!("ThreadSuspend of the counting victim returned {e}");
        }
        v.suspended = true;
        v.suspends += 1;
        self.tot.suspends += 1;
        // Give the suspension 2 ms to reach its CPU, then the counter must hold still for 5 ms:
        // but for one count, which an emulated CPU that the host had put aside may still
        // finish before it takes the interrupt that stops the victim (one count per call of a
        // function: at most one between two checks for an interrupt).
        pause_us(2000);
        let c1 = count();
        pause_us(5000);
        let c2 = count();
        if c2 > c1 + 1 {
            fail!("the counting victim went on counting while suspended: {c1} -> {c2} in 5 ms (it is {})", state_name(v.thread));
        }
        if let Err(e) = sys::thread_resume(v.thread) {
            fail!("ThreadResume of the counting victim returned {e}");
        }
        v.suspended = false;
        self.tot.resumes += 1;
        if !spin_ms(2000, || count() > c2) {
            fail!("the counting victim did not count again within 2 s of ThreadResume (it is {})", state_name(v.thread));
        }
        self.tot.counting_checks += 1;
        Ok(())
    }

    /// Affinity storm: move victims between CPUs 1..n and change their priorities; the counting
    /// victim, moved first and then whenever it is picked, must report its new CPU.
    fn affinity_phase(&mut self, r: &mut Round) -> Result<(), Text> {
        let ops = r.n as u64;
        let mut first = Ok(());
        for op in 0..ops {
            first = first.and(self.affinity_op(r, op));
            pause_us(self.rng.below(300));
        }
        first
    }

    /// Moves a victim (the counting one at `op` 0) to another CPU and priority.
    fn affinity_op(&mut self, r: &mut Round, op: u64) -> Result<(), Text> {
        {
            let i = if op == 0 { 0 } else { self.rng.below(r.n as u64) as usize };
            let cpu = if op == 0 {
                1 + (r.v[0].cpu + self.rng.below(self.cpus - 2)) % (self.cpus - 1)
            } else {
                1 + self.rng.below(self.cpus - 1)
            };
            let prio = if i == 0 { SPIN_PRIO } else { VICTIM_PRIO_LO + self.rng.below(VICTIM_PRIO_HI - VICTIM_PRIO_LO + 1) };
            let v = &mut r.v[i];
            let (a, b) = (sys::thread_set_affinity(v.thread, cpu), sys::thread_set_priority(v.thread, prio));
            if a.is_err() || b.is_err() {
                let mut t = Text::new();
                let _ = write!(t, "ThreadSetAffinity({cpu}) returned {}, ThreadSetPriority({prio}) {}: ", code(a), code(b));
                describe(&mut t, v, i);
                return Err(t);
            }
            v.cpu = cpu;
            v.moved_to = Some(cpu);
            // Counted from after the move: the calls before it (however many the victim made
            // while the host held this CPU back) do not count.
            v.moved_at = field(i, rec::ITERATIONS);
            v.moved_tsc = rdtsc();
            self.tot.moves += 1;
            let info = |t: u64| sys::thread_info(t).map(|r| (r[1], r[2])).ok();
            if !spin_ms(1000, || info(v.thread) == Some((cpu, prio))) {
                let mut t = Text::new();
                let _ = write!(t, "moved to cpu {cpu} at priority {prio}, ThreadInfo says (cpu, priority) = {:?}: ", info(v.thread));
                describe(&mut t, v, i);
                return Err(t);
            }
            if i == 0 {
                if !spin_ms(2000, || field(0, rec::CPU) == cpu + 1) {
                    fail!(
                        "the counting victim, moved to cpu {cpu}, still reports cpu {} after 2 s (it is {}, ThreadInfo cpu {:?})",
                        field(0, rec::CPU) as i64 - 1,
                        state_name(v.thread),
                        info(v.thread).map(|x| x.0)
                    );
                }
                self.tot.cpu_checks += 1;
            }
        }
        Ok(())
    }

    /// After the kill: every victim dead, its outcomes allowed, its last CPU right.
    fn check_victims(&mut self, r: &Round) -> Result<(), Text> {
        let all_dead = |r: &Round| r.v[..r.n].iter().all(|v| state(v.thread) == Some(ThreadState::Dead));
        if !spin_ms(1000, || all_dead(r)) {
            let mut t = Text::new();
            let _ = write!(t, "not Dead 1 s after TaskKill returned:");
            let mut shown = 0;
            for (i, v) in r.v[..r.n].iter().enumerate() {
                if state(v.thread) != Some(ThreadState::Dead) && shown < 4 {
                    let _ = write!(t, " ");
                    describe(&mut t, v, i);
                    let _ = write!(t, ";");
                    shown += 1;
                }
            }
            return Err(t);
        }
        if self.kind == Kind::Suspend {
            let v = &r.v[self.rng.below(r.n as u64) as usize];
            let (s, q) = (sys::thread_suspend(v.thread), sys::thread_resume(v.thread));
            if s != Err(Error::InvalidState) || q != Err(Error::InvalidState) {
                fail!("ThreadSuspend / ThreadResume of a dead victim returned {} / {}, expected InvalidState", code(s), code(q));
            }
        }
        let bad = shared(header::BAD).load(SeqCst);
        if bad != 0 {
            fail!("victims received {bad} wrong messages or answers");
        }
        for (i, v) in r.v[..r.n].iter().enumerate() {
            let outcomes = [rec::OK, rec::TIMEOUT, rec::PARTNER_GONE, rec::INTERRUPTED, rec::OTHER].map(|w| field(i, w));
            for (k, &c) in outcomes.iter().enumerate() {
                self.tot.outcomes[k] += c;
            }
            self.tot.ok_by_kind[v.kind as usize] += if v.kind == p::K_SPIN { field(i, rec::ITERATIONS) } else { outcomes[0] };
            let mut t = Text::new();
            if outcomes[4] != 0 {
                let e = field(i, rec::LAST_OTHER);
                let _ = write!(t, "{} unexpected results (last: {}): ", outcomes[4], Error::try_from(e).map(|e| e.name()).unwrap_or("?"));
            } else if outcomes[2] != 0 {
                let _ = write!(t, "{} PartnerGone results, but every partner lives: ", outcomes[2]);
            } else if outcomes[3] > v.suspends {
                let _ = write!(t, "{} Interrupted results, but only {} suspensions: ", outcomes[3], v.suspends);
            } else if let Some(cpu) = v.moved_to.filter(|_| v.kind != p::K_SPIN && field(i, rec::ITERATIONS) >= v.moved_at + 3) {
                if field(i, rec::CPU) != cpu + 1 {
                    let _ = write!(
                        t,
                        "moved to cpu {cpu} {} us before the kill, then {} more calls, but the last ran on cpu {} (calls per cpu {:?}, ThreadInfo cpu {:?}): ",
                        (self.killed_at - v.moved_tsc) / us_ticks(1).max(1),
                        field(i, rec::ITERATIONS) - v.moved_at,
                        field(i, rec::CPU) as i64 - 1,
                        core::array::from_fn::<u64, 4, _>(|c| field(i, rec::ON_CPU + c)),
                        sys::thread_info(v.thread).map(|r| r[1])
                    );
                }
            }
            if t.len > 0 {
                describe(&mut t, v, i);
                return Err(t);
            }
        }
        Ok(())
    }

    /// The victims' threads are gone (live threads back to the baseline), and nothing counts on
    /// in the round's page.
    fn check_gone(&mut self) -> Result<(), Text> {
        let base = self.base[0];
        let threads = || sys::stat(MACHINE, stat::THREADS).unwrap_or(0);
        if !spin_ms(2000, || threads() == base) {
            fail!("2 s after the victims' capabilities were deleted, {} threads live, baseline {base}", threads());
        }
        let sum = || (0..MAX_V).map(|i| field(i, rec::ITERATIONS)).sum::<u64>();
        let s0 = sum();
        pause_us(1000);
        let s1 = sum();
        if s1 != s0 {
            fail!("a victim counts on after its thread is gone ({s0} -> {s1} calls)");
        }
        Ok(())
    }

    /// Everything the round made is gone: threads, budget, frames.
    fn check_released(&mut self) -> Result<(), Text> {
        let base = self.base;
        if !spin_ms(2000, || levels() == base) {
            let now = levels();
            fail!(
                "2 s after the victims' capabilities were deleted: live threads {} (baseline {}), budget left {} (baseline {}), free frames + heap pages {} (baseline {})",
                now[0], base[0], now[1], base[1], now[2], base[2]
            );
        }
        Ok(())
    }

    fn kernel_check(&mut self) -> Result<(), Text> {
        match sys::kernel_check(MACHINE) {
            Ok([v, objects, frames]) => {
                self.tot.checks += 1;
                self.tot.violations += v;
                if v > self.known_violations {
                    fail!("KernelCheck: {v} violations ({objects} objects, {frames} frames checked; see the lines above)");
                }
                Ok(())
            }
            Err(e) => fail!("KernelCheck did not run: {e}"),
        }
    }

    fn round(&mut self, round: u64) -> Result<(), Text> {
        // A fresh page for the round (a victim that outlived an earlier round on a broken kernel
        // writes only into its own round's page).
        let page = slot();
        let rw = Rights::READ.union(Rights::WRITE);
        if let Err(e) = sys::frame_alloc(MEMORY, page).and_then(|_| sys::map(SPACE, page, PAGE_VA, rw)) {
            release(page);
            fail!("the round's page: {e}");
        }
        shared(header::FINITE_TICKS).store(us_ticks(1000), SeqCst);
        let r = self.start(page);
        let checked = r.and_then(|mut r| {
            let phase = match self.kind {
                Kind::Kill => {
                    // A few ms, sometimes none at all (the victims are still starting).
                    pause_us(self.rng.below(4000));
                    Ok(())
                }
                Kind::Suspend => self.suspend_phase(&mut r),
                Kind::Affinity => self.affinity_phase(&mut r),
            };
            // Kill, in random order, a random moment apart.
            let first = self.rng.below(r.ntasks as u64) as usize;
            self.killed_at = rdtsc();
            let mut killed = Ok(());
            for k in 0..r.ntasks {
                let (task, _) = r.tasks[(first + k) % r.ntasks];
                if let Err(e) = sys::task_kill(task) {
                    let mut t = Text::new();
                    let _ = write!(t, "TaskKill returned {e}");
                    killed = killed.and(Err(t));
                }
                pause_us(self.rng.below(200));
            }
            // Every check runs even after one failed (a broken kernel may show more); the
            // first failure is the round's.
            let checked = phase.and(killed).and(self.check_victims(&r));
            self.finish(&r);
            checked.and(self.check_gone())
        });
        let _ = sys::unmap(SPACE, PAGE_VA);
        release(page);
        checked.and(self.check_released()).and(round_trip(round, &self.helpers, self.skip))?;
        if HELPER_BAD.load(SeqCst) != 0 || HELPER_OTHER.load(SeqCst) != 0 {
            fail!(
                "the root task's servers and feeders saw {} wrong messages and {} unexpected errors (last: {})",
                HELPER_BAD.load(SeqCst),
                HELPER_OTHER.load(SeqCst),
                Error::try_from(HELPER_LAST.load(SeqCst)).map(|e| e.name()).unwrap_or("?")
            );
        }
        if (round + 1) % self.o.check_every == 0 {
            self.kernel_check()?;
        }
        Ok(())
    }
}

/// Starts the root task's servers and feeders; returns their thread slots.
fn start_helpers(cpus: u64) -> Result<[u64; 16], Error> {
    for s in &SHARED[..2] {
        let e = slot();
        sys::endpoint_create(MEMORY, e)?;
        s.store(e, SeqCst);
    }
    let n = slot();
    sys::notification_create(MEMORY, n)?;
    SHARED[2].store(n, SeqCst);
    STOP.store(false, SeqCst);
    let mut ts = [0u64; 16];
    for c in 1..cpus.min(8) {
        ts[2 * c as usize] = spawn(server, c, ROOT_PRIO, c);
        ts[2 * c as usize + 1] = spawn(feeder, c, ROOT_PRIO, c);
    }
    Ok(ts)
}

fn stop_helpers(ts: &[u64; 16]) {
    STOP.store(true, SeqCst);
    // Deleting the endpoints wakes whoever waits on them with PartnerGone.
    for s in &SHARED {
        release(s.load(SeqCst));
    }
    for &t in ts.iter().filter(|&&t| t != 0) {
        spin_ms(2000, || state(t) == Some(ThreadState::Dead));
        release(t);
    }
}

/// Runs one storm and reports it as test `storm-NAME`.
pub fn run(bi: &BootInfo, kind: Kind, o: Opts) -> bool {
    let name = match kind {
        Kind::Kill => "storm-kill",
        Kind::Suspend => "storm-suspend",
        Kind::Affinity => "storm-affinity",
    };
    let cpus = cpus();
    let need = if kind == Kind::Affinity { 3 } else { 2 };
    if cpus < need {
        println!("test {name} ... skipped (needs {need} CPUs)");
        return true;
    }
    let o = Opts {
        tasks: o.tasks.clamp(1, MAX_TASKS),
        threads: o.threads.clamp(1, MAX_V / o.tasks.clamp(1, MAX_TASKS)),
        rounds: o.rounds.max(1),
        check_every: o.check_every.max(1),
        ..o
    };
    let t0 = rdtsc();
    // Everything that lives through the storm is made before the baseline.
    let tpl = match Template::load(bi) {
        Ok(t) => t,
        Err(e) => {
            report(name, false, format_args!("loading the worker: {e}"));
            return false;
        }
    };
    // The page tables of the rounds' page in the root task (they stay when it is unmapped).
    let page = slot();
    let set_up = sys::frame_alloc(MEMORY, page)
        .and_then(|_| sys::map(SPACE, page, PAGE_VA, Rights::READ.union(Rights::WRITE)))
        .and_then(|_| sys::unmap(SPACE, PAGE_VA));
    release(page);
    let threads0 = sys::stat(MACHINE, stat::THREADS).unwrap_or(0);
    let helpers = match set_up.and_then(|_| start_helpers(cpus)) {
        Ok(h) => h,
        Err(e) => {
            report(name, false, format_args!("set-up: {e}"));
            return false;
        }
    };
    crate::stress::sleep_ms(0);
    // The root derivation nodes of the shared objects the rounds copy into the victims (charged
    // to this task while it holds the originals): made now, by a first copy, so that the
    // baseline includes them.
    let tmp = slot();
    for s in &SHARED {
        let _ = sys::cap_copy(s.load(SeqCst), TASK, tmp, Rights::ALL);
        let _ = sys::cap_delete(tmp);
    }
    release(tmp);
    // The helpers are up (blocked on their endpoints) and the round trip works.
    let up = spin_ms(2000, || sys::stat(MACHINE, stat::THREADS) == Ok(threads0 + 2 * (cpus.min(8) - 1)));
    STUCK.store(0, SeqCst);
    let first = round_trip(u64::MAX, &helpers, 0);
    let mut s = Storm {
        kind,
        o,
        tpl: &tpl,
        rng: Rng(o.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ kind as u64 + 1 | 1),
        cpus,
        base: levels(),
        tot: Totals::default(),
        helpers,
        skip: 0,
        known_violations: 0,
        killed_at: 0,
    };
    let mut failure: Option<(u64, Text)> = None;
    if let Err(e) = first.and_then(|_| if up { Ok(()) } else { fail!("the servers and feeders did not start") }) {
        failure = Some((0, e));
    }
    let mut round = 0;
    while round < o.rounds && (failure.is_none() || o.keep_going) {
        let t = rdtsc();
        let r = s.round(round);
        s.tot.rounds += 1;
        if r.is_ok() {
            s.tot.passed_ticks += rdtsc() - t;
        }
        if let Err(e) = r {
            println!("storm {}: round {round} FAILED: {}", kind.name(), e.as_str());
            s.tot.failed_rounds += 1;
            if failure.is_none() {
                failure = Some((round, e));
            }
            // Log what the kernel thinks (its violations are printed).
            let _ = s.kernel_check();
            if o.keep_going {
                // Go on from here: what is broken now is not counted again.
                HELPER_BAD.store(0, SeqCst);
                HELPER_OTHER.store(0, SeqCst);
                wait_ms(500, || false);
                s.base = levels();
                s.skip = STUCK.load(SeqCst);
                if let Ok([v, _, _]) = sys::kernel_check(MACHINE) {
                    s.known_violations = v;
                }
            }
        }
        round += 1;
    }
    if failure.is_none() {
        if let Err(e) = s.kernel_check() {
            failure = Some((round, e));
        }
    }
    // Every kind of victim made calls that went through, over the storm (the storm reaches
    // what it is meant to; not asked of a storm too short to be sure of it).
    if failure.is_none() && s.tot.rounds >= 20 {
        if let Some(k) = (0..p::KINDS as usize).find(|&k| (k == p::K_SPIN as usize || o.kinds & 1 << k != 0) && s.tot.ok_by_kind[k] == 0) {
            let mut t = Text::new();
            let _ = write!(t, "no {} victim completed a call in {} rounds", p::KIND_NAMES[k], s.tot.rounds);
            failure = Some((round, t));
        }
    }
    // A suspension storm suspends blocked victims too, whose calls then return Interrupted
    // (before the thirty-seventh session a storm that never caught one blocked passed: a
    // review; 200 rounds catch some 160).
    // (Not with `suspend-running-only`, which passes blocked victims over on purpose.)
    if failure.is_none() && s.tot.rounds >= 20 && kind == Kind::Suspend && !o.suspend_running_only && (s.tot.suspends_blocked == 0 || s.tot.outcomes[3] == 0) {
        let mut t = Text::new();
        let _ = write!(t, "{} suspensions of blocked victims, and {} victims' calls returned Interrupted: neither may be none", s.tot.suspends_blocked, s.tot.outcomes[3]);
        failure = Some((round, t));
    }
    stop_helpers(&helpers);
    tpl.release();
    let ms = (rdtsc() - t0) / (tsc_hz() / 1000).max(1);
    let t = &s.tot;
    let mut l = rl4_user::Line::new();
    let _ = write!(
        l,
        "storm {}: {} rounds ({} failed) in {ms} ms ({} ms per passed round): {} victim tasks killed, {} victim threads; victim calls ok {}, Timeout {}, PartnerGone {}, Interrupted {}, other {}; root task's threads served {}, fed {}; KernelCheck {} runs, {} violations",
        kind.name(),
        t.rounds,
        t.failed_rounds,
        t.passed_ticks / (t.rounds - t.failed_rounds).max(1) / (tsc_hz() / 1000).max(1),
        t.tasks,
        t.victims,
        t.outcomes[0],
        t.outcomes[1],
        t.outcomes[2],
        t.outcomes[3],
        t.outcomes[4],
        SERVED.load(SeqCst),
        FED.load(SeqCst),
        t.checks,
        t.violations
    );
    match kind {
        Kind::Kill => {}
        Kind::Suspend => {
            let _ = write!(l, "; {} suspensions ({} of blocked victims), {} resumptions, {} counting checks", t.suspends, t.suspends_blocked, t.resumes, t.counting_checks);
        }
        Kind::Affinity => {
            let _ = write!(l, "; {} moves, {} CPU checks", t.moves, t.cpu_checks);
        }
    }
    l.flush();
    match failure {
        None => {
            report(
                name,
                true,
                format_args!(
                    "{} rounds of {} tasks x {} threads on cpus 1..{}, {} checks clean, baseline exact after every round, seed {}",
                    t.rounds,
                    o.tasks,
                    o.threads,
                    cpus - 1,
                    t.checks,
                    o.seed
                ),
            );
            true
        }
        Some((r, e)) => {
            report(name, false, format_args!("round {r} of {} (seed {}): {}", o.rounds, o.seed, e.as_str()));
            false
        }
    }
}
