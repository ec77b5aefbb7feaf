//! A client that times the echo server: one thread per CPU, each makes `arg` calls (default
//! 2000) through the endpoint in `env::FIRST_EP`, checks every answer, and reports the mean
//! round trip in TSC cycles; then one long message (64 words through the IPC buffer).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use rl4_user::{Endpoint, Msg, Notification, env, println, rdtsc, sys, thread};

const MAX_CPUS: usize = 64;
/// Per CPU: total cycles of its calls (u64::MAX: a wrong answer or a failed call).
static CYCLES: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static CALLS: AtomicU64 = AtomicU64::new(2000);
static DONE: AtomicU64 = AtomicU64::new(0);

fn server() -> Endpoint {
    Endpoint(env::FIRST_EP)
}

/// One CPU's share: `CALLS` round trips, each answer checked.
fn timed_calls(cpu: u64) {
    let n = CALLS.load(Ordering::Relaxed);
    let mut total = 0u64;
    for i in 0..n {
        let m = Msg::new(7, &[i, cpu, !i, 42]);
        let t0 = rdtsc();
        let r = server().call(&m);
        total += rdtsc() - t0;
        if r.map(|r| (r.label(), r.w)) != Ok((7, [i, cpu, !i, 42])) {
            println!("client: cpu {cpu}: call {i}: wrong answer {r:?}");
            total = u64::MAX;
            break;
        }
    }
    CYCLES[cpu as usize].store(total, Ordering::Relaxed);
    DONE.fetch_add(1, Ordering::Release);
    let _ = Notification(NOTE.load(Ordering::Relaxed)).signal(1);
}

static NOTE: AtomicU64 = AtomicU64::new(0);

#[unsafe(no_mangle)]
fn rl4_main(arg: u64, endpoints: u64) {
    // A failure ends the program with a fault (a panic), which the root task reports: a plain
    // return would read as success (a review of the thirty-seventh session).
    if endpoints == 0 {
        panic!("client: no endpoint given (start it with ep=echo)");
    }
    if arg > 0 {
        CALLS.store(arg, Ordering::Relaxed);
    }
    let (_, cpus) = sys::cpu_info();
    let cpus = cpus.min(MAX_CPUS as u64);
    let prio = sys::thread_info(env::THREAD).map(|r| r[2]).unwrap_or(env::DEFAULT_PRIORITY);
    let note = Notification::create(env::MEMORY).expect("client: notification");
    NOTE.store(note.0, Ordering::Relaxed);
    println!("client: {} calls from each of {cpus} CPUs", CALLS.load(Ordering::Relaxed));
    let mut threads = Vec::new();
    for cpu in 0..cpus {
        match thread::spawn(timed_calls, cpu, cpu, prio) {
            Ok(t) => threads.push(t),
            Err(e) => panic!("client: no thread on cpu {cpu}: {e}"),
        }
    }
    while DONE.load(Ordering::Acquire) < cpus {
        let _ = note.wait();
    }
    // Their stacks, buffers and slots back.
    for t in threads {
        if let Err((_, e)) = t.join(thread::MOST_POLL, rl4_user::abi::ipc::FOREVER) {
            panic!("client: join: {e}");
        }
    }
    let results: Vec<(u64, u64)> = (0..cpus).map(|c| (c, CYCLES[c as usize].load(Ordering::Relaxed))).collect();
    let mut ok = true;
    for (cpu, cycles) in &results {
        if *cycles == u64::MAX {
            ok = false;
            println!("client: cpu {cpu}: FAILED");
        } else {
            println!("client: cpu {cpu}: {} round trips to echo, {} cycles each (TSC)", CALLS.load(Ordering::Relaxed), cycles / CALLS.load(Ordering::Relaxed));
        }
    }
    // A long message: 64 words, 60 of them through the IPC buffer, and back.
    let words: Vec<u64> = (0..64).map(|i| i * 3 + 1).collect();
    match server().call(&Msg::long(9, &words)) {
        Ok(r) if r.len() == 64 && (0..64).all(|i| r.word(i) == Some(words[i])) => println!("client: a 64-word message came back whole"),
        other => {
            ok = false;
            println!("client: long message: wrong answer {other:?}");
        }
    }
    if ok {
        println!("client: all {cpus} CPUs done");
    } else {
        // A fault ends the thread as failed: the root task reports it.
        panic!("client: failed");
    }
}
