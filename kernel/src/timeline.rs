//! The event timeline: what every CPU did, when (a kernel built with the `timeline` feature).
//!
//! Each CPU records into a ring of its own, allocated once when its scheduler starts (never on
//! the IPC path) and written only by that CPU, with plain stores (no lock, no read-modify-write
//! instruction): 32 bytes per event, the TSC, the kind, the CPU, the thread running there, and
//! two words whose meaning depends on the kind ([`Kind`]). A full ring stops recording and
//! counts what it could not record, so a dump is a prefix of what happened, never a sample (or,
//! built with `RL4_TIMELINE_KEEP=last`, keeps the latest events and counts those it overwrote).
//! At shutdown (`Shutdown`, after every other CPU stopped) the rings are written to QEMU's
//! debug console (port 0xe9, `-debugcon file:...`) in the binary format [`dump`] describes;
//! `scripts/trace` turns them into a Chrome/Perfetto trace (`scripts/trace.py`).
//!
//! Without the feature every hook is an empty `#[inline(always)]` function and its arguments are
//! values the caller already has: the plain kernel's code is the same byte for byte (checked by
//! comparing the `.text` sections of two builds, see `docs/tracing.md`).
//!
//! Rings are per-CPU structures indexed by the CPU index (`arch::percpu`'s rule for anything but
//! the header); the thread id of each event is the ring's own copy of the running thread, set by
//! the switch hooks, so that a hook needs no access to the scheduler's current slot (which the
//! fast path empties while it works).
//!
//! Neighbours: `trace.rs` (per-step sums of the IPC path, for `scripts/bench`'s breakdown: a
//! different question, answered with far fewer stamps); the hooks sit in `trap.rs`, `sched.rs`,
//! `ipc.rs`, `fastpath.rs`, `fault.rs` and `syscall.rs`, one line each.

/// Event kinds (the low byte of an event's second word). `a` and `b` per kind:
#[derive(Clone, Copy)]
#[repr(u8)]
pub enum Kind {
    /// System-call entry: a = number.
    SysEnter = 1,
    /// System-call exit (the thread may be another one than at entry): a = number, b = 1 if the
    /// fast path handled it.
    SysExit = 2,
    /// A message handed to a waiting receiver: a = endpoint (low 32 bits of its address) << 32
    /// | receiver's thread id, b = badge. Receiver id 0: no receiver waited, the sender queued.
    Send = 3,
    /// A receiver took a queued sender's message: a = endpoint << 32 | sender's id, b = badge.
    Recv = 4,
    /// A reply delivered: a = the caller's thread id, b = reply ticket.
    Reply = 5,
    /// This CPU runs a thread now: a = its id, b = priority << 8 | 1 if a direct switch.
    Switch = 6,
    /// A thread pushed into a CPU's inbox: a = its id, b = target CPU | the target's idle
    /// state seen by the push << 8 (0 busy, 1 polling, 2 halting, 3 waking).
    Push = 7,
    /// A thread taken from this CPU's inbox into its run queue: a = its id, b = priority.
    Drain = 8,
    /// An IPI sent: a = target CPU, b = vector.
    IpiSend = 9,
    /// An interrupt taken (the timer tick, an IPI received...): a = vector.
    Irq = 10,
    /// The idle loop: nothing to run (the thread id becomes 0).
    Idle = 11,
    /// The idle CPU starts watching its inbox.
    PollStart = 12,
    /// The idle CPU halts.
    Halt = 13,
    /// The idle CPU woke from its halt.
    Wake = 14,
    /// The running thread leaves the CPU at a scheduling decision: a = its id, b = 1 if
    /// preempted (something more urgent waits) | 2 if its slice ran out.
    Leave = 15,
    /// A fault of a user thread: a = vector, b = error code (page fault: vector 14).
    Fault = 16,
}

/// Events per CPU (32 bytes each): 65,536 (2 MiB per CPU) unless the build sets
/// `RL4_TIMELINE_EVENTS` (`scripts/trace --events N`).
#[cfg(feature = "timeline")]
pub const RING_EVENTS: usize = match option_env!("RL4_TIMELINE_EVENTS") {
    Some(s) => parse_count(s),
    None => 64 * 1024,
};

/// Whether a full ring keeps the latest events, overwriting the oldest (`RL4_TIMELINE_KEEP=last`
/// at build time, `scripts/trace --keep-last`: the end of a long run), instead of keeping the
/// first ones and counting the rest (the default: the start of a run, every event in order).
#[cfg(feature = "timeline")]
pub const KEEP_LAST: bool = match option_env!("RL4_TIMELINE_KEEP") {
    Some(s) => same(s, "last"),
    None => false,
};

#[cfg(feature = "timeline")]
const fn parse_count(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n = 0usize;
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "RL4_TIMELINE_EVENTS must be a number");
        n = n * 10 + (b[i] - b'0') as usize;
        i += 1;
    }
    assert!(n > 0, "RL4_TIMELINE_EVENTS must be at least 1");
    n
}

#[cfg(feature = "timeline")]
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(feature = "timeline")]
mod imp {
    use super::{KEEP_LAST, Kind, RING_EVENTS};
    use alloc::boxed::Box;
    use core::sync::atomic::{AtomicU64, Ordering};
    use rl4_arch::{cpu, percpu};
    use rl4_smp::MAX_CPUS;
    use spin::Once;

    struct Ring {
        /// Events written (a prefix of `ev`), published after each event's words.
        written: AtomicU64,
        /// Events not recorded because the ring was full.
        lost: AtomicU64,
        /// The running thread's id as the switch hooks last set it (0: idle).
        tid: AtomicU64,
        ev: Box<[[AtomicU64; 4]]>,
    }

    static RINGS: [Once<&'static Ring>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];

    pub fn init_cpu() {
        // Fallibly: a CPU short of kernel heap records nothing rather than stop the machine.
        let mut ev = alloc::vec::Vec::new();
        if ev.try_reserve_exact(RING_EVENTS).is_err() {
            rl4_arch::println!("timeline: no kernel heap for this CPU's ring: it records nothing");
            return;
        }
        ev.extend((0..RING_EVENTS).map(|_| [const { AtomicU64::new(0) }; 4]));
        let ring = Ring { written: AtomicU64::new(0), lost: AtomicU64::new(0), tid: AtomicU64::new(0), ev: ev.into_boxed_slice() };
        let Ok(r) = Box::try_new(ring) else {
            rl4_arch::println!("timeline: no kernel heap for this CPU's ring: it records nothing");
            return;
        };
        RINGS[percpu::cpu_index() as usize].call_once(|| Box::leak(r));
    }

    #[inline(always)]
    pub fn event(kind: Kind, a: u64, b: u64) {
        let c = percpu::cpu_index() as usize;
        let Some(r) = RINGS.get(c).and_then(|o| o.get()) else { return };
        // Only this CPU writes its ring, with interrupts off in the kernel: plain stores.
        match kind {
            Kind::Switch => r.tid.store(a, Ordering::Relaxed),
            Kind::Idle => r.tid.store(0, Ordering::Relaxed),
            _ => {}
        }
        let i = r.written.load(Ordering::Relaxed);
        let slot = if KEEP_LAST { i as usize % RING_EVENTS } else { i as usize };
        let Some(e) = r.ev.get(slot) else {
            r.lost.store(r.lost.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            return;
        };
        e[0].store(cpu::rdtsc(), Ordering::Relaxed);
        e[1].store(kind as u64 | (c as u64) << 8 | r.tid.load(Ordering::Relaxed) << 16, Ordering::Relaxed);
        e[2].store(a, Ordering::Relaxed);
        e[3].store(b, Ordering::Relaxed);
        r.written.store(i + 1, Ordering::Release);
    }

    fn put(w: u64) {
        cpu::debugcon_write(&w.to_le_bytes());
    }

    pub fn dump() {
        // Every other CPU is stopped (`Shutdown` waits up to 100 ms for them): one may have held
        // the console.
        rl4_arch::console::print_line_stopped(format_args!("timeline: writing the event rings to the debug console (port 0xe9)"));
        cpu::debugcon_write(b"RL4TL001");
        put(rl4_arch::time::tsc_hz());
        put(KEEP_LAST as u64);
        for (c, o) in RINGS.iter().enumerate() {
            let Some(r) = o.get() else { continue };
            let written = r.written.load(Ordering::Acquire);
            // Keeping the latest: the oldest kept event is at `written % RING_EVENTS`.
            let (n, lost, first) = if KEEP_LAST {
                let n = written.min(RING_EVENTS as u64);
                let first = if written > n { (written % RING_EVENTS as u64) as usize } else { 0 };
                (n, written - n, first)
            } else {
                (written, r.lost.load(Ordering::Relaxed), 0)
            };
            let what = if KEEP_LAST { "overwritten (the oldest)" } else { "not recorded (ring full)" };
            rl4_arch::console::print_line_stopped(format_args!("timeline: cpu {c}: {n} events recorded, {lost} {what}"));
            cpu::debugcon_write(b"CPU_RING");
            put(c as u64);
            put(n);
            put(lost);
            let (old, new) = r.ev[..n as usize].split_at(first);
            for e in new.iter().chain(old) {
                for w in e {
                    put(w.load(Ordering::Relaxed));
                }
            }
        }
        cpu::debugcon_write(b"TL_END\0\0");
        rl4_arch::console::print_line_stopped(format_args!("timeline: dump complete"));
    }
}

/// Allocates this CPU's ring (at the start of its scheduler; nothing without the feature).
#[inline(always)]
pub fn init_cpu() {
    #[cfg(feature = "timeline")]
    imp::init_cpu();
}

/// Records an event of `kind` on this CPU (nothing without the feature).
#[inline(always)]
pub fn event(kind: Kind, a: u64, b: u64) {
    #[cfg(feature = "timeline")]
    imp::event(kind, a, b);
    #[cfg(not(feature = "timeline"))]
    let _ = (kind, a, b);
}

/// Writes every CPU's ring to the debug console, the other CPUs stopped: `RL4TL001`, the TSC
/// rate (u64), 1 if the rings kept the latest events ([`KEEP_LAST`]) else 0; per CPU
/// `CPU_RING`, its index, events in the dump, events not in it (not recorded, or overwritten),
/// then the events, oldest first (four little-endian u64 each: TSC, kind | cpu << 8 | thread id << 16, a, b); then
/// `TL_END\0\0`. Nothing without the feature.
#[inline(always)]
pub fn dump() {
    #[cfg(feature = "timeline")]
    imp::dump();
}

/// The low 32 bits of an endpoint's address, as the events name it.
#[inline(always)]
pub fn ep(id: usize) -> u64 {
    id as u64 & 0xffff_ffff
}
