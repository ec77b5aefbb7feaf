//! Device capabilities and their system calls: `Devices` (the root task's slot 5) makes `Irq`
//! capabilities (one per interrupt line, `irq.rs`) and `IoPort` capabilities (a port range);
//! `IoPortOpen` opens a range to the calling task.
//!
//! Port access goes through each CPU's I/O permission bitmap (in its TSS, `arch::ioport`):
//! user code runs `in`/`out` itself, at full speed; a port whose bit is set faults (`#GP`)
//! before anything reaches the device. A task's open ranges (at most `IO_RANGES`) are kept in
//! its address space's [`IoSpace`]; [`sync`] makes this CPU's bitmap match the space being
//! switched to, which costs two loads and a compare when nothing changes and a few byte
//! writes per port otherwise (see docs/decisions.md).
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};
use rl4_abi::{Error, IO_RANGES, IRQ_CPU_CALLER, ObjType, Rights, Sys};
use rl4_core::device::{KERNEL_PORTS, OpenSet, Ports};
use rl4_smp::MAX_CPUS;
use spin::Once;

use crate::lock::{Level, Mutex};
use crate::obj::{Cap, KObj, Space, Thread};

/// A task's open port ranges (kept in its address space: one per task).
pub struct IoSpace {
    /// Which state of the ranges this is: 0 while the task never opened one, else a number no
    /// other state of any space had (bumped after every change, from [`GENERATION`]). A CPU
    /// whose bitmap holds this generation needs no work at a switch.
    generation: AtomicU64,
    /// The ranges open now, packed (`Ports::pack`), read without a lock.
    packed: [AtomicU64; IO_RANGES],
    set: Mutex<OpenSet<IO_RANGES>, { Level::OBJECT }>,
}

impl IoSpace {
    pub const fn new() -> IoSpace {
        IoSpace {
            generation: AtomicU64::new(0),
            packed: [const { AtomicU64::new(0) }; IO_RANGES],
            set: Mutex::new(OpenSet { ranges: [(Ports { base: 0, count: 0 }, 0); IO_RANGES] }),
        }
    }
}

impl Default for IoSpace {
    fn default() -> Self {
        Self::new()
    }
}

/// Generations of port-range states, machine-wide (taken only by `IoPortOpen`/`IoPortClose`).
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// The ranges each CPU's bitmap has open (its generation is in its `tlb::CpuTlb`).
static LOADED: [[AtomicU64; IO_RANGES]; MAX_CPUS] = [const { [const { AtomicU64::new(0) }; IO_RANGES] }; MAX_CPUS];

/// Makes this CPU's I/O permission bitmap open exactly `sp`'s ranges; `loaded` is the
/// generation it holds (this CPU's `CpuTlb::io_generation`). Two loads and a compare when it
/// holds them already (every switch between tasks that never opened a port). Called when the
/// CPU switches address spaces, and when the running task's ranges change.
#[inline(always)]
pub fn sync(loaded: &AtomicU64, sp: &Space) {
    if loaded.load(Ordering::Relaxed) != sp.io.generation.load(Ordering::Acquire) {
        reload(loaded, sp);
    }
}

#[inline(never)]
fn reload(loaded: &AtomicU64, sp: &Space) {
    let Some(map) = rl4_arch::ioport::this_cpu() else { return };
    let ranges = &LOADED[rl4_arch::percpu::cpu_index() as usize % MAX_CPUS];
    // The generation first: a change after this read bumps it again (and sends this CPU an
    // IPI), so the next `sync` looks again.
    let g = sp.io.generation.load(Ordering::Acquire);
    for l in ranges {
        if let Some(p) = Ports::unpack(l.swap(0, Ordering::Relaxed)) {
            map.set(p.base, p.count, false);
        }
    }
    for (l, w) in ranges.iter().zip(&sp.io.packed) {
        let w = w.load(Ordering::Relaxed);
        if let Some(p) = Ports::unpack(w) {
            map.set(p.base, p.count, true);
        }
        l.store(w, Ordering::Relaxed);
    }
    loaded.store(g, Ordering::Relaxed);
}

/// This CPU's bitmap made to match its running thread's task (after the task's ranges
/// changed: on the CPU that changed them, and on the others through the reschedule IPI).
pub fn sync_current() {
    let loaded = &crate::sched::this_cpu().tlb.io_generation;
    crate::sched::with_current(|t| sync(loaded, &t.space));
}


/// Ports described by firmware that the kernel uses (the ACPI PM timer block).
static FIRMWARE_PORTS: Once<Option<Ports>> = Once::new();

pub fn init(p: &rl4_smp::acpi::Platform) {
    FIRMWARE_PORTS.call_once(|| p.pm_timer.and_then(|t| Ports::new(t.port as u64, 4)));
}

fn kernel_port(p: Ports) -> bool {
    KERNEL_PORTS.iter().chain(FIRMWARE_PORTS.get().and_then(|x| x.as_ref())).any(|k| k.overlaps(p))
}

fn obj(t: &Thread, slot: u64, ty: ObjType) -> Result<KObj, Error> {
    Ok(t.task.caps.lock().lookup(slot, ty, Rights::NONE)?.obj.clone())
}

fn irq_line(t: &Thread, slot: u64) -> Result<Arc<crate::irq::IrqLine>, Error> {
    match obj(t, slot, ObjType::Irq)? {
        KObj::Irq(l) => Ok(l),
        _ => Err(Error::WrongType),
    }
}

fn ports(t: &Thread, slot: u64) -> Result<Ports, Error> {
    match obj(t, slot, ObjType::IoPort)? {
        KObj::IoPort(p) => Ok(p),
        _ => Err(Error::WrongType),
    }
}

/// Puts a new capability (read, write and grant rights) into `slot`.
fn put(t: &Thread, slot: u64, obj: KObj) -> Result<(), Error> {
    t.task.insert_cap(slot, Cap::new(obj, Rights::READ.union(Rights::WRITE).union(Rights::GRANT), 0))
}

/// The device system calls (`Sys::IrqGet` ..= `Sys::IoPortClose`), arguments `a`.
pub fn syscall(t: &Arc<Thread>, s: Sys, a: [u64; 6]) -> Result<[u64; 3], Error> {
    match s {
        Sys::IrqGet => {
            obj(t, a[0], ObjType::Devices)?;
            t.task.caps.lock().check_free(a[2])?;
            let line = crate::irq::get(a[1])?;
            put(t, a[2], KObj::Irq(line))?;
        }
        Sys::IrqBind => {
            let line = irq_line(t, a[0])?;
            let n = match t.task.caps.lock().lookup(a[1], ObjType::Notification, Rights::SEND)?.obj.clone() {
                KObj::Notification(n) => n,
                _ => return Err(Error::WrongType),
            };
            let cpu = if a[3] == IRQ_CPU_CALLER { rl4_arch::percpu::cpu_index() as u64 } else { a[3] };
            if !crate::sched::cpu_online(cpu) {
                return Err(Error::InvalidCpu);
            }
            crate::irq::bind(&line, &n, a[2], cpu as usize)?;
        }
        Sys::IrqAck => crate::irq::ack(&*irq_line(t, a[0])?)?,
        Sys::IrqUnbind => crate::irq::unbind(&*irq_line(t, a[0])?),
        Sys::IoPortGet => {
            obj(t, a[0], ObjType::Devices)?;
            let p = Ports::new(a[1], a[2]).ok_or(Error::InvalidArgument)?;
            if kernel_port(p) {
                return Err(Error::Busy);
            }
            put(t, a[3], KObj::IoPort(p))?;
        }
        Sys::IoPortOpen | Sys::IoPortClose => {
            let p = ports(t, a[0])?;
            let io = &t.space.io;
            {
                let mut set = io.set.lock();
                if s == Sys::IoPortOpen {
                    set.open(p).map_err(|_| Error::Busy)?;
                } else if !set.close(p) {
                    return Err(Error::InvalidState);
                }
                for (w, v) in io.packed.iter().zip(set.packed()) {
                    w.store(v, Ordering::Relaxed);
                }
                io.generation.store(GENERATION.fetch_add(1, Ordering::Relaxed), Ordering::Release);
            }
            sync_current();
            // Other CPUs running this task's threads re-read its ranges on the reschedule
            // interrupt (`trap.rs`): within one IPI, a close holds everywhere and an open is
            // seen by every thread of the task.
            let me = rl4_arch::percpu::cpu_index() as usize;
            for c in (0..MAX_CPUS).filter(|&c| c != me && crate::sched::cpu_online(c as u64)) {
                rl4_smp::cpus::send_resched(c);
            }
        }
        _ => return Err(Error::InvalidSyscall),
    }
    Ok([0; 3])
}
