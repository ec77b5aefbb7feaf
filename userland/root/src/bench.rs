//! The benchmark engine: one configuration per boot, one `BENCH {json}` line per result.
//!
//! `bench=NAME [iters=N] [len=W] [accel=tcg|icount|kvm]`. Latency configurations record every
//! iteration's TSC delta (minus the measured cost of the time-stamp pair) and report min,
//! median, mean, p99, p99.9 and max, the total divided by the iterations, the distribution
//! (percentiles for the plot) and the IPIs sent per iteration. `scripts/bench` runs them and
//! writes `docs/benchmarks.md`.
//!
//! | name | what one iteration is |
//! |---|---|
//! | `same-core` | `Call` + `ReplyRecv` round trip with an echo server in another task, same CPU |
//! | `same-core-intra` | the same with a server thread of the same task |
//! | `same-core-pong` | `same-core` with a server that replies with what it received, unchanged (sel4bench's loop; the echo server changes every word) |
//! | `cross-core-A-B` | client on CPU A, server (another task) on CPU B |
//! | `oneway-same-core`, `oneway-cross-core-A-B` | one-way `Call` and reply, sel4bench's way |
//! | `null-syscall` | `Null` (answered by the kernel's small handler for it) |
//! | `identify-syscall` | `CapIdentify` of the root task's own task capability: a non-IPC call through the general system-call path (one look at a capability slot under the table's lock) |
//! | `thread-switch` | one `Yield` from a thread to another of the same task, same CPU |
//! | `cr3-floor` | two CR3 writes (away and back), measured in the kernel |
//! | `fpu-floor` | saving the thread's FPU/SIMD registers and loading them back (what each switch adds for a thread that uses them), measured in the kernel |
//! | `shm-floor-A-B` | a cache-line ping-pong between user threads on CPUs A and B |
//! | `ipi-floor-A-B` | an IPI from A to idle B and B's answer, timed from user space around one `Measure(IPI_FLOOR)` call |
//! | `irq-latency-A-B` | a byte written on CPU A to COM2 in loopback mode → its receive interrupt, routed to CPU B, wakes a driver thread there (at most 20,000; needs COM2) |
//! | `pairs-K` | K same-core pairs, one per CPU 0..K-1, in parallel: round trips per second |
//! | `fault-round-trip` | a `ud2` of a thread whose fault handler (a thread of the same task, same CPU) replies with the instruction pointer moved past it: fault → handler receives → replies → thread resumes |
//! | `fault-floor` | a `ud2` the kernel steps over at once (`Measure(FAULT_FLOOR)`): the raw exception entry and return |
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::{Relaxed, SeqCst}};
use rl4_abi::ipc::Tag;
use rl4_abi::{BootInfo, Rights, measure, stat};
use rl4_user::sys::{self, Msg};
use rl4_user::{Line, println, rdtsc};

use crate::space::*;

const MAX_SAMPLES: usize = 1 << 20;
/// Where the two sample buffers (per-iteration TSC deltas) are mapped, one after the other.
const SAMPLES_VA: u64 = 0x0000_6800_0000_0000;
const SAMPLES_BYTES: u64 = (MAX_SAMPLES * 4) as u64;
static MAPPED: AtomicBool = AtomicBool::new(false);

fn buffer(n: u64) -> &'static mut [u32] {
    if !MAPPED.swap(true, SeqCst) {
        map_fresh(SPACE, SAMPLES_VA, 2 * SAMPLES_BYTES / 4096, Rights::READ.union(Rights::WRITE)).expect("bench: sample buffers");
    }
    // SAFETY: the range is mapped writable just above (and never unmapped); only the root
    // thread running the benchmark uses it, one configuration and one buffer use at a time.
    unsafe { core::slice::from_raw_parts_mut((SAMPLES_VA + n * SAMPLES_BYTES) as *mut u32, MAX_SAMPLES) }
}

fn samples() -> &'static mut [u32] {
    buffer(0)
}

fn samples2() -> &'static mut [u32] {
    buffer(1)
}

use rl4_user::worker::{ECHO as W_ECHO, PONG as W_PONG, STAMP as W_STAMP};

fn ipis() -> u64 {
    sys::stat(MACHINE, stat::IPIS_SENT).unwrap_or(0)
}

/// Heap allocations, frees and global-lock acquisitions during a measured loop, all CPUs: only
/// a kernel built with the `countglobal` feature counts them (others answer `InvalidArgument`,
/// and the figures are left out). While counting, the kernel also records each CPU's first
/// events with their call chains and prints them when counting stops (`countglobal:` lines).
struct GlobalCounts(Option<[u64; 3]>);

impl GlobalCounts {
    fn read() -> Option<[u64; 3]> {
        let s = |w| sys::stat(MACHINE, w).ok();
        Some([s(stat::HEAP_ALLOCS)?, s(stat::HEAP_FREES)?, s(stat::GLOBAL_LOCKS)?])
    }

    fn start() -> GlobalCounts {
        // The sample buffers are mapped on first use (making thousands of frames): not counted.
        let _ = samples();
        let r = Self::read();
        if r.is_some() {
            let _ = sys::measure(MACHINE, measure::COUNT_EVENTS, 1);
        }
        GlobalCounts(r)
    }

    /// The counts since `start` (and the kernel prints its records), and those of the control:
    /// an endpoint made and deleted right after, whose allocation and registry lock the counter
    /// must see (else its zeros prove nothing).
    fn stop(self) -> Option<([u64; 3], [u64; 3])> {
        let a = self.0?;
        let b = Self::read()?;
        let _ = sys::measure(MACHINE, measure::COUNT_EVENTS, 0);
        let e = slot();
        let made = sys::endpoint_create(MEMORY, e).is_ok();
        release(e);
        let c = Self::read()?;
        let control = if made { [c[0] - b[0], c[1] - b[1], c[2] - b[2]] } else { [0; 3] };
        Some(([b[0] - a[0], b[1] - a[1], b[2] - a[2]], control))
    }
}

fn global_counts(j: &mut Json, c: Option<([u64; 3], [u64; 3])>, iters: u64) {
    if let Some(([allocs, frees, locks], [c_allocs, _, c_locks])) = c {
        j.num("control_heap_allocs", c_allocs).num("control_global_locks", c_locks);
        j.frac("heap_allocs_per_round_trip", allocs, iters)
            .frac("heap_frees_per_round_trip", frees, iters)
            .frac("global_locks_per_round_trip", locks, iters)
            .num("heap_allocs", allocs)
            .num("heap_frees", frees)
            .num("global_locks", locks);
    }
}

/// Moves the calling (root) thread to `cpu`.
fn go_to(cpu: u64) {
    let _ = sys::thread_set_affinity(THREAD, cpu);
    while sys::cpu_info().0 != cpu {
        sys::yield_now();
    }
}

fn overhead() -> u64 {
    let mut v = [0u64; 101];
    for x in v.iter_mut() {
        let a = rdtsc();
        *x = rdtsc() - a;
    }
    v.sort_unstable();
    v[50]
}

pub struct Summary {
    pub min: u64,
    pub median: u64,
    pub mean: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// Percentiles 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9, 100.
    pub cdf: [u64; 11],
}

fn summarize(s: &mut [u32]) -> Summary {
    s.sort_unstable();
    let n = s.len().max(1);
    let at = |q: u64| s[((n as u64 - 1) * q / 1000) as usize] as u64;
    let mean = s.iter().map(|&x| x as u64).sum::<u64>() / n as u64;
    Summary {
        min: s[0] as u64,
        median: at(500),
        mean,
        p99: at(990),
        p999: at(999),
        max: s[n - 1] as u64,
        cdf: [at(10), at(50), at(100), at(250), at(500), at(750), at(900), at(950), at(990), at(999), at(1000)],
    }
}

struct Json(Line);

impl Json {
    fn new(name: &str, accel: &str, iters: u64, hz: u64) -> Json {
        let mut l = Line::new();
        let _ = write!(l, "BENCH {{\"name\":\"{name}\",\"accel\":\"{accel}\",\"iterations\":{iters},\"tsc_hz\":{hz}");
        Json(l)
    }
    fn num(&mut self, k: &str, v: u64) -> &mut Self {
        let _ = write!(self.0, ",\"{k}\":{v}");
        self
    }
    fn frac(&mut self, k: &str, num: u64, den: u64) -> &mut Self {
        let den = den.max(1);
        let _ = write!(self.0, ",\"{k}\":{}.{:04}", num / den, num % den * 10000 / den);
        self
    }
    fn summary(&mut self, prefix: &str, s: &Summary) -> &mut Self {
        let _ = write!(
            self.0,
            ",\"{prefix}min_cycles\":{},\"{prefix}median_cycles\":{},\"{prefix}mean_cycles\":{},\"{prefix}p99_cycles\":{},\"{prefix}p999_cycles\":{},\"{prefix}max_cycles\":{},\"{prefix}cdf\":[",
            s.min, s.median, s.mean, s.p99, s.p999, s.max
        );
        for (i, v) in s.cdf.iter().enumerate() {
            let _ = write!(self.0, "{}{v}", if i == 0 { "" } else { "," });
        }
        let _ = write!(self.0, "]");
        self
    }
    fn text(&mut self, k: &str, v: &str) -> &mut Self {
        let _ = write!(self.0, ",\"{k}\":\"{v}\"");
        self
    }
    fn emit(&mut self) {
        let _ = write!(self.0, "}}");
        self.0.flush();
    }
}

/// An echo or stamp server in another task on `cpu`.
fn remote_server(bi: &BootInfo, cpu: u64, cmd: u64) -> Option<Server> {
    Server::start(bi, cpu, cmd).ok()
}

static INTRA_EP: AtomicU64 = AtomicU64::new(0);

fn intra_server(_: u64) {
    let ep = INTRA_EP.load(SeqCst);
    let Ok(mut m) = sys::recv(ep) else { return };
    loop {
        let r = Msg { tag: Tag::new(m.tag.label(), m.tag.len(), 0), badge: 0, w: m.w };
        match sys::reply_recv(ep, &r) {
            Ok(x) => m = x,
            Err(_) => return,
        }
    }
}

/// Round trips on `ep`; fills the samples, returns the total cycles. (The answers are not
/// looked at here: keeping one across the time stamp would add instructions to every sample.
/// The warm-up checks each ([`warm_up`]), the measured loop is checked by the deliveries the
/// kernel counted.)
fn round_trips(ep: u64, len: u64, iters: usize, ov: u64) -> u64 {
    let m = Msg { tag: Tag::new(1, len, 0), badge: 0, w: [1, 2, 3, 4] };
    let s = samples();
    let start = rdtsc();
    for x in s.iter_mut().take(iters) {
        let t = rdtsc();
        let _ = sys::call(ep, &m);
        *x = (rdtsc() - t).saturating_sub(ov) as u32;
    }
    rdtsc() - start
}

/// `n` calls on `ep` before a measurement; how many failed or came back with another label
/// than the server answers with (an echo server's answer has its call's label plus one, the
/// others the call's).
fn warm_up(ep: u64, len: u64, n: usize, echo: bool) -> u64 {
    let m = Msg { tag: Tag::new(1, len, 0), badge: 0, w: [1, 2, 3, 4] };
    let label = if echo { 2 } else { 1 };
    (0..n).filter(|_| !matches!(sys::call(ep, &m), Ok(r) if r.tag.label() == label)).count() as u64
}

/// IPC deliveries the kernel counted so far (all CPUs: a round trip is two).
fn deliveries() -> u64 {
    sys::stat(MACHINE, stat::IPC_FAST).unwrap_or(0) + sys::stat(MACHINE, stat::IPC_SLOW).unwrap_or(0)
}

const CLIENT_BUF: u64 = 0x0000_6500_0000_0000;
const INTRA_BUF: u64 = 0x0000_6600_0000_0000;
static BUFFERS: AtomicBool = AtomicBool::new(false);

fn ipc_config(bi: &BootInfo, name: &str, accel: &str, client: u64, server: Option<u64>, len: u64, iters: usize) {
    let ov = overhead();
    go_to(client);
    let len = len.min(rl4_abi::ipc::MAX_WORDS);
    if len > 4 && !BUFFERS.swap(true, SeqCst) {
        // Words 4 and up travel in IPC buffers.
        let rw = Rights::READ.union(Rights::WRITE);
        let _ = map_fresh(SPACE, CLIENT_BUF, 1, rw);
        let _ = map_fresh(SPACE, INTRA_BUF, 1, rw);
        let _ = sys::set_ipc_buffer(THREAD, CLIENT_BUF);
    }
    let echo = server.is_some() && name != "same-core-pong";
    let (ep, cleanup) = match server {
        Some(cpu) => match remote_server(bi, cpu, if echo { W_ECHO } else { W_PONG }) {
            Some(srv) => (srv.ep, Some(srv)),
            None => return println!("bench: cannot start the server"),
        },
        None => {
            let ep = slot();
            let _ = sys::endpoint_create(MEMORY, ep);
            INTRA_EP.store(ep, SeqCst);
            let t = spawn(intra_server, 0, ROOT_PRIO, client);
            if len > 4 {
                let _ = sys::set_ipc_buffer(t, INTRA_BUF);
            }
            (ep, None)
        }
    };
    let warm_failed = warm_up(ep, len, 1000.min(iters), echo);
    let i0 = ipis();
    let d0 = deliveries();
    let (f0, c0) = (sys::stat(MACHINE, stat::IPC_FAST).unwrap_or(0), sys::stat(MACHINE, stat::IPC_CROSS).unwrap_or(0));
    let counting = GlobalCounts::start();
    let total = round_trips(ep, len, iters, ov);
    let counted = counting.stop();
    // Round trips the kernel did not deliver both ways (a call that failed at once loses two
    // deliveries; rounded up, since the last reply's count may land on the server's CPU just
    // after the client read the counters).
    let failed = warm_failed + (iters as u64).saturating_sub((deliveries() - d0).div_ceil(2));
    let sent = ipis() - i0;
    let fast = sys::stat(MACHINE, stat::IPC_FAST).unwrap_or(0) - f0;
    let cross = sys::stat(MACHINE, stat::IPC_CROSS).unwrap_or(0) - c0;
    let s = summarize(&mut samples()[..iters]);
    let mut j = Json::new(name, accel, iters as u64, tsc_hz());
    j.summary("", &s)
        .num("cycles_per_iteration", total / iters as u64)
        .frac("ipis_per_round_trip", sent, iters as u64)
        .frac("fast_path_per_round_trip", fast, iters as u64)
        .frac("cross_cpu_wakeups_per_round_trip", cross, iters as u64)
        .num("message_words", len)
        .num("client_cpu", client)
        .num("server_cpu", server.unwrap_or(client))
        .num("overhead_cycles", ov)
        .num("total_cycles", total)
        .num("failed", failed);
    global_counts(&mut j, counted, iters as u64);
    j.emit();
    match cleanup {
        Some(srv) => srv.stop(),
        None => release(ep),
    }
}

/// The console's `ping` (userland/root/src/console.rs): `iters` round trips (`Call` +
/// `ReplyRecv`, one word) from this thread moved to CPU `client` to an echo server on CPU
/// `server`, a thread of this task (`cross_task` false) or of a task of its own (true). The
/// calling thread goes back to CPU 0 afterwards.
pub fn ping(bi: &BootInfo, iters: usize, cross_task: bool, client: u64, server: u64) -> Option<Summary> {
    let iters = iters.clamp(1, MAX_SAMPLES);
    let ov = overhead();
    let (ep, srv, thread) = if cross_task {
        let srv = remote_server(bi, server, W_ECHO)?;
        (srv.ep, Some(srv), None)
    } else {
        let ep = slot();
        sys::endpoint_create(MEMORY, ep).ok()?;
        INTRA_EP.store(ep, SeqCst);
        let t = spawn(intra_server, 0, ROOT_PRIO, server);
        (ep, None, Some(t))
    };
    go_to(client);
    let failed = warm_up(ep, 1, 100.min(iters), cross_task);
    if failed > 0 {
        println!("ping: {failed} of the warm-up's calls failed or were answered wrong");
    }
    round_trips(ep, 1, iters, ov);
    go_to(0);
    let s = summarize(&mut samples()[..iters]);
    match srv {
        Some(srv) => srv.stop(),
        None => {
            release(ep);
            if let Some(t) = thread {
                release(t);
            }
        }
    }
    Some(s)
}

fn oneway_config(bi: &BootInfo, name: &str, accel: &str, client: u64, server: u64, iters: usize) {
    let ov = overhead();
    go_to(client);
    let Some(srv) = remote_server(bi, server, W_STAMP) else { return println!("bench: cannot start the server") };
    let ep = srv.ep;
    let m = Msg { tag: Tag::new(1, 0, 0), badge: 0, w: [0; 4] };
    for _ in 0..1000.min(iters) {
        let _ = sys::call(ep, &m);
    }
    let (a, b) = (samples(), samples2());
    let counting = GlobalCounts::start();
    for i in 0..iters {
        let before = rdtsc();
        let r = sys::call(ep, &m);
        let after = rdtsc();
        if let Ok(r) = r {
            a[i] = r.w[0].wrapping_sub(before).saturating_sub(ov) as u32;
            b[i] = after.wrapping_sub(r.w[1]).saturating_sub(ov) as u32;
        }
    }
    let counted = counting.stop();
    let sc = summarize(&mut a[..iters]);
    let sr = summarize(&mut b[..iters]);
    let mut j = Json::new(name, accel, iters as u64, tsc_hz());
    j.summary("", &sc)
        .summary("reply_", &sr)
        .text("what", "min/median/... = one-way call (client before syscall -> server after); reply_* = one-way reply")
        .num("client_cpu", client)
        .num("server_cpu", server)
        .num("overhead_cycles", ov);
    global_counts(&mut j, counted, iters as u64);
    j.emit();
    srv.stop();
}

/// `iters` samples of `op`, after `warm` unmeasured ones. `op` answers whether it did what it
/// measures (a system call that failed): each warm-up's answer is looked at, not the measured
/// ones' (keeping an answer across the time stamp would add instructions to every sample; the
/// operations measured this way answer the same every time); `after` counts failures the
/// measured loop left behind (yields that switched to nobody). The sum is `failed`, which the
/// report shows and a target refuses.
fn simple_config(name: &str, accel: &str, iters: usize, warm: usize, mut op: impl FnMut() -> bool, ov: u64, after: impl FnOnce() -> u64) {
    let mut failed = (0..warm).filter(|_| !op()).count() as u64;
    let s = samples();
    let i0 = ipis();
    let start = rdtsc();
    for x in s.iter_mut().take(iters) {
        let t = rdtsc();
        op();
        *x = (rdtsc() - t).saturating_sub(ov) as u32;
    }
    let total = rdtsc() - start;
    failed += after();
    let sent = ipis() - i0;
    let sm = summarize(&mut s[..iters]);
    Json::new(name, accel, iters as u64, tsc_hz())
        .summary("", &sm)
        .num("cycles_per_iteration", total / iters as u64)
        .frac("ipis_per_round_trip", sent, iters as u64)
        .num("overhead_cycles", ov)
        .num("failed", failed)
        .emit();
}

static YIELD_STOP: AtomicBool = AtomicBool::new(false);
/// The yielder's turns (only it writes: a plain read-modify-write, one `inc` instruction of
/// the measured switch).
static YIELDS: AtomicU64 = AtomicU64::new(0);

fn yielder(_: u64) {
    while !YIELD_STOP.load(SeqCst) {
        YIELDS.store(YIELDS.load(Relaxed) + 1, Relaxed);
        sys::yield_now();
    }
}

static SHM: AtomicU64 = AtomicU64::new(0);
static SHM_STOP: AtomicBool = AtomicBool::new(false);

fn shm_echo(_: u64) {
    let mut last = 0;
    while !SHM_STOP.load(SeqCst) {
        let v = SHM.load(SeqCst);
        if v != last && v % 2 == 1 {
            last = v + 1;
            SHM.store(v + 1, SeqCst);
        }
        core::hint::spin_loop();
    }
}

static PAIR_EPS: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];
static PAIR_ITERS: AtomicU64 = AtomicU64::new(0);
static PAIRS_DONE: AtomicU64 = AtomicU64::new(0);
static PAIRS_GO: AtomicBool = AtomicBool::new(false);
/// Calls of the pairs' clients that failed.
static PAIRS_FAILED: AtomicU64 = AtomicU64::new(0);

fn pair_client(i: u64) {
    let ep = PAIR_EPS[i as usize].load(SeqCst);
    let m = Msg { tag: Tag::new(1, 0, 0), badge: 0, w: [0; 4] };
    while !PAIRS_GO.load(SeqCst) {
        sys::yield_now();
    }
    let mut failed = 0;
    for _ in 0..PAIR_ITERS.load(SeqCst) {
        failed += sys::call(ep, &m).is_err() as u64;
    }
    PAIRS_FAILED.fetch_add(failed, SeqCst);
    PAIRS_DONE.fetch_add(1, SeqCst);
}

fn pairs_config(bi: &BootInfo, name: &str, accel: &str, k: u64, iters: u64) {
    let k = k.min(cpus()).min(64);
    let mut servers: [Option<Server>; 64] = [const { None }; 64];
    for i in 0..k {
        let Some(srv) = remote_server(bi, i, W_ECHO) else { return println!("bench: cannot start server {i}") };
        PAIR_EPS[i as usize].store(srv.ep, SeqCst);
        servers[i as usize] = Some(srv);
    }
    PAIR_ITERS.store(iters, SeqCst);
    PAIRS_FAILED.store(0, SeqCst);
    let clients: [u64; 64] = core::array::from_fn(|i| if (i as u64) < k { spawn(pair_client, i as u64, ROOT_PRIO - 1, i as u64) } else { 0 });
    // The root thread waits on the last CPU... of the ones not measured, if any; it sleeps.
    let i0 = ipis();
    let start = rdtsc();
    PAIRS_GO.store(true, SeqCst);
    while PAIRS_DONE.load(SeqCst) < k {
        crate::stress::sleep_ms(20);
    }
    let dt = rdtsc() - start;
    let sent = ipis() - i0;
    let total = k * iters;
    Json::new(name, accel, total, tsc_hz())
        .num("pairs", k)
        .num("round_trips_per_second", (total as u128 * tsc_hz() as u128 / dt.max(1) as u128) as u64)
        .num("cycles_per_iteration", dt / iters.max(1))
        .frac("ipis_per_round_trip", sent, total)
        .num("total_cycles", dt)
        .num("failed", PAIRS_FAILED.load(SeqCst))
        .emit();
    for &t in clients.iter().take(k as usize) {
        release(t);
    }
    for srv in servers.iter_mut().take(k as usize) {
        if let Some(srv) = srv.take() {
            srv.stop();
        }
    }
}

fn two_cpus(rest: &str) -> Option<(u64, u64)> {
    let (a, b) = rest.split_once('-')?;
    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
    (a < cpus() && b < cpus() && a != b).then_some((a, b))
}

/// `A-B`, both CPUs online (they may be the same).
fn cpu_pair(rest: &str) -> Option<(u64, u64)> {
    let (a, b) = rest.split_once('-')?;
    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
    (a < cpus() && b < cpus()).then_some((a, b))
}

/// Runs configuration `name`; returns whether it was known and ran.
pub fn run(bi: &BootInfo, name: &str, accel: &str, iters: usize, len: u64) -> bool {
    let iters = iters.clamp(1, MAX_SAMPLES);
    let ov = overhead();
    match name {
        // `-ref`: the same measurement again, in the boot of the configurations it is compared with.
        "same-core" | "same-core-ref" => ipc_config(bi, name, accel, 0, Some(0), len, iters),
        "same-core-pong" => ipc_config(bi, name, accel, 0, Some(0), len, iters),
        "same-core-intra" | "same-core-intra-ref" => ipc_config(bi, name, accel, 0, None, len, iters),
        "trace-same-core" => trace_config(bi, name, accel, iters),
        "oneway-same-core" => oneway_config(bi, name, accel, 0, 0, iters),
        "null-syscall" => simple_config(name, accel, iters, 1000.min(iters), || sys::raw(rl4_abi::Sys::Null, [0; 6]).0 == 0, ov, || 0),
        "identify-syscall" => simple_config(name, accel, iters, 1000.min(iters), || sys::raw(rl4_abi::Sys::CapIdentify, [TASK, 0, 0, 0, 0, 0]).0 == 0, ov, || 0),
        "thread-switch" => {
            YIELD_STOP.store(false, SeqCst);
            let _ = sys::thread_set_priority(THREAD, 60);
            let t = spawn(yielder, 0, 60, sys::cpu_info().0);
            sys::yield_now();
            // One sample = a yield away and back: two switches; the yielder must have had a
            // turn at each (else a yield that switched to nobody would count as one).
            let y0 = YIELDS.load(SeqCst);
            let y = |n: usize| (n as u64).saturating_sub(YIELDS.load(SeqCst) - y0);
            simple_config(name, accel, iters, 1000.min(iters), || { sys::yield_now(); true }, ov, || y(1000.min(iters) + iters));
            YIELD_STOP.store(true, SeqCst);
            sys::yield_now();
            let _ = sys::thread_set_priority(THREAD, ROOT_PRIO);
            release(t);
            println!("bench: thread-switch samples are a round trip (two switches)");
        }
        "fault-round-trip" => {
            if !fault_round_trip(name, accel, iters, ov) {
                return false;
            }
        }
        "fault-floor" => {
            // The kernel steps over at most 100,000 armed `ud2`s per call: the samples and the
            // 1,000 warm-up rounds (before the thirty-sixth session the samples alone were held
            // to 100,000, and a run of more than 99,000 iterations had no row: a review found it).
            let iters = iters.min(100_000 - 1000);
            if sys::measure(MACHINE, measure::FAULT_FLOOR, iters as u64 + 1000).is_err() {
                println!("bench: fault-floor: the kernel refused to arm the floor");
                return false;
            }
            simple_config(name, accel, iters, 1000, || { ud2(); true }, ov, || 0);
        }
        "fpu-floor" => {
            let k = sys::measure(MACHINE, measure::FPU_FLOOR, 10_000).unwrap_or([0; 3]);
            println!("bench: fpu-floor measured in the kernel: mean {} min {} max {} cycles per save and restore", k[0], k[1], k[2]);
            Json::new("fpu-floor-kernel", accel, 10_000, tsc_hz()).num("mean_cycles", k[0]).num("min_cycles", k[1]).num("max_cycles", k[2]).emit();
        }
        "cr3-floor" => {
            simple_config(name, accel, iters, 1000.min(iters), || sys::measure(MACHINE, measure::CR3_FLOOR, 1).is_ok(), ov, || 0);
            let k = sys::measure(MACHINE, measure::CR3_FLOOR, 10_000).unwrap_or([0; 3]);
            println!("bench: cr3-floor measured in the kernel alone: mean {} min {} max {} cycles per pair of writes", k[0], k[1], k[2]);
            Json::new("cr3-floor-kernel", accel, 10_000, tsc_hz()).num("mean_cycles", k[0]).num("min_cycles", k[1]).num("max_cycles", k[2]).emit();
        }
        _ => {
            let pair = name.strip_prefix("cross-core-").map(|r| r.strip_suffix("-nopoll").unwrap_or(r));
            if let Some((a, b)) = pair.and_then(two_cpus) {
                ipc_config(bi, name, accel, a, Some(b), len, iters);
            } else if let Some((a, b)) = name.strip_prefix("oneway-cross-core-").and_then(two_cpus) {
                oneway_config(bi, name, accel, a, b, iters);
            } else if let Some((a, b)) = name.strip_prefix("shm-floor-").and_then(two_cpus) {
                go_to(a);
                SHM.store(0, SeqCst);
                SHM_STOP.store(false, SeqCst);
                let t = spawn(shm_echo, 0, ROOT_PRIO, b);
                let mut v = 0u64;
                let mut one = || {
                    v += 2;
                    SHM.store(v - 1, SeqCst);
                    while SHM.load(SeqCst) != v {
                        core::hint::spin_loop();
                    }
                };
                simple_config(name, accel, iters, 1000, || { one(); true }, ov, || 0);
                SHM_STOP.store(true, SeqCst);
                release(t);
            } else if let Some((a, b)) = name.strip_prefix("ipi-floor-").and_then(two_cpus) {
                go_to(a);
                let i0 = ipis();
                simple_config(name, accel, iters, 1000.min(iters), || sys::measure(MACHINE, measure::IPI_FLOOR, b | 1 << 16).is_ok(), ov, || 0);
                println!("bench: ipi-floor sent {} IPIs (its 1,000 warm-up rounds included)", ipis() - i0);
            } else if let Some((a, b)) = name.strip_prefix("irq-latency-").and_then(cpu_pair) {
                let n = iters.min(20_000);
                let done = crate::drv_tests::irq_latency(a, b, &mut samples()[..n]);
                if done < n {
                    println!("bench: {name}: {done} of {n} interrupts arrived (is there a COM2?)");
                } else {
                    let s = summarize(&mut samples()[..n]);
                    let mut j = Json::new(name, accel, n as u64, tsc_hz());
                    j.summary("", &s).num("client_cpu", a).num("server_cpu", b);
                    j.emit();
                }
            } else if let Some(k) = name.strip_prefix("pairs-").and_then(|k| k.strip_suffix("cpu")).and_then(|k| k.parse().ok()) {
                pairs_config(bi, name, accel, k, iters as u64);
            } else {
                println!("bench: unknown configuration '{name}'");
                return false;
            }
        }
    }
    true
}

/// One `ud2`: a fault (invalid opcode) that the kernel steps over or the handler skips.
#[inline(always)]
fn ud2() {
    // SAFETY: `ud2` raises #UD; whoever handles it (the kernel's armed floor, or the fault
    // handler of `fault-round-trip`) resumes this thread after it with no register changed.
    unsafe { core::arch::asm!("ud2", options(nostack)) };
}

static FAULT_ITERS: AtomicU64 = AtomicU64::new(0);
static FAULT_EP: AtomicU64 = AtomicU64::new(0);
/// The faulting thread's total cycles.
static FAULT_TOTAL: AtomicU64 = AtomicU64::new(0);
/// The label of the faulting thread's closing call.
const FAULTS_DONE: u64 = 0xd0e;

/// The faulting thread of `fault-round-trip`: warm-up, then one sample per `ud2`.
fn faulter(ov: u64) {
    let iters = FAULT_ITERS.load(SeqCst) as usize;
    for _ in 0..1000 {
        ud2();
    }
    let s = samples();
    let start = rdtsc();
    for x in s.iter_mut().take(iters) {
        let t = rdtsc();
        ud2();
        *x = (rdtsc() - t).saturating_sub(ov) as u32;
    }
    FAULT_TOTAL.store(rdtsc() - start, SeqCst);
    let _ = sys::call(FAULT_EP.load(SeqCst), &Msg { tag: Tag::new(FAULTS_DONE, 0, 0), badge: 0, w: [0; 4] });
    sys::thread_exit();
}

/// `fault-round-trip`: the root thread is the fault handler of a thread of its own task on its
/// CPU, and answers each fault with `ReplyRecv`, moving the instruction pointer past the `ud2`.
fn fault_round_trip(name: &str, accel: &str, iters: usize, ov: u64) -> bool {
    use rl4_abi::fault;
    go_to(0);
    let ep = slot();
    let badged = slot();
    if sys::endpoint_create(MEMORY, ep).and_then(|_| sys::cap_mint(ep, TASK, badged, Rights::SEND, 0xfa)).is_err() {
        println!("bench: fault-round-trip: no endpoint");
        return false;
    }
    FAULT_EP.store(ep, SeqCst);
    FAULT_ITERS.store(iters as u64, SeqCst);
    let t = slot();
    let top = stack(4);
    let made = sys::thread_create(MEMORY, TASK, rl4_user::thread_entry(), top, ROOT_PRIO, 0, t)
        .and_then(|_| sys::thread_set_args(t, faulter as *const () as u64, ov))
        .and_then(|_| sys::thread_set_fault_handler(t, badged))
        .and_then(|_| sys::thread_resume(t));
    let i0 = ipis();
    let mut faults = 0u64;
    let mut m = if made.is_ok() { sys::recv(ep) } else { Err(rl4_abi::Error::InvalidState) };
    let ok = loop {
        match m {
            Ok(f) if f.tag.label() == fault::LABEL && f.badge == 0xfa && f.w[fault::W_KIND] == 6 => {
                faults += 1;
                let r = Msg { tag: Tag::new(fault::RESUME, 2, 0), badge: 0, w: [fault::SET_IP, f.w[fault::W_IP] + 2, 0, 0] };
                m = sys::reply_recv(ep, &r);
            }
            Ok(f) if f.tag.label() == FAULTS_DONE => {
                let _ = sys::reply(&Msg::default());
                break true;
            }
            _ => break false,
        }
    };
    let sent = ipis() - i0;
    let ok = ok && faults == iters as u64 + 1000;
    if ok {
        let sm = summarize(&mut samples()[..iters]);
        Json::new(name, accel, iters as u64, tsc_hz())
            .summary("", &sm)
            .num("cycles_per_iteration", FAULT_TOTAL.load(SeqCst) / iters as u64)
            .frac("ipis_per_round_trip", sent, iters as u64)
            .num("overhead_cycles", ov)
            .emit();
    } else {
        println!("bench: fault-round-trip failed ({faults} faults handled)");
    }
    wait_ms(1000, || crate::tests::state(t) == Some(rl4_abi::ThreadState::Dead));
    release(t);
    release(badged);
    release(ep);
    ok
}

/// The same-core round trip with the kernel's per-step stamps on: where the instructions go.
fn trace_config(bi: &BootInfo, name: &str, accel: &str, iters: usize) {
    go_to(0);
    let Some(srv) = remote_server(bi, 0, W_ECHO) else { return println!("bench: cannot start the server") };
    let ep = srv.ep;
    let m = Msg { tag: Tag::new(1, 0, 0), badge: 0, w: [0; 4] };
    for _ in 0..1000 {
        let _ = sys::call(ep, &m);
    }
    if sys::measure(MACHINE, measure::IPC_TRACE, 1).is_err() {
        srv.stop();
        return println!("bench: {name}: this kernel has no IPC stamps (build it with the `trace` feature, as scripts/bench does)");
    }
    let start = rdtsc();
    for _ in 0..iters {
        let _ = sys::call(ep, &m);
    }
    let total = rdtsc() - start;
    let _ = sys::measure(MACHINE, measure::IPC_TRACE, 0);
    let mut j = Json::new(name, accel, iters as u64, tsc_hz());
    j.num("cycles_per_iteration", total / iters as u64);
    let mut traced = 0;
    for (k, call) in ["call", "replyrecv"].iter().enumerate() {
        let _ = write!(j.0, ",\"{call}\":[");
        for step in 1..7u64 {
            let r = sys::measure(MACHINE, measure::IPC_TRACE_READ, (k as u64) << 8 | step).unwrap_or([0; 3]);
            let per = r[0] / r[1].max(1);
            traced += per;
            let _ = write!(j.0, "{}{per}", if step == 1 { "" } else { "," });
        }
        let _ = write!(j.0, "]");
    }
    j.num("traced_per_round_trip", traced);
    j.text("steps", "set-up,capability look-up,partner,delivery,switch,return (per system call; entry/exit assembly and the user loop are the rest)");
    j.emit();
    srv.stop();
}
