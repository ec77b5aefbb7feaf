//! Typed wrappers for every system call of [`rl4_abi::Sys`]: one function each, named after the
//! call, taking its arguments in the order `docs/syscalls.md` gives them (capabilities by slot
//! number) and returning `Ok` with the result words or the kernel's [`Error`]. The IPC calls
//! ([`call`], [`reply_recv`], [`send`], [`recv`] and their variants) pass and return a [`Msg`]
//! in registers. The typed handles of [`crate::cap`] are built on these.
//!
//! This is the raw layer. The kernel checks every call against the caller's capabilities, so
//! nothing here can reach what the program was not given; but a few calls can break the
//! program's own memory, which the compiler cannot see, and Rust's guarantees then hold no
//! more: [`unmap`] of a page the program uses (its stack, its heap), [`set_ipc_buffer`] at a
//! page that holds anything but buffer words (the kernel writes received words there),
//! [`thread_create`] and [`thread_set_args`] with an entry point or arguments that are not what
//! the code there expects ([`crate::thread_entry`] takes a `fn(u64)` and its argument). The
//! safe ways are [`crate::thread::spawn`], [`crate::thread::map_fresh`] and the handles of
//! [`crate::cap`].
//!
//! A new system call gets its number in `rl4_abi::Sys` and a function here, written like its
//! neighbours with [`raw`] (or [`ipc`] for a message-passing one: [`raw`] gives those a timeout
//! of `FOREVER` and no capability slots, which they read from `r12`–`r14`).
use rl4_abi::{Error, Rights, Sys};

/// Result words of a successful call.
pub type Ret = Result<[u64; 3], Error>;

/// The raw system call: number and six arguments in, status and three results out. An IPC
/// call (which also writes `r10`, `r8` and `r9`, words 1 to 3 of a message it receives) gets
/// them declared written, waits for ever and carries no capability ([`raw_full`] sets those);
/// for the others the kernel preserves them (the number is usually a constant: the choice
/// costs nothing).
#[inline(always)]
pub fn raw(n: Sys, a: [u64; 6]) -> (u64, [u64; 3]) {
    if writes_message(n) { raw_any_ipc(n as u64, a) } else { raw_any(n as u64, a) }
}

/// A system call by number that need not be one of [`Sys`] (for tests of the kernel's checks):
/// any register the kernel may write is declared written.
pub fn raw_number(n: u64, a: [u64; 6]) -> u64 {
    raw_any_ipc(n, a).0
}

/// The calls that may write a message into the caller's registers (`docs/syscalls.md`, "IPC
/// registers").
const fn writes_message(n: Sys) -> bool {
    matches!(n, Sys::Send | Sys::NbSend | Sys::Call | Sys::Recv | Sys::NbRecv | Sys::Reply | Sys::ReplyRecv | Sys::Wait)
}

/// [`raw`] for a call that may write `r10`, `r8` and `r9`: an IPC call through it waits for
/// ever and carries no capability either way (timeout `FOREVER`, no slots).
#[inline(always)]
fn raw_any_ipc(n: u64, a: [u64; 6]) -> (u64, [u64; 3]) {
    raw_full(n, a, rl4_abi::ipc::FOREVER, rl4_abi::ipc::NO_SLOT, rl4_abi::ipc::NO_SLOT)
}

/// A system call with every register the kernel reads — the number, six arguments and, for the
/// IPC calls, the timeout (`r12`) and the capability slots to send from and receive into (`r13`,
/// `r14`) — and every register it may write declared written: `rax` and the three result
/// words out (for tests of the kernel's checks, and the fuzzer).
#[inline(always)]
pub fn raw_full(n: u64, a: [u64; 6], timeout: u64, send_slot: u64, recv_slot: u64) -> (u64, [u64; 3]) {
    let (rax, rdi, rsi, rdx): (u64, u64, u64, u64);
    // SAFETY: `syscall` enters the kernel, which checks every argument; it clobbers rcx and r11
    // and returns results in rax, rdi, rsi, rdx, and an IPC call words 1 to 3 of a message in
    // r10, r8, r9 (all declared written); it preserves every other register (r12 to r14 too).
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") n => rax,
            inlateout("rdi") a[0] => rdi,
            inlateout("rsi") a[1] => rsi,
            inlateout("rdx") a[2] => rdx,
            inlateout("r10") a[3] => _,
            inlateout("r8") a[4] => _,
            inlateout("r9") a[5] => _,
            in("r12") timeout,
            in("r13") send_slot,
            in("r14") recv_slot,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    (rax, [rdi, rsi, rdx])
}

#[inline(always)]
fn raw_any(n: u64, a: [u64; 6]) -> (u64, [u64; 3]) {
    let (rax, rdi, rsi, rdx): (u64, u64, u64, u64);
    // SAFETY: `syscall` enters the kernel, which checks every argument; for a call other than
    // IPC (`raw` sends those to `raw_any_ipc`) it clobbers only rcx and r11 and returns results
    // in rax, rdi, rsi, rdx, as the ABI says.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") n => rax,
            inlateout("rdi") a[0] => rdi,
            inlateout("rsi") a[1] => rsi,
            inlateout("rdx") a[2] => rdx,
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    (rax, [rdi, rsi, rdx])
}

fn syscall(n: Sys, a: [u64; 6]) -> Ret {
    match raw(n, a) {
        (0, r) => Ok(r),
        (e, _) => Err(Error::try_from(e).unwrap_or(Error::InvalidArgument)),
    }
}

fn unit(n: Sys, a: [u64; 6]) -> Result<(), Error> {
    syscall(n, a).map(|_| ())
}

pub fn null() -> Result<(), Error> {
    unit(Sys::Null, [0; 6])
}
pub fn console_write(machine: u64, bytes: &[u8]) -> Result<u64, Error> {
    syscall(Sys::ConsoleWrite, [machine, bytes.as_ptr() as u64, bytes.len() as u64, 0, 0, 0]).map(|r| r[0])
}
/// [`console_write`] until every byte is written (one call prints about a kilobyte at most,
/// its prefixes counted, and answers how many bytes it took).
pub fn console_write_all(machine: u64, bytes: &[u8]) -> Result<(), Error> {
    let mut at = 0;
    while at < bytes.len() {
        let end = bytes.len().min(at + rl4_abi::CONSOLE_WRITE_MAX as usize);
        match console_write(machine, &bytes[at..end])? {
            0 => return Err(Error::InvalidState),
            n => at += n as usize,
        }
    }
    Ok(())
}
pub fn console_write_raw(machine: u64, ptr: u64, len: u64) -> Result<u64, Error> {
    syscall(Sys::ConsoleWrite, [machine, ptr, len, 0, 0, 0]).map(|r| r[0])
}
/// `Yield`. It reads no argument and cannot fail, so the stub passes none and decodes nothing:
/// the number, `syscall` and the return (the generic wrapper zeroes six argument registers and
/// decodes an error, about 20 more instructions per call).
pub fn yield_now() {
    // SAFETY: `syscall` enters the kernel, which ignores every register but the number for
    // `Yield`; as the ABI says, it clobbers rcx and r11 and may write the result registers
    // (rax, rdi, rsi, rdx).
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") Sys::Yield as u64 => _,
            lateout("rdi") _,
            lateout("rsi") _,
            lateout("rdx") _,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
}
pub fn cap_copy(src: u64, dst_task: u64, dst: u64, rights: Rights) -> Result<(), Error> {
    unit(Sys::CapCopy, [src, dst_task, dst, rights.0, 0, 0])
}
pub fn cap_copy_raw(src: u64, dst_task: u64, dst: u64, rights: u64) -> Result<(), Error> {
    unit(Sys::CapCopy, [src, dst_task, dst, rights, 0, 0])
}
pub fn cap_delete(slot: u64) -> Result<(), Error> {
    unit(Sys::CapDelete, [slot, 0, 0, 0, 0, 0])
}
/// Deletes every capability derived from the one in `slot`, in every task; → how many.
pub fn cap_revoke(slot: u64) -> Result<u64, Error> {
    syscall(Sys::CapRevoke, [slot, 0, 0, 0, 0, 0]).map(|r| r[0])
}
/// Ends the sends queued on the endpoint in `ep` that carry `badge` → how many.
pub fn endpoint_cancel_badged(ep: u64, badge: u64) -> Result<u64, Error> {
    syscall(Sys::EndpointCancelBadged, [ep, badge, 0, 0, 0, 0]).map(|r| r[0])
}
/// → (type, rights, badge)
pub fn cap_identify(slot: u64) -> Ret {
    syscall(Sys::CapIdentify, [slot, 0, 0, 0, 0, 0])
}
pub fn task_create(memory: u64, dst: u64) -> Result<(), Error> {
    unit(Sys::TaskCreate, [memory, dst, 0, 0, 0, 0])
}
pub fn task_space(task: u64, dst: u64) -> Result<(), Error> {
    unit(Sys::TaskAddressSpace, [task, dst, 0, 0, 0, 0])
}
pub fn frame_alloc(memory: u64, dst: u64) -> Result<(), Error> {
    unit(Sys::FrameAlloc, [memory, dst, 0, 0, 0, 0])
}
pub fn map(space: u64, frame: u64, vaddr: u64, rights: Rights) -> Result<(), Error> {
    unit(Sys::Map, [space, frame, vaddr, rights.0, 0, 0])
}
pub fn map_raw(space: u64, frame: u64, vaddr: u64, rights: u64) -> Result<(), Error> {
    unit(Sys::Map, [space, frame, vaddr, rights, 0, 0])
}
pub fn unmap(space: u64, vaddr: u64) -> Result<(), Error> {
    unit(Sys::Unmap, [space, vaddr, 0, 0, 0, 0])
}
/// `stack` is the thread's first `rsp`: its entry function must align it (the library's do:
/// [`crate::thread_entry`]).
pub fn thread_create(memory: u64, task: u64, entry: u64, stack: u64, prio: u64, cpu: u64, dst: u64) -> Result<(), Error> {
    // The kernel takes both in one word; a value that does not fit its half would land in the
    // other (a CPU of 2^32 as CPU 0, a priority of 2^32 as a CPU).
    if prio > u32::MAX as u64 {
        return Err(Error::InvalidPriority);
    }
    if cpu > u32::MAX as u64 {
        return Err(Error::InvalidCpu);
    }
    unit(Sys::ThreadCreate, [memory, task, entry, stack, prio | cpu << 32, dst])
}
pub fn thread_resume(t: u64) -> Result<(), Error> {
    unit(Sys::ThreadResume, [t, 0, 0, 0, 0, 0])
}
pub fn thread_suspend(t: u64) -> Result<(), Error> {
    unit(Sys::ThreadSuspend, [t, 0, 0, 0, 0, 0])
}
pub fn thread_set_priority(t: u64, prio: u64) -> Result<(), Error> {
    unit(Sys::ThreadSetPriority, [t, prio, 0, 0, 0, 0])
}
pub fn thread_set_affinity(t: u64, cpu: u64) -> Result<(), Error> {
    unit(Sys::ThreadSetAffinity, [t, cpu, 0, 0, 0, 0])
}
pub fn thread_set_args(t: u64, a0: u64, a1: u64) -> Result<(), Error> {
    unit(Sys::ThreadSetArg, [t, a0, a1, 0, 0, 0])
}
/// → (state, cpu, priority)
pub fn thread_info(t: u64) -> Ret {
    syscall(Sys::ThreadInfo, [t, 0, 0, 0, 0, 0])
}
pub fn thread_exit() -> ! {
    let _ = syscall(Sys::ThreadExit, [0; 6]);
    unreachable!("ThreadExit returned")
}
pub fn task_kill(task: u64) -> Result<(), Error> {
    unit(Sys::TaskKill, [task, 0, 0, 0, 0, 0])
}
pub fn task_exit() -> ! {
    let _ = syscall(Sys::TaskExit, [0; 6]);
    unreachable!("TaskExit returned")
}
/// → (this CPU's index, CPUs online)
pub fn cpu_info() -> (u64, u64) {
    syscall(Sys::CpuInfo, [0; 6]).map(|r| (r[0], r[1])).unwrap_or((0, 1))
}
pub fn shutdown(machine: u64, code: u64) -> Result<(), Error> {
    unit(Sys::Shutdown, [machine, code, 0, 0, 0, 0])
}
/// → (bytes left, bytes in all)
pub fn memory_info(memory: u64) -> Result<(u64, u64), Error> {
    syscall(Sys::MemoryInfo, [memory, 0, 0, 0, 0, 0]).map(|r| (r[0], r[1]))
}
/// `MemoryInfo` in full: (bytes that can be had, bytes in all, bytes the budget has not charged).
pub fn memory_info_all(memory: u64) -> Result<[u64; 3], Error> {
    syscall(Sys::MemoryInfo, [memory, 0, 0, 0, 0, 0])
}
pub fn stat(machine: u64, which: u64) -> Result<u64, Error> {
    syscall(Sys::Stat, [machine, which, 0, 0, 0, 0]).map(|r| r[0])
}

/// A message: tag, badge (on receipt) and the four register words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Msg {
    pub tag: rl4_abi::ipc::Tag,
    pub badge: u64,
    pub w: [u64; 4],
}

/// The raw IPC call (see `rl4_abi::ipc` for the registers).
#[inline(always)]
pub fn ipc(n: Sys, slot: u64, m: &Msg, timeout: u64, send_cap: u64, recv_slot: u64) -> Result<Msg, Error> {
    let (rax, rdi, rsi, rdx, r10, r8, r9): (u64, u64, u64, u64, u64, u64, u64);
    // SAFETY: `syscall` enters the kernel, which checks every argument; the IPC calls clobber
    // only rcx and r11 and return the message in rsi, rdi, rdx, r10, r8, r9 (r12..r14 are
    // inputs the kernel leaves as they were).
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") n as u64 => rax,
            inlateout("rdi") slot => rdi,
            inlateout("rsi") m.tag.0 => rsi,
            inlateout("rdx") m.w[0] => rdx,
            inlateout("r10") m.w[1] => r10,
            inlateout("r8") m.w[2] => r8,
            inlateout("r9") m.w[3] => r9,
            in("r12") timeout,
            in("r13") send_cap,
            in("r14") recv_slot,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    if rax != 0 {
        return Err(Error::try_from(rax).unwrap_or(Error::InvalidArgument));
    }
    Ok(Msg { tag: rl4_abi::ipc::Tag(rsi), badge: rdi, w: [rdx, r10, r8, r9] })
}

use rl4_abi::ipc::{FOREVER, NO_SLOT};

#[inline(always)]
pub fn send(ep: u64, m: &Msg) -> Result<(), Error> {
    ipc(Sys::Send, ep, m, FOREVER, NO_SLOT, NO_SLOT).map(|_| ())
}
#[inline(always)]
pub fn send_timeout(ep: u64, m: &Msg, timeout: u64) -> Result<(), Error> {
    ipc(Sys::Send, ep, m, timeout, NO_SLOT, NO_SLOT).map(|_| ())
}
#[inline(always)]
pub fn nb_send(ep: u64, m: &Msg) -> Result<(), Error> {
    ipc(Sys::NbSend, ep, m, 0, NO_SLOT, NO_SLOT).map(|_| ())
}
#[inline(always)]
pub fn recv(ep: u64) -> Result<Msg, Error> {
    ipc(Sys::Recv, ep, &Msg::default(), FOREVER, NO_SLOT, NO_SLOT)
}
#[inline(always)]
pub fn recv_timeout(ep: u64, timeout: u64) -> Result<Msg, Error> {
    ipc(Sys::Recv, ep, &Msg::default(), timeout, NO_SLOT, NO_SLOT)
}
#[inline(always)]
pub fn nb_recv(ep: u64) -> Result<Msg, Error> {
    ipc(Sys::NbRecv, ep, &Msg::default(), 0, NO_SLOT, NO_SLOT)
}
#[inline(always)]
pub fn call(ep: u64, m: &Msg) -> Result<Msg, Error> {
    ipc(Sys::Call, ep, m, FOREVER, NO_SLOT, NO_SLOT)
}
#[inline(always)]
pub fn reply(m: &Msg) -> Result<(), Error> {
    ipc(Sys::Reply, 0, m, 0, NO_SLOT, NO_SLOT).map(|_| ())
}
#[inline(always)]
pub fn reply_recv(ep: u64, m: &Msg) -> Result<Msg, Error> {
    ipc(Sys::ReplyRecv, ep, m, FOREVER, NO_SLOT, NO_SLOT)
}
pub fn endpoint_create(memory: u64, dst: u64) -> Result<(), Error> {
    unit(Sys::EndpointCreate, [memory, dst, 0, 0, 0, 0])
}
pub fn notification_create(memory: u64, dst: u64) -> Result<(), Error> {
    unit(Sys::NotificationCreate, [memory, dst, 0, 0, 0, 0])
}
pub fn signal(n: u64, bits: u64) -> Result<(), Error> {
    unit(Sys::Signal, [n, bits, 0, 0, 0, 0])
}
pub fn wait(n: u64, timeout: u64) -> Result<u64, Error> {
    ipc(Sys::Wait, n, &Msg::default(), timeout, NO_SLOT, NO_SLOT).map(|m| m.badge)
}
pub fn poll(n: u64) -> Result<u64, Error> {
    syscall(Sys::Poll, [n, 0, 0, 0, 0, 0]).map(|r| r[0])
}
pub fn set_ipc_buffer(thread: u64, vaddr: u64) -> Result<(), Error> {
    unit(Sys::SetIpcBuffer, [thread, vaddr, 0, 0, 0, 0])
}
pub fn cap_mint(src: u64, dst_task: u64, dst: u64, rights: Rights, badge: u64) -> Result<(), Error> {
    unit(Sys::CapMint, [src, dst_task, dst, rights.0, badge, 0])
}

/// `Measure`: a hardware floor measured in the kernel → (mean, min, max) cycles.
pub fn measure(machine: u64, which: u64, arg: u64) -> Result<[u64; 3], Error> {
    syscall(Sys::Measure, [machine, which, arg, 0, 0, 0])
}
/// The kernel's consistency check → (violations, objects checked, frames checked).
pub fn kernel_check(machine: u64) -> Result<[u64; 3], Error> {
    syscall(Sys::KernelCheck, [machine, 0, 0, 0, 0, 0])
}

/// `IrqGet`: an `Irq` capability for ISA interrupt `irq` into `dst`.
pub fn irq_get(devices: u64, irq: u64, dst: u64) -> Result<(), Error> {
    unit(Sys::IrqGet, [devices, irq, dst, 0, 0, 0])
}
/// `IrqBind`: the line's interrupts become `bits` on `notification`, on CPU `cpu`
/// (`rl4_abi::IRQ_CPU_CALLER`: this thread's).
pub fn irq_bind(irq: u64, notification: u64, bits: u64, cpu: u64) -> Result<(), Error> {
    unit(Sys::IrqBind, [irq, notification, bits, cpu, 0, 0])
}
/// `IrqAck`: unmask the line after serving its interrupt.
pub fn irq_ack(irq: u64) -> Result<(), Error> {
    unit(Sys::IrqAck, [irq, 0, 0, 0, 0, 0])
}
pub fn irq_unbind(irq: u64) -> Result<(), Error> {
    unit(Sys::IrqUnbind, [irq, 0, 0, 0, 0, 0])
}
/// `IoPortGet`: an `IoPort` capability for ports `base .. base + count` into `dst`.
pub fn ioport_get(devices: u64, base: u64, count: u64, dst: u64) -> Result<(), Error> {
    unit(Sys::IoPortGet, [devices, base, count, dst, 0, 0])
}
/// `IoPortOpen`: the capability's ports become usable by this task (`in`/`out`).
pub fn ioport_open(ports: u64) -> Result<(), Error> {
    unit(Sys::IoPortOpen, [ports, 0, 0, 0, 0, 0])
}
pub fn ioport_close(ports: u64) -> Result<(), Error> {
    unit(Sys::IoPortClose, [ports, 0, 0, 0, 0, 0])
}

/// `DeviceMemGet`: a frame capability for the device page at physical `pa` into `dst`.
pub fn device_mem_get(devices: u64, pa: u64, dst: u64) -> Result<(), Error> {
    unit(Sys::DeviceMemGet, [devices, pa, dst, 0, 0, 0])
}

/// `in al, dx`. Faults (`#GP`) unless this task opened the port.
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: an I/O read; the kernel's I/O permission bitmap decides whether it reaches the
    // device or faults this thread. It touches no memory.
    unsafe { core::arch::asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags)) };
    v
}
/// `out dx, al`. Faults (`#GP`) unless this task opened the port.
#[inline(always)]
pub fn outb(port: u16, v: u8) {
    // SAFETY: as for `inb`.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags)) };
}
/// `ThreadSetFaultHandler`: `thread`'s faults go to the endpoint in `ep` as messages
/// (`rl4_abi::fault`); `ep` = `NO_SLOT` removes the handler.
pub fn thread_set_fault_handler(thread: u64, ep: u64) -> Result<(), Error> {
    syscall(Sys::ThreadSetFaultHandler, [thread, ep, 0, 0, 0, 0]).map(|_| ())
}
