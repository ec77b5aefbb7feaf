//! What the kernel does once its CPUs are up (`run=` on the command line), and the idle loop.
//!
//! * `run=root` (default): the checks below, then start the root task, which decides what runs
//!   and when the machine stops.
//! * `run=boot`: check that every online CPU takes timer interrupts and answers a
//!   reschedule IPI, report the result, and shut down (QEMU exit 33 on success, 35 on failure).
//! * `run=idle`: stay up, every CPU idle.
//! * `run=panic` / `run=fault`: make the last CPU panic / take a page fault on purpose, to
//!   exercise the panic path (report, backtrace, stop every CPU, failure exit).
use core::fmt;
use core::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use rl4_arch::{cpu, println, time};
use rl4_core::cmdline::Run;
use rl4_smp::acpi::Platform;
use rl4_smp::cpus;
use rl4_smp::{MAX_CPUS, madt};

/// Shows `None` as "all".
pub struct OrAll(pub Option<u32>);

impl fmt::Display for OrAll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("all"),
        }
    }
}

pub fn log_platform(p: &Platform, rsdp: u64) {
    let mut sigs = [0u8; 5 * 32];
    let mut n = 0;
    for (s, _) in p.tables.iter().take(32) {
        sigs[n..n + 4].copy_from_slice(s);
        sigs[n + 4] = b' ';
        n += 5;
    }
    // The signatures are the firmware's bytes: shown on this one line whatever they hold.
    println!(
        "acpi: RSDP at {rsdp:#x} (revision {}), tables: {}",
        p.rsdp_revision,
        rl4_arch::console::OneLine(sigs[..n].trim_ascii_end())
    );
    if p.madt_cut {
        println!("acpi: warning: the MADT has a malformed entry; it and the entries after it were not read");
    }
    println!(
        "madt: local APIC at {:#x}, {} processor entries, {} IOAPIC(s), {} override(s), 8259 PICs {}",
        p.lapic_address,
        p.cpus.len(),
        p.ioapics.len(),
        p.overrides.len(),
        if p.has_8259 { "present (masked)" } else { "absent" }
    );
    println!(
        "acpi: timers: HPET {}, PM timer {}{}",
        p.hpet.map_or(alloc::format!("absent"), |a| alloc::format!("at {a:#x}")),
        p.pm_timer.map_or(alloc::format!("absent"), |t| alloc::format!("at port {:#x} ({} bits)", t.port, if t.bits32 { 32 } else { 24 })),
        if p.hw_reduced { ", hardware-reduced ACPI (no legacy devices)" } else { "" }
    );
    if !p.fixed_ports.is_empty() || p.smi_port.is_some() {
        let mut line = alloc::string::String::new();
        for &(base, n) in &p.fixed_ports {
            let _ = core::fmt::Write::write_fmt(&mut line, format_args!(" {base:#x}+{n}"));
        }
        println!("acpi: fixed-hardware ports the kernel keeps:{line}; SMI command port {}", p.smi_port.map_or(alloc::format!("none"), |s| alloc::format!("{s:#x}")));
    }
    for c in &p.cpus {
        let state = if c.flags & madt::FLAG_ENABLED != 0 {
            "enabled"
        } else if c.flags & madt::FLAG_ONLINE_CAPABLE != 0 {
            "online-capable"
        } else {
            "disabled"
        };
        println!(
            "madt: processor uid {} apic id {} {} ({} entry)",
            c.uid,
            c.apic_id,
            state,
            if c.x2 { "x2APIC" } else { "local APIC" }
        );
    }
    for io in &p.ioapics {
        println!("madt: IOAPIC id {} at {:#x}, GSI base {}", io.id, io.address, io.gsi_base);
    }
    for o in &p.overrides {
        println!(
            "madt: interrupt override: bus {} IRQ {} -> GSI {} ({}, {})",
            o.bus,
            o.irq,
            o.gsi,
            o.polarity(),
            o.trigger()
        );
    }
}

static START_TICKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Remembers how long CPU `i` took from INIT to online (TSC ticks).
pub fn record_start(i: usize, ticks: u64) {
    START_TICKS[i].store(ticks, Ordering::Relaxed);
}

/// A request from the BSP to one AP, picked up in its idle loop.
static REQUEST_CPU: AtomicUsize = AtomicUsize::new(usize::MAX);
static REQUEST: AtomicU8 = AtomicU8::new(0);
const REQ_PANIC: u8 = 1;
const REQ_FAULT: u8 = 2;
const REQ_FAULT_USER_GS: u8 = 3;

/// An address in the MMIO window that is never mapped: reading it faults.
const UNMAPPED: u64 = rl4_arch::layout::MMIO_BASE + rl4_arch::layout::MMIO_SIZE - 0x1000;

fn act_on(req: u8) {
    match req {
        REQ_PANIC => panic!("deliberate panic (run=panic)"),
        REQ_FAULT => {
            println!("touching unmapped address {UNMAPPED:#x} on purpose (run=fault)");
            rl4_arch::cpu::read_volatile_u64(UNMAPPED);
        }
        REQ_FAULT_USER_GS => {
            println!("touching unmapped address {UNMAPPED:#x} with the user's GS on purpose (run=fault-user-gs)");
            rl4_arch::cpu::fault_with_user_gs(UNMAPPED);
        }
        _ => {}
    }
}

/// Whether a request of the BSP waits for this CPU (its IPI may have been taken in the idle
/// poll's interrupt window: the idle loop then does not halt before acting on it).
pub fn request_pending() -> bool {
    REQUEST_CPU.load(Ordering::Relaxed) == rl4_arch::percpu::cpu_index() as usize
}

/// Called by each CPU's idle loop after every wake-up: acts on a request the BSP addressed to
/// this CPU (`run=panic`, `run=fault`).
pub fn idle_hook() {
    if REQUEST_CPU.load(Ordering::Acquire) == rl4_arch::percpu::cpu_index() as usize {
        REQUEST_CPU.store(usize::MAX, Ordering::Release);
        act_on(REQUEST.load(Ordering::Acquire));
    }
}

/// Waits (idling, so the BSP's own timer ticks) until `cond` holds or `us` pass.
fn idle_until(us: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = cpu::rdtsc() + time::us_to_ticks(us);
    while !cond() {
        if cpu::rdtsc() >= end {
            return cond();
        }
        cpu::idle_wait();
    }
    true
}

pub fn after_boot(plan: &madt::Plan) -> ! {
    let online: usize = (0..cpus::count()).filter(|&i| cpus::get(i).is_some_and(|c| c.online.load(Ordering::Acquire))).count();
    println!(
        "{online} of {} CPUs online{}",
        plan.cpus.len(),
        if plan.skipped.is_empty() { alloc::string::String::new() } else { alloc::format!(" ({} more listed by the firmware, not started)", plan.skipped.len()) }
    );
    for i in 1..cpus::count() {
        let t = START_TICKS[i].load(Ordering::Relaxed);
        if t != 0 {
            println!("cpu {i}: INIT to online in {} us", time::ticks_to_us(t));
        }
    }
    let opts = crate::options();
    match opts.run {
        Run::Boot => {
            // The boot check is strict: every CPU the plan names must come up (the plan names the
            // bootstrap CPU alone when no page was free to start the others from; the CPUs left
            // out are listed, with the reason, above).
            let ok = check_cpus() && online == plan.cpus.len();
            shutdown(ok, online, plan.cpus.len())
        }
        Run::Root => {
            // Every CPU the plan names must be online and working: one that did not answer in
            // time is left parked (`smp/src/boot.rs`), and the CPU numbers the root task is
            // given would have a gap. `maxcpus=` leaves CPUs out on purpose.
            if !check_cpus() || online != plan.cpus.len() {
                if online != plan.cpus.len() {
                    println!("{online} of {} CPUs came online (start fewer with maxcpus=N)", plan.cpus.len());
                }
                shutdown(false, online, plan.cpus.len());
            }
            let args = crate::root_args();
            // Through `OneLine` as the whole command line is (the root task's part keeps any
            // control byte the loader passed: before the forty-third session a newline here
            // printed what followed as a kernel line of its own; a review found it).
            println!("starting the root task (arguments: \"{}\")", rl4_arch::console::OneLine(args.as_bytes()));
            if let Err(e) = crate::root::start(args, time::tsc_hz()) {
                panic!("cannot start the root task: {e}");
            }
            if let Some((seed, n)) = opts.failalloc {
                println!("failalloc: one in {n} of the system calls' heap allocations fails from now on (seed {seed}; for a test)");
                crate::mem::start_failing(seed, n);
            }
            crate::sched::idle()
        }
        Run::Idle => {
            println!("run=idle: all CPUs idle; stop QEMU with Ctrl-A X");
            loop {
                cpu::idle_wait();
            }
        }
        Run::Panic | Run::Fault | Run::FaultUserGs => {
            let req = match opts.run {
                Run::Panic => REQ_PANIC,
                Run::Fault => REQ_FAULT,
                _ => REQ_FAULT_USER_GS,
            };
            let target = (0..cpus::count()).rev().find(|&i| cpus::get(i).is_some_and(|c| c.online.load(Ordering::Acquire)));
            match target {
                Some(0) | None => act_on(req),
                Some(t) => {
                    println!("asking cpu {t} to {}", if req == REQ_PANIC { "panic" } else { "fault" });
                    REQUEST.store(req, Ordering::Release);
                    REQUEST_CPU.store(t, Ordering::Release);
                    cpus::send_resched(t);
                }
            }
            // The target stops the machine; if it does not within 10 s, that is a failure too.
            idle_until(10_000_000, || false);
            println!("run={}: cpu did not stop the machine within 10 s", opts.run.name());
            cpu::exit(cpu::QemuExit::Failure)
        }
    }
}

/// Checks that every online CPU takes timer interrupts and receives an IPI.
fn check_cpus() -> bool {
    let mut ok = true;
    // Three ticks: at least 2 s, longer at a low tick rate (`hz=1` takes 3 s).
    let tick_wait_us = (4_000_000 / u64::from(crate::options().hz.max(1))).max(2_000_000);
    // Every online CPU takes timer interrupts and answers an IPI.
    for i in 0..cpus::count() {
        let Some(c) = cpus::get(i).filter(|c| c.online.load(Ordering::Acquire)) else { continue };
        let t0 = c.ticks.load(Ordering::Relaxed);
        let ticking = idle_until(tick_wait_us, || c.ticks.load(Ordering::Relaxed) >= t0 + 3);
        let ipis0 = c.ipis.load(Ordering::Relaxed);
        if i != 0 {
            cpus::send_resched(i);
        } else {
            // The BSP checks its own IPI path with a self-IPI through the same vector.
            cpus::send_resched(0);
        }
        let ipi = idle_until(2_000_000, || c.ipis.load(Ordering::Relaxed) > ipis0);
        let lint = c.lint_as_set();
        println!(
            "cpu {i}: timer {} ({} ticks), IPI {}, LINT0/LINT1 {}, unused LVT entries {}",
            if ticking { "ok" } else { "NOT TICKING" },
            c.ticks.load(Ordering::Relaxed),
            if ipi { "ok" } else { "NOT RECEIVED" },
            match (lint, i) {
                (false, _) => "NOT AS SET",
                (true, 0) => "masked/NMI",
                (true, _) => "masked/masked",
            },
            rl4_smp::lapic::UnusedLvts(c.unused_lvts.load(Ordering::Relaxed))
        );
        // The pins are reported, not a reason to stop: scripts/test checks the line (a boot
        // that stopped over them would refuse a machine whose APIC reads back otherwise).
        ok &= ticking && ipi;
    }
    ok
}

fn shutdown(ok: bool, online: usize, planned: usize) -> ! {
    if ok {
        println!("boot ok: all {online} CPUs online, timers and IPIs working; shutting down");
        cpu::exit(cpu::QemuExit::Success)
    } else {
        println!("boot FAILED: {online} of {planned} CPUs online or a timer/IPI check failed");
        cpu::exit(cpu::QemuExit::Failure)
    }
}
