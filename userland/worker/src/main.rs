//! A program the root task runs in a task of its own, to test isolation and faults.
//!
//! `a0` says what to do (`rl4_user::worker`), `a1` is its operand:
//! * [`READ`]: read the word at `a1` and report it (faults if `a1` is not readable here);
//! * [`WRITE`]: write a word to `a1` (faults if `a1` is not writable here);
//! * [`SPIN`]: add one to the word at `a1` forever;
//! * [`HELLO`]: print a line and end the thread;
//! * [`EXIT_TASK`]: end the whole task;
//! * [`PRIVILEGED`], [`INVALID_OPCODE`], [`DIVIDE_ZERO`]: take that fault;
//! * [`ECHO`]: serve the endpoint in slot [`EP_SLOT`] forever, answering each message with every
//!   word `w[i]` turned into `w[i] ^ ECHO_KEY ^ i` and the label plus one (`a1` is this thread's
//!   IPC buffer, already registered);
//! * [`CALL`]: call the endpoint in slot [`EP_SLOT`] once and report the outcome;
//! * [`STAMP`]: serve the endpoint in slot [`EP_SLOT`], replying with two time stamps: the TSC
//!   right after the message arrived and right before the reply leaves (one-way latencies).
#![no_std]
#![no_main]

use rl4_user::abi::{Rights, Sys};
use rl4_user::worker::*;
use rl4_user::{println, sys};

mod fuzz;

extern crate alloc;


#[unsafe(no_mangle)]
fn rl4_main(cmd: u64, addr: u64) {
    match cmd {
        READ => {
            // SAFETY: deliberately unchecked: the test wants the kernel to stop this thread if
            // `addr` is not readable in this address space.
            let v = unsafe { core::ptr::read_volatile(addr as *const u64) };
            println!("worker: read {addr:#x} = {v:#x}");
        }
        WRITE => {
            // SAFETY: as above, for writes.
            unsafe { core::ptr::write_volatile(addr as *mut u64, 0xbad0_bad0) };
            println!("worker: wrote {addr:#x}");
        }
        SPIN => loop {
            // SAFETY: `addr` is a page the root task mapped writable here for this counter.
            let p = addr as *mut u64;
            unsafe { p.write_volatile(p.read_volatile() + 1) };
        },
        HELLO => {
            let (cpu, n) = sys::cpu_info();
            println!("worker: hello from cpu {cpu} of {n}");
        }
        EXIT_TASK => sys::task_exit(),
        CAP_CHAIN => {
            use rl4_user::abi::ipc::{FOREVER, NO_SLOT, Tag};
            let mut s = addr;
            let mut err = 0;
            while s + 1 < rl4_user::abi::CAP_SLOTS {
                match sys::cap_copy(s, iso::TASK, s + 1, Rights::ALL) {
                    Ok(()) => s += 1,
                    Err(e) => {
                        err = e as u64;
                        break;
                    }
                }
            }
            let m = sys::Msg { tag: Tag::new(1, 3, 0), badge: 0, w: [s - addr, err, s, 0] };
            let _ = sys::ipc(Sys::Send, EP_SLOT, &m, FOREVER, NO_SLOT, NO_SLOT);
        }
        EXIT_TASK_WHEN => {
            let p = addr as *mut u64;
            // SAFETY: `addr` is a page the root task mapped here writable.
            while unsafe { p.read_volatile() } == 0 {
                core::hint::spin_loop();
            }
            let _ = sys::raw(Sys::TaskExit, [0; 6]);
            // `TaskExit` returned, which it must not: counted in word 1 (or, the task's space
            // emptied, a page fault: the thread ends `Faulted`, not `Dead`).
            // SAFETY: as above.
            unsafe { p.add(1).write_volatile(p.add(1).read_volatile() + 1) };
        }
        // SAFETY (all three): deliberate faults; the kernel must stop this thread.
        PRIVILEGED => unsafe { core::arch::asm!("hlt") },
        INVALID_OPCODE => unsafe { core::arch::asm!("ud2") },
        DIVIDE_ZERO => unsafe {
            core::arch::asm!("xor edx, edx", "xor ecx, ecx", "div rcx", inout("rax") addr => _, out("rdx") _, out("rcx") _)
        },
        ECHO => echo(addr),
        FPU => rl4_user::fpu::thread(addr, EP_SLOT),
        STAMP => stamp(),
        PONG => pong(),
        FUZZ => fuzz::main_thread(addr),
        FUZZ_THREAD => fuzz::other_thread(addr),
        ISOLATION => isolation(addr),
        STORM => storm(addr),
        FORGE => {
            let _ = sys::console_write_all(rl4_user::MACHINE, FORGED.as_bytes());
        }
        EXEC_DATA => {
            // SAFETY (this and the ones below): deliberate faults; the kernel must stop this
            // thread and nothing else.
            let f: extern "C" fn() = unsafe { core::mem::transmute::<usize, extern "C" fn()>(addr as usize) };
            f();
        }
        STACK_OVERFLOW => {
            println!("worker: recursing until the stack ends ({} levels)", recurse(0));
        }
        CLI => unsafe { core::arch::asm!("cli") },
        WRITE_CR3 => unsafe { core::arch::asm!("mov cr3, {}", in(reg) 0u64) },
        WRMSR => unsafe { core::arch::asm!("wrmsr", in("ecx") 0xc000_0080u32, in("eax") 0u32, in("edx") 0u32) },
        INT3 => unsafe { core::arch::asm!("int3") },
        INT80 => unsafe { core::arch::asm!("int 0x80") },
        SYSRET => unsafe { core::arch::asm!("sysretq") },
        CALL => {
            let r = sys::call(EP_SLOT, &sys::Msg::default());
            println!("worker: call returned {:?}", r.map(|m| m.tag));
        }
        PORT_OUT => {
            sys::outb(addr as u16, (addr >> 16) as u8);
            println!("worker: out done");
        }
        IRQ_DRIVER => irq_driver(addr),
        PORT_FLIP => {
            let word = |i: u64| (addr + 8 * i) as *mut u64;
            // SAFETY: the root task mapped the page at `addr` writable here for these words.
            let times = unsafe { word(0).read_volatile() };
            let n = (0..times).filter(|_| sys::ioport_open(PORTS_SLOT).is_ok() && sys::ioport_close(PORTS_SLOT).is_ok()).count();
            // SAFETY: as above.
            unsafe { word(1).write_volatile(n as u64) };
        }
        PORT_HOLD => {
            use rl4_user::abi::ipc::{FOREVER, NO_SLOT, Tag};
            let e = sys::ioport_open(PORTS_SLOT).err().map_or(0, |e| e as u64);
            let m = sys::Msg { tag: Tag::new(1, 1, 0), badge: 0, w: [e, 0, 0, 0] };
            let _ = sys::ipc(Sys::Send, EP_SLOT, &m, FOREVER, NO_SLOT, NO_SLOT);
        }
        ORPHAN => {
            let page = addr & 0xffff_ffff_ffff;
            let (x, s, t) = (20, 21, 22);
            let made = (|| {
                sys::task_create(ORPHAN_MEM_SLOT, x)?;
                sys::task_space(x, s)?;
                sys::map(s, ORPHAN_FRAME_SLOT, 0x40_0000, Rights::READ.union(Rights::EXECUTE))?;
                sys::thread_create(ORPHAN_MEM_SLOT, x, 0x40_0000, 0, 1, addr >> 48, t)?;
                sys::thread_resume(t)
            })();
            for c in [t, s, x, ORPHAN_FRAME_SLOT, ORPHAN_MEM_SLOT] {
                let _ = sys::cap_delete(c);
            }
            // SAFETY: the root task mapped the page at `page` writable here for this word.
            unsafe { (page as *mut u64).write_volatile(if made.is_ok() { 1 } else { 2 }) };
        }
        SDK_MAP_FRESH => {
            use rl4_user::{abi::PAGE_SIZE, env};
            let Ok(_) = sys::recv(EP_SLOT) else { return };
            let left = || sys::memory_info(env::MEMORY).map_or(0, |m| m.0);
            let blocker = rl4_user::thread::map_fresh(SDK_VA + 3 * PAGE_SIZE, 1);
            let before = left();
            let r = rl4_user::thread::map_fresh(SDK_VA, 5);
            let back = left() == before;
            let unmapped = (0..3).all(|i| sys::unmap(env::SPACE, SDK_VA + i * PAGE_SIZE) == Err(rl4_user::abi::Error::NotMapped));
            let code = match (blocker, r) {
                (Err(_), _) => u64::MAX,
                (Ok(()), Ok(())) => 0,
                (Ok(()), Err(e)) => e as u64,
            };
            let m = sys::Msg { tag: rl4_user::abi::ipc::Tag::new(0, 3, 0), badge: 0, w: [code, back as u64, unmapped as u64, 0] };
            let _ = sys::reply_recv(EP_SLOT, &m);
        }
        SDK_JOIN => {
            let Ok(_) = sys::recv(EP_SLOT) else { return };
            let w = join_gives_back(addr);
            let m = sys::Msg { tag: rl4_user::abi::ipc::Tag::new(0, 4, 0), badge: 0, w };
            let _ = sys::reply_recv(EP_SLOT, &m);
        }
        SDK_JOIN_MORE => {
            let Ok(_) = sys::recv(EP_SLOT) else { return };
            let m = sys::Msg { tag: rl4_user::abi::ipc::Tag::new(0, 4, 0), badge: 0, w: join_rules(addr) };
            let _ = sys::reply_recv(EP_SLOT, &m);
        }
        SDK_HEAP_PRIO => {
            let Ok(_) = sys::recv(EP_SLOT) else { return };
            let w = heap_across_priorities(addr);
            let m = sys::Msg { tag: rl4_user::abi::ipc::Tag::new(0, 3, 0), badge: 0, w: [w[0], w[1], w[2], 0] };
            let _ = sys::reply_recv(EP_SLOT, &m);
        }
        CHILD_GIVE => {
            let x = 20;
            let given = sys::task_create(ORPHAN_MEM_SLOT, x).and_then(|()| {
                let m = sys::Msg { tag: rl4_user::abi::ipc::Tag::new(1, 0, 1), badge: 0, w: [0; 4] };
                sys::ipc(Sys::Send, EP_SLOT, &m, rl4_user::abi::ipc::FOREVER, x, rl4_user::abi::ipc::NO_SLOT).map(|_| ())
            });
            // A refused `TaskCreate` is told too (label 2, the error in word 0, no capability).
            if let Err(e) = given {
                let m = sys::Msg { tag: rl4_user::abi::ipc::Tag::new(2, 1, 0), badge: 0, w: [e as u64, 0, 0, 0] };
                let _ = sys::ipc(Sys::Send, EP_SLOT, &m, rl4_user::abi::ipc::FOREVER, rl4_user::abi::ipc::NO_SLOT, rl4_user::abi::ipc::NO_SLOT);
            }
        }
        PORT_LOOP => match sys::ioport_open(PORTS_SLOT) {
            Ok(()) => {
                println!("worker: ports open");
                // A new value each time (a test reads the register to see whether a write
                // came after a moment).
                let mut v = (addr >> 16) as u8;
                loop {
                    sys::outb(addr as u16, v);
                    v = v.wrapping_add(1);
                    core::hint::spin_loop();
                }
            }
            Err(e) => println!("worker: ports not opened: {e:?}"),
        },
        _ => println!("worker: unknown command {cmd}"),
    }
}

fn irq_driver(page: u64) {
    use rl4_user::com::{COM2, THR, loopback};
    let word = |i: u64| (page + 8 * i) as *mut u64;
    let r = sys::ioport_open(PORTS_SLOT).and_then(|_| sys::irq_bind(IRQ_SLOT, NTF_SLOT, 1, rl4_user::abi::IRQ_CPU_CALLER));
    if let Err(e) = r {
        return println!("worker: driver set-up failed: {e}");
    }
    loopback(COM2);
    sys::outb(COM2 + THR, b'k');
    let bits = sys::wait(NTF_SLOT, rl4_user::abi::ipc::FOREVER);
    // SAFETY: `page` is mapped writable in this task for these words.
    unsafe { word(1).write_volatile(bits.unwrap_or(0)) };
    unsafe { word(0).write_volatile(1) };
    loop {
        // SAFETY: as above.
        unsafe { word(2).write_volatile(word(2).read_volatile() + 1) };
    }
}

fn echo(buffer: u64) {
    use rl4_user::abi::ipc::Tag;
    let mut m = match sys::recv(EP_SLOT) {
        Ok(m) => m,
        Err(e) => return println!("worker: echo recv failed: {e}"),
    };
    loop {
        let len = m.tag.len();
        let mut r = sys::Msg { tag: Tag::new(m.tag.label() + 1, len, 0), badge: 0, w: [0; 4] };
        for i in 0..4 {
            r.w[i] = m.w[i] ^ ECHO_KEY ^ i as u64;
        }
        for i in 4..len {
            let p = (buffer + i * 8) as *mut u64;
            // SAFETY: `buffer` is this thread's IPC buffer page, mapped writable; i < 128.
            unsafe { p.write_volatile(p.read_volatile() ^ ECHO_KEY ^ i) };
        }
        m = match sys::reply_recv(EP_SLOT, &r) {
            Ok(m) => m,
            Err(e) => return println!("worker: echo reply_recv failed: {e}"),
        };
    }
}

fn pong() {
    let Ok(mut m) = sys::recv(EP_SLOT) else { return };
    loop {
        m = match sys::reply_recv(EP_SLOT, &m) {
            Ok(m) => m,
            Err(_) => return,
        };
    }
}

fn stamp() {
    use rl4_user::abi::ipc::Tag;
    if sys::recv(EP_SLOT).is_err() {
        return;
    }
    let mut arrived = rl4_user::rdtsc();
    loop {
        let r = sys::Msg { tag: Tag::new(0, 2, 0), badge: 0, w: [arrived, rl4_user::rdtsc(), 0, 0] };
        if sys::reply_recv(EP_SLOT, &r).is_err() {
            return;
        }
        arrived = rl4_user::rdtsc();
    }
}

/// A storm victim (see `rl4_user::storm`): loops on one kind of system call until its task is
/// killed, counting every outcome in its record of the shared page and writing down its CPU.
/// `op` = record index | kind << 8 | timeout class << 16.
fn storm(op: u64) {
    use core::sync::atomic::Ordering::Relaxed;
    use rl4_user::abi::Error;
    use rl4_user::abi::ipc::{FOREVER, NO_SLOT};
    use rl4_user::storm::*;
    let index = (op & 0xff) as usize;
    let (kind, class) = ((op >> 8) & 0xff, (op >> 16) & 0xff);
    if index >= MAX_VICTIMS {
        return;
    }
    // SAFETY (all uses of `word` and `record` here): the root task maps the shared page at
    // `PAGE` in this task, writable, before it starts any victim, and it stays mapped for the
    // task's life; `index` < MAX_VICTIMS was checked above.
    let field = |w: usize| unsafe { record(PAGE, index, w) };
    let bad = unsafe { word(PAGE, header::BAD) };
    let timeout = match class {
        TMO_ZERO => 0,
        TMO_FINITE => unsafe { word(PAGE, header::FINITE_TICKS) }.load(Relaxed),
        _ => FOREVER,
    };
    let who = index as u64;
    let checked = |ok: bool| {
        if !ok {
            bad.fetch_add(1, Relaxed);
        }
    };
    // ReplyRecv: the message to answer (a Send needs no answer: the reply finds no caller).
    let mut last: Option<sys::Msg> = None;
    let mut seq = 0u64;
    loop {
        seq += 1;
        let r: Result<(), Error> = match kind {
            K_CALL => sys::ipc(Sys::Call, EP_CALL, &msg(L_VICTIM_CALL, seq, who), timeout, NO_SLOT, NO_SLOT)
                .map(|a| checked(answer_ok(&a, seq, who))),
            K_SEND => {
                let n = if timeout == 0 && seq % 2 == 0 { Sys::NbSend } else { Sys::Send };
                sys::ipc(n, EP_CALL, &msg(L_VICTIM_SEND, seq, who), timeout, NO_SLOT, NO_SLOT).map(|_| ())
            }
            K_RECV => {
                let n = if timeout == 0 && seq % 2 == 0 { Sys::NbRecv } else { Sys::Recv };
                sys::ipc(n, EP_RECV, &sys::Msg::default(), timeout, NO_SLOT, NO_SLOT).map(|m| checked(msg_ok(&m)))
            }
            K_REPLY_RECV => {
                let reply = last.take().map(|m| answer(&m)).unwrap_or_default();
                sys::ipc(Sys::ReplyRecv, EP_RECV, &reply, timeout, NO_SLOT, NO_SLOT).map(|m| {
                    checked(msg_ok(&m));
                    last = Some(m);
                })
            }
            K_WAIT => {
                if seq % 2 == 0 {
                    let _ = sys::signal(NOTE, 1 << (index % 64));
                }
                sys::wait(NOTE, timeout).map(|_| ())
            }
            _ => {
                // K_SPIN: count, and look at the CPU now and then. One count per call of a
                // function that is not inlined: an emulated CPU finishes at most one count
                // between being told to stop (an interrupt) and stopping.
                for _ in 0..64 {
                    bump(field(rec::ITERATIONS));
                }
                let cpu = sys::cpu_info().0;
                field(rec::CPU).store(cpu + 1, Relaxed);
                field(rec::ON_CPU + cpu.min(7) as usize).fetch_add(1, Relaxed);
                continue;
            }
        };
        let w = match r {
            Ok(()) => rec::OK,
            Err(Error::Timeout) => rec::TIMEOUT,
            Err(Error::PartnerGone) => rec::PARTNER_GONE,
            Err(Error::Interrupted) => rec::INTERRUPTED,
            Err(e) => {
                field(rec::LAST_OTHER).store(e as u64, Relaxed);
                rec::OTHER
            }
        };
        field(w).fetch_add(1, Relaxed);
        let cpu = sys::cpu_info().0;
        field(rec::CPU).store(cpu + 1, Relaxed);
        field(rec::ON_CPU + cpu.min(7) as usize).fetch_add(1, Relaxed);
        field(rec::ITERATIONS).fetch_add(1, Relaxed);
    }
}

/// Adds one to a storm victim's counter (see [`storm`]).
#[inline(never)]
fn bump(c: &core::sync::atomic::AtomicU64) {
    c.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}

/// The isolation cases ([`ISOLATION_CASES`]), run in their order from this task, which holds
/// only the capabilities of [`iso`]. `cpus`: CPUs online.
fn isolation(cpus: u64) {
    use rl4_user::abi::{CAP_SLOTS, Rights, measure};
    let out = FUZZ_PAGE as *mut u64;
    let code = |r: Result<(), rl4_user::abi::Error>| match r {
        Ok(()) => 0,
        Err(e) => e as u64,
    };
    let entry = rl4_user::thread_entry();
    let stack = iso::SCRATCH_VA + 0x10_0000;
    let msg = sys::Msg::default();
    let free = 20; // an empty slot of this task
    let results: [u64; ISOLATION_CASES.len()] = [
        code(sys::cap_identify(100).map(|_| ())),
        code(sys::cap_identify(CAP_SLOTS).map(|_| ())),
        code(sys::cap_identify(u64::MAX).map(|_| ())),
        code(sys::thread_create(iso::MEMORY, iso::FRAME_RO, entry, stack, 10, 0, free)),
        code(sys::shutdown(iso::MACHINE, 0)),
        code(sys::kernel_check(iso::MACHINE).map(|_| ())),
        code(sys::measure(iso::MACHINE, measure::CR3_FLOOR, 1).map(|_| ())),
        code(sys::cap_copy(iso::FRAME_RO, iso::VICTIM, 10, Rights::READ)),
        code(sys::task_space(iso::VICTIM, free)),
        // A copy into its own table with every right asked for: allowed, but it keeps only
        // what the original had.
        match sys::cap_copy(iso::FRAME_RO, iso::TASK, free + 1, Rights::ALL) {
            Ok(()) => match sys::cap_identify(free + 1) {
                Ok([_, rights, _]) if rights == Rights::READ.0 => 0,
                Ok(_) => iso::RIGHTS_GREW,
                Err(e) => e as u64,
            },
            Err(e) => e as u64,
        },
        code(sys::map(iso::SPACE, free + 1, iso::SCRATCH_VA, Rights::READ.union(Rights::WRITE))),
        code(sys::map(iso::SPACE, free + 1, 0xffff_8000_0000_0000, Rights::READ)),
        code(sys::recv(iso::EP).map(|_| ())),
        code(sys::reply(&msg)),
        code(sys::reply_recv(iso::EP, &msg).map(|_| ())),
        code(sys::cap_delete(iso::EP)),
        code(sys::nb_send(iso::EP, &msg)),
        code(sys::thread_create(iso::MEMORY, iso::TASK, entry, stack, 10, 999, free + 2)),
        code(sys::thread_create(iso::MEMORY, iso::TASK, entry, stack, 10, cpus, free + 2)),
        code(sys::thread_set_affinity(iso::THREAD, 4096)),
        code(sys::thread_set_priority(iso::THREAD, iso::PRIO + 1)),
        code(sys::thread_create(iso::MEMORY, iso::TASK, entry, stack, iso::PRIO + 1, 0, free + 2)),
        code(sys::thread_set_priority(iso::THREAD, 255)),
        code(sys::task_kill(free + 3)),
    ];
    for (i, r) in results.iter().enumerate() {
        // SAFETY: the root task maps the results page here before starting this thread.
        unsafe { out.add(1 + i).write_volatile(*r) };
    }
    // SAFETY: as above.
    unsafe { out.write_volatile(results.len() as u64) };
}

/// Uses a page of stack per level, forever (until the guard page below the stack stops it).
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let mut page = [0u8; 4096];
    // SAFETY: volatile accesses keep the frame (and its page of stack) alive across the call,
    // so the recursion cannot become a loop.
    unsafe { core::ptr::write_volatile(&mut page[0], depth as u8) };
    let below = recurse(depth + 1);
    // SAFETY: as above.
    below + unsafe { core::ptr::read_volatile(&page[0]) } as u64
}

static CHURN_STOP: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
static CHURNS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// `SDK_HEAP_PRIO`'s low thread: allocates and frees without a pause.
fn churn(_: u64) {
    use core::sync::atomic::Ordering::Relaxed;
    while !CHURN_STOP.load(Relaxed) {
        let v: alloc::vec::Vec<u64> = alloc::vec::Vec::with_capacity(32);
        core::hint::black_box(&v);
        drop(v);
        CHURNS.fetch_add(1, Relaxed);
    }
}

/// `SDK_HEAP_PRIO` (see its documentation): [rounds done, the low thread's allocations, waits
/// in the kernel for the heap's lock].
fn heap_across_priorities(low_prio: u64) -> [u64; 3] {
    use core::sync::atomic::Ordering::Relaxed;
    const ROUNDS: u64 = 40;
    let cpu = sys::cpu_info().0;
    // The heap's first pages are mapped before the contest.
    drop(core::hint::black_box(alloc::boxed::Box::new(0u64)));
    let Some(nap) = rl4_user::slots::alloc() else { return [u64::MAX; 3] };
    if sys::notification_create(rl4_user::env::MEMORY, nap).is_err() {
        return [u64::MAX; 3];
    }
    let Ok(_low) = rl4_user::thread::spawn(churn, 0, cpu, low_prio) else { return [u64::MAX; 3] };
    let mut done = 0;
    for _ in 0..ROUNDS {
        // Asleep until the next tick (nothing signals `nap`): the low thread runs meanwhile.
        let _ = sys::wait(nap, 1_000_000);
        let b = core::hint::black_box(alloc::boxed::Box::new(done));
        drop(b);
        done += 1;
    }
    CHURN_STOP.store(true, Relaxed);
    [done, CHURNS.load(Relaxed), rl4_user::heap::waits()]
}

static RAN: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// `SDK_JOIN`'s threads: count themselves and end.
fn count_one(_: u64) {
    RAN.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}

/// The highest stack address a thread of `SDK_JOIN_MORE`'s batches ran on.
static HIGHEST: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// `SDK_JOIN_MORE`'s batch threads: count themselves, note where their stack is, and end.
fn note_stack(_: u64) {
    let here = 0u8;
    HIGHEST.fetch_max(core::hint::black_box(&here) as *const u8 as u64, core::sync::atomic::Ordering::Relaxed);
    RAN.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}

/// A thread that reads an unmapped page: it stops on the fault (no handler).
fn fault_at_once(_: u64) {
    // SAFETY: the read faults on purpose (page 0 is never mapped), and the kernel stops the
    // thread there: nothing after it runs.
    unsafe { core::arch::asm!("mov {0}, qword ptr [0x10]", out(reg) _, options(nostack, readonly)) };
}

/// A thread that makes a message of `label` (a label of 2^48 or more panics, and the panic
/// ends the thread on a fault).
fn make_label(label: u64) {
    let _ = core::hint::black_box(sys::Msg::new(label, &[1]));
}

/// A thread that naps about 40 ms and ends.
fn nap_a_little(_: u64) {
    let _ = rl4_user::thread::nap(100_000_000);
}

/// `SDK_JOIN_MORE` (see its documentation).
fn join_rules(prio: u64) -> [u64; 4] {
    use core::sync::atomic::Ordering::Relaxed;
    use rl4_user::abi::{Error, ipc::FOREVER};
    use rl4_user::thread::{Spawned, spawn};
    let cpu = sys::cpu_info().0;
    const TICK: u64 = 1_000_000;
    const BATCH: u64 = 70;
    // Spawns BATCH threads, then joins them all: whether all ran and were joined.
    let batch = || {
        let before = RAN.load(Relaxed);
        let spawned: alloc::vec::Vec<Spawned> = (0..BATCH).filter_map(|_| spawn(note_stack, 0, cpu, prio).ok()).collect();
        let made = spawned.len() as u64;
        let joined = spawned.into_iter().map(|s| s.join(TICK, FOREVER).is_ok()).filter(|&j| j).count() as u64;
        made == BATCH && joined == BATCH && RAN.load(Relaxed) - before == BATCH
    };
    let first = batch();
    let high = HIGHEST.swap(0, Relaxed);
    let second = batch();
    let batches = first && second && HIGHEST.load(Relaxed) <= high;
    // A join answers `Err((handle, error))`; the handle's thread capability is deleted (the
    // thread goes with it) and its slot freed.
    let end = |r: Result<(), (Spawned, Error)>| match r {
        Ok(()) => Ok(()),
        Err((s, e)) => {
            let t = s.thread().0;
            let _ = sys::cap_delete(t);
            rl4_user::slots::free(t);
            Err(e)
        }
    };
    let five_s = 5 * 2_000_000_000;
    let faulted = spawn(fault_at_once, 0, cpu, prio).map(|s| end(s.join(TICK, five_s)));
    let big = spawn(make_label, rl4_user::abi::ipc::LABEL_LIMIT, cpu, prio).map(|s| end(s.join(TICK, five_s)));
    let most = spawn(make_label, rl4_user::abi::ipc::LABEL_LIMIT - 1, cpu, prio).map(|s| end(s.join(TICK, five_s)));
    let napped = spawn(nap_a_little, 0, cpu, prio).map(|s| end(s.join(FOREVER, FOREVER)));
    [
        batches as u64,
        (faulted == Ok(Err(Error::InvalidState))) as u64,
        (big == Ok(Err(Error::InvalidState)) && most == Ok(Ok(()))) as u64,
        (napped == Ok(Ok(()))) as u64,
    ]
}

/// `SDK_JOIN` (see its documentation): [threads that ran, joins done, budget left after the
/// first join, after the last].
fn join_gives_back(prio: u64) -> [u64; 4] {
    let left = || sys::memory_info(rl4_user::env::MEMORY).map_or(u64::MAX, |m| m.0);
    let cpu = sys::cpu_info().0;
    let once = || rl4_user::thread::spawn(count_one, 0, cpu, prio).and_then(|s| s.join(1_000_000, rl4_user::abi::ipc::FOREVER).map_err(|(_, e)| e));
    if once().is_err() {
        return [u64::MAX; 4];
    }
    let first = left();
    let joined = 1 + (0..20).filter(|_| once().is_ok()).count() as u64;
    [RAN.load(core::sync::atomic::Ordering::Relaxed), joined, first, left()]
}
