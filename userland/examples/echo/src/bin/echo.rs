//! An echo server: answers every call on its endpoint with the same message (label and words,
//! long ones included: the kernel copied words 4 and up into this thread's IPC buffer, and the
//! reply takes them from there again).
#![no_std]
#![no_main]

use rl4_user::{Endpoint, Msg, env, println, sys};

#[unsafe(no_mangle)]
fn rl4_main(_arg: u64, _endpoints: u64) {
    let (cpu, cpus) = sys::cpu_info();
    println!("echo: serving on cpu {cpu} of {cpus}");
    let mut calls = 0u64;
    let e = Endpoint(env::SERVE).serve(|m: &Msg| {
        calls += 1;
        Msg { tag: m.tag, badge: 0, w: m.w }
    });
    println!("echo: endpoint gone ({e}) after {calls} calls");
}
