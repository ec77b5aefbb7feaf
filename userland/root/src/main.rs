//! rl4's root task.
//!
//! The kernel starts it with the capabilities of `rl4_abi::root_slots` and a `BootInfo` page.
//! Its command line (what follows `--` on the kernel's) picks the scenario:
//!
//! * (nothing): the demo: a thread on every CPU says hello, a worker task runs, then shutdown;
//! * `test=all` (or `test=NAME`): the scheduler, isolation, system-call, IPC, security,
//!   fault-handler (`fault`: `fault_tests.rs`) and FPU tests, one line each,
//!   `root: N passed, N failed`, then shutdown with success only if all passed;
//! * `bench`: IPC round trips and one-way latencies, null system call, thread switch;
//! * `console`: the interactive console on COM2, served by the user-level serial driver
//!   (`console.rs`);
//! * `stress [pairs=N] [messages=M] [seconds=S]`: many IPC pairs on all CPUs, every message
//!   checked (defaults 64, 1000, 30);
//! * `bench=NAME [iters=N] [len=W] [accel=A]`: one benchmark configuration (see `bench.rs`);
//! * `fuzz [seconds=S] [seed=X] [fuzzers=K]`: random system calls from K tasks next to checked
//!   IPC pairs (see `fuzz.rs`);
//! * `storm=kill,suspend,affinity,noreply [rounds=N] [tasks=T] [threads=H] [check-every=C]
//!   [seed=X] [kinds=call,send,recv,reply-recv,wait] [keep-going] [suspend-running-only] [calls=K]`: the storms (`storm.rs`: victim tasks killed, suspended
//!   and moved from CPU 0 while their threads block on every kind of call; defaults 200 rounds
//!   of 3 tasks x 8 threads, `KernelCheck` every 20 rounds) and the server that never replies
//!   (`noreply.rs`, K calls per case, default 20), one test line each, then
//!   `root: N passed, N failed`;
//! * `start=NAME[:cpu=N][:prio=P][:arg=X][:ep=OTHER]... [until=NAME] [seconds=S] [stay]`: start
//!   programs (boot modules from `scripts/run --program`, or embedded ones) by name, each in a
//!   task of its own, the `ep=` programs' endpoints passed to it; then wait for the `until=`
//!   program (default the last `start=` item) to end and shut down (see `modules.rs`, `docs/writing-programs.md`).
#![no_std]
#![no_main]

mod bench;
mod console;
mod drv_tests;
mod failalloc_tests;
mod fault_tests;
mod fpu_tests;
mod fuzz;
mod ipc_tests;
mod modules;
mod noreply;
mod sec_tests;
mod space;
mod storm;
mod stress;
mod teardown_tests;
mod tests;

use rl4_abi::{BootInfo, root_slots};
use rl4_user::{println, sys};

pub use space::*;

#[unsafe(no_mangle)]
fn rl4_main(boot_info: u64, _: u64) {
    // SAFETY: the kernel maps a `BootInfo` at this address, read-only, for the root task's life.
    let bi: &'static BootInfo = unsafe { &*(boot_info as *const BootInfo) };
    if bi.magic != BootInfo::MAGIC {
        println!("root: bad BootInfo magic {:#x}", bi.magic);
        let _ = sys::shutdown(root_slots::MACHINE, 1);
        return;
    }
    space::init(bi);
    stress::init_sleep();
    // The first panic of a root-task thread (a test harness step that cannot go on, such as a stack
    // it could not map) ends the run as a failure at once, rather than leaving the machine idle
    // until the test script's timeout.
    rl4_user::set_panic_hook(|| {
        let _ = sys::shutdown(root_slots::MACHINE, 1);
    });
    let args = bi.cmdline();
    println!("root: started on {} CPU(s), {} MiB of memory, arguments \"{args}\"", bi.cpus, bi.memory_bytes >> 20);
    let mut test = None;
    let mut bench = false;
    let mut stress = false;
    let (mut fuzz, mut seed, mut fuzzers) = (false, 1u64, 16usize);
    let (mut pairs, mut messages, mut seconds) = (64usize, 1000u64, 30u64);
    let (mut bench_name, mut iters, mut len, mut accel) = (None, 1_000_000usize, 0u64, "tcg");
    let mut storms = None;
    let mut so = storm::Opts { rounds: 200, tasks: 3, threads: 8, check_every: 20, seed: 1, keep_going: false, suspend_running_only: false, kinds: 0x1f };
    let mut calls = 20u64;
    let mut starts: [&str; modules::MAX_STARTS + 1] = [""; modules::MAX_STARTS + 1];
    let (mut nstarts, mut until, mut stay, mut seconds_given) = (0usize, None, false, false);
    let mut console = false;
    for w in args.split_ascii_whitespace() {
        let num = |v: &str| v.parse::<u64>().ok();
        if let Some(t) = w.strip_prefix("test=") {
            test = Some(t);
        } else if w == "bench" {
            bench = true;
        } else if w == "console" {
            console = true;
        } else if w == "stress" {
            stress = true;
        } else if w == "fuzz" {
            fuzz = true;
        } else if let Some(n) = w.strip_prefix("seed=").and_then(num) {
            seed = n;
            so.seed = n;
        } else if let Some(s) = w.strip_prefix("storm=") {
            storms = Some(s);
        } else if let Some(n) = w.strip_prefix("rounds=").and_then(num) {
            so.rounds = n;
        } else if let Some(n) = w.strip_prefix("tasks=").and_then(num) {
            so.tasks = n as usize;
        } else if let Some(n) = w.strip_prefix("threads=").and_then(num) {
            // read by the storms here and by the fuzzer itself (`fuzz::owns`)
            so.threads = n as usize;
        } else if let Some(n) = w.strip_prefix("check-every=").and_then(num) {
            so.check_every = n;
        } else if w == "keep-going" {
            so.keep_going = true;
        } else if let Some(list) = w.strip_prefix("kinds=") {
            so.kinds = list
                .split(',')
                .filter_map(|k| rl4_user::storm::KIND_NAMES.iter().position(|n| *n == k))
                .filter(|&k| k != rl4_user::storm::K_SPIN as usize)
                .fold(0, |m, k| m | 1 << k);
        } else if w == "suspend-running-only" {
            so.suspend_running_only = true;
        } else if let Some(n) = w.strip_prefix("calls=").and_then(num) {
            calls = n;
        } else if fuzz::owns(w) {
            // threads=, cross=: options the fuzzer reads itself
        } else if let Some(n) = w.strip_prefix("fuzzers=").and_then(num) {
            fuzzers = n as usize;
        } else if let Some(n) = w.strip_prefix("pairs=").and_then(num) {
            pairs = n as usize;
        } else if let Some(n) = w.strip_prefix("messages=").and_then(num) {
            messages = n;
        } else if let Some(n) = w.strip_prefix("seconds=").and_then(num) {
            // At most 10^9 s (some 31 years): the waits multiply it by the TSC's rate, which
            // must not wrap round to a short wait that then reports a timeout.
            seconds = n.min(1_000_000_000);
            seconds_given = true;
        } else if let Some(s) = w.strip_prefix("start=") {
            // One more than the limit is kept, so that `modules::run` can refuse it by name.
            if nstarts < starts.len() {
                starts[nstarts] = s;
                nstarts += 1;
            } else {
                println!("root: start={s} refused: more than {} programs", modules::MAX_STARTS);
            }
        } else if let Some(u) = w.strip_prefix("until=") {
            until = Some(u);
        } else if w == "stay" {
            stay = true;
        } else if let Some(b) = w.strip_prefix("bench=") {
            bench_name = Some(b);
        } else if let Some(n) = w.strip_prefix("iters=").and_then(num) {
            iters = n as usize;
        } else if let Some(n) = w.strip_prefix("len=").and_then(num) {
            len = n;
        } else if let Some(a) = w.strip_prefix("accel=") {
            accel = a;
        } else {
            println!("root: unknown argument '{w}' ignored");
        }
    }
    let ok = if console {
        console::run(bi)
    } else if nstarts > 0 {
        modules::run(bi, &starts[..nstarts], until, stay, if seconds_given { seconds } else { 120 })
    } else if let Some(list) = bench_name {
        // Several configurations in one boot, so that they can be compared with each other.
        list.split(',').all(|b| bench::run(bi, b, accel, iters, len))
    } else if let Some(list) = storms {
        for w in list.split(',') {
            match w {
                "kill" => storm::run(bi, storm::Kind::Kill, so),
                "suspend" => storm::run(bi, storm::Kind::Suspend, so),
                "affinity" => storm::run(bi, storm::Kind::Affinity, so),
                "noreply" => noreply::run(calls),
                other => {
                    tests::report("storm-arguments", false, format_args!("unknown storm '{other}'"));
                    false
                }
            };
        }
        tests::summary()
    } else if let Some(t) = test {
        tests::run(bi, t)
    } else if fuzz {
        fuzz::run(bi, seconds, seed, fuzzers)
    } else if stress {
        let t0 = sys::stat(root_slots::MACHINE, rl4_abi::stat::THREADS).unwrap_or(0);
        let ok = stress::run(pairs, messages, seconds);
        space::wait_ms(3000, || sys::stat(root_slots::MACHINE, rl4_abi::stat::THREADS) == Ok(t0));
        let t1 = sys::stat(root_slots::MACHINE, rl4_abi::stat::THREADS).unwrap_or(0);
        println!("stress: threads before {t0}, after {t1}");
        ok && t1 == t0
    } else if bench {
        // The quick look at the main costs; `scripts/bench` runs the full set.
        ["null-syscall", "thread-switch", "same-core", "oneway-same-core"].iter().all(|b| bench::run(bi, b, "guest", 20_000, 0))
            && (space::cpus() < 2 || bench::run(bi, "cross-core-0-1", "guest", 5_000, 0))
    } else {
        tests::demo(bi)
    };
    let _ = sys::shutdown(root_slots::MACHINE, if ok { 0 } else { 1 });
}
