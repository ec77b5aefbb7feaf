//! Faults delivered as messages (`ThreadSetFaultHandler`, `rl4_abi::fault`): a user-level
//! pager and every edge case of fault IPC.
//!
//! The faulting clients are threads of child tasks made here with empty address spaces. Each
//! starts at an address where nothing is mapped, so its first instruction fetch faults; the
//! pager (the root thread) answers by mapping a page of code — a small position-independent
//! routine, [`client`] — and the routine's data accesses fault in turn:
//!
//! - `pager-lazy`: a region backed with fresh frames on first touch; the first fault is
//!   answered with changed registers (instruction and stack pointer, `rax`), which the
//!   routine writes down;
//! - `pager-cow`: two tasks share the frames of a region read-only; each write copies
//!   the page for the task that writes (copy-on-write), the shared frames stay unchanged;
//! - the edge cases: a "stop" reply, replies with registers the kernel refuses, a handler
//!   that does not reply while the thread is suspended and resumed or its task killed, a
//!   handler that dies holding the fault or whose endpoint is deleted with the fault queued,
//!   and a fault of the handler itself.
use rl4_abi::fault::{self, LABEL, SET_IP, SET_RAX, SET_SP, STOP};
use rl4_abi::ipc::{NO_SLOT, Tag};
use rl4_abi::{Error, PAGE_SIZE, Rights, ThreadState, USER_END};
use rl4_user::sys::{self, Msg};

use crate::space::*;
use crate::tests::{report, state};

// The client routine: `rdi` = the region's base, `rsi` = tag << 16 | pages. It sums the first
// word of every page (reads), then writes the tag and that sum into words 0 and 1 of every page,
// the `rax` and `rsp` it started with into words 2 and 3 of the first, and ends in `ud2`.
// Position-independent (relative jumps only), no stack: the pager copies its bytes to a page of
// the child.
core::arch::global_asm!(
    r#"
    .pushsection .text.rl4_fault_client, "ax"
    .global rl4_fault_client_start
    .global rl4_fault_client_end
rl4_fault_client_start:
    mov r10, rax
    mov r11, rsp
    mov r8, rsi
    and r8, 0xffff
    mov rdx, rsi
    shr rdx, 16
    xor r9d, r9d
    mov rax, rdi
    mov rcx, r8
2:
    add r9, [rax]
    add rax, 4096
    dec rcx
    jnz 2b
    mov rax, rdi
    mov rcx, r8
3:
    mov [rax], rdx
    mov [rax + 8], r9
    add rax, 4096
    dec rcx
    jnz 3b
    mov [rdi + 16], r10
    mov [rdi + 24], r11
    ud2
    jmp rl4_fault_client_start
rl4_fault_client_end:
    .popsection
"#
);

unsafe extern "C" {
    static rl4_fault_client_start: u8;
    static rl4_fault_client_end: u8;
}

/// The client routine's bytes.
fn client() -> &'static [u8] {
    let (a, b) = (&raw const rl4_fault_client_start as usize, &raw const rl4_fault_client_end as usize);
    // SAFETY: both symbols are in the text of this program (mapped read-only for its life), the
    // routine between them.
    unsafe { core::slice::from_raw_parts(a as *const u8, b - a) }
}

/// Where a child starts (never mapped: its first fetch faults).
const START_VA: u64 = 0x30_0000;
/// Where the pager puts the client routine in a child.
const CODE_VA: u64 = 0x40_0000;
/// The child's region.
const REGION: u64 = 0x1000_0000;
/// The stack pointer the lazy pager gives its client (nothing uses it; it is written down).
const CLIENT_SP: u64 = 0x7777_0000;
const CLIENT_RAX: u64 = 0x5eed_f00d;
/// Root-side windows onto the children's frames, one span per child.
const MIRROR: u64 = 0x0000_6f00_0000_0000;
const MIRROR_SPAN: u64 = 0x100_0000;
/// Root-side window onto the shared (copy-on-write) frames.
const ORIG: u64 = 0x0000_6f80_0000_0000;
/// Root-side page for copying.
const SCRATCH: u64 = 0x0000_6fc0_0000_0000;

const PAGES: u64 = 12;
const RW: Rights = Rights::READ.union(Rights::WRITE);

fn ms(n: u64) -> u64 {
    tsc_hz() / 1000 * n
}

/// A child task with one thread, whose faults go to `ep` with `badge`.
struct Kid {
    task: u64,
    space: u64,
    thread: u64,
    /// The badged copy of the handler endpoint the fault handler was set with.
    hcap: u64,
    badge: u64,
}

impl Kid {
    /// A task with an empty space and a suspended thread starting at [`START_VA`] with
    /// `rdi`/`rsi` = `a0`/`a1`; its fault handler is `ep` with `badge` (`NO_SLOT`: none).
    fn new(ep: u64, badge: u64, cpu: u64, a0: u64, a1: u64) -> Result<Kid, Error> {
        let (task, space, thread, hcap) = (slot(), slot(), slot(), slot());
        sys::task_create(MEMORY, task)?;
        sys::task_space(task, space)?;
        sys::thread_create(MEMORY, task, START_VA, 0, ROOT_PRIO, cpu, thread)?;
        sys::thread_set_args(thread, a0, a1)?;
        if ep != NO_SLOT {
            sys::cap_mint(ep, TASK, hcap, Rights::SEND, badge)?;
            sys::thread_set_fault_handler(thread, hcap)?;
        }
        Ok(Kid { task, space, thread, hcap, badge })
    }

    fn start(&self) -> Result<(), Error> {
        sys::thread_resume(self.thread)
    }

    fn state(&self) -> Option<ThreadState> {
        state(self.thread)
    }

    fn end(self) {
        let _ = sys::task_kill(self.task);
        for s in [self.thread, self.space, self.task, self.hcap] {
            release(s);
        }
    }
}

fn resume_msg() -> Msg {
    Msg { tag: Tag::new(fault::RESUME, 0, 0), badge: 0, w: [0; 4] }
}

fn stop_msg() -> Msg {
    Msg { tag: Tag::new(STOP, 0, 0), badge: 0, w: [0; 4] }
}

/// A fault message: (badge, kind, address, instruction pointer, error).
fn fault_of(m: &Msg) -> Option<(u64, u64, u64, u64, u64)> {
    (m.tag.label() == LABEL && m.tag.len() == 4).then(|| {
        (m.badge, m.w[fault::W_KIND], m.w[fault::W_ADDR], m.w[fault::W_IP], m.w[fault::W_ERROR])
    })
}

/// Receives the next fault on `ep` within a second.
fn next_fault(ep: u64) -> Result<(u64, u64, u64, u64, u64), &'static str> {
    let m = sys::recv_timeout(ep, ms(1000)).map_err(|_| "no fault message came")?;
    fault_of(&m).ok_or("a message that is not a fault")
}

/// Maps a fresh frame holding the client routine at [`CODE_VA`] in `space`.
fn map_code(space: u64) -> Result<(), Error> {
    let f = slot();
    let r = (|| {
        sys::frame_alloc(MEMORY, f)?;
        sys::map(SPACE, f, SCRATCH, RW)?;
        let code = client();
        // SAFETY: SCRATCH is mapped writable just above, one page, and the routine is shorter.
        unsafe { core::ptr::copy_nonoverlapping(code.as_ptr(), SCRATCH as *mut u8, code.len()) };
        sys::unmap(SPACE, SCRATCH)?;
        sys::map(space, f, CODE_VA, Rights::READ.union(Rights::EXECUTE))
    })();
    release(f);
    r
}

/// A fresh frame at `va` in the child's space (read-write) and in the root's window `mirror`.
fn map_fresh_page(space: u64, va: u64, mirror: u64) -> Result<(), Error> {
    let f = slot();
    let r = sys::frame_alloc(MEMORY, f).and_then(|_| sys::map(space, f, va, RW)).and_then(|_| sys::map(SPACE, f, mirror, RW));
    release(f);
    r
}

fn word(va: u64, i: u64) -> u64 {
    // SAFETY: the callers read pages of the root's windows that they mapped.
    unsafe { ((va + 8 * i) as *const u64).read_volatile() }
}

/// What the pager saw.
#[derive(Default, Debug)]
struct Seen {
    /// Faults in the region, per child.
    data: [u64; 2],
    /// Copies made (copy-on-write), per child.
    copies: [u64; 2],
    /// Where each child's `ud2` was.
    done_ip: [u64; 2],
}

/// Serves the faults of `kids` until each has reached its closing `ud2` (which the pager
/// answers with "stop"). `cow`: the region is shared read-only from `shared` frame slots,
/// copied on write; otherwise backed by fresh frames on first touch.
fn pager(ep: u64, kids: &[&Kid], shared: Option<&[u64]>) -> Result<Seen, &'static str> {
    let mut seen = Seen::default();
    let mut done = 0;
    while done < kids.len() {
        let (badge, kind, addr, ip, err) = next_fault(ep)?;
        let k = kids.iter().position(|k| k.badge == badge).ok_or("a fault with an unknown badge")?;
        let kid = kids[k];
        let page = addr & !(PAGE_SIZE - 1);
        let mirror = MIRROR + k as u64 * MIRROR_SPAN + (page.wrapping_sub(REGION));
        let reply = match kind {
            fault::PAGE_FAULT if addr == START_VA && ip == START_VA && err & 16 != 0 => {
                // The first fetch: go to the routine, with a stack pointer and `rax` of ours.
                Msg {
                    tag: Tag::new(fault::RESUME, 4, 0),
                    badge: 0,
                    w: [SET_IP | SET_SP | SET_RAX, CODE_VA, CLIENT_SP, CLIENT_RAX],
                }
            }
            fault::PAGE_FAULT if page == CODE_VA && err & 16 != 0 => {
                map_code(kid.space).map_err(|_| "mapping the code failed")?;
                resume_msg()
            }
            fault::PAGE_FAULT if (REGION..REGION + PAGES * PAGE_SIZE).contains(&addr) => {
                let i = (page - REGION) / PAGE_SIZE;
                match shared {
                    None if err & 1 == 0 => {
                        map_fresh_page(kid.space, page, mirror).map_err(|_| "backing a page failed")?;
                        seen.data[k] += 1;
                    }
                    Some(orig) if err & 1 == 0 && err & 2 == 0 => {
                        // A read of a page not there yet: the shared frame, read-only.
                        sys::map(kid.space, orig[i as usize], page, Rights::READ).map_err(|_| "sharing a page failed")?;
                        seen.data[k] += 1;
                    }
                    Some(_) if err & 3 == 3 => {
                        // A write to a shared page: the writer gets its own copy.
                        let f = slot();
                        let r = sys::frame_alloc(MEMORY, f)
                            .and_then(|_| sys::map(SPACE, f, mirror, RW))
                            .and_then(|_| {
                                let src = ORIG + i * PAGE_SIZE;
                                // SAFETY: both root windows are mapped, one page each.
                                unsafe { core::ptr::copy_nonoverlapping(src as *const u8, mirror as *mut u8, PAGE_SIZE as usize) };
                                sys::unmap(kid.space, page)
                            })
                            .and_then(|_| sys::map(kid.space, f, page, RW));
                        release(f);
                        r.map_err(|_| "copying a page failed")?;
                        seen.copies[k] += 1;
                    }
                    _ => return Err("a region fault the pager did not expect"),
                }
                resume_msg()
            }
            6 => {
                seen.done_ip[k] = ip;
                done += 1;
                stop_msg()
            }
            _ => return Err("an unexpected fault"),
        };
        sys::reply(&reply).map_err(|_| "the pager's reply failed")?;
    }
    Ok(seen)
}

fn unmap_window(base: u64) {
    for i in 0..PAGES {
        let _ = sys::unmap(SPACE, base + i * PAGE_SIZE);
    }
}

fn lazy(cpu: u64) -> Result<(u64, u64), &'static str> {
    let ep = slot();
    sys::endpoint_create(MEMORY, ep).map_err(|_| "endpoint")?;
    let tag = 0xab00 + cpu;
    let kid = Kid::new(ep, 0x1a2, cpu, REGION, tag << 16 | PAGES).map_err(|_| "child set-up failed")?;
    kid.start().map_err(|_| "resume")?;
    let r = pager(ep, &[&kid], None);
    let stopped = wait_ms(1000, || kid.state() == Some(ThreadState::Faulted));
    let check = r.and_then(|seen| {
        let mut bad = None;
        for i in 0..PAGES {
            let p = MIRROR + i * PAGE_SIZE;
            if word(p, 0) != tag || word(p, 1) != 0 {
                bad = Some("a page does not hold what the client wrote");
            }
        }
        if word(MIRROR, 2) != CLIENT_RAX || word(MIRROR, 3) != CLIENT_SP {
            bad = Some("the registers the pager set did not reach the client");
        }
        let code = client().len() as u64;
        if !(CODE_VA..CODE_VA + code).contains(&seen.done_ip[0]) {
            bad = Some("the closing fault was not in the routine");
        }
        if seen.data[0] != PAGES {
            bad = Some("not one fault per page");
        }
        if !stopped {
            bad = Some("a \"stop\" reply did not leave the thread Faulted");
        }
        bad.map_or(Ok((seen.data[0], seen.done_ip[0])), Err)
    });
    unmap_window(MIRROR);
    kid.end();
    release(ep);
    check
}

fn test_lazy() {
    for cpu in [0, cpus() - 1] {
        let r = lazy(cpu);
        let name = if cpu == 0 { "pager-lazy" } else { "pager-lazy-cross" };
        report(
            name,
            r.is_ok(),
            format_args!(
                "a child on cpu {cpu} starts where nothing is mapped; the pager (cpu 0) moves it to its code with new rip/rsp/rax, maps the code on its first fetch and {PAGES} fresh frames on first touch, stops it at its ud2: {r:x?}"
            ),
        );
        if cpus() == 1 {
            crate::tests::skip("pager-lazy-cross", "one CPU");
            break;
        }
    }
}

fn cow() -> Result<[u64; 2], &'static str> {
    let ep = slot();
    sys::endpoint_create(MEMORY, ep).map_err(|_| "endpoint")?;
    let orig: [u64; PAGES as usize] = core::array::from_fn(|_| slot());
    let mut sum = 0;
    for (i, &f) in orig.iter().enumerate() {
        let va = ORIG + i as u64 * PAGE_SIZE;
        sys::frame_alloc(MEMORY, f).and_then(|_| sys::map(SPACE, f, va, RW)).map_err(|_| "shared frames")?;
        // SAFETY: mapped writable just above.
        unsafe { (va as *mut u64).write_volatile(0x1000 + i as u64) };
        sum += 0x1000 + i as u64;
    }
    let last = cpus() - 1;
    let a = Kid::new(ep, 0xa, 0, REGION, 0xaaaa << 16 | PAGES).map_err(|_| "child a")?;
    let b = Kid::new(ep, 0xb, last, REGION, 0xbbbb << 16 | PAGES).map_err(|_| "child b")?;
    let r = a.start().and_then(|_| b.start()).map_err(|_| "resume").and_then(|_| pager(ep, &[&a, &b], Some(&orig)));
    let check = r.and_then(|seen| {
        for (k, tag) in [0xaaaa, 0xbbbb].into_iter().enumerate() {
            for i in 0..PAGES {
                let p = MIRROR + k as u64 * MIRROR_SPAN + i * PAGE_SIZE;
                if word(p, 0) != tag || word(p, 1) != sum {
                    return Err("a private copy does not hold what its task read and wrote");
                }
            }
            if seen.data[k] != PAGES || seen.copies[k] != PAGES {
                return Err("not one read fault and one copy per page and task");
            }
        }
        for i in 0..PAGES {
            let p = ORIG + i * PAGE_SIZE;
            if word(p, 0) != 0x1000 + i || word(p, 1) != 0 {
                return Err("a shared frame changed");
            }
        }
        Ok([seen.data[0] + seen.copies[0], seen.data[1] + seen.copies[1]])
    });
    a.end();
    b.end();
    unmap_window(MIRROR);
    unmap_window(MIRROR + MIRROR_SPAN);
    unmap_window(ORIG);
    orig.iter().for_each(|&f| release(f));
    release(ep);
    check
}

fn test_cow() {
    let r = cow();
    report(
        "pager-cow",
        r.is_ok(),
        format_args!(
            "two tasks (cpu 0 and cpu {}) share {PAGES} frames read-only; each write fault gives the writer a copy, the shared frames stay as they were; faults per task {r:?}",
            cpus() - 1
        ),
    );
}

/// A child (no pager: its start address never gets mapped) whose first fault is received on
/// `ep`; returns it with the fault.
fn faulted_kid(ep: u64, badge: u64, cpu: u64) -> Result<Kid, &'static str> {
    let kid = Kid::new(ep, badge, cpu, 0, 0).map_err(|_| "child set-up failed")?;
    kid.start().map_err(|_| "resume")?;
    let (b, kind, addr, ip, err) = next_fault(ep)?;
    if (b, kind, addr, ip) != (badge, fault::PAGE_FAULT, START_VA, START_VA) || err & 16 == 0 {
        return Err("the fault message is wrong");
    }
    if kid.state() != Some(ThreadState::BlockedFault) {
        return Err("a thread whose fault is with its handler is not BlockedFault");
    }
    Ok(kid)
}

fn check(name: &str, detail: &str, f: impl FnOnce(u64) -> Result<(), &'static str>) {
    let ep = slot();
    let r = sys::endpoint_create(MEMORY, ep).map_err(|_| "endpoint").and_then(|_| f(ep));
    release(ep);
    report(name, r.is_ok(), format_args!("{detail}: {r:?}"));
}

static ECHO_EP: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// A client of the server's endpoint: one call, its answer's first word noted.
fn one_call(_: u64) {
    let r = sys::call(ECHO_EP.load(core::sync::atomic::Ordering::SeqCst), &Msg { tag: Tag::new(55, 1, 0), badge: 0, w: [0x5e, 0, 0, 0] });
    ECHO_GOT.store(r.map_or(1, |m| m.w[0]), core::sync::atomic::Ordering::SeqCst);
}
static ECHO_GOT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// A client made a server's endpoint its fault handler (any sender may); the server, a loop of
/// `ReplyRecv` that echoes what it gets, answers the fault with the fault's own words: word 0,
/// the vector 14, names registers no reply may set, so the faulted thread is stopped — and the
/// server's call still receives the next message. Before the twenty-second session the
/// `ReplyRecv` failed with `BadFaultReply` without receiving, and the library's serve loop
/// stopped serving every client.
fn test_echoed_fault_keeps_the_server_serving() {
    check(
        "fault-echoed-by-a-server-keeps-it-serving",
        "a fault echoed back by a server's ReplyRecv stops the faulted thread, and the call receives the next message",
        |ep| {
            let kid = faulted_kid(ep, 4, cpus() - 1)?;
            ECHO_EP.store(ep, core::sync::atomic::Ordering::SeqCst);
            ECHO_GOT.store(0, core::sync::atomic::Ordering::SeqCst);
            let caller = spawn(one_call, 0, ROOT_PRIO, 0);
            let queued = wait_ms(1000, || state(caller) == Some(ThreadState::BlockedSend));
            let echo = Msg { tag: Tag::new(LABEL, 4, 0), badge: 0, w: [fault::PAGE_FAULT, START_VA, START_VA, 16] };
            let got = sys::reply_recv(ep, &echo);
            let stopped = wait_ms(1000, || kid.state() == Some(ThreadState::Faulted));
            let served = match got {
                Ok(m) if m.tag.label() == 55 && m.w[0] == 0x5e => {
                    sys::reply(&Msg { tag: Tag::new(0, 1, 0), badge: 0, w: [0x77, 0, 0, 0] }).is_ok()
                        && wait_ms(1000, || ECHO_GOT.load(core::sync::atomic::Ordering::SeqCst) == 0x77)
                }
                _ => false,
            };
            kid.end();
            let _ = sys::thread_suspend(caller);
            release(caller);
            match (queued, got, stopped, served) {
                (false, ..) => Err("the caller did not queue"),
                (_, Err(Error::BadFaultReply), ..) => Err("ReplyRecv failed with BadFaultReply and received nothing"),
                (_, Err(_), ..) => Err("ReplyRecv failed"),
                (_, _, false, _) => Err("the faulted thread was not stopped"),
                (_, _, _, false) => Err("the next call was not received and answered"),
                _ => Ok(()),
            }
        },
    );
}

/// A user access to a kernel address says nothing of the kernel's page tables: a child reads
/// the direct map's first page (physical 0: mapped for the kernel) and then, moved on by its
/// handler's reply (`SET_RAX`), its last page (64 TiB up: past any RAM, mapped by nothing); the
/// two faults' error codes are the same, a protection fault on a read from user mode (0x5).
/// Before the forty-first session the code was the CPU's own — present (0x5) for the first,
/// not present (0x4) for the second — so a task with a fault handler could map out the
/// kernel's half page by page (the physical memory map, the device window, the kernel stacks;
/// a review found it).
fn test_kernel_address_faults_alike() {
    check(
        "fault-kernel-addresses-look-alike",
        "a read of a kernel page that is mapped and of one that is not fault with the same error code",
        |ep| {
            // The kernel's direct map (`arch::layout::DIRECT_MAP`, 64 TiB: docs/memory.md).
            const MAPPED: u64 = 0xffff_8000_0000_0000;
            const UNMAPPED: u64 = MAPPED + (64 << 40) - PAGE_SIZE;
            let kid = Kid::new(ep, 4, 0, MAPPED, 1).map_err(|_| "child set-up failed")?;
            kid.start().map_err(|_| "resume")?;
            let mut codes = [u64::MAX; 2];
            let r = (|| {
                let (_, kind, addr, _, _) = next_fault(ep)?;
                if (kind, addr) != (fault::PAGE_FAULT, START_VA) {
                    return Err("the first fault is not the start's fetch");
                }
                sys::reply(&Msg { tag: Tag::new(fault::RESUME, 2, 0), badge: 0, w: [SET_IP, CODE_VA, 0, 0] }).map_err(|_| "reply")?;
                let (_, _, addr, _, _) = next_fault(ep)?;
                if addr != CODE_VA {
                    return Err("the second fault is not the routine's fetch");
                }
                map_code(kid.space).map_err(|_| "mapping the code failed")?;
                sys::reply(&resume_msg()).map_err(|_| "reply")?;
                for (i, want) in [MAPPED, UNMAPPED].into_iter().enumerate() {
                    let (_, kind, addr, _, err) = next_fault(ep)?;
                    if (kind, addr) != (fault::PAGE_FAULT, want) {
                        return Err("a fault not at the kernel address read");
                    }
                    codes[i] = err;
                    let next = if i == 0 { Msg { tag: Tag::new(fault::RESUME, 4, 0), badge: 0, w: [SET_RAX, 0, 0, UNMAPPED] } } else { stop_msg() };
                    sys::reply(&next).map_err(|_| "reply")?;
                }
                Ok(())
            })();
            kid.end();
            r?;
            if codes != [0x5, 0x5] {
                rl4_user::println!("root: fault-kernel-addresses-look-alike: error codes {:#x} (mapped) and {:#x} (not mapped)", codes[0], codes[1]);
                return Err("the error codes tell the kernel's mapped pages from its holes");
            }
            Ok(())
        },
    );
}

fn test_stop_and_bad_replies() {
    check("fault-ipc-stop", "the handler replies \"stop\": the thread is Faulted", |ep| {
        let kid = faulted_kid(ep, 1, cpus() - 1)?;
        sys::reply(&stop_msg()).map_err(|_| "reply")?;
        let ok = wait_ms(1000, || kid.state() == Some(ThreadState::Faulted));
        kid.end();
        if ok { Ok(()) } else { Err("not Faulted") }
    });
    check(
        "fault-ipc-bad-reply",
        "resuming replies with a kernel or non-canonical rip, a kernel rsp or unknown bits get BadFaultReply and stop the thread; a short reply counts missing words as 0",
        |ep| {
            let bad = [
                [SET_IP, USER_END, 0, 0],
                [SET_IP, 0xffff_8000_0000_0000, 0, 0],
                [SET_SP, 0, u64::MAX, 0],
                [8, 0, 0, 0],
            ];
            for w in bad {
                let kid = faulted_kid(ep, 2, 0)?;
                let r = sys::reply(&Msg { tag: Tag::new(fault::RESUME, 4, 0), badge: 0, w });
                let ok = wait_ms(1000, || kid.state() == Some(ThreadState::Faulted));
                kid.end();
                if r != Err(Error::BadFaultReply) || !ok {
                    return Err("a bad register set was not refused");
                }
            }
            // Length 1: words 1..3 count as 0, so SET_IP with rip 0 would be allowed; the
            // thread resumes at address 0 and faults there.
            let kid = faulted_kid(ep, 3, 0)?;
            sys::reply(&Msg { tag: Tag::new(fault::RESUME, 1, 0), badge: 0, w: [SET_IP, 0x1234, 0, 0] }).map_err(|_| "short reply")?;
            let (_, _, addr, ip, _) = next_fault(ep)?;
            let _ = sys::reply(&stop_msg());
            kid.end();
            if (addr, ip) != (0, 0) { Err("a short reply's missing words were not 0") } else { Ok(()) }
        },
    );
}

fn test_no_reply() {
    check(
        "fault-ipc-silent-handler-suspend",
        "the handler holds the fault without replying: the thread stays BlockedFault; suspended it cancels the fault (the late reply gets PartnerGone), resumed it faults again",
        |ep| {
            let kid = faulted_kid(ep, 4, cpus() - 1)?;
            spin_ms(20, || false);
            if kid.state() != Some(ThreadState::BlockedFault) {
                return Err("the thread did not stay blocked");
            }
            sys::thread_suspend(kid.thread).map_err(|_| "suspend")?;
            if kid.state() != Some(ThreadState::Suspended) {
                return Err("not Suspended");
            }
            if sys::reply(&resume_msg()) != Err(Error::PartnerGone) {
                return Err("the late reply did not get PartnerGone");
            }
            sys::thread_resume(kid.thread).map_err(|_| "resume")?;
            let (b, _, addr, _, _) = next_fault(ep)?;
            sys::reply(&stop_msg()).map_err(|_| "reply")?;
            let ok = wait_ms(1000, || kid.state() == Some(ThreadState::Faulted));
            kid.end();
            if b == 4 && addr == START_VA && ok { Ok(()) } else { Err("the repeated fault went wrong") }
        },
    );
    check(
        "fault-ipc-killed-in-flight",
        "the faulting task is killed while its handler holds the fault (the reply gets PartnerGone) and while the fault is queued (nothing is delivered later); the kernel's check finds no stale reference",
        |ep| {
            let kid = faulted_kid(ep, 5, cpus() - 1)?;
            sys::task_kill(kid.task).map_err(|_| "kill")?;
            if kid.state() != Some(ThreadState::Dead) {
                return Err("not Dead");
            }
            if sys::reply(&resume_msg()) != Err(Error::PartnerGone) {
                return Err("the reply to a dead thread did not get PartnerGone");
            }
            kid.end();
            let queued = Kid::new(ep, 6, cpus() - 1, 0, 0).map_err(|_| "child")?;
            queued.start().map_err(|_| "resume")?;
            if !wait_ms(1000, || queued.state() == Some(ThreadState::BlockedFault)) {
                return Err("the queued fault did not block");
            }
            sys::task_kill(queued.task).map_err(|_| "kill")?;
            let dead = queued.state() == Some(ThreadState::Dead);
            queued.end();
            if !dead {
                return Err("the queued thread is not Dead");
            }
            if sys::nb_recv(ep) != Err(Error::Timeout) {
                return Err("a killed thread's fault was delivered");
            }
            match sys::kernel_check(MACHINE) {
                Ok([0, _, _]) => Ok(()),
                _ => Err("the kernel's check failed"),
            }
        },
    );
}

/// A handler thread that takes one message from the endpoint in `ep` and ends without
/// replying.
fn take_and_exit(ep: u64) {
    let _ = sys::recv(ep);
    sys::thread_exit();
}

/// A handler thread that takes one fault from the endpoint in `ep`, then faults itself.
fn take_and_fault(ep: u64) {
    if sys::recv(ep).is_ok() {
        // SAFETY: deliberately reads an address that is never mapped: the thread faults.
        unsafe { (0x10 as *const u64).read_volatile() };
    }
    sys::thread_exit();
}

fn test_handler_gone() {
    check(
        "fault-ipc-handler-exits",
        "the handler thread ends holding the fault: the thread is stopped (Faulted) as if it had no handler",
        |ep| {
            let h = spawn(take_and_exit, ep, ROOT_PRIO, cpus() - 1);
            wait_ms(1000, || state(h) == Some(ThreadState::BlockedRecv));
            let kid = Kid::new(ep, 7, 0, 0, 0).map_err(|_| "child")?;
            kid.start().map_err(|_| "resume")?;
            let ok = wait_ms(1000, || kid.state() == Some(ThreadState::Faulted));
            let hs = state(h);
            kid.end();
            release(h);
            if !ok {
                Err("not Faulted")
            } else if hs != Some(ThreadState::Dead) {
                Err("the handler did not end")
            } else {
                Ok(())
            }
        },
    );
    check(
        "fault-ipc-endpoint-deleted",
        "the handler's endpoint is deleted while a fault is queued on it: the thread is Faulted; a handler set to a deleted endpoint, or none, stops the next thread at once",
        |ep| {
            let kid = Kid::new(ep, 8, cpus() - 1, 0, 0).map_err(|_| "child")?;
            kid.start().map_err(|_| "resume")?;
            if !wait_ms(1000, || kid.state() == Some(ThreadState::BlockedFault)) {
                return Err("the fault did not queue");
            }
            // The last capabilities: the endpoint dies.
            let _ = sys::cap_delete(kid.hcap);
            let _ = sys::cap_delete(ep);
            let ok = wait_ms(1000, || kid.state() == Some(ThreadState::Faulted));
            kid.end();
            if !ok {
                return Err("the queued thread is not Faulted");
            }
            for with in [true, false] {
                let e2 = slot();
                sys::endpoint_create(MEMORY, e2).map_err(|_| "endpoint")?;
                let kid = Kid::new(e2, 9, 0, 0, 0).map_err(|_| "child")?;
                if with {
                    let _ = sys::cap_delete(kid.hcap);
                    release(e2);
                } else {
                    sys::thread_set_fault_handler(kid.thread, NO_SLOT).map_err(|_| "remove")?;
                    release(e2);
                }
                kid.start().map_err(|_| "resume")?;
                let ok = wait_ms(1000, || kid.state() == Some(ThreadState::Faulted));
                kid.end();
                if !ok {
                    return Err("a thread without a live handler was not stopped");
                }
            }
            Ok(())
        },
    );
    check(
        "fault-ipc-in-handler",
        "the handler faults while it holds a fault; its own handler is the same endpoint, where its fault queues (no loop); another thread gets it and replies stop: both are Faulted",
        |ep| {
            let spawned = spawn_with_handler(take_and_fault, ep, 0x4a)?;
            let h = spawned.0;
            wait_ms(1000, || state(h) == Some(ThreadState::BlockedRecv));
            let kid = Kid::new(ep, 10, 0, 0, 0).map_err(|_| "child")?;
            kid.start().map_err(|_| "resume")?;
            let (b, kind, addr, _, _) = next_fault(ep)?;
            let blocked = state(h) == Some(ThreadState::BlockedFault);
            sys::reply(&stop_msg()).map_err(|_| "reply")?;
            let ok = wait_ms(1000, || state(h) == Some(ThreadState::Faulted) && kid.state() == Some(ThreadState::Faulted));
            kid.end();
            release_handled(spawned);
            if (b, kind, addr) != (0x4a, fault::PAGE_FAULT, 0x10) {
                Err("the handler's own fault message is wrong")
            } else if !blocked || !ok {
                Err("not both Faulted")
            } else {
                Ok(())
            }
        },
    );
}

/// A fault handler's binding acts only while the setter still holds the capabilities it was
/// set with: the endpoint capability (revoked here), and — the setter not the thread's own task
/// — the thread capability (a copy deleted here). Before, the binding kept a weak reference to
/// the endpoint and the badge, and every later fault was a message in the revoked capability's
/// name (and, for another task's thread, the control its replies give) for as long as the
/// endpoint lived (a review found it).
fn test_handler_lapses() {
    check(
        "fault-handler-lapses-with-its-capabilities",
        "a handler set with a capability later revoked (a child's thread; a root thread), or with a copy of another task's thread capability later deleted, takes no fault: the thread is Faulted and no message comes; with both kept, the fault comes with the badge",
        |ep| {
            let quiet = |ep: u64| match sys::recv_timeout(ep, ms(200)) {
                Err(Error::Timeout) => Ok(()),
                Ok(_) => Err("a fault message came through a binding whose capability is gone"),
                Err(_) => Err("recv"),
            };
            // A child's thread, the handler the root's badged copy of `ep`, revoked.
            let kid = Kid::new(ep, 11, 0, 0, 0).map_err(|_| "child")?;
            let revoked = sys::cap_revoke(ep);
            kid.start().map_err(|_| "resume")?;
            let stopped = wait_ms(1000, || kid.state() == Some(ThreadState::Faulted));
            let q = quiet(ep);
            kid.end();
            if revoked != Ok(1) {
                return Err("the revocation did not delete the badged copy");
            }
            q?;
            if !stopped {
                return Err("a child's thread whose handler's capability was revoked is not Faulted");
            }
            // A root thread (its own task set the handler), the copy revoked before it runs.
            let (t, hcap, top) = (slot(), slot(), stack(4));
            sys::thread_create(MEMORY, TASK, rl4_user::thread_entry(), top, ROOT_PRIO, cpus() - 1, t).map_err(|_| "thread")?;
            sys::thread_set_args(t, chain_start as *const () as u64, ep).map_err(|_| "args")?;
            sys::cap_mint(ep, TASK, hcap, Rights::SEND, 0x21).map_err(|_| "mint")?;
            sys::thread_set_fault_handler(t, hcap).map_err(|_| "handler")?;
            let revoked = sys::cap_revoke(ep);
            sys::thread_resume(t).map_err(|_| "resume")?;
            let stopped = wait_ms(1000, || state(t) == Some(ThreadState::Faulted));
            let q = quiet(ep);
            release(t);
            release(hcap);
            q?;
            if revoked != Ok(1) || !stopped {
                return Err("a root thread whose handler's capability was revoked is not Faulted");
            }
            // A child's thread, the handler set through a copy of its capability, deleted.
            let kid = Kid::new(NO_SLOT, 0, 0, 0, 0).map_err(|_| "child")?;
            let (tcopy, hcap) = (slot(), slot());
            let set = sys::cap_copy(kid.thread, TASK, tcopy, Rights::WRITE)
                .and_then(|_| sys::cap_mint(ep, TASK, hcap, Rights::SEND, 12))
                .and_then(|_| sys::thread_set_fault_handler(tcopy, hcap));
            release(tcopy);
            let started = set.and_then(|_| kid.start());
            let stopped = wait_ms(1000, || kid.state() == Some(ThreadState::Faulted));
            let q = quiet(ep);
            kid.end();
            release(hcap);
            started.map_err(|_| "set-up")?;
            q?;
            if !stopped {
                return Err("a child's thread whose setter's thread capability was deleted is not Faulted");
            }
            // Both kept: the fault comes.
            let kid = Kid::new(ep, 13, 0, 0, 0).map_err(|_| "child")?;
            kid.start().map_err(|_| "resume")?;
            let f = next_fault(ep);
            if f.is_ok() {
                let _ = sys::reply(&stop_msg());
            }
            kid.end();
            match f? {
                (13, _, _, _, _) => Ok(()),
                _ => Err("the fault came with another badge"),
            }
        },
    );
}

/// What each of [`test_cancel_badged`]'s senders got (`u64::MAX` until it returns; 0 = `Ok`).
static CANCEL_GOT: [core::sync::atomic::AtomicU64; 5] = [const { core::sync::atomic::AtomicU64::new(u64::MAX) }; 5];

fn code<T>(r: Result<T, Error>) -> u64 {
    match r {
        Ok(_) => 0,
        Err(e) => e as u64,
    }
}

/// Sender `i` of [`test_cancel_badged`] on the badged copy in `ep` (the low half): a `Call` for
/// 1 and 4, a `Send` otherwise.
fn cancel_sender(ep: u64) {
    let (i, ep) = (ep >> 32, ep & 0xffff_ffff);
    let m = Msg { tag: Tag::new(0x77, 1, 0), badge: 0, w: [i, 0, 0, 0] };
    let r = if i == 1 || i == 4 { code(sys::call(ep, &m)) } else { code(sys::send(ep, &m)) };
    CANCEL_GOT[i as usize].store(r, core::sync::atomic::Ordering::SeqCst);
    sys::thread_exit();
}

/// `EndpointCancelBadged`: a server retiring badge 5 ends the send, the call and the fault
/// queued with it (`PartnerGone`, `PartnerGone`, `Faulted`) and leaves badge 6's two sends
/// queued, in order (one queued before the badge-5 ones, one after); a handler that faulted
/// (badge 5) while it held a caller's reply right is stopped and that caller gets
/// `PartnerGone`;
/// badge 0 and a capability without `RECEIVE` are refused. Before, the only way to stop a
/// sender queued with a revoked badge was to suspend or kill its thread (a review found that a
/// message queued with a revoked badge is delivered whenever a receiver comes).
fn test_cancel_badged() {
    check(
        "endpoint-cancel-badged-ends-queued-sends",
        "a send, a call and two faults queued with badge 5 end (PartnerGone, PartnerGone, Faulted, Faulted: the second thread's caller gets PartnerGone), badge 6's two sends stay and are received in order; badge 0 and a send-only capability refused",
        |ep| {
            for g in &CANCEL_GOT {
                g.store(u64::MAX, core::sync::atomic::Ordering::SeqCst);
            }
            let (b5, b6, b7) = (slot(), slot(), slot());
            sys::cap_mint(ep, TASK, b5, Rights::SEND, 5).map_err(|_| "mint 5")?;
            sys::cap_mint(ep, TASK, b6, Rights::SEND, 6).map_err(|_| "mint 6")?;
            sys::cap_mint(ep, TASK, b7, Rights::SEND, 7).map_err(|_| "mint 7")?;
            let cpu = cpus() - 1;
            // A handler thread (its own faults go to the endpoint with badge 5) takes a call
            // (badge 7), then faults holding its reply right: its fault queues.
            let handler = spawn_with_handler(take_and_fault, ep, 5)?;
            wait_ms(1000, || state(handler.0) == Some(ThreadState::BlockedRecv));
            let caller = spawn(cancel_sender, 4 << 32 | b7, ROOT_PRIO, cpu);
            let held = wait_ms(2000, || state(handler.0) == Some(ThreadState::BlockedFault) && state(caller) == Some(ThreadState::BlockedReply));
            // Queued one after the other: 2 (badge 6), 0, 1 (badge 5), then 3 (badge 6).
            let t2 = spawn(cancel_sender, 2 << 32 | b6, ROOT_PRIO, cpu);
            wait_ms(1000, || state(t2) == Some(ThreadState::BlockedSend));
            let t0 = spawn(cancel_sender, b5, ROOT_PRIO, cpu);
            wait_ms(1000, || state(t0) == Some(ThreadState::BlockedSend));
            let t1 = spawn(cancel_sender, 1 << 32 | b5, ROOT_PRIO, cpu);
            wait_ms(1000, || state(t1) == Some(ThreadState::BlockedSend));
            let t3 = spawn(cancel_sender, 3 << 32 | b6, ROOT_PRIO, cpu);
            let kid = Kid::new(ep, 5, 0, 0, 0).map_err(|_| "child")?;
            kid.start().map_err(|_| "resume")?;
            let queued = wait_ms(2000, || {
                [t0, t1, t2, t3].iter().all(|&t| state(t) == Some(ThreadState::BlockedSend)) && kid.state() == Some(ThreadState::BlockedFault)
            });
            let refused = (sys::endpoint_cancel_badged(ep, 0), sys::endpoint_cancel_badged(b5, 5));
            let n = sys::endpoint_cancel_badged(ep, 5);
            let ended = wait_ms(2000, || {
                [0, 1, 4].iter().all(|&i| CANCEL_GOT[i].load(core::sync::atomic::Ordering::SeqCst) != u64::MAX)
                    && kid.state() == Some(ThreadState::Faulted)
                    && state(handler.0) == Some(ThreadState::Faulted)
            });
            let got = [0, 1, 4].map(|i| CANCEL_GOT[i].load(core::sync::atomic::Ordering::SeqCst));
            let still = [state(t2), state(t3)];
            let m = [sys::recv_timeout(ep, ms(1000)), sys::recv_timeout(ep, ms(1000))];
            let _ = wait_ms(1000, || {
                CANCEL_GOT[2].load(core::sync::atomic::Ordering::SeqCst) != u64::MAX && CANCEL_GOT[3].load(core::sync::atomic::Ordering::SeqCst) != u64::MAX
            });
            kid.end();
            for s in [t0, t1, t2, t3, caller, b5, b6, b7] {
                release(s);
            }
            release_handled(handler);
            let pg = Error::PartnerGone as u64;
            if !held || !queued {
                Err("the sends and the faults did not queue")
            } else if refused != (Err(Error::InvalidArgument), Err(Error::MissingRight)) {
                Err("badge 0 or a send-only capability was not refused")
            } else if n != Ok(4) {
                Err("not four sends cancelled")
            } else if !ended || got != [pg, pg, pg] {
                Err("the send, the call and the stopped handler's caller did not get PartnerGone, or a fault did not stop its thread")
            } else if still != [Some(ThreadState::BlockedSend); 2] {
                Err("a badge-6 sender left the queue")
            } else if !(m[0].as_ref().is_ok_and(|m| m.badge == 6 && m.w[0] == 2) && m[1].as_ref().is_ok_and(|m| m.badge == 6 && m.w[0] == 3)) {
                Err("badge 6's messages were not the ones received, in order")
            } else {
                Ok(())
            }
        },
    );
}

/// Faults at once (`ud2`): its fault queues on its handler's endpoint.
fn fault_now(_: u64) {
    // SAFETY: a deliberate invalid-opcode fault; the handler stops the thread.
    unsafe { core::arch::asm!("ud2") };
}

/// Many faults queued with one badge among others' (more than the 16 a walk of the kernel
/// before took): one call ends them all, in one walk, and leaves the others queued.
fn test_cancel_many_faults() {
    const MANY: usize = 40;
    const OTHERS: usize = 8;
    check(
        "endpoint-cancel-badged-ends-many-faults",
        "40 faults queued with badge 9 among 8 with badge 10: one EndpointCancelBadged(9) ends the 40 (Faulted), the 8 stay queued",
        |ep| {
            let mut mine = [None; MANY];
            let mut theirs = [None; OTHERS];
            let mut made = true;
            for i in 0..MANY {
                mine[i] = spawn_with_handler(fault_now, ep, 9).ok();
                if i % 5 == 0 && i / 5 < OTHERS {
                    theirs[i / 5] = spawn_with_handler(fault_now, ep, 10).ok();
                }
            }
            made &= mine.iter().chain(theirs.iter()).all(Option::is_some);
            let all_queued = |s: &[Option<(u64, Option<u64>)>]| s.iter().flatten().all(|h| state(h.0) == Some(ThreadState::BlockedFault));
            let queued = made && wait_ms(5000, || all_queued(&mine) && all_queued(&theirs));
            let n = sys::endpoint_cancel_badged(ep, 9);
            let stopped = wait_ms(2000, || mine.iter().flatten().all(|h| state(h.0) == Some(ThreadState::Faulted)));
            let left = all_queued(&theirs);
            // The 8 still queued are received (and stopped) in order of arrival.
            let mut received = 0;
            while received < OTHERS && sys::recv_timeout(ep, ms(1000)).is_ok_and(|m| fault_of(&m).is_some_and(|f| f.0 == 10)) {
                let _ = sys::reply(&stop_msg());
                received += 1;
            }
            for h in mine.iter_mut().chain(theirs.iter_mut()).filter_map(Option::take) {
                release_handled(h);
            }
            if !queued {
                Err("the faults did not queue")
            } else if n != Ok(MANY as u64) {
                Err("not 40 faults cancelled")
            } else if !stopped {
                Err("a cancelled fault did not stop its thread")
            } else if !left || received != OTHERS {
                Err("badge 10's faults did not stay queued, or were not received")
            } else {
                Ok(())
            }
        },
    );
}

/// Starts `f(ep)` as a root thread whose fault handler is `ep` minted with `badge` (`ep`
/// itself for badge 0): the thread's slot and the badged copy's (`None` for badge 0), which
/// must stay as long as the handler is to act — the binding lapses with the capability it was
/// set with — and is released after the thread.
fn spawn_with_handler(f: fn(u64), ep: u64, badge: u64) -> Result<(u64, Option<u64>), &'static str> {
    let t = slot();
    let top = stack(4);
    let hcap = (badge != 0).then(slot);
    sys::thread_create(MEMORY, TASK, rl4_user::thread_entry(), top, ROOT_PRIO, cpus() - 1, t).map_err(|_| "thread")?;
    sys::thread_set_args(t, f as *const () as u64, ep).map_err(|_| "args")?;
    if let Some(h) = hcap {
        sys::cap_mint(ep, TASK, h, Rights::SEND, badge).map_err(|_| "mint")?;
    }
    sys::thread_set_fault_handler(t, hcap.unwrap_or(ep)).map_err(|_| "handler")?;
    sys::thread_resume(t).map_err(|_| "resume")?;
    Ok((t, hcap))
}

/// Releases what [`spawn_with_handler`] made: the thread's capability, then the handler's.
fn release_handled((t, hcap): (u64, Option<u64>)) {
    release(t);
    if let Some(h) = hcap {
        release(h);
    }
}

/// Timed waits that must end (in timer interrupts taken from [`flags_spinner`]) while it spins.
const FLAG_TIMEOUTS: u64 = 5;
/// At most this many rounds of [`flags_spinner`]'s loop (seconds under TCG): if the waits have
/// not ended by then, it stops with `int3` instead of `ud2`, and the test fails.
const FLAG_ROUNDS: u64 = 1_000_000_000;

/// Sets the direction flag (`std`) and the alignment-check flag (`popfq`), which a user
/// program may set, and keeps them while the timer interrupts it until [`FLAG_TIMEOUTS`] of
/// [`flags_waiter`]'s waits have ended, then takes an invalid-opcode fault with them still set.
fn flags_spinner(_: u64) {
    // SAFETY: changes only this thread's flags and `rcx`, reads an aligned counter of
    // its task and touches only its own stack (`pushfq`/`popfq`); it never comes back: the
    // `ud2` (or `int3`) goes to its fault handler, which stops the thread.
    unsafe {
        core::arch::asm!(
            "pushfq",
            "or qword ptr [rsp], 0x40000",
            "popfq",
            "std",
            "2:",
            "cmp qword ptr [{seen}], {want}",
            "jae 3f",
            "dec rcx",
            "jnz 2b",
            "int3",
            "3:",
            "ud2",
            seen = in(reg) FLAGS_TIMEOUTS.as_ptr(),
            want = const FLAG_TIMEOUTS,
            in("rcx") FLAG_ROUNDS,
            options(noreturn),
        );
    }
}

/// Timed receives on `ep` (nobody sends) while [`flags_spinner`] spins on the same CPU: each
/// deadline passes in a timer interrupt taken from the spinner, with its flags. Counts the
/// answers that are `Timeout` as they should be, and the others.
fn flags_waiter(ep: u64) {
    while FLAGS_DONE.load(core::sync::atomic::Ordering::Relaxed) == 0 {
        let r = sys::recv_timeout(ep, ms(2));
        let c = if r.as_ref().err() == Some(&Error::Timeout) { &FLAGS_TIMEOUTS } else { &FLAGS_WRONG };
        c.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }
    sys::thread_exit();
}

static FLAGS_DONE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static FLAGS_TIMEOUTS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static FLAGS_WRONG: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The kernel does not inherit a user thread's direction or alignment-check flag: an interrupt
/// or exception gate clears neither (only `syscall` masks them), and kernel code — its inlined
/// `rep movs` copies, the alignment of its accesses, the SMAP check — assumes them clear.
fn test_user_flags() {
    check(
        "trap-entry-clears-user-flags",
        "a thread with DF and AC set spins through the timer interrupts that end 5 timed waits of another thread on its CPU, then faults with them set: every wait ends in Timeout, the fault message is right (ud2, not the int3 of a spin that gave up), the kernel survives (and its consistency check at the suite's end counts no trap that ran kernel code with those flags)",
        |ep| {
            let quiet = slot();
            sys::endpoint_create(MEMORY, quiet).map_err(|_| "endpoint")?;
            FLAGS_DONE.store(0, core::sync::atomic::Ordering::Relaxed);
            FLAGS_TIMEOUTS.store(0, core::sync::atomic::Ordering::Relaxed);
            FLAGS_WRONG.store(0, core::sync::atomic::Ordering::Relaxed);
            let w = spawn(flags_waiter, quiet, ROOT_PRIO, cpus() - 1);
            let spawned = spawn_with_handler(flags_spinner, ep, 0x5f)?;
            let t = spawned.0;
            let m = sys::recv_timeout(ep, ms(30_000)).map_err(|_| "no fault message came");
            let f = m.as_ref().ok().and_then(fault_of);
            if m.is_ok() {
                let _ = sys::reply(&stop_msg());
            }
            FLAGS_DONE.store(1, core::sync::atomic::Ordering::Relaxed);
            let ended = wait_ms(1000, || state(w) == Some(ThreadState::Dead));
            let stopped = wait_ms(1000, || state(t) == Some(ThreadState::Faulted));
            release(w);
            release_handled(spawned);
            release(quiet);
            m?;
            let (timeouts, wrong) = (FLAGS_TIMEOUTS.load(core::sync::atomic::Ordering::Relaxed), FLAGS_WRONG.load(core::sync::atomic::Ordering::Relaxed));
            match f {
                Some((0x5f, 6, 0, _, 0)) if ended && stopped && wrong == 0 && timeouts >= FLAG_TIMEOUTS => Ok(()),
                Some((0x5f, 3, _, _, _)) => Err("the spin gave up before the waits ended"),
                Some((0x5f, 6, 0, _, 0)) if wrong != 0 => Err("a timed wait ended otherwise than in Timeout"),
                Some((0x5f, 6, 0, _, 0)) if timeouts < FLAG_TIMEOUTS => Err("too few timed waits ended"),
                Some((0x5f, 6, 0, _, 0)) => Err("the waiter did not end or the spinner was not stopped"),
                Some(_) => Err("a wrong fault message"),
                None => Err("not a fault message"),
            }
        },
    );
}

/// Sets the trap flag and makes a system call (`Yield`) with it set — right after a `mov ss`
/// if `mov_ss`, which holds the single-step trap of that instruction back until the next one
/// has run: the `syscall`, so that the trap comes on the kernel's first instruction, at
/// privilege level 0 with this thread's stack pointer and `GS` (the `mov ss` / `pop ss`
/// hazard, CVE-2018-8897; `syscall` clears the flag, not a trap already pending). Whatever the
/// processor does, the trap the kernel must pass on is one in user mode: the thread faults
/// with vector 1 (#DB) at a user address, and the kernel survives.
fn trap_flag_syscall(mov_ss: bool) -> ! {
    // SAFETY: changes only this thread's flags, `rax`, `rdx`, `rcx` and `r11`, and `SS` to the
    // value it has; the single-step trap goes to its fault handler, which stops the
    // thread (it never comes back: the `ud2` after it is not reached).
    unsafe {
        if mov_ss {
            core::arch::asm!(
                "mov rdx, ss",
                "pushfq",
                "or qword ptr [rsp], 0x100",
                "popfq",
                "mov ss, dx",
                "syscall",
                "nop",
                "ud2",
                in("rax") rl4_abi::Sys::Yield as u64,
                options(noreturn),
            );
        } else {
            core::arch::asm!(
                "pushfq",
                "or qword ptr [rsp], 0x100",
                "popfq",
                "syscall",
                "nop",
                "ud2",
                in("rax") rl4_abi::Sys::Yield as u64,
                options(noreturn),
            );
        }
    }
}

fn trap_flag_syscall_alone(_: u64) {
    trap_flag_syscall(false)
}

fn trap_flag_syscall_after_mov_ss(_: u64) {
    trap_flag_syscall(true)
}

/// Runs `entry` in a new thread whose faults go to `ep` with `badge`, takes its fault message
/// (within 5 s) and stops it: the message as [`fault_of`] reads it, and whether the thread
/// ended `Faulted`.
#[allow(clippy::type_complexity)]
fn fault_once(entry: fn(u64), ep: u64, badge: u64) -> Result<(Option<(u64, u64, u64, u64, u64)>, bool), &'static str> {
    let spawned = spawn_with_handler(entry, ep, badge)?;
    let t = spawned.0;
    let m = sys::recv_timeout(ep, ms(5000)).map_err(|_| "no fault message came");
    let f = m.as_ref().ok().and_then(fault_of);
    if m.is_ok() {
        let _ = sys::reply(&stop_msg());
    }
    let stopped = wait_ms(1000, || state(t) == Some(ThreadState::Faulted));
    release_handled(spawned);
    m?;
    Ok((f, stopped))
}

/// A system call made with the trap flag set, alone and right after `mov ss`
/// ([`trap_flag_syscall`]): the thread faults with #DB in user mode and the kernel survives.
fn test_trap_flag_syscall() {
    check(
        "syscall-with-trap-flag",
        "a thread sets the trap flag and makes a system call, then again right after a mov ss (the single-step trap held back onto the kernel's first instruction): each faults with #DB (1) at a user address, and the kernel survives",
        |ep| {
            for (f, badge) in [(trap_flag_syscall_alone as fn(u64), 0x71), (trap_flag_syscall_after_mov_ss, 0x72)] {
                let (f, stopped) = fault_once(f, ep, badge)?;
                match f {
                    Some((b, 1, _, ip, _)) if b == badge && ip < 0x0000_8000_0000_0000 && stopped => {}
                    Some((b, 1, _, _, _)) if b == badge => return Err("the #DB was not at a user address, or the thread was not stopped"),
                    Some(_) => return Err("a wrong fault message (not #DB, or another thread's)"),
                    None => return Err("not a fault message"),
                }
            }
            Ok(())
        },
    );
}

/// Sets the trap flag, loads `SS` with itself (which holds the single-step trap back until the
/// next instruction has run) and runs `which` of: `int3`, `int 0x80`, `ud2`, a load from an
/// unmapped page, `icebp`: an exception gate taken with the trap pending, which on hardware
/// delivers the #DB at the gate's first instruction, in the kernel (the rest of the `mov ss`
/// hazard, CVE-2018-8897: [`trap_flag_syscall`] covers `syscall`). Never returns: the fault's
/// handler stops the thread.
fn trap_flag_after_mov_ss(which: u64) -> ! {
    // SAFETY: changes only this thread's flags, `rdx`, `rax` and `SS` (to the value it has);
    // each instruction after the `mov ss` faults or traps to the thread's handler, which stops
    // it (the `ud2`s after them are not reached).
    unsafe {
        match which {
            0 => core::arch::asm!("mov rdx, ss", "pushfq", "or qword ptr [rsp], 0x100", "popfq", "mov ss, dx", "int3", "ud2", options(noreturn)),
            1 => core::arch::asm!("mov rdx, ss", "pushfq", "or qword ptr [rsp], 0x100", "popfq", "mov ss, dx", "int 0x80", "ud2", options(noreturn)),
            2 => core::arch::asm!("mov rdx, ss", "pushfq", "or qword ptr [rsp], 0x100", "popfq", "mov ss, dx", "ud2", options(noreturn)),
            3 => core::arch::asm!("mov rdx, ss", "pushfq", "or qword ptr [rsp], 0x100", "popfq", "mov ss, dx", "mov rax, [0x10]", "ud2", options(noreturn)),
            _ => core::arch::asm!("mov rdx, ss", "pushfq", "or qword ptr [rsp], 0x100", "popfq", "mov ss, dx", ".byte 0xf1", "ud2", options(noreturn)),
        }
    }
}

/// [`trap_flag_after_mov_ss`] for each of its five instructions, one thread each: each thread
/// faults at a user address with its instruction's vector (#GP for `int3` and `int 0x80`: every
/// gate has privilege 0) — or #DB (1) where the processor (or
/// QEMU's TCG, which delivers the single-step trap of the `mov ss` itself) reports the trap
/// first — and is stopped, and the kernel survives.
fn test_trap_flag_after_mov_ss() {
    check(
        "exception-after-mov-ss-with-trap-flag",
        "a thread sets the trap flag, loads SS and runs int3, int 0x80, ud2, a load from page 0 or icebp (an exception gate taken with the single-step trap held back): each faults at a user address with its vector (#GP for the two int) or #DB, is stopped, and the kernel survives",
        |ep| {
            // (the thread's entry, its instruction's vector, the fault message's badge)
            let cases: [(fn(u64), u64, u64); 5] = [
                // (`int3` and `int 0x80` reach gates of privilege 0: #GP, not #BP.)
                (|_| trap_flag_after_mov_ss(0), 13, 0x81),
                (|_| trap_flag_after_mov_ss(1), 13, 0x82),
                (|_| trap_flag_after_mov_ss(2), 6, 0x83),
                (|_| trap_flag_after_mov_ss(3), 14, 0x84),
                (|_| trap_flag_after_mov_ss(4), 1, 0x85),
            ];
            for (entry, vector, badge) in cases {
                let (f, stopped) = fault_once(entry, ep, badge)?;
                match f {
                    Some((b, v, _, ip, _)) if b == badge && (v == vector || v == 1) && ip < 0x0000_8000_0000_0000 && stopped => {}
                    Some((b, _, _, _, _)) if b == badge => return Err("a wrong vector, a fault not at a user address, or the thread not stopped"),
                    Some(_) => return Err("another thread's fault message"),
                    None => return Err("not a fault message"),
                }
            }
            Ok(())
        },
    );
}

/// Stores the GDT register (`sgdt`), which shows a kernel address, then ends its thread.
fn sgdt_then_exit(_: u64) {
    let mut area = [0u8; 16];
    // SAFETY: `sgdt` writes 10 bytes into `area`; with UMIP it faults instead (and the thread's
    // handler stops it).
    unsafe { core::arch::asm!("sgdt [{}]", in(reg) area.as_mut_ptr(), options(nostack)) };
    core::hint::black_box(&area);
    sys::thread_exit();
}

/// With UMIP (CPUID leaf 7, ECX bit 2) the kernel turns it on: `sgdt` in user mode faults
/// (13, general protection) instead of telling a kernel address.
fn test_umip() {
    let umip = core::arch::x86_64::__cpuid(0).eax >= 7 && core::arch::x86_64::__cpuid_count(7, 0).ecx & (1 << 2) != 0;
    check("user-mode-instruction-prevention", "with UMIP, sgdt in user mode faults (#GP); without, it runs", |ep| {
        let spawned = spawn_with_handler(sgdt_then_exit, ep, 0x3c)?;
        let t = spawned.0;
        let r = if umip {
            let m = sys::recv_timeout(ep, ms(2000));
            let f = m.as_ref().ok().and_then(fault_of);
            if m.is_ok() {
                let _ = sys::reply(&stop_msg());
            }
            let stopped = wait_ms(1000, || state(t) == Some(ThreadState::Faulted));
            match f {
                Some((0x3c, 13, _, _, _)) if stopped => Ok(()),
                _ => Err("UMIP is there but sgdt did not fault"),
            }
        } else if wait_ms(2000, || state(t) == Some(ThreadState::Dead)) {
            Ok(())
        } else {
            Err("no UMIP but sgdt did not simply run")
        };
        release_handled(spawned);
        r
    });
}

/// A thread of a task whose end has run takes neither an IPC buffer nor a fault handler:
/// `InvalidState` for both, as while the end is under way. Before the thirty-sixth session
/// `SetIpcBuffer` looked the page up first, in the space the end had emptied, and answered
/// `NotMapped` (a review found it). Nor, now `Dead`, a priority or a CPU: `InvalidState`, and
/// `ThreadInfo` shows the ones it died with (before the forty-second session both calls
/// answered success and `ThreadInfo` showed the new values, of a thread that never runs again:
/// a review found it).
fn test_calls_on_an_ended_task() {
    const NAME: &str = "thread-calls-on-an-ended-task";
    let ep = slot();
    let r = sys::endpoint_create(MEMORY, ep).and_then(|_| Kid::new(NO_SLOT, 0, 0, 0, 0));
    let other_cpu = if cpus() > 1 { 1 } else { 0 };
    let (buffer, handler, prio, cpu, info) = match &r {
        Ok(kid) => {
            let killed = sys::task_kill(kid.task);
            let buffer = sys::set_ipc_buffer(kid.thread, START_VA);
            let handler = sys::thread_set_fault_handler(kid.thread, ep);
            let prio = sys::thread_set_priority(kid.thread, ROOT_PRIO - 1);
            let cpu = sys::thread_set_affinity(kid.thread, other_cpu);
            (killed.and(buffer), handler, prio, cpu, sys::thread_info(kid.thread))
        }
        Err(e) => (Err(*e), Err(*e), Err(*e), Err(*e), Err(*e)),
    };
    if let Ok(kid) = r {
        kid.end();
    }
    // A thread of the root task that exited (its task lives on): neither an IPC buffer nor a
    // fault handler (both answered `Ok` before the forty-second session).
    let exited = spawn(|_| {}, 0, ROOT_PRIO, 0);
    let dead = wait_ms(3000, || state(exited) == Some(ThreadState::Dead));
    const VA: u64 = 0x0000_6a00_0000_0000;
    let page = map_fresh(SPACE, VA, 1, Rights::READ.union(Rights::WRITE));
    let (buffer2, handler2) = (sys::set_ipc_buffer(exited, VA), sys::thread_set_fault_handler(exited, ep));
    let _ = sys::unmap(SPACE, VA);
    release(exited);
    release(ep);
    let want_info = [ThreadState::Dead as u64, 0, ROOT_PRIO];
    report(
        NAME,
        buffer == Err(Error::InvalidState)
            && handler == Err(Error::InvalidState)
            && prio == Err(Error::InvalidState)
            && cpu == Err(Error::InvalidState)
            && info == Ok(want_info)
            && dead
            && page.is_ok()
            && buffer2 == Err(Error::InvalidState)
            && handler2 == Err(Error::InvalidState),
        format_args!(
            "SetIpcBuffer {buffer:?}, ThreadSetFaultHandler {handler:?}, ThreadSetPriority {prio:?}, \
             ThreadSetAffinity(cpu {other_cpu}) {cpu:?} (want InvalidState for each); ThreadInfo \
             (state, cpu, priority) {info:?} (want Ok({want_info:?})); a root thread that exited (Dead: {dead}): \
             SetIpcBuffer {buffer2:?}, ThreadSetFaultHandler {handler2:?} (want InvalidState for both; page mapped: {page:?})"
        ),
    );
}

fn test_bad_args() {
    let ep = slot();
    let recv_only = slot();
    let r = sys::endpoint_create(MEMORY, ep).and_then(|_| sys::cap_copy(ep, TASK, recv_only, Rights::RECEIVE));
    let checks = [
        sys::thread_set_fault_handler(THREAD, recv_only) == Err(Error::MissingRight),
        sys::thread_set_fault_handler(THREAD, MEMORY) == Err(Error::WrongType),
        sys::thread_set_fault_handler(ep, ep) == Err(Error::WrongType),
        sys::thread_set_fault_handler(THREAD, 9999) == Err(Error::SlotOutOfRange),
        sys::thread_set_fault_handler(THREAD, NO_SLOT) == Ok(()),
    ];
    release(recv_only);
    release(ep);
    report(
        "fault-ipc-bad-args",
        r.is_ok() && checks.iter().all(|&c| c),
        format_args!("ThreadSetFaultHandler: receive-only endpoint, wrong types, slot out of range refused; NO_SLOT clears: {checks:?}"),
    );
}

/// Threads of [`test_handler_chain`] that received their fault (the last one ends the chain).
static CHAIN_GOT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
const CHAIN: u64 = 400;

/// A link of the chain: receives the fault of the link before it on `ep` (and holds its reply
/// right), then faults itself, to the same endpoint; the last link exits instead.
fn chain_link(ep: u64) {
    if sys::recv(ep).is_err() {
        return;
    }
    if CHAIN_GOT.fetch_add(1, core::sync::atomic::Ordering::SeqCst) + 1 == CHAIN {
        sys::thread_exit();
    }
    // SAFETY: a deliberate fault (address 0x10 is never mapped): it goes to the handler.
    unsafe { core::ptr::read_volatile(0x10 as *const u64) };
}

/// The chain's first fault.
fn chain_start(_: u64) {
    // SAFETY: as in `chain_link`.
    unsafe { core::ptr::read_volatile(0x10 as *const u64) };
}

/// A chain of fault handlers, each of which faulted while it held the previous one's fault
/// (so its reply right): when the last lets go (it exits), every link is stopped in turn. The
/// kernel did that by recursion, one level per link, and a few hundred links overflowed its
/// stack (a review found it); it is a loop now.
fn test_handler_chain() {
    const NAME: &str = "fault-handler-chain-unwinds";
    let ep = slot();
    if sys::endpoint_create(MEMORY, ep).is_err() {
        return report(NAME, false, format_args!("endpoint_create"));
    }
    CHAIN_GOT.store(0, core::sync::atomic::Ordering::SeqCst);
    let mut made = 0;
    for _ in 0..CHAIN {
        match spawn_with_handler(chain_link, ep, 0) {
            Ok((t, _)) => {
                // Blocked in `Recv` (in the endpoint's queue, in order), it needs no capability.
                wait_ms(1000, || state(t) == Some(ThreadState::BlockedRecv));
                release(t);
                made += 1;
            }
            Err(_) => break,
        }
    }
    let first = spawn_with_handler(chain_start, ep, 0).map(|(t, _)| t);
    let ended = first.is_ok_and(|t| wait_ms(30_000, || state(t) == Some(ThreadState::Faulted)));
    let got = CHAIN_GOT.load(core::sync::atomic::Ordering::SeqCst);
    if let Ok(t) = first {
        release(t);
    }
    release(ep);
    report(
        NAME,
        made == CHAIN && got == CHAIN && ended,
        format_args!("{made} handler threads made, {got} received their fault; the first thread Faulted once the last exited: {ended}"),
    );
}

/// A thread that faults at once (no fault handler: it is stopped and reported).
fn faults_at_once(_: u64) {
    // SAFETY: `ud2` raises #UD; the kernel stops this thread there.
    unsafe { core::arch::asm!("ud2", options(nostack)) };
}

/// Fault reports are rate-limited (about 16 at once, then 10 a second, machine-wide; each CPU has
/// its share): 64 threads that fault in a burst on one CPU leave at least 64 - 16 - 10 per
/// second elapsed (rounded up) unprinted, and every one of them is stopped all the same. (Run
/// last: it uses up the CPU's share, and the other tests' reports help when they fail.)
fn test_fault_reports_limited() {
    const NAME: &str = "fault-reports-rate-limited";
    const N: usize = 64;
    let left_out = || sys::stat(MACHINE, rl4_abi::stat::FAULT_REPORTS_LEFT_OUT);
    // The last CPU (the root task's own, with one).
    let cpu = cpus() - 1;
    let before = left_out();
    let t0 = rl4_user::rdtsc();
    let mut ts = [0u64; N];
    let mut made = 0;
    for t in ts.iter_mut() {
        match try_spawn(faults_at_once, 0, ROOT_PRIO - 1, cpu) {
            Ok(x) => {
                *t = x;
                made += 1;
            }
            Err(_) => break,
        }
    }
    let stopped = wait_ms(5000, || ts[..made].iter().all(|&t| state(t) == Some(ThreadState::Faulted)));
    let secs = (rl4_user::rdtsc() - t0).div_ceil(tsc_hz());
    let after = left_out();
    for &t in &ts[..made] {
        release(t);
    }
    let n = after.and_then(|a| before.map(|b| a - b));
    let least = (N as u64).saturating_sub(16 + 10 * secs);
    // Too slow a run (5 s or more) cannot tell a limit from none: that fails too.
    report(
        NAME,
        made == N && stopped && least > 0 && n.is_ok_and(|n| n >= least && n <= N as u64),
        format_args!("{made} threads faulted in {secs} s or less (all stopped: {stopped}); reports left out: {n:?} (at least {least})"),
    );
}

/// A link of [`test_reply_chain`]: receives a call on `ep` (and so holds the caller's reply
/// right), then calls `ep` itself.
fn reply_link(ep: u64) {
    if sys::recv(ep).is_ok() {
        let _ = sys::call(ep, &Msg::default());
    }
}

/// The first caller of [`test_reply_chain`].
fn reply_start(ep: u64) {
    let _ = sys::call(ep, &Msg::default());
}

/// A chain of calls, each thread holding the reply right of the one before: every thread is
/// suspended (a suspended thread keeps the right it holds) and its capability deleted, so that
/// each is kept only by the next one's reply right; then the last goes. Each destructor failed
/// the caller whose right it held, whose last reference that was: the kernel destroyed the
/// chain by recursion, one level per link (a review found it); the destruction loop takes them
/// one at a time now.
fn test_reply_chain() {
    const NAME: &str = "reply-right-chain-destroyed";
    // A thread and its four-page stack per link (a page table per 100 links besides); fewer
    // where the budget cannot pay for them (`sized`: a small machine; the report says so).
    // The kernel's recursion this test was written for overflowed its stack with the full chain.
    let links = sized(600, rl4_abi::cost::THREAD + 4 * (rl4_abi::cost::FRAME + rl4_abi::cost::MAP) + PAGE_SIZE / 100);
    let stacks = mark();
    let ep = slot();
    if sys::endpoint_create(MEMORY, ep).is_err() {
        return report(NAME, false, format_args!("endpoint_create"));
    }
    let threads = || sys::stat(MACHINE, rl4_abi::stat::THREADS).unwrap_or(0);
    let before = threads();
    // The first caller: it gets `PartnerGone` when the chain is gone.
    let Ok((first, _)) = spawn_with_handler(reply_start, ep, 0) else {
        release(ep);
        return report(NAME, false, format_args!("thread"));
    };
    let mut prev = first;
    let mut made = 1;
    let mut ok = true;
    for _ in 0..links {
        let Ok((t, _)) = spawn_with_handler(reply_link, ep, 0) else { break };
        made += 1;
        // `t` took `prev`'s call (it is `prev`'s server now) and calls in turn: `prev` waits
        // for its reply, `t` for a receiver.
        ok &= wait_ms(2000, || state(t) == Some(ThreadState::BlockedSend) && state(prev) == Some(ThreadState::BlockedReply));
        if !ok {
            // Not part of the chain: it goes now (its stack is left mapped below).
            let _ = sys::thread_suspend(t);
            release(t);
            break;
        }
        if prev != first {
            ok &= sys::thread_suspend(prev).is_ok();
            release(prev);
        }
        prev = t;
    }
    let mid = threads();
    // The last one is queued on the endpoint: suspended, it leaves the queue; deleted, it is
    // gone, and with it every link. (No link at all: the first caller waits on the endpoint,
    // whose deletion below answers it.)
    if prev != first {
        ok &= sys::thread_suspend(prev).is_ok();
        release(prev);
    }
    let gone = wait_ms(10_000, || threads() <= before + 1);
    let first_done = wait_ms(2000, || state(first) == Some(ThreadState::Dead));
    release(first);
    release(ep);
    // Their stacks come back (every thread of the chain has ended, or the test failed).
    if gone && first_done {
        free_since(stacks);
    }
    report(
        NAME,
        ok && made == links + 1 && gone && first_done,
        format_args!(
            "{made} threads (of {}; 601 where memory allows) in a chain of calls (each step as expected: {ok}); live threads {before} before, {mid} with the chain, {} after it went (all gone: {gone}); the first caller got its answer and ended: {first_done}",
            links + 1,
            threads()
        ),
    );
}

pub fn run() {
    test_reply_chain();
    test_handler_chain();
    test_bad_args();
    test_calls_on_an_ended_task();
    test_user_flags();
    test_trap_flag_syscall();
    test_trap_flag_after_mov_ss();
    test_umip();
    test_lazy();
    test_cow();
    test_stop_and_bad_replies();
    test_kernel_address_faults_alike();
    test_echoed_fault_keeps_the_server_serving();
    test_no_reply();
    test_handler_gone();
    test_handler_lapses();
    test_cancel_badged();
    test_cancel_many_faults();
    test_fault_reports_limited();
}

/// `fault-window` (only with `inject=slowfault`, which holds a fault without a handler 200 ms
/// before its thread is stopped): a thread on CPU 1 reads a page nothing maps; while the kernel
/// holds its fault, the root thread (CPU 0) suspends it — the call answers `Ok` — and the
/// thread must then be `Suspended`, not `Faulted`: the suspension came first. With the page
/// mapped, `ThreadResume` restarts the read, which now succeeds, and the thread goes on. Before
/// the thirty-ninth session the thread was stopped (`Faulted`) and its resumption refused
/// (`InvalidState`), unlike a thread with a handler, whose fault the suspension cancels (a
/// review). A round whose suspension missed the window (the host held a CPU back) is made again,
/// three times in all.
pub fn test_suspend_during_fault() {
    const NAME: &str = "suspend-during-a-fault-without-handler";
    if cpus() < 2 {
        return crate::tests::skip(NAME, "one CPU");
    }
    let (rounds, (ok, window, text)) = up_to_three_rounds(fault_window_round, |r| !r.1);
    report(NAME, ok && window, format_args!("{} (round {rounds} of at most 3)", text.as_str()));
}

/// When [`fault_window_reader`] was about to read (TSC; `u64::MAX` before), and whether it read.
static FW_AT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(u64::MAX);
static FW_READ: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

fn fault_window_reader(va: u64) {
    use core::sync::atomic::Ordering::SeqCst;
    let v: u64;
    // SAFETY: `FW_AT` is a static the time stamp goes into; `va` is a page of this task that
    // nothing maps when the read is first made (the fault is the point); it is mapped before the
    // thread is resumed to read again. The stamp and the read in one block of straight-line
    // code, which the emulator runs as one piece: no interrupt (the suspension's) is taken
    // between them, so a suspension that began after the stamp meets the fault.
    unsafe {
        core::arch::asm!(
            "rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "mov qword ptr [{at}], rax",
            "mov {v}, qword ptr [{va}]",
            at = in(reg) FW_AT.as_ptr(),
            va = in(reg) va,
            v = out(reg) v,
            out("rax") _,
            out("rdx") _,
            options(nostack)
        );
    }
    FW_READ.store(1 + (v & 1), SeqCst);
}

/// One round: (passed, the suspension came in the fault's window, what it saw).
fn fault_window_round() -> (bool, bool, crate::storm::Text) {
    use core::fmt::Write;
    use core::sync::atomic::Ordering::SeqCst;
    let va = scratch_range();
    FW_AT.store(u64::MAX, SeqCst);
    FW_READ.store(0, SeqCst);
    let t = spawn(fault_window_reader, va, ROOT_PRIO, 1);
    let began = wait_ms(2000, || FW_AT.load(SeqCst) != u64::MAX);
    crate::stress::sleep_ms(30);
    let s0 = rl4_user::rdtsc();
    let suspended = sys::thread_suspend(t);
    let s1 = rl4_user::rdtsc();
    let at = FW_AT.load(SeqCst);
    // The suspension began after the read and answered well within the 200 ms the kernel holds
    // the fault.
    let window = began && s0 > at && s1 < at.saturating_add(ms(150));
    crate::stress::sleep_ms(300);
    let held = state(t);
    let mapped = map_fresh(SPACE, va, 1, RW);
    let resumed = sys::thread_resume(t);
    let read = wait_ms(2000, || FW_READ.load(SeqCst) != 0);
    let end = wait_ms(2000, || state(t) == Some(ThreadState::Dead));
    // A thread left stopped or suspended (a failed round) goes with its last capability.
    release(t);
    let _ = sys::unmap(SPACE, va);
    let ok = suspended == Ok(()) && held == Some(ThreadState::Suspended) && mapped.is_ok() && resumed == Ok(()) && read && end;
    let mut text = crate::storm::Text::new();
    let _ = write!(
        text,
        "a read of an unmapped page on cpu 1, suspended from cpu 0 {} ms after it began: {suspended:?}; 300 ms later {held:?} (want Suspended); page mapped {mapped:?}, resumed {resumed:?}, read done {read}, thread ended {end}",
        s0.saturating_sub(at) / ms(1).max(1)
    );
    (ok, window, text)
}
