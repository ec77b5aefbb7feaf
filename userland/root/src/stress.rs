//! The IPC stress run: many call/reply pairs on every CPU at once, every message checked.
//!
//! Pair `i` has its own endpoint, a server thread and a client thread; servers and clients are
//! spread so that some pairs share a CPU and others cross CPUs, in both directions. Each call
//! carries a sequence number, the pair's id and a checksum; the server checks that it sees every
//! sequence number exactly once and in order, the client checks the reply. One call in eight,
//! and its reply, is a long message (5 to 128 words, through each thread's own IPC buffer page:
//! the general path), every word past the registers' checked too ([`long_len`], [`word`]). A busy thread per
//! CPU at the same priority keeps preemption in play. The run ends when every pair has sent its
//! messages or the time is up; any lost, duplicated, reordered or corrupted message, or a pair
//! that made no progress, fails it.
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use rl4_abi::ipc::Tag;
use rl4_abi::ThreadState;
use rl4_user::sys::{self, Msg};
use rl4_user::{println, rdtsc};

use crate::space::*;

const MAX_PAIRS: usize = 64;
const PRIO: u64 = 50;

static EPS: [AtomicU64; MAX_PAIRS] = [const { AtomicU64::new(0) }; MAX_PAIRS];
static SENT: [AtomicU64; MAX_PAIRS] = [const { AtomicU64::new(0) }; MAX_PAIRS];
static ERRORS: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicBool = AtomicBool::new(false);
static TARGET: AtomicU64 = AtomicU64::new(0);

fn check(seq: u64, pair: u64) -> u64 {
    (seq ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(pair | 1).rotate_left(17) ^ pair
}

/// Where pair `i`'s server (`2i`) and client (`2i + 1`) have their IPC buffers (set before each
/// thread starts: [`spawn_buffered`]).
const BUFFERS: u64 = 0x0000_5d00_0000_0000;

fn buffer(thread: u64) -> *mut u64 {
    (BUFFERS + thread * rl4_abi::PAGE_SIZE) as *mut u64
}

/// The length of message `seq`'s call (and of its reply): one in eight is long, 5 to
/// `MAX_WORDS` words, the others four.
fn long_len(seq: u64) -> u64 {
    if seq % 8 == 7 { 5 + (seq / 8) % (rl4_abi::ipc::MAX_WORDS - 4) } else { 4 }
}

/// Word `i` (≥ 4) of pair `pair`'s call `seq` (a reply's: its complement).
fn word(seq: u64, pair: u64, i: u64) -> u64 {
    check(seq.wrapping_mul(131).wrapping_add(i), pair ^ i << 32)
}

/// Writes words `4..len` of a message into `thread`'s IPC buffer (`reply`: the reply's).
fn put_words(thread: u64, seq: u64, pair: u64, len: u64, reply: bool) {
    for i in 4..len {
        let w = word(seq, pair, i);
        // SAFETY: the thread's own buffer page, mapped for the run ([`spawn_buffered`]); no
        // other thread writes it.
        unsafe { buffer(thread).add(i as usize).write_volatile(if reply { !w } else { w }) };
    }
}

/// The first of words `4..len` in `thread`'s IPC buffer that is not what [`put_words`] wrote
/// for the same message: its index.
fn bad_word(thread: u64, seq: u64, pair: u64, len: u64, reply: bool) -> Option<u64> {
    (4..len).find(|&i| {
        let w = word(seq, pair, i);
        // SAFETY: as in `put_words`; the kernel wrote it on the receive that just returned.
        let got = unsafe { buffer(thread).add(i as usize).read_volatile() };
        got != if reply { !w } else { w }
    })
}

fn server(pair: u64) {
    let ep = EPS[pair as usize].load(SeqCst);
    let me = 2 * pair;
    let Ok(mut m) = sys::recv(ep) else { return };
    let mut expect = 0;
    loop {
        let len = long_len(m.w[0]);
        let bad = if m.tag.len() == len { bad_word(me, m.w[0], pair, len, false) } else { Some(m.tag.len()) };
        if m.w[0] != expect || m.w[1] != pair || m.w[2] != check(m.w[0], pair) || m.tag.label() != pair || bad.is_some() {
            ERRORS.fetch_add(1, SeqCst);
            println!(
                "stress: pair {pair}: got seq {} (expected {expect}), pair {}, checksum {}, length {} (expected {len}), first wrong word past the registers {bad:?}",
                m.w[0],
                m.w[1],
                m.w[2] == check(m.w[0], pair),
                m.tag.len()
            );
        }
        expect = m.w[0] + 1;
        let rlen = if len > 4 { len } else { 2 };
        put_words(me, m.w[0], pair, rlen, true);
        let r = Msg { tag: Tag::new(pair, rlen, 0), badge: 0, w: [m.w[0], !check(m.w[0], pair), 0, 0] };
        match sys::reply_recv(ep, &r) {
            Ok(x) => m = x,
            Err(_) => return, // the endpoint is gone: the run is over
        }
    }
}

fn client(pair: u64) {
    let ep = EPS[pair as usize].load(SeqCst);
    let target = TARGET.load(SeqCst);
    for seq in 0..target {
        if STOP.load(SeqCst) {
            return;
        }
        let len = long_len(seq);
        put_words(2 * pair + 1, seq, pair, len, false);
        let m = Msg { tag: Tag::new(pair, len, 0), badge: 0, w: [seq, pair, check(seq, pair), rdtsc()] };
        let rlen = if len > 4 { len } else { 2 };
        match sys::call(ep, &m) {
            Ok(r) if r.w[0] == seq
                && r.w[1] == !check(seq, pair)
                && r.tag.label() == pair
                && r.tag.len() == rlen
                && bad_word(2 * pair + 1, seq, pair, rlen, true).is_none() =>
            {
                SENT[pair as usize].store(seq + 1, SeqCst);
            }
            other => {
                ERRORS.fetch_add(1, SeqCst);
                println!("stress: pair {pair}: bad reply to seq {seq}: {other:?}");
                return;
            }
        }
    }
}

/// A pair thread (`f(pair)`, priority `PRIO`, on `cpu`) with its IPC buffer page
/// (`buffer(index)`, zeroed, mapped at the first run of the boot that needs it and kept for the
/// next: the console runs the stress test again and again) set before it starts.
fn spawn_buffered(f: fn(u64), pair: u64, cpu: u64, index: u64) -> Option<u64> {
    let buf = buffer(index) as u64;
    let (w, bit) = (&MAPPED[index as usize / 64], 1u64 << (index % 64));
    if w.load(SeqCst) & bit == 0 {
        map_fresh(SPACE, buf, 1, rl4_abi::Rights::READ.union(rl4_abi::Rights::WRITE)).ok()?;
        w.fetch_or(bit, SeqCst);
    }
    try_spawn_on(f, pair, PRIO, cpu, try_stack(4).ok()?, Some(buf)).ok()
}

/// The pairs' buffer pages mapped so far (a bit per thread index).
static MAPPED: [AtomicU64; 2 * MAX_PAIRS / 64] = [const { AtomicU64::new(0) }; 2 * MAX_PAIRS / 64];

fn busy(_: u64) {
    while !STOP.load(SeqCst) {
        core::hint::spin_loop();
    }
}

/// Runs the stress test; returns whether it passed.
pub fn run(pairs: usize, messages: u64, seconds: u64) -> bool {
    run_with(pairs, messages, seconds, true, &mut || {})
}

/// The stress test, calling `tick` between the monitor's looks (every 100 ms).
/// `busy`: one spinning thread per CPU too, so that the pairs are preempted (the fuzzer runs
/// without: its own threads load every CPU, and a spinner would take a whole time slice from
/// every fuzzer that yields or waits).
pub fn run_with(pairs: usize, messages: u64, seconds: u64, busy: bool, tick: &mut dyn FnMut()) -> bool {
    let pairs = pairs.clamp(1, MAX_PAIRS);
    let n = cpus();
    TARGET.store(messages, SeqCst);
    // A run starts from nothing (the console runs the test again and again: before the
    // fortieth session a second run found `STOP` and the first run's counts, and passed
    // without a message; a review found it).
    STOP.store(false, SeqCst);
    ERRORS.store(0, SeqCst);
    for s in &SENT {
        s.store(0, SeqCst);
    }
    // Per pair: its endpoint, server and client (0: not made); a failure to make one ends the
    // run through the same wind-down as its end.
    let mut slots = [[0u64; 3]; MAX_PAIRS];
    let mut same = 0;
    let mut failed = false;
    for i in 0..pairs {
        let ep = slot();
        if sys::endpoint_create(MEMORY, ep).is_err() {
            println!("stress: cannot create endpoint {i}");
            release(ep);
            failed = true;
            break;
        }
        EPS[i].store(ep, SeqCst);
        let scpu = i as u64 % n;
        // Every other pair shares its server's CPU; the rest cross to another CPU, half of them
        // "upwards" and half "downwards".
        let ccpu = if i % 2 == 0 { scpu } else if i % 4 == 1 { (scpu + 1) % n } else { (scpu + n - 1) % n };
        if ccpu == scpu {
            same += 1;
        }
        slots[i][0] = ep;
        let Some(s) = spawn_buffered(server, i as u64, scpu, 2 * i as u64) else {
            println!("stress: cannot start server {i}");
            failed = true;
            break;
        };
        slots[i][1] = s;
    }
    let spinning = if busy && !failed { n.min(8) } else { 0 };
    let spinners: [u64; 8] = core::array::from_fn(|c| if (c as u64) < spinning { spawn(self::busy, 0, PRIO, c as u64) } else { 0 });
    for (i, s) in slots.iter_mut().enumerate().take(if failed { 0 } else { pairs }) {
        let ccpu = {
            let scpu = i as u64 % n;
            if i % 2 == 0 { scpu } else if i % 4 == 1 { (scpu + 1) % n } else { (scpu + n - 1) % n }
        };
        let Some(c) = spawn_buffered(client, i as u64, ccpu, 2 * i as u64 + 1) else {
            println!("stress: cannot start client {i}");
            failed = true;
            break;
        };
        s[2] = c;
    }
    if messages == u64::MAX {
        println!("stress: {pairs} pairs ({same} same-core, {} cross-core) on {n} CPU(s), messages until the time is up, {seconds} s, {spinning} busy threads", pairs - same);
    } else {
        println!("stress: {pairs} pairs ({same} same-core, {} cross-core) on {n} CPU(s), {messages} messages each, at most {seconds} s, {spinning} busy threads", pairs - same);
    }
    let start = rdtsc();
    let limit = tsc_hz() * seconds;
    let done = |i: usize| SENT[i].load(SeqCst) >= messages;
    // The root thread outranks the pairs: it sleeps between looks. A pair that is not done and
    // has not moved for 10 s while the run goes on has stalled.
    let mut last = [0u64; MAX_PAIRS];
    let mut still = [0u32; MAX_PAIRS];
    let mut stalled = None;
    while !failed && !(0..pairs).all(done) && rdtsc() - start < limit && ERRORS.load(SeqCst) == 0 && stalled.is_none() {
        sleep_ms(100);
        tick();
        for i in 0..pairs {
            let v = SENT[i].load(SeqCst);
            if v == last[i] && !done(i) {
                still[i] += 1;
                if still[i] >= 100 {
                    stalled = Some(i);
                }
            } else {
                still[i] = 0;
            }
            last[i] = v;
        }
    }
    if let Some(i) = stalled {
        println!("stress: pair {i} made no progress for 10 s (at message {})", SENT[i].load(SeqCst));
    }
    if ERRORS.load(SeqCst) != 0 || stalled.is_some() || (0..pairs).any(|i| SENT[i].load(SeqCst) == 0) {
        for i in 0..pairs {
            println!("stress: pair {i}: {} round trips", SENT[i].load(SeqCst));
        }
    }
    let elapsed_ms = (rdtsc() - start) / (tsc_hz() / 1000).max(1);
    STOP.store(true, SeqCst);
    let total: u64 = (0..pairs).map(|i| SENT[i].load(SeqCst)).sum();
    let (slow, slowest) = (0..pairs).map(|i| (i, SENT[i].load(SeqCst))).min_by_key(|x| x.1).unwrap_or((0, 0));
    let most = (0..pairs).map(|i| SENT[i].load(SeqCst)).max().unwrap_or(0);
    let errors = ERRORS.load(SeqCst);
    // Wind down: clients stop at their next message; deleting the endpoints ends the servers.
    let dead = |t: u64| t == 0 || matches!(crate::tests::state(t), Some(ThreadState::Dead));
    for s in slots.iter().take(pairs) {
        wait_ms(2000, || dead(s[2]));
        if s[0] != 0 {
            release(s[0]);
        }
    }
    for s in slots.iter().take(pairs) {
        wait_ms(2000, || dead(s[1]));
        for &t in &s[1..] {
            if t != 0 {
                release(t);
            }
        }
    }
    for &t in spinners.iter().take(spinning as usize) {
        wait_ms(2000, || matches!(crate::tests::state(t), Some(ThreadState::Dead)));
        release(t);
    }
    let all_done = (0..pairs).all(done);
    let ok = !failed && errors == 0 && stalled.is_none() && slowest > 0 && (all_done || elapsed_ms >= seconds * 1000 || messages == u64::MAX);
    println!(
        "stress: {} in {elapsed_ms} ms: {total} round trips, {errors} errors, per pair {slowest}..{most} (slowest: pair {slow}), {} round trips/s",
        if ok { "passed" } else { "FAILED" },
        total * 1000 / elapsed_ms.max(1)
    );
    ok
}

static SLEEP_NOTE: AtomicU64 = AtomicU64::new(u64::MAX);

/// Makes [`sleep_ms`]'s notification, if it is not made yet; whether it exists. The root task
/// calls this first thing, before any program it starts can spend the budget it shares.
pub fn init_sleep() -> bool {
    if SLEEP_NOTE.load(SeqCst) != u64::MAX {
        return true;
    }
    let n = slot();
    if sys::notification_create(MEMORY, n).is_err() {
        release(n);
        return false;
    }
    SLEEP_NOTE.store(n, SeqCst);
    true
}

/// Blocks the calling thread for about `ms` milliseconds (a wait on a private notification that
/// nobody signals). The notification is made at the root task's start ([`init_sleep`], before
/// any program it starts can spend the budget it shares); should that have failed, each sleep
/// tries again and only yields meanwhile, rather than keep a dead slot for good (before the
/// fifteenth session a program that spent the budget first left every later sleep returning at
/// once).
pub fn sleep_ms(ms: u64) {
    if !init_sleep() {
        sys::yield_now();
        return;
    }
    let _ = sys::wait(SLEEP_NOTE.load(SeqCst), tsc_hz() / 1000 * ms);
}
