//! Starting programs by name from the command line: `start=NAME[:cpu=N][:prio=P][:arg=X][:ep=OTHER]...`.
//!
//! Each `start=` item loads the program `NAME` (a boot module from `scripts/run --program`, or
//! an embedded program) into a task of its own, with the capabilities `rl4_user::env`
//! describes: its own task, space and first thread, the memory budget, the console, an
//! endpoint of its own to serve ([`env::SERVE`]), and for each `ep=OTHER` a send copy of
//! `OTHER`'s endpoint, badged with this program's start index + 1 ([`env::FIRST_EP`] on).
//! Every endpoint is made before any program starts, so the order of the items does not
//! matter. A program that cannot be loaded (not ELF, wrong machine, truncated, overlapping
//! segments, a segment on the IPC buffer or stack it is given, too big...) is refused with a
//! line that says why, and the others still start. One that cannot start (its first thread or
//! a capability refused) is refused the same way, and its endpoint deleted with every copy the
//! `ep=` options gave: a program that calls it gets an error, not a wait for a server that never
//! comes.
//!
//! The root task then waits for the program named by `until=` (default: the last `start=`
//! item; if that one was refused, the run ends in failure at once) to end, and shuts the machine down: success if it ended by returning from `rl4_main` (or
//! `ThreadExit`), failure if it faulted or did not end within `seconds=` (default 120).
//! `stay` keeps the machine running instead. Before it shuts down it runs the kernel's
//! consistency check (`KernelCheck`), which must find nothing wrong.
use core::fmt;
use rl4_abi::{BootInfo, Error, PAGE_SIZE, Program, Rights, ThreadState};
use rl4_elf::{Elf, ElfError};
use rl4_user::{env, println, sys};

use crate::space::{self, MEMORY, MACHINE, map_fresh, slot};

/// Most `start=` items.
pub const MAX_STARTS: usize = 16;
/// Most bytes a program's segments may take in memory.
pub const MAX_PROGRAM_MEMORY: u64 = 64 << 20;

/// One `start=` item.
#[derive(Clone, Copy)]
pub struct Start<'a> {
    pub name: &'a str,
    pub cpu: u64,
    pub prio: u64,
    pub arg: u64,
    eps: [&'a str; env::MAX_EPS as usize],
    neps: usize,
}

/// Parses `NAME[:key=value]...`.
pub fn parse(item: &str) -> Result<Start<'_>, &'static str> {
    let mut it = item.split(':');
    let name = it.next().filter(|n| !n.is_empty()).ok_or("no program name")?;
    let mut s = Start { name, cpu: 0, prio: env::DEFAULT_PRIORITY, arg: 0, eps: [""; env::MAX_EPS as usize], neps: 0 };
    for kv in it {
        let (k, v) = kv.split_once('=').ok_or("an option is not key=value")?;
        let num = || parse_num(v).ok_or("a number is malformed");
        match k {
            "cpu" => s.cpu = num()?,
            "prio" => s.prio = num()?,
            "arg" => s.arg = num()?,
            "ep" => {
                if s.neps == env::MAX_EPS as usize {
                    return Err("too many ep= options");
                }
                s.eps[s.neps] = v;
                s.neps += 1;
            }
            _ => return Err("unknown option (cpu=, prio=, arg=, ep=)"),
        }
    }
    Ok(s)
}

fn parse_num(v: &str) -> Option<u64> {
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Why a program was refused.
pub enum Refusal {
    NotFound,
    Elf(ElfError),
    TooBig(u64),
    /// A segment on the page of the IPC buffer or the stack every program is given.
    Reserved,
    Sys(&'static str, Error),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotFound => write!(f, "no such program (see the kernel's 'boot module' lines)"),
            Refusal::Elf(ElfError::TooManyHeaders) => write!(f, "more than {} program headers", rl4_elf::MAX_PHNUM),
            Refusal::Elf(e) => f.write_str(match e {
                ElfError::TooShort => "truncated: shorter than an ELF header",
                ElfError::BadMagic => "not an ELF file",
                ElfError::NotElf64LittleEndian => "not a 64-bit little-endian ELF file",
                ElfError::NotExecutable => "not an executable (ET_EXEC) ELF file",
                ElfError::WrongMachine => "wrong machine: not an x86_64 ELF file",
                ElfError::BadHeader => "malformed ELF header",
                ElfError::OutOfBounds => "truncated: a program header or segment lies past the end of the file",
                ElfError::BadSegment => "malformed segment (file size above memory size, or sizes overflow)",
                ElfError::BadAddress => "a segment lies outside the user range a program may use",
                ElfError::Overlap => "overlapping segments (two loadable segments share a page)",
                ElfError::BadEntry => "the entry point is not in an executable segment",
                ElfError::NoSegments => "no loadable segment",
                ElfError::TooManyHeaders => "too many program headers",
            }),
            Refusal::TooBig(n) => write!(f, "too big: its segments take {n} bytes, more than {} MiB", MAX_PROGRAM_MEMORY >> 20),
            Refusal::Reserved => write!(
                f,
                "a segment lies on the IPC buffer ({:#x}) or the stack (below {:#x}) every program is given",
                env::IPC_BUFFER,
                env::STACK_TOP
            ),
            Refusal::Sys(what, e) => write!(f, "{what} failed: {e}"),
        }
    }
}

/// The image of the program `name` (a boot module first, then an embedded one), checked.
pub fn image(bi: &BootInfo, name: &str) -> Result<Elf<'static>, Refusal> {
    let mut found = bi.programs().iter().filter(|p| p.name() == name);
    let p: &Program = found.clone().find(|p| p.kind == Program::MODULE).or_else(|| found.next()).ok_or(Refusal::NotFound)?;
    // SAFETY: the kernel maps each program image read-only at `addr` for `len` bytes, for the
    // root task's life.
    let bytes: &'static [u8] = unsafe { core::slice::from_raw_parts(p.addr as *const u8, p.len as usize) };
    let elf = Elf::parse(bytes, PAGE_SIZE, rl4_abi::PROGRAMS_ADDR).map_err(Refusal::Elf)?;
    let mut total = 0u64;
    let stack = env::STACK_TOP - env::STACK_PAGES * PAGE_SIZE..env::STACK_TOP;
    let buffer = env::IPC_BUFFER..env::IPC_BUFFER + PAGE_SIZE;
    for seg in elf.segments() {
        let (p0, p1) = seg.map_err(Refusal::Elf)?.pages();
        // Refused here, before any endpoint is handed out, rather than by the mapping at the
        // start (which would fail with `AlreadyMapped` after the other programs got theirs).
        if p0 < buffer.end && buffer.start < p1 || p0 < stack.end && stack.start < p1 {
            return Err(Refusal::Reserved);
        }
        total = total.saturating_add(p1 - p0);
    }
    if total > MAX_PROGRAM_MEMORY {
        return Err(Refusal::TooBig(total));
    }
    Ok(elf)
}

/// A started program.
struct Running {
    name: &'static str,
    task: u64,
    thread: u64,
}

/// Starts the `start=` items; waits as the module comment says. Returns whether the awaited
/// program ended well (true with `stay`, which never returns).
pub fn run(bi: &'static BootInfo, items: &[&'static str], until: Option<&str>, stay: bool, seconds: u64) -> bool {
    // Above every program (the highest priority; it mostly sleeps): a program started at a
    // priority above the root thread's, on its CPU, kept it from starting the next program and
    // from ever ending the wait below (a review of the thirty-seventh session).
    let _ = sys::thread_set_priority(crate::THREAD, 255);
    let mut starts: [Option<Start<'static>>; MAX_STARTS] = [None; MAX_STARTS];
    for (i, item) in items.iter().enumerate() {
        if i == MAX_STARTS {
            println!("root: start={item} refused: more than {MAX_STARTS} programs");
            continue;
        }
        match parse(item) {
            Ok(s) if s.cpu >= space::cpus() => println!("root: program '{}' refused: there is no cpu {} ({} online)", s.name, s.cpu, space::cpus()),
            Ok(s) => starts[i] = Some(s),
            Err(e) => println!("root: start={item} refused: {e}"),
        }
    }
    // Check and load every program, and make its endpoint, before anything runs.
    let mut tasks: [Option<(space::Child, u64)>; MAX_STARTS] = [const { None }; MAX_STARTS];
    for (i, s) in starts.iter().enumerate() {
        let Some(s) = s else { continue };
        match load(bi, s) {
            Ok(c) => tasks[i] = Some(c),
            Err(e) => println!("root: program '{}' refused: {e}", s.name),
        }
    }
    let mut running: [Option<Running>; MAX_STARTS] = [const { None }; MAX_STARTS];
    for (i, s) in starts.iter().enumerate() {
        let (Some(s), Some((child, _))) = (s, &tasks[i]) else { continue };
        match start(s, i, child, &tasks, &starts) {
            Ok(thread) => {
                println!("root: started '{}' (task slot {}) on cpu {} at priority {}", s.name, child.task, s.cpu, s.prio);
                running[i] = Some(Running { name: s.name, task: child.task, thread });
            }
            Err(e) => {
                println!("root: program '{}' refused: {e}", s.name);
                // Its endpoint goes, and with it the send copies programs started before got
                // (`CapRevoke`: their calls fail rather than wait for a server that never
                // comes), and no program started after gets one ("no such program started").
                if let Some((child, ep)) = tasks[i].take() {
                    let _ = sys::cap_revoke(ep);
                    space::release(ep);
                    child.release();
                }
            }
        }
    }
    if stay {
        println!("root: the programs run; stop QEMU with Ctrl-A X");
        loop {
            crate::stress::sleep_ms(1000);
        }
    }
    // The awaited program: `until=`'s, else the last `start=` item — which must have started
    // (before the thirty-seventh session the last that did was awaited, and a run whose last
    // item was refused could end in success: a review).
    let last_item = items.len().checked_sub(1).filter(|&i| i < MAX_STARTS);
    let target = match until {
        Some(u) => running.iter().flatten().find(|r| r.name == u),
        None => last_item.and_then(|i| running[i].as_ref()),
    };
    let Some(t) = target else {
        println!("root: no program started{}", if until.is_some() { " by the until= name" } else { " by the last start= item" });
        return false;
    };
    let state = |th| sys::thread_info(th).map(|r| r[0]).unwrap_or(ThreadState::Dead as u64);
    let over = |s: u64| s == ThreadState::Dead as u64 || s == ThreadState::Faulted as u64;
    space::wait_ms(seconds.saturating_mul(1000), || over(state(t.thread)));
    let s = state(t.thread);
    let ok = s == ThreadState::Dead as u64;
    if ok {
        println!("root: program '{}' finished", t.name);
    } else if s == ThreadState::Faulted as u64 {
        println!("root: program '{}' faulted", t.name);
    } else {
        println!("root: program '{}' did not finish within {seconds} s", t.name);
    }
    // The kernel's consistency check while the programs still exist: every frame (the boot
    // modules' copies included) free or owned exactly once, every reference counted.
    let check = sys::kernel_check(MACHINE);
    match check {
        Ok([0, objects, frames]) => println!("root: kernel check: {objects} objects, {frames} frames, 0 violations"),
        Ok([v, _, _]) => println!("root: kernel check: {v} violations"),
        Err(e) => println!("root: kernel check failed: {e}"),
    }
    for r in running.iter().flatten() {
        let _ = sys::task_kill(r.task);
    }
    ok && matches!(check, Ok([0, _, _]))
}

/// Checks and loads `s.name` into a new task and makes its endpoint (in the root task's
/// table; the program gets its copy when it starts).
fn load(bi: &BootInfo, s: &Start<'_>) -> Result<(space::Child, u64), Refusal> {
    let elf = image(bi, s.name)?;
    let child = space::Child::load_elf(&elf, Rights::CONSOLE).map_err(|e| Refusal::Sys("loading", e))?;
    let ep = slot();
    if let Err(e) = sys::endpoint_create(MEMORY, ep) {
        space::release(ep);
        child.release();
        return Err(Refusal::Sys("EndpointCreate", e));
    }
    Ok((child, ep))
}

/// Gives the program its capabilities, stack and IPC buffer, and starts its first thread.
fn start(
    s: &Start<'_>,
    index: usize,
    child: &space::Child,
    tasks: &[Option<(space::Child, u64)>; MAX_STARTS],
    starts: &[Option<Start<'_>>; MAX_STARTS],
) -> Result<u64, Refusal> {
    let ck = |what, r: Result<(), Error>| r.map_err(|e| Refusal::Sys(what, e));
    let task = child.task;
    let (_, own_ep) = tasks[index].as_ref().ok_or(Refusal::NotFound)?;
    ck("giving the task its task capability", sys::cap_copy(task, task, env::TASK, Rights::ALL))?;
    ck("giving the space capability", sys::cap_copy(child.space, task, env::SPACE, Rights::ALL))?;
    ck("giving the memory capability", sys::cap_copy(MEMORY, task, env::MEMORY, Rights::ALL))?;
    ck("giving the endpoint", sys::cap_copy(*own_ep, task, env::SERVE, Rights::ALL))?;
    // (The console capability, in `env::MACHINE`, was given by `Child::load_elf`.)
    for (k, other) in s.eps[..s.neps].iter().enumerate() {
        // The first item of that name that loaded and, if it came before, started (before the
        // forty-second session the first of that name, refused or not: a client named a twin
        // whose start had failed was told "no such program" while the other served; a review
        // found it). A later item is not started yet: refused then, its endpoint is revoked
        // with this copy (above).
        let j = (0..MAX_STARTS).find(|&j| starts[j].as_ref().is_some_and(|t| t.name == *other) && tasks[j].is_some());
        let Some((_, ep)) = j.and_then(|j| tasks[j].as_ref()) else {
            println!("root: '{}': ep={other}: no such program started; slot {} stays empty", s.name, env::FIRST_EP + k as u64);
            continue;
        };
        let badge = index as u64 + 1;
        ck("giving an ep= endpoint", sys::cap_mint(*ep, task, env::FIRST_EP + k as u64, Rights::SEND.union(Rights::GRANT), badge))?;
    }
    let rw = Rights::READ.union(Rights::WRITE);
    ck("mapping the IPC buffer", map_fresh(child.space, env::IPC_BUFFER, 1, rw))?;
    ck("mapping the stack", map_fresh(child.space, env::STACK_TOP - env::STACK_PAGES * PAGE_SIZE, env::STACK_PAGES, rw))?;
    let t = slot();
    let r = (|| {
        ck("ThreadCreate", sys::thread_create(MEMORY, task, child.entry, env::STACK_TOP, s.prio, s.cpu, t))?;
        ck("giving the thread capability", sys::cap_copy(t, task, env::THREAD, Rights::ALL))?;
        ck("SetIpcBuffer", sys::set_ipc_buffer(t, env::IPC_BUFFER))?;
        ck("ThreadSetArg", sys::thread_set_args(t, s.arg, s.neps as u64))?;
        ck("ThreadResume", sys::thread_resume(t))
    })();
    if let Err(e) = r {
        // The slot and the thread in it go with the refusal (a review found them kept).
        space::release(t);
        return Err(e);
    }
    Ok(t)
}
