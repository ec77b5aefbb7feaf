//! Ping-pong benchmarks on Linux, the peer that `scripts/bench --peers` measures beside rl4.
//!
//! Built statically for `x86_64-unknown-linux-musl` and booted as `/init` of a tiny initramfs
//! under the same QEMU, accelerator and CPU model as rl4's benchmarks. As process 1 it mounts
//! `/proc`, `/sys` and `/dev`, runs the configurations, prints the results on the console (the
//! serial port) and powers the machine off. It also runs as an ordinary program on any x86_64
//! Linux (`scripts/test` does that with a few thousand round trips): then it mounts nothing
//! and does not power off.
//!
//! Arguments, `key=value` (the kernel hands init whatever follows `--` on its command line):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `iters` | 1000000 | timed round trips per configuration (after min(iters, 1000) warm-up ones) |
//! | `seconds` | 60 | a configuration stops early once its timed loop has run this long (guest TSC) |
//! | `cpus` | `0,1` | the CPU pair of the cross-CPU configurations (the first is also the same-CPU one) |
//! | `accel` | `host` | a label copied into every result (`icount`, `tcg`, `kvm`) |
//! | `only` | all | comma-separated configuration kinds: `null-syscall`, `futex-same`, `futex-cross`, `pipe-same`, `pipe-cross` |
//!
//! Every configuration is timed the way rl4's `userland/root/src/bench.rs` times its own: one
//! `rdtsc` pair around each round trip, the median cost of an empty pair subtracted, every sample
//! kept; the summary has the same keys as rl4's `BENCH` lines (min, median, mean, p99, p99.9,
//! max, the 11-point distribution `cdf`, total / iterations). Under QEMU's icount mode the TSC
//! counts guest instructions, so the figures are instruction counts.
//!
//! | configuration | one iteration |
//! |---|---|
//! | `linux-null-syscall` | `getppid` through a bare `syscall` instruction |
//! | `linux-futex-same-cpu`, `linux-futex-cross-cpu-A-B` | two threads of one process: `FUTEX_WAKE` the other, `FUTEX_WAIT` until it answers (four system calls, two wake-ups per round trip) |
//! | `linux-pipe-same-cpu`, `linux-pipe-cross-cpu-A-B` | two processes, two pipes: write one byte, read the answer (the other reads it and writes it back) |
//!
//! Output, one line each: `PEER-INFO {json}` (kernel, CPUs, TSC rate, clock source, idle driver,
//! vulnerability mitigations), one `PEER {json}` per configuration, `PEER-SKIP {json}` for one
//! that cannot run (a CPU missing), and `PEER-DONE N` (N results) last. `scripts/peers.py`
//! parses them.
use core::arch::asm;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};

const SYS_READ: u64 = 0;
const SYS_WRITE: u64 = 1;
const SYS_CLOSE: u64 = 3;
const SYS_IOCTL: u64 = 16;
const SYS_GETPID: u64 = 39;
const SYS_FORK: u64 = 57;
const SYS_WAIT4: u64 = 61;
const SYS_GETPPID: u64 = 110;
const SYS_MOUNT: u64 = 165;
const SYS_REBOOT: u64 = 169;
const SYS_FUTEX: u64 = 202;
const SYS_SCHED_SETAFFINITY: u64 = 203;
const SYS_SCHED_GETAFFINITY: u64 = 204;
const SYS_EXIT_GROUP: u64 = 231;
const SYS_PIPE2: u64 = 293;
const FUTEX_WAIT_PRIVATE: u64 = 128;
const FUTEX_WAKE_PRIVATE: u64 = 129;
const TCSBRK: u64 = 0x5409;
const WARM_UP: usize = 1000;

/// A raw system call (the ping-pongs time the kernel, not libc's wrappers).
#[inline(always)]
fn sys(n: u64, a: u64, b: u64, c: u64, d: u64, e: u64) -> i64 {
    let ret: i64;
    // SAFETY: `syscall` with the Linux x86_64 convention; the kernel clobbers rcx and r11 only.
    // Callers pass pointers to memory they own for as long as the call lasts.
    unsafe {
        asm!("syscall", inlateout("rax") n as i64 => ret, in("rdi") a, in("rsi") b, in("rdx") c, in("r10") d,
             in("r8") e, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

#[inline(always)]
fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` only reads the time-stamp counter (user mode may read it under Linux).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The median cost of an empty time-stamp pair, as rl4's benchmarks measure it.
fn overhead() -> u64 {
    let mut v = [0u64; 101];
    for x in v.iter_mut() {
        let a = rdtsc();
        *x = rdtsc() - a;
    }
    v.sort_unstable();
    v[50]
}

/// TSC ticks per second, against CLOCK_MONOTONIC over 100 ms of spinning.
fn tsc_hz() -> u64 {
    let (t0, c0) = (Instant::now(), rdtsc());
    while t0.elapsed() < Duration::from_millis(100) {}
    let (dt, dc) = (t0.elapsed(), rdtsc() - c0);
    (dc as f64 / dt.as_secs_f64()) as u64
}

fn pin(cpu: usize) -> bool {
    let mut mask = [0u64; 16];
    mask[cpu / 64] |= 1 << (cpu % 64);
    sys(SYS_SCHED_SETAFFINITY, 0, core::mem::size_of_val(&mask) as u64, mask.as_ptr() as u64, 0, 0) == 0
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    let mut mask = [0u64; 16];
    let n = sys(SYS_SCHED_GETAFFINITY, 0, core::mem::size_of_val(&mask) as u64, mask.as_mut_ptr() as u64, 0, 0);
    if n <= 0 {
        return vec![0];
    }
    (0..1024).filter(|&c| mask[c / 64] >> (c % 64) & 1 == 1).collect()
}

fn futex_wait(w: &AtomicU32, val: u32) {
    sys(SYS_FUTEX, w.as_ptr() as u64, FUTEX_WAIT_PRIVATE, val as u64, 0, 0);
}

fn futex_wake(w: &AtomicU32) {
    sys(SYS_FUTEX, w.as_ptr() as u64, FUTEX_WAKE_PRIVATE, 1, 0, 0);
}

struct Summary {
    min: u64,
    median: u64,
    mean: u64,
    p99: u64,
    p999: u64,
    max: u64,
    cdf: [u64; 11],
}

/// The same statistics as rl4's `summarize` (bench.rs): sorted samples, `at(q)` the q-th
/// per-mille.
fn summarize(s: &mut [u64]) -> Summary {
    s.sort_unstable();
    let n = s.len().max(1);
    let at = |q: usize| s[(n - 1) * q / 1000];
    Summary {
        min: s[0],
        median: at(500),
        mean: s.iter().sum::<u64>() / n as u64,
        p99: at(990),
        p999: at(999),
        max: s[n - 1],
        cdf: [at(10), at(50), at(100), at(250), at(500), at(750), at(900), at(950), at(990), at(999), at(1000)],
    }
}

/// Settings shared by every configuration.
struct Bench {
    iters: usize,
    limit_cycles: u64,
    accel: String,
    hz: u64,
    ov: u64,
    samples: Vec<u64>,
    results: usize,
}

impl Bench {
    /// Warm-up, then the timed loop: one sample per round trip. Returns how many were taken
    /// and the total cycles of the loop.
    fn run(&mut self, mut one: impl FnMut()) -> (usize, u64) {
        for _ in 0..WARM_UP.min(self.iters) {
            one();
        }
        let (ov, limit) = (self.ov, self.limit_cycles);
        let s = &mut self.samples[..self.iters];
        let start = rdtsc();
        let mut n = 0;
        while n < s.len() {
            let t = rdtsc();
            one();
            s[n] = (rdtsc() - t).saturating_sub(ov);
            n += 1;
            if n % 256 == 0 && rdtsc() - start > limit {
                break;
            }
        }
        (n, rdtsc() - start)
    }

    fn report(&mut self, name: &str, what: &str, cpus: (usize, usize), (n, total): (usize, u64)) {
        let s = summarize(&mut self.samples[..n]);
        let cdf: Vec<String> = s.cdf.iter().map(|v| v.to_string()).collect();
        println!(
            "PEER {{\"system\":\"linux\",\"name\":\"{name}\",\"accel\":\"{}\",\"iterations\":{n},\"requested_iterations\":{},\
             \"tsc_hz\":{},\"min_cycles\":{},\"median_cycles\":{},\"mean_cycles\":{},\"p99_cycles\":{},\"p999_cycles\":{},\
             \"max_cycles\":{},\"cdf\":[{}],\"cycles_per_iteration\":{},\"total_cycles\":{total},\"overhead_cycles\":{},\
             \"client_cpu\":{},\"server_cpu\":{},\"stopped_by_time_limit\":{},\"what\":\"{}\"}}",
            json_escape(&self.accel),
            self.iters,
            self.hz,
            s.min,
            s.median,
            s.mean,
            s.p99,
            s.p999,
            s.max,
            cdf.join(","),
            total / n.max(1) as u64,
            self.ov,
            cpus.0,
            cpus.1,
            n < self.iters,
            json_escape(what)
        );
        self.results += 1;
    }

    fn null_syscall(&mut self, cpu: usize) {
        pin(cpu);
        let r = self.run(|| {
            sys(SYS_GETPPID, 0, 0, 0, 0, 0);
        });
        self.report("linux-null-syscall", "getppid through a bare syscall instruction", (cpu, cpu), r);
    }

    /// Two threads: the timed one sets the word to 1 and wakes the other, which sets it back
    /// to 0 and wakes the first; each waits on the futex until the word changes.
    fn futex(&mut self, name: &str, a: usize, b: usize) {
        static WORD: AtomicU32 = AtomicU32::new(0);
        WORD.store(0, SeqCst);
        pin(a);
        let partner = std::thread::spawn(move || {
            pin(b);
            loop {
                let mut v = WORD.load(SeqCst);
                while v == 0 {
                    futex_wait(&WORD, 0);
                    v = WORD.load(SeqCst);
                }
                if v == 2 {
                    return;
                }
                WORD.store(0, SeqCst);
                futex_wake(&WORD);
            }
        });
        let r = self.run(|| {
            WORD.store(1, SeqCst);
            futex_wake(&WORD);
            while WORD.load(SeqCst) == 1 {
                futex_wait(&WORD, 1);
            }
        });
        WORD.store(2, SeqCst);
        futex_wake(&WORD);
        let _ = partner.join();
        self.report(name, "FUTEX_WAKE + FUTEX_WAIT (private) between two threads of one process", (a, b), r);
    }

    /// Two processes, two pipes: the timed one writes a byte and reads the answer.
    fn pipe(&mut self, name: &str, a: usize, b: usize) {
        let (mut p1, mut p2) = ([0i32; 2], [0i32; 2]);
        if sys(SYS_PIPE2, p1.as_mut_ptr() as u64, 0, 0, 0, 0) != 0 || sys(SYS_PIPE2, p2.as_mut_ptr() as u64, 0, 0, 0, 0) != 0 {
            println!("PEER-ERROR {{\"name\":\"{name}\",\"error\":\"pipe2 failed\"}}");
            return;
        }
        pin(a);
        let pid = sys(SYS_FORK, 0, 0, 0, 0, 0);
        if pid < 0 {
            println!("PEER-ERROR {{\"name\":\"{name}\",\"error\":\"fork failed: {pid}\"}}");
            return;
        }
        if pid == 0 {
            // The child: raw system calls only (no allocation, no locks after fork).
            pin(b);
            sys(SYS_CLOSE, p1[1] as u64, 0, 0, 0, 0);
            sys(SYS_CLOSE, p2[0] as u64, 0, 0, 0, 0);
            let mut c = 0u8;
            let at = &mut c as *mut u8 as u64;
            while sys(SYS_READ, p1[0] as u64, at, 1, 0, 0) == 1 {
                sys(SYS_WRITE, p2[1] as u64, at, 1, 0, 0);
            }
            sys(SYS_EXIT_GROUP, 0, 0, 0, 0, 0);
            unreachable!();
        }
        sys(SYS_CLOSE, p1[0] as u64, 0, 0, 0, 0);
        sys(SYS_CLOSE, p2[1] as u64, 0, 0, 0, 0);
        let (w, rd) = (p1[1] as u64, p2[0] as u64);
        let mut c = 7u8;
        let at = &mut c as *mut u8 as u64;
        let r = self.run(|| {
            sys(SYS_WRITE, w, at, 1, 0, 0);
            sys(SYS_READ, rd, at, 1, 0, 0);
        });
        sys(SYS_CLOSE, w, 0, 0, 0, 0);
        let mut status = 0i32;
        sys(SYS_WAIT4, pid as u64, &mut status as *mut i32 as u64, 0, 0, 0);
        sys(SYS_CLOSE, rd, 0, 0, 0, 0);
        self.report(name, "1-byte write + read over two pipes between two processes", (a, b), r);
    }
}

fn json_escape(s: &str) -> String {
    let mut o = String::new();
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

fn mount(src: &str, dst: &str, fstype: &str) {
    let _ = std::fs::create_dir_all(dst);
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL in a mount argument");
    let (s, d, t) = (c(src), c(dst), c(fstype));
    sys(SYS_MOUNT, s.as_ptr() as u64, d.as_ptr() as u64, t.as_ptr() as u64, 0, 0);
}

/// What the results depend on besides the benchmark itself.
fn info(accel: &str, hz: u64, ov: u64, cpus: &[usize], pid1: bool) {
    let cpuinfo = read_trim("/proc/cpuinfo");
    let model = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("").trim();
    let mut vulns = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu/vulnerabilities") {
        let mut names: Vec<String> = dir.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        for n in names {
            vulns.push(format!("\"{}\":\"{}\"", json_escape(&n), json_escape(&read_trim(&format!("/sys/devices/system/cpu/vulnerabilities/{n}")))));
        }
    }
    let cpu_list: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
    println!(
        "PEER-INFO {{\"system\":\"linux\",\"accel\":\"{}\",\"pid1\":{pid1},\"kernel\":\"{}\",\"cmdline\":\"{}\",\"cpu_model\":\"{}\",\
         \"cpus\":[{}],\"tsc_hz\":{hz},\"overhead_cycles\":{ov},\"clocksource\":\"{}\",\"cpuidle\":\"{}\",\"vulnerabilities\":{{{}}}}}",
        json_escape(accel),
        json_escape(&read_trim("/proc/version")),
        json_escape(&read_trim("/proc/cmdline")),
        json_escape(model),
        cpu_list.join(","),
        json_escape(&read_trim("/sys/devices/system/clocksource/clocksource0/current_clocksource")),
        json_escape(&read_trim("/sys/devices/system/cpu/cpuidle/current_driver")),
        vulns.join(",")
    );
}

fn main() {
    let pid1 = sys(SYS_GETPID, 0, 0, 0, 0, 0) == 1;
    if pid1 {
        mount("proc", "/proc", "proc");
        mount("sysfs", "/sys", "sysfs");
        mount("devtmpfs", "/dev", "devtmpfs");
    }
    let (mut iters, mut seconds, mut pair, mut accel, mut only) = (1_000_000usize, 60u64, (0usize, 1usize), "host".to_string(), None);
    for arg in std::env::args().skip(1) {
        let Some((k, v)) = arg.split_once('=') else { continue };
        match k {
            "iters" => iters = v.parse().unwrap_or(iters).max(1),
            "seconds" => seconds = v.parse().unwrap_or(seconds),
            "cpus" => {
                if let Some((a, b)) = v.split_once(',') {
                    pair = (a.parse().unwrap_or(0), b.parse().unwrap_or(1));
                }
            }
            "accel" => accel = v.to_string(),
            "only" => only = Some(v.split(',').map(str::to_string).collect::<Vec<_>>()),
            _ => {}
        }
    }
    let wanted = |k: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == k));
    let cpus = allowed_cpus();
    let (a, b) = pair;
    let hz = tsc_hz();
    let ov = overhead();
    info(&accel, hz, ov, &cpus, pid1);
    let mut samples = vec![0u64; iters];
    samples.fill(1); // touch every page before timing
    let mut bench = Bench { iters, limit_cycles: hz.saturating_mul(seconds), accel, hz, ov, samples, results: 0 };
    let skip = |name: &str, why: &str| println!("PEER-SKIP {{\"name\":\"{name}\",\"why\":\"{why}\"}}");
    let cross = cpus.contains(&a) && cpus.contains(&b) && a != b;
    let same = cpus.contains(&a);
    let (fx, px) = (format!("linux-futex-cross-cpu-{a}-{b}"), format!("linux-pipe-cross-cpu-{a}-{b}"));
    if wanted("null-syscall") {
        if same { bench.null_syscall(a) } else { skip("linux-null-syscall", "CPU missing") }
    }
    if wanted("futex-same") {
        if same { bench.futex("linux-futex-same-cpu", a, a) } else { skip("linux-futex-same-cpu", "CPU missing") }
    }
    if wanted("futex-cross") {
        if cross { bench.futex(&fx, a, b) } else { skip(&fx, "needs two CPUs") }
    }
    if wanted("pipe-same") {
        if same { bench.pipe("linux-pipe-same-cpu", a, a) } else { skip("linux-pipe-same-cpu", "CPU missing") }
    }
    if wanted("pipe-cross") {
        if cross { bench.pipe(&px, a, b) } else { skip(&px, "needs two CPUs") }
    }
    println!("PEER-DONE {}", bench.results);
    if pid1 {
        // Let the serial port drain, then power off (QEMU exits).
        sys(SYS_IOCTL, 1, TCSBRK, 1, 0, 0);
        std::thread::sleep(Duration::from_millis(100));
        sys(SYS_REBOOT, 0xfee1_dead, 672_274_793, 0x4321_fedc, 0, 0);
    }
}
