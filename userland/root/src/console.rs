//! The interactive console (`console` on the root task's command line; `scripts/run --console`):
//! the root task starts the serial driver (`userland/serial`) in a task of its own with COM2's
//! interrupt, ports and an endpoint, subscribes to it, and serves a prompt over it:
//! line editing (backspace), one command per line, answers written back through the driver.
//!
//! Commands: `help`, `cpus`, `threads`, `stat`, `ping N same|cross A B`, `stress PAIRS SECONDS`,
//! `shutdown`. The console runs in the root task, which holds what the commands need (the
//! memory budget for `ping` and `stress`, the machine capability for `stat` and `shutdown`).
use core::fmt::{self, Write};
use rl4_abi::ipc::{FOREVER, NO_SLOT, Tag};
use rl4_abi::{BootInfo, Error, Rights, Sys, ThreadState, root_slots, stat};
use rl4_user::com::{COM2, COM2_IRQ};
use rl4_user::serial::{self, CHUNK};
use rl4_user::sys::{self, Msg};
use rl4_user::println;

use crate::space::*;
use crate::tests::state;

/// The driver: its task and the endpoint it serves (in the root task's table).
pub(crate) struct Driver {
    /// Kept for the console's life (the driver runs until the machine stops), or until
    /// [`Driver::stop`].
    child: Child,
    pub(crate) ep: u64,
}

impl Driver {
    /// Ends the driver's task (its line, ports and notification go with it) and lets go of its
    /// endpoint.
    pub(crate) fn stop(self) {
        self.child.release();
        release(self.ep);
    }
}

const DRIVER_STACK2: u64 = CHILD_STACK_TOP - 0x10_0000;

/// Starts the serial driver on COM2 (its interrupt, ports, a notification and an endpoint it
/// serves; its two threads on CPU 0).
pub(crate) fn start_driver(bi: &BootInfo) -> Result<Driver, Error> {
    let child = Child::load(bi, "serial")?;
    let (irq, ports, n, ep) = (slot(), slot(), slot(), slot());
    sys::irq_get(root_slots::DEVICES, COM2_IRQ, irq)?;
    sys::ioport_get(root_slots::DEVICES, COM2 as u64, 8, ports)?;
    sys::notification_create(MEMORY, n)?;
    sys::endpoint_create(MEMORY, ep)?;
    sys::cap_copy(irq, child.task, serial::IRQ, Rights::ALL)?;
    sys::cap_copy(ports, child.task, serial::PORTS, Rights::ALL)?;
    sys::cap_copy(n, child.task, serial::NTF, Rights::ALL)?;
    sys::cap_copy(ep, child.task, serial::EP, Rights::RECEIVE)?;
    // The driver holds the only capabilities to its line, ports and notification.
    for s in [irq, ports, n] {
        release(s);
    }
    // The interrupt thread first (it sets the UART up and binds the line), above the console.
    let t1 = child.thread(CHILD_STACK_TOP, serial::ROLE_IRQ, 0, ROOT_PRIO + 20, 0)?;
    wait_ms(5000, || state(t1) == Some(ThreadState::BlockedNotify));
    let t2 = child.thread(DRIVER_STACK2, serial::ROLE_SERVE, 0, ROOT_PRIO + 10, 0)?;
    wait_ms(5000, || state(t2) == Some(ThreadState::BlockedRecv));
    release(t1);
    release(t2);
    Ok(Driver { child, ep })
}

/// Output through the driver, `\n` written as `\r\n`, in chunks of at most 32 bytes.
struct Out<'a> {
    ep: u64,
    buf: [u8; CHUNK],
    len: usize,
    _d: core::marker::PhantomData<&'a ()>,
}

impl Out<'_> {
    fn new(ep: u64) -> Self {
        Out { ep, buf: [0; CHUNK], len: 0, _d: core::marker::PhantomData }
    }
    fn byte(&mut self, b: u8) {
        if self.len == CHUNK {
            self.flush();
        }
        self.buf[self.len] = b;
        self.len += 1;
    }
    fn flush(&mut self) {
        let mut off = 0;
        while off < self.len {
            match sys::call(self.ep, &serial::write_msg(&self.buf[off..self.len])) {
                Ok(r) if r.tag.label() > 0 => off += r.tag.label() as usize,
                _ => break,
            }
        }
        self.len = 0;
    }
}

impl Write for Out<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if b == b'\n' {
                self.byte(b'\r');
            }
            self.byte(b);
        }
        Ok(())
    }
}

macro_rules! say {
    ($o:expr, $($arg:tt)*) => {{ let _ = write!($o, $($arg)*); }};
}

const PROMPT: &str = "rl4> ";
const LINE_MAX: usize = 512;

pub fn run(bi: &BootInfo) -> bool {
    let d = match start_driver(bi) {
        Ok(d) => d,
        Err(e) => {
            println!("console: cannot start the serial driver: {e}");
            return false;
        }
    };
    let sub = slot();
    let subscribed = sys::notification_create(MEMORY, sub).and_then(|_| {
        let m = Msg { tag: Tag::new(serial::SUBSCRIBE, 0, 1), badge: 0, w: [0; 4] };
        sys::ipc(Sys::Call, d.ep, &m, FOREVER, sub, NO_SLOT)
    });
    if !matches!(subscribed, Ok(r) if r.tag.label() == 0) {
        println!("console: cannot subscribe to the serial driver: {subscribed:?}");
        return false;
    }
    println!("console: serving a prompt on COM2 (serial driver in task, interrupt {COM2_IRQ})");
    let mut o = Out::new(d.ep);
    say!(o, "rl4 console on {} CPU(s); type 'help'\n{PROMPT}", cpus());
    o.flush();
    let mut line = [0u8; LINE_MAX];
    let (mut len, mut total) = (0usize, 0usize);
    let mut last_cr = false;
    loop {
        if sys::wait(sub, FOREVER).is_err() {
            return false;
        }
        loop {
            let r = match sys::call(d.ep, &Msg { tag: Tag::new(serial::READ, 0, 0), badge: 0, w: [0; 4] }) {
                Ok(r) => r,
                Err(e) => {
                    println!("console: read failed: {e}");
                    return false;
                }
            };
            let mut b = [0u8; CHUNK];
            let n = serial::unpack(&r.w, r.tag.label() as usize, &mut b);
            if n == 0 {
                break;
            }
            for &c in &b[..n] {
                match c {
                    b'\r' | b'\n' => {
                        if c == b'\n' && last_cr {
                            last_cr = false;
                            continue;
                        }
                        last_cr = c == b'\r';
                        say!(o, "\n");
                        let text = core::str::from_utf8(&line[..len]).unwrap_or("");
                        if execute(bi, &mut o, text.trim(), total) {
                            o.flush();
                            let _ = sys::shutdown(MACHINE, 0);
                        }
                        say!(o, "{PROMPT}");
                        len = 0;
                        total = 0;
                    }
                    0x08 | 0x7f => {
                        last_cr = false;
                        if total > 0 {
                            total -= 1;
                            len = len.min(total);
                            say!(o, "\x08 \x08");
                        }
                    }
                    0x20..=0x7e => {
                        last_cr = false;
                        if len < LINE_MAX && total == len {
                            line[len] = c;
                            len += 1;
                        }
                        total += 1;
                        o.byte(c);
                    }
                    _ => last_cr = false,
                }
            }
            o.flush();
        }
    }
}

fn num(s: Option<&str>) -> Option<u64> {
    s?.parse().ok()
}

/// Runs one command line; true for `shutdown`. `total` counts every character typed (a line
/// longer than the console keeps is reported, not cut silently).
fn execute(bi: &BootInfo, o: &mut Out<'_>, line: &str, total: usize) -> bool {
    let mut w = line.split_ascii_whitespace();
    let Some(cmd) = w.next() else { return false };
    match cmd {
        "help" => say!(
            o,
            "commands:\n  help                      this list\n  cpus                      CPUs online\n  threads                   live threads in the kernel\n  stat                      kernel counters\n  ping N same|cross A B     N IPC round trips from CPU A to an echo server on CPU B,\n                            in this task (same) or in a task of its own (cross)\n  stress PAIRS SECONDS      PAIRS checked IPC pairs on all CPUs for SECONDS\n  shutdown                  stop the machine\n"
        ),
        "cpus" => {
            say!(o, "cpus: {} online;", cpus());
            for c in 0..cpus() {
                say!(o, " cpu{c}");
            }
            say!(o, "\n");
        }
        "threads" => say!(o, "threads: {} live\n", sys::stat(MACHINE, stat::THREADS).unwrap_or(0)),
        "stat" => {
            let s = |w| sys::stat(MACHINE, w).unwrap_or(0);
            say!(
                o,
                "stat: threads {}, free frames {}, heap {} KiB, ipc fast {}, ipc slow {}, ipc cross-cpu {}, ipis {}, irqs delivered {}, irq lines enabled {}, this cpu: switches {}, ticks {}\n",
                s(stat::THREADS),
                s(stat::FREE_FRAMES),
                s(stat::HEAP_BYTES) >> 10,
                s(stat::IPC_FAST),
                s(stat::IPC_SLOW),
                s(stat::IPC_CROSS),
                s(stat::IPIS_SENT),
                s(stat::IRQS_DELIVERED),
                s(stat::IRQ_LINES_ENABLED),
                s(stat::SWITCHES),
                s(stat::TICKS)
            );
        }
        "ping" => {
            let (n, kind, a, b) = (num(w.next()), w.next(), num(w.next()), num(w.next()));
            let (Some(n), Some(kind @ ("same" | "cross")), Some(a), Some(b)) = (n, kind, a, b) else {
                say!(o, "usage: ping N same|cross A B\n");
                return false;
            };
            if a >= cpus() || b >= cpus() || n == 0 || n > 100_000 {
                say!(o, "ping: CPUs are 0..{}, N is 1..100000\n", cpus() - 1);
                return false;
            }
            say!(o, "ping: {n} round trips, client cpu {a}, server cpu {b}, server in {}...\n", if kind == "same" { "this task" } else { "a task of its own" });
            o.flush();
            match crate::bench::ping(bi, n as usize, kind == "cross", a, b) {
                Some(s) => {
                    let ns = |c: u64| c * 1_000_000 / (tsc_hz() / 1000).max(1);
                    say!(
                        o,
                        "ping: median {} cycles ({} ns), p10 {}, p90 {}, p99 {}, min {}, max {}\n",
                        s.median,
                        ns(s.median),
                        s.cdf[2],
                        s.cdf[6],
                        s.p99,
                        s.min,
                        s.max
                    );
                }
                None => say!(o, "ping: could not start the server\n"),
            }
        }
        "stress" => {
            let (Some(pairs), Some(secs)) = (num(w.next()), num(w.next())) else {
                say!(o, "usage: stress PAIRS SECONDS\n");
                return false;
            };
            if pairs == 0 || pairs > 64 || secs == 0 || secs > 600 {
                say!(o, "stress: PAIRS is 1..64, SECONDS 1..600\n");
                return false;
            }
            say!(o, "stress: {pairs} pairs for {secs} s...\n");
            o.flush();
            let t0 = sys::stat(MACHINE, stat::THREADS).unwrap_or(0);
            let ok = crate::stress::run(pairs as usize, 1000, secs);
            wait_ms(3000, || sys::stat(MACHINE, stat::THREADS) == Ok(t0));
            let t1 = sys::stat(MACHINE, stat::THREADS).unwrap_or(0);
            say!(o, "stress: {}, threads before {t0}, after {t1}\n", if ok && t0 == t1 { "ok" } else { "FAILED" });
        }
        "shutdown" => {
            say!(o, "shutting down\n");
            return true;
        }
        _ => {
            let shown: &str = if line.len() > 40 { &line[..40] } else { line };
            say!(o, "unknown command '{shown}{}' ({total} characters); type 'help'\n", if line.len() > 40 { "..." } else { "" });
        }
    }
    false
}
