//! The kernel command line: `key=value` words separated by white space.
//!
//! Both boot paths hand the kernel a string (PVH's `cmdline_paddr`, Multiboot2's command-line
//! tag). [`parse`] turns it into [`Options`]; every word it cannot use is reported through the
//! `report` callback and otherwise ignored, so a typo never stops the boot.
//!
//! Everything after a lone `--` is the root task's command line ([`split`]); the kernel does
//! not look at it.
//!
//! Options (all optional):
//!
//! | option | meaning | default |
//! |---|---|---|
//! | `run=root\|boot\|idle\|panic\|fault` | what the kernel does once every CPU is up | `root` |
//! | `maxcpus=N` | start at most N CPUs (the BSP included), N ≥ 1 | all enabled in the MADT |
//! | `ap_timeout_ms=N` | how long the BSP waits for each AP to answer its start-up, and as long again for it to come online (0: not at all — for tests, every AP then arrives after the BSP gave up on it, and must park) | 2000 |
//! | `hz=N` | local APIC timer frequency on every CPU, 1 ≤ N ≤ 10000 | 100 |
//! | `poll_us=N` | how long an idle CPU watches its inbox before it halts (0 = never) | 50 |
//! | `fastpath=on\|off` | whether `Call`/`ReplyRecv` may take the IPC fast paths (off: every system call takes the general path, the reference the fast paths must agree with) | `on` |
//! | `overcommit=MiB` | give the root task's budget this many MiB more than the kernel can back (0..=4096), so that a test runs the kernel itself out of frames before the budget runs out (`docs/memory.md`, "Running out of memory") | 0 |
//! | `failalloc=SEED/N` | once the root task runs, make a pseudo-random 1 in N (2..=1000000) of the kernel heap allocations made inside system calls fail (the allocator answers null; seeded by SEED, a whole number), so that tests can see every such allocation answer `OutOfMemory` rather than panic (`docs/memory.md`, "Allocation failure injection") | off |
//! | `reserve=A-B,..` | keep the physical ranges `[A, B)` (hex with `0x`, or decimal; at most [`RESERVE_MAX`]) out of the frame allocator and away from the AP trampoline (no frame there is handed out; the direct map and the boot-module check still take the memory map's word for them) (RAM known to be bad; tests take the first 640 KiB away with `reserve=0-0xa0000`) | none |
//! | `inject=A,B,..` | damage kernel state on purpose when the root task starts, so that tests can see the consistency check find it: `refcount`, `frame`, `budget`, `state`, `locks`, `deriv`, `device`, `queue`, `parent`; `stray`, an interrupt on a vector nothing sends, on every CPU; `lvt`, the local APIC entries the kernel does not use left unmasked before its set-up masks them; `slowunmap`, every `Unmap` held 200 ms between taking the page out and its TLB shoot-down; `apcpuid`, the last application processor reading its CPUID without x2APIC, the TSC-deadline timer, SMEP and SMAP; `slowcopy`, every long message held 200 ms between finding the sender's IPC buffer and reading it; `apext`, the last application processor's trampoline reading CPUID.80000001h:EDX without no-execute and 1 GiB pages; `slowack`, an `IrqAck` that found its binding lapsed held 200 ms before it ends it; and `apsilent`, the last application processor sent no INIT-SIPI-SIPI (a CPU that never answers) | none |

use core::fmt;

/// What the kernel does once every CPU is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    /// Check every CPU, then start the root task (which decides when the machine stops).
    Root,
    /// Check that every CPU runs and takes timer interrupts, then shut down cleanly.
    Boot,
    /// Stay up with every CPU idle (stop QEMU with Ctrl-A X).
    Idle,
    /// Panic on purpose on the last AP (tests the panic path: report, stop all CPUs, fail exit).
    Panic,
    /// Take a page fault on purpose on the last AP (tests the exception report).
    Fault,
    /// The same with the user's GS loaded, as in the exit's window between `swapgs` and
    /// `sysretq` (tests that the report swaps to the kernel's first).
    FaultUserGs,
}

impl Run {
    const ALL: [(&'static str, Run); 6] = [
        ("root", Run::Root),
        ("boot", Run::Boot),
        ("idle", Run::Idle),
        ("panic", Run::Panic),
        ("fault", Run::Fault),
        ("fault-user-gs", Run::FaultUserGs),
    ];

    fn from_str(s: &str) -> Option<Run> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, r)| *r)
    }

    /// The option's spelling on the command line.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, r)| *r == self).map(|(n, _)| *n).unwrap_or("?")
    }
}

/// The parsed command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub run: Run,
    pub maxcpus: Option<u32>,
    pub ap_timeout_ms: u32,
    pub hz: u32,
    pub poll_us: u32,
    /// The IPC fast paths are enabled.
    pub fastpath: bool,
    /// Faults to inject ([`inject`] bits).
    pub inject: u32,
    /// MiB added to the root task's budget beyond what memory backs (tests of exhaustion).
    pub overcommit_mib: u32,
    /// `failalloc=SEED/N`: (seed, N), one in N of the system calls' heap allocations fails.
    pub failalloc: Option<(u64, u32)>,
    /// `reserve=`: physical ranges kept out of the frame allocator (the first `reserve_n`).
    pub reserve: [crate::memmap::Range; RESERVE_MAX],
    pub reserve_n: u8,
}

/// Most ranges `reserve=` takes.
pub const RESERVE_MAX: usize = 4;

impl Options {
    /// The ranges `reserve=` named.
    pub fn reserved(&self) -> &[crate::memmap::Range] {
        &self.reserve[..self.reserve_n as usize]
    }
}

/// A physical address: `0x` and hex digits, or decimal digits.
fn address(v: &str) -> Option<u64> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// What `inject=` can damage (see the kernel's `root::inject`).
pub mod inject {
    /// One reference too many on the root task.
    pub const REFCOUNT: u32 = 1;
    /// A frame allocated and owned by nothing.
    pub const FRAME: u32 = 2;
    /// A budget charged for nothing.
    pub const BUDGET: u32 = 4;
    /// A thread marked runnable but put in no queue.
    pub const STATE: u32 = 8;
    /// Two threads' locks held at once, and a frame destroyed while they are held.
    pub const LOCKS: u32 = 16;
    /// A capability derivation node that no slot owns.
    pub const DERIV: u32 = 32;
    /// A device frame forged over a page of RAM that the frame allocator manages.
    pub const DEVICE: u32 = 64;
    /// A thread blocked on one notification but queued on another's wait list.
    pub const QUEUE: u32 = 128;
    /// A task that lives on after the task that made it ended, and a task counting one task
    /// more than it made.
    pub const PARENT: u32 = 256;
    /// Not damage: an interrupt on a vector nothing sends, on every CPU (0x60 on the bootstrap
    /// CPU, taken in user mode; 0x61 on the others, mostly idle: taken in kernel mode).
    pub const STRAY: u32 = 512;
    /// Not damage: the LVT entries the kernel does not use (performance counters, thermal
    /// sensor, CMCI) left unmasked on every CPU, as firmware may leave them, just before the
    /// local APIC's set-up masks them (`rl4_smp::lapic`; the boot line says whether they read
    /// back masked).
    pub const LVT: u32 = 1024;
    /// Not damage: every `Unmap` waits 200 ms between taking the entry out of the page tables
    /// and its shoot-down, so that a test can reach the space from another CPU in between.
    pub const SLOW_UNMAP: u32 = 2048;
    /// Not damage: the last application processor reads its CPUID without the optional
    /// features the kernel uses (x2APIC, the TSC-deadline timer, SMEP, SMAP), as one CPU of a
    /// machine whose CPUs differ would: it must stay offline, and the kernel run on the others.
    pub const AP_CPUID: u32 = 4096;
    /// Not damage: every long message waits 200 ms between finding the sender's IPC buffer
    /// and reading it, so that a test can unmap the page from another CPU in between.
    pub const SLOW_COPY: u32 = 8192;
    /// Not damage: the last application processor's trampoline reads CPUID.80000001h:EDX
    /// without no-execute and 1 GiB pages, as one CPU of a machine whose CPUs differ would: it
    /// must park before long mode, and the kernel run on the others.
    pub const AP_EXT: u32 = 16384;
    /// Not damage: an `IrqAck` that found its binding lapsed waits 200 ms before it ends that
    /// binding, so that a test can bind the line again from another CPU in between.
    pub const SLOW_ACK: u32 = 32768;
    /// Not damage: the last application processor is sent no INIT-SIPI-SIPI, as a CPU the MADT
    /// lists that never answers: under `run=root` the kernel runs on the CPUs before it.
    pub const AP_SILENT: u32 = 65536;
    /// Not damage: the bootstrap CPU's xAPIC ID register is rewritten (to one more than the
    /// highest ID the MADT lists), and its MADT entry with it, right after its local APIC comes
    /// up, as firmware that moved the ID would have left both: the kernel must take the APIC's
    /// ID, not CPUID's initial one, for the interrupts and IPIs it routes to that CPU. Nothing
    /// in x2APIC mode (read-only).
    pub const BSP_ID: u32 = 131072;
    /// Not damage: the HPET's register base, as the kernel passes it on (after the TSC's
    /// calibration, which reads the real one), is taken to be the page of the first firmware
    /// table above the first megabyte that lies in memory the map calls reserved, as firmware
    /// whose HPET table pointed into its own tables would give: `DeviceMemGet` must refuse
    /// that page.
    pub const HPET_TABLE: u32 = 262144;
    /// Not damage: a user fault of a thread without a fault handler waits 200 ms before the
    /// thread is stopped, so that a test can suspend it from another CPU in between.
    pub const SLOW_FAULT: u32 = 524288;
    /// A port (0x3e8) opened in the bootstrap CPU's I/O permission bitmap without being
    /// recorded among the ranges that CPU has open (as a switch that forgot to close it would
    /// leave it), and the last CPU marked as owing itself a re-read of its ranges with no
    /// interrupt sent to do it.
    pub const IOMAP: u32 = 1 << 20;
    /// Not damage: the boot loader's first module is taken to lie on the kernel image, and its
    /// second on the first page of the first entry of the memory map that is not memory, as a
    /// boot loader that misplaced them would give: the kernel must refuse both, not copy the
    /// kernel's data or read device registers into the root task's frames.
    pub const MODPLACE: u32 = 1 << 21;
    /// What a bad `inject=` value is told to be instead (every name in [`NAMES`]: a host test
    /// holds the two together).
    pub const EXPECTED: &str = "a comma-separated list of refcount, frame, budget, state, locks, deriv, device, queue, parent, stray, lvt, slowunmap, apcpuid, slowcopy, apext, slowack, apsilent, bspid, hpettable, slowfault, iomap, modplace";
    pub const NAMES: [(&str, u32); 22] = [
        ("refcount", REFCOUNT),
        ("frame", FRAME),
        ("budget", BUDGET),
        ("state", STATE),
        ("locks", LOCKS),
        ("deriv", DERIV),
        ("device", DEVICE),
        ("queue", QUEUE),
        ("parent", PARENT),
        ("stray", STRAY),
        ("lvt", LVT),
        ("slowunmap", SLOW_UNMAP),
        ("apcpuid", AP_CPUID),
        ("slowcopy", SLOW_COPY),
        ("apext", AP_EXT),
        ("slowack", SLOW_ACK),
        ("apsilent", AP_SILENT),
        ("bspid", BSP_ID),
        ("hpettable", HPET_TABLE),
        ("slowfault", SLOW_FAULT),
        ("iomap", IOMAP),
        ("modplace", MODPLACE),
    ];
}

impl Default for Options {
    fn default() -> Self {
        Options {
            run: Run::Root,
            maxcpus: None,
            ap_timeout_ms: 2000,
            hz: 100,
            poll_us: 50,
            fastpath: true,
            inject: 0,
            overcommit_mib: 0,
            failalloc: None,
            reserve: [crate::memmap::Range::new(0, 0); RESERVE_MAX],
            reserve_n: 0,
        }
    }
}

/// A word of the command line that [`parse`] could not use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem<'a> {
    /// An option rl4 does not know (the whole word).
    Unknown(&'a str),
    /// A known option without `=value`.
    MissingValue(&'a str),
    /// A known option whose value is out of range or malformed; `expected` says what fits.
    BadValue { key: &'a str, value: &'a str, expected: &'static str },
}

use crate::conout::OneLine;

impl fmt::Display for Problem<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The boot loader's words, shown on the one line whatever they hold.
            Problem::Unknown(w) => write!(f, "unknown option '{}' ignored", OneLine(w.as_bytes())),
            Problem::MissingValue(k) => {
                let k = OneLine(k.as_bytes());
                write!(f, "option '{k}' needs a value ({k}=...), ignored")
            }
            Problem::BadValue { key, value, expected } => {
                write!(f, "bad value '{}' for '{}' (expected {expected}), earlier value kept", OneLine(value.as_bytes()), OneLine(key.as_bytes()))
            }
        }
    }
}

fn number(v: &str, min: u32, max: u32) -> Option<u32> {
    let n: u32 = v.parse().ok()?;
    (min..=max).contains(&n).then_some(n)
}

/// Splits the boot command line at the first lone `--`: (kernel part, root task part).
pub fn split(line: &str) -> (&str, &str) {
    let mut at = 0;
    for w in line.split_ascii_whitespace() {
        // `w` is a subslice of `line`: its offset is where it starts.
        let off = w.as_ptr() as usize - line.as_ptr() as usize;
        if w == "--" {
            return (&line[..off], line[off + 2..].trim());
        }
        at = off + w.len();
    }
    (&line[..at], "")
}

/// Parses `line`, calling `report` once for every word it ignores.
pub fn parse<'a>(line: &'a str, mut report: impl FnMut(Problem<'a>)) -> Options {
    let mut o = Options::default();
    for word in line.split_ascii_whitespace() {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        let known = matches!(key, "run" | "maxcpus" | "ap_timeout_ms" | "hz" | "poll_us" | "fastpath" | "inject" | "overcommit" | "failalloc" | "reserve");
        if !known {
            report(Problem::Unknown(word));
            continue;
        }
        let Some(value) = value else {
            report(Problem::MissingValue(key));
            continue;
        };
        let bad = |expected| Problem::BadValue { key, value, expected };
        match key {
            "run" => match Run::from_str(value) {
                Some(r) => o.run = r,
                None => report(bad("root, boot, idle, panic or fault")),
            },
            "maxcpus" => match number(value, 1, u32::MAX) {
                Some(n) => o.maxcpus = Some(n),
                None => report(bad("a whole number >= 1")),
            },
            "ap_timeout_ms" => match number(value, 0, 600_000) {
                Some(n) => o.ap_timeout_ms = n,
                None => report(bad("0..=600000")),
            },
            "hz" => match number(value, 1, 10_000) {
                Some(n) => o.hz = n,
                None => report(bad("1..=10000")),
            },
            "poll_us" => match number(value, 0, 1_000_000) {
                Some(n) => o.poll_us = n,
                None => report(bad("0..=1000000")),
            },
            "fastpath" => match value {
                "on" => o.fastpath = true,
                "off" => o.fastpath = false,
                _ => report(bad("on or off")),
            },
            "overcommit" => match number(value, 0, 4096) {
                Some(n) => o.overcommit_mib = n,
                None => report(bad("0..=4096")),
            },
            "failalloc" => {
                let parsed = value.split_once('/').and_then(|(seed, n)| Some((seed.parse::<u64>().ok()?, number(n, 2, 1_000_000)?)));
                match parsed {
                    Some(f) => o.failalloc = Some(f),
                    None => report(bad("SEED/N: a whole number, then 2..=1000000")),
                }
            }
            // A second `reserve=` adds to the first.
            "reserve" => {
                let mut r = o.reserve;
                let mut n = o.reserve_n as usize;
                let ok = value.split(',').all(|w| {
                    let Some((a, b)) = w.split_once('-') else { return false };
                    let (Some(a), Some(b)) = (address(a), address(b)) else { return false };
                    if a >= b || n == RESERVE_MAX {
                        return false;
                    }
                    r[n] = crate::memmap::Range::new(a, b);
                    n += 1;
                    true
                });
                match ok {
                    true => (o.reserve, o.reserve_n) = (r, n as u8),
                    false => report(bad("at most 4 comma-separated ranges START-END, START < END (0x hex or decimal)")),
                }
            }
            "inject" => {
                let bits = value.split(',').map(|w| inject::NAMES.iter().find(|(n, _)| *n == w).map(|(_, b)| *b));
                match bits.clone().all(|b| b.is_some()) {
                    true => o.inject = bits.flatten().fold(0, |a, b| a | b),
                    false => report(bad(inject::EXPECTED)),
                }
            }
            _ => unreachable!("key list above"),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(s: &str) -> (Options, Vec<String>) {
        let mut problems = Vec::new();
        let o = parse(s, |p| problems.push(p.to_string()));
        (o, problems)
    }

    #[test]
    fn reserve_option() {
        use crate::memmap::Range;
        assert!(parse_all("").0.reserved().is_empty());
        let (o, p) = parse_all("reserve=0-0x100000,0x20000000-0x20001000");
        assert!(p.is_empty());
        assert_eq!(o.reserved(), &[Range::new(0, 0x10_0000), Range::new(0x2000_0000, 0x2000_1000)]);
        assert_eq!(parse_all("reserve=4096-8192").0.reserved(), &[Range::new(4096, 8192)]);
        let (o, p) = parse_all("reserve=1-2 reserve=3-4,5-6");
        assert!(p.is_empty());
        assert_eq!(o.reserved(), &[Range::new(1, 2), Range::new(3, 4), Range::new(5, 6)]);
        // Past the limit, the whole word is refused and what was there stays.
        let (o, p) = parse_all("reserve=1-2,3-4,5-6 reserve=7-8,9-10");
        assert_eq!(p.len(), 1);
        assert_eq!(o.reserved().len(), 3);
        for bad in ["reserve=5-5", "reserve=9-4", "reserve=0x-1", "reserve=1", "reserve=1-2,", "reserve=1-2,3-4,5-6,7-8,9-10", "reserve=0x1-0xfffffffffffffffff"] {
            let (o, p) = parse_all(bad);
            assert!(o.reserved().is_empty(), "{bad}");
            assert_eq!(p.len(), 1, "{bad}");
        }
    }

    #[test]
    fn failalloc_option() {
        assert_eq!(parse_all("").0.failalloc, None);
        assert_eq!(parse_all("failalloc=7/50").0.failalloc, Some((7, 50)));
        assert_eq!(parse_all("failalloc=0/2").0.failalloc, Some((0, 2)));
        for bad in ["failalloc=7", "failalloc=7/1", "failalloc=x/5", "failalloc=7/0", "failalloc=/5", "failalloc=7/2000000"] {
            let (o, p) = parse_all(bad);
            assert_eq!(o.failalloc, None, "{bad}");
            assert_eq!(p.len(), 1, "{bad}");
        }
    }

    #[test]
    fn fastpath_switch() {
        assert!(parse_all("").0.fastpath);
        assert!(!parse_all("fastpath=off").0.fastpath);
        assert!(parse_all("fastpath=off fastpath=on").0.fastpath);
        let (o, p) = parse_all("fastpath=maybe");
        assert!(o.fastpath);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn empty_line_gives_defaults() {
        assert_eq!(parse_all(""), (Options::default(), vec![]));
        assert_eq!(parse_all("   \t "), (Options::default(), vec![]));
    }

    #[test]
    fn known_options() {
        let (o, p) = parse_all("run=idle maxcpus=3  ap_timeout_ms=500 hz=250 poll_us=0");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(o, Options { run: Run::Idle, maxcpus: Some(3), ap_timeout_ms: 500, hz: 250, poll_us: 0, fastpath: true, inject: 0, overcommit_mib: 0, failalloc: None, ..Options::default() });
    }

    #[test]
    fn inject_expected_names_every_one() {
        let listed: Vec<&str> = inject::EXPECTED.trim_start_matches("a comma-separated list of ").split(", ").collect();
        let names: Vec<&str> = inject::NAMES.iter().map(|(n, _)| *n).collect();
        assert_eq!(listed, names);
    }

    #[test]
    fn inject_lists() {
        let (o, p) = parse_all("inject=frame,state");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(o.inject, inject::FRAME | inject::STATE);
        let (o, p) = parse_all("inject=frame,bogus");
        assert_eq!(o.inject, 0);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn later_word_wins() {
        let (o, _) = parse_all("hz=10 hz=20");
        assert_eq!(o.hz, 20);
    }

    #[test]
    fn unknown_and_bad_words_are_reported_not_fatal() {
        let (o, p) = parse_all("bogus=1 run=fly maxcpus=0 hz=abc hz=99999 lonely maxcpus run=panic");
        assert_eq!(o.run, Run::Panic);
        assert_eq!(o.maxcpus, None);
        assert_eq!(o.hz, 100);
        assert_eq!(
            p,
            vec![
                "unknown option 'bogus=1' ignored",
                "bad value 'fly' for 'run' (expected root, boot, idle, panic or fault), earlier value kept",
                "bad value '0' for 'maxcpus' (expected a whole number >= 1), earlier value kept",
                "bad value 'abc' for 'hz' (expected 1..=10000), earlier value kept",
                "bad value '99999' for 'hz' (expected 1..=10000), earlier value kept",
                "unknown option 'lonely' ignored",
                "option 'maxcpus' needs a value (maxcpus=...), ignored",
            ]
        );
        // Words with control characters (no line break: those split words) are shown on the
        // problem's one line.
        let (_, p) = parse_all("a\x0b[cpu0]\x1b hz=\u{2028}");
        assert_eq!(p, vec!["unknown option 'a?[cpu0]?' ignored", "bad value '?' for 'hz' (expected 1..=10000), earlier value kept"]);
    }

    #[test]
    fn split_at_double_dash() {
        assert_eq!(split("hz=5 -- test=all x"), ("hz=5 ", "test=all x"));
        assert_eq!(split("hz=5"), ("hz=5", ""));
        assert_eq!(split("-- a -- b"), ("", "a -- b"));
        assert_eq!(split(""), ("", ""));
        assert_eq!(split("a--b"), ("a--b", ""));
    }

    #[test]
    fn run_names_round_trip() {
        for (n, r) in Run::ALL {
            assert_eq!(Run::from_str(n), Some(r));
            assert_eq!(r.name(), n);
        }
    }
}
