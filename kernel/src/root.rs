//! Starting the root task: the one user program the kernel loads itself.
//!
//! The kernel builds the root task's address space from its ELF image (embedded in the kernel,
//! so both boot entries carry it), gives it a stack, a read-only `BootInfo` page with the
//! command line and the CPU count, read-only copies of the other embedded user programs and of
//! the boot modules (which the root task loads itself, through system calls), and the capabilities listed in
//! `rl4_abi::root_slots`: its task, address space and thread, all free memory as a budget, and
//! the machine (console and shutdown). Then it starts the root thread on CPU 0.
use alloc::sync::Arc;
use rl4_arch::println;
use rl4_abi::{BootInfo, PAGE_SIZE, Program, Rights, root_slots};
use rl4_elf::{Elf, PF_W, PF_X};

use crate::obj::{Cap, Frame, KObj, Memory, Space, Task, Thread};
use crate::syscall::map_frame;
use crate::{mem, sched};

include!(concat!(env!("OUT_DIR"), "/programs.rs"));

/// Priority of the root thread.
pub const ROOT_PRIORITY: u8 = 100;

/// Frames kept out of the root task's budget for the kernel's own needs (page tables of user
/// spaces, per-CPU structures); more on a machine whose CPUs keep more from user memory
/// ([`kept_frames`]).
const KERNEL_RESERVE_FRAMES: u64 = 1024;

/// Frames the root task's budget leaves out of the free memory: the kernel's reserve, or the
/// frames user memory never takes (`mem::user_floor`: 512, or 32 per CPU above 16 CPUs) if that
/// is more (above 32 CPUs), so that at boot the budget does not promise frames no user can get.
fn kept_frames() -> u64 {
    kept_frames_for(rl4_smp::cpus::count())
}

/// [`kept_frames`] on a machine of `cpus` CPUs.
fn kept_frames_for(cpus: usize) -> u64 {
    KERNEL_RESERVE_FRAMES.max(2 * mem::call_floor_for(cpus))
}

/// Frames the root task's start takes of its budget on a machine of `cpus` CPUs: its image,
/// stack and copies of the embedded programs, what [`start_reserve`] keeps for its first steps,
/// and 64 frames for its page tables and objects. The boot starts no more CPUs than leave it
/// that much ([`room_for_cpu`]).
fn start_frames(cpus: usize) -> u64 {
    let pages = |bytes: usize| (bytes as u64).div_ceil(PAGE_SIZE);
    let image: u64 = PROGRAMS
        .iter()
        .find(|(n, _)| *n == "root")
        .and_then(|(_, b)| Elf::parse(b, PAGE_SIZE, rl4_abi::PROGRAMS_ADDR).ok())
        .map_or(0, |e| e.segments().filter_map(Result::ok).map(|s| (s.pages().1 - s.pages().0) / PAGE_SIZE).sum());
    let copies: u64 = PROGRAMS.iter().map(|(_, b)| pages(b.len())).sum();
    image + copies + rl4_abi::ROOT_STACK_PAGES + start_reserve_for(cpus) / PAGE_SIZE + 64
}

/// Whether the memory free now has room for one more CPU's blocks (`cpu_frames`, an estimate)
/// such that, with `cpus` CPUs in all, the root task can still start: the frames the kernel then
/// keeps ([`kept_frames`]) and those the root task's start takes ([`start_frames`]) stay free.
/// Before the twenty-fifth session every CPU the firmware listed was started whatever the
/// memory, and on a machine with many CPUs and little memory either a CPU's set-up or the root
/// task's start ran out of it and the machine stopped (a review found it).
pub fn room_for_cpu(cpus: usize, cpu_frames: u64) -> bool {
    mem::free_frames() >= cpu_frames + kept_frames_for(cpus) + start_frames(cpus)
}
const _: () = assert!(KERNEL_RESERVE_FRAMES * PAGE_SIZE == 4 << 20, "SHORT names the reserve");

/// Why a mapping of the root task's failed: short of memory, or anything else.
fn mapping(e: rl4_abi::Error) -> &'static str {
    if e == rl4_abi::Error::OutOfMemory { SHORT } else { "mapping failed" }
}

/// Why the root task could not start when memory ran short (the boot stops with it).
const SHORT: &str = "out of memory (its budget is the free memory less the 4 MiB the kernel keeps, 128 KiB per CPU above 32 CPUs; the demo needs about 10 MiB of RAM in all)";

/// Maps `pages` fresh pages at `va` holding `bytes` from `lead` bytes into the first one on
/// (zeros around them), one page at a time (no copy of the whole on the kernel heap).
fn load_bytes(space: &Space, mem: &Arc<Memory>, va: u64, lead: usize, bytes: &[u8], pages: u64, write: bool, exec: bool) -> Result<(), &'static str> {
    const PAGE: usize = PAGE_SIZE as usize;
    let mut page = [0u8; PAGE];
    for i in 0..pages as usize {
        // The part of `bytes` on page `i`: offsets `lo..hi` of the run that starts at page 0.
        let (start, end) = (i * PAGE, (i + 1) * PAGE);
        let (lo, hi) = (start.max(lead), end.min(lead + bytes.len()));
        page.fill(0);
        if lo < hi {
            page[lo - start..hi - start].copy_from_slice(&bytes[lo - lead..hi - lead]);
        }
        let f = Frame::with_bytes(mem, &page).map_err(|_| SHORT)?;
        map_frame(space, va + i as u64 * PAGE_SIZE, f, write, exec).map_err(mapping)?;
    }
    Ok(())
}

pub fn start(cmdline: &str, tsc_hz: u64) -> Result<(), &'static str> {
    // The mappings made here (`map_frame`'s infallible map insert) have the bootstrap CPU's
    // reserve behind them, as a `Map` call's have after its check.
    if !mem::fill_reserve() {
        return Err(SHORT);
    }
    let (_, root_image) = PROGRAMS.iter().find(|(n, _)| *n == "root").ok_or("no root program embedded")?;
    let budget = mem::free_frames().saturating_sub(kept_frames()) * PAGE_SIZE + crate::overcommit();
    let memory = Memory::new(budget);
    let space = Space::new(&memory).map_err(|_| SHORT)?;
    let task = Task::new(&memory, space.clone(), None).map_err(|_| SHORT)?;
    // The root task's table gets its shadow now (it serves IPC from the start), so that its
    // budget at the first look already includes it.
    task.make_shadow().map_err(|_| SHORT)?;
    // The test scripts know the root task's console lines by this id.
    if task.id != rl4_abi::ROOT_TASK_ID {
        return Err("the root task did not get ROOT_TASK_ID");
    }

    let elf = Elf::parse(root_image, PAGE_SIZE, rl4_abi::PROGRAMS_ADDR).map_err(|_| "root ELF rejected")?;
    for seg in elf.segments() {
        let seg = seg.map_err(|_| "root ELF rejected")?;
        let (p0, p1) = seg.pages();
        // The segment's file bytes start this far into its first page.
        let lead = (seg.vaddr - p0) as usize;
        let file = elf.file_bytes(&seg);
        load_bytes(&space, &memory, p0, lead, file, (p1 - p0) / PAGE_SIZE, seg.flags & PF_W != 0, seg.flags & PF_X != 0)?;
    }
    // Stack.
    let stack_base = rl4_abi::ROOT_STACK_TOP - rl4_abi::ROOT_STACK_PAGES * PAGE_SIZE;
    load_bytes(&space, &memory, stack_base, 0, &[], rl4_abi::ROOT_STACK_PAGES, true, false)?;
    // The other programs, read-only.
    let mut bi = BootInfo {
        magic: BootInfo::MAGIC,
        cpus: sched::online_count(),
        tsc_hz,
        memory_bytes: budget,
        cmdline_len: 0,
        cmdline: [0; rl4_abi::BOOT_CMDLINE_MAX],
        nprograms: 0,
        programs: [Program::default(); rl4_abi::MAX_PROGRAMS],
        hpet: crate::device::hpet(),
        ioapic: crate::device::first_ioapic(),
        smi_port: crate::device::smi_port(),
    };
    let n = cmdline.len().min(rl4_abi::BOOT_CMDLINE_MAX);
    bi.cmdline[..n].copy_from_slice(&cmdline.as_bytes()[..n]);
    bi.cmdline_len = n as u64;
    let mut at = rl4_abi::PROGRAMS_ADDR;
    for (i, (name, bytes)) in PROGRAMS.iter().enumerate().take(rl4_abi::MAX_PROGRAMS) {
        let pages = (bytes.len() as u64).div_ceil(PAGE_SIZE);
        load_bytes(&space, &memory, at, 0, bytes, pages, false, false)?;
        bi.programs[i] = program(name, at, bytes.len() as u64, Program::EMBEDDED);
        bi.nprograms += 1;
        at += (pages + 1) * PAGE_SIZE;
    }
    modules(&space, &memory, &mut bi, &mut at)?;
    // BootInfo page.
    let bytes = bootinfo_bytes(&bi);
    let f = Frame::with_bytes(&memory, &bytes[..]).map_err(|_| SHORT)?;
    map_frame(&space, rl4_abi::BOOT_INFO_ADDR, f, false, false).map_err(mapping)?;

    let thread = Thread::new(&memory, task.clone(), elf.entry, rl4_abi::ROOT_STACK_TOP, ROOT_PRIORITY, 0)
        .map_err(|_| SHORT)?;
    thread.regs.with(|r| r.set_arg(0, rl4_abi::BOOT_INFO_ADDR));
    thread.life.lock().mcp = rl4_abi::MAX_PRIORITY as u8;
    {
        let ins = |slot, obj| task.insert_cap(slot, Cap::new(obj, Rights::ALL, 0)).map_err(|_| "cap");
        ins(root_slots::TASK, KObj::Task(task.clone()))?;
        ins(root_slots::SPACE, KObj::Space(space.clone()))?;
        ins(root_slots::THREAD, KObj::Thread(thread.clone()))?;
        ins(root_slots::MEMORY, KObj::Memory(memory.clone()))?;
        ins(root_slots::MACHINE, KObj::Machine)?;
        ins(root_slots::DEVICES, KObj::Devices)?;
    }
    inject(crate::inject(), &memory, &task);
    crate::thread::resume(&thread).map_err(|_| "the root thread could not start")?;
    Ok(())
}

/// A directory entry (names are cut to `PROGRAM_NAME_MAX` bytes, at a character's boundary; a
/// module's name arrives cut already, to `MODULE_NAME_MAX`, which is no longer).
fn program(name: &str, addr: u64, len: u64, kind: u64) -> Program {
    let mut p = Program { name: [0; rl4_abi::PROGRAM_NAME_MAX + 1], addr, len, kind };
    let n = (0..=name.len().min(rl4_abi::PROGRAM_NAME_MAX)).rev().find(|&n| name.is_char_boundary(n)).unwrap_or(0);
    p.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    p
}
const _: () = assert!(rl4_arch::bootinfo::MODULE_NAME_MAX <= rl4_abi::PROGRAM_NAME_MAX);

/// What a module may not take of the root task's budget: what its start still takes after the
/// modules (the BootInfo page with its mapping and page tables, the first thread with its FPU
/// area: up to about 32 KiB), and room for its first steps (a few threads, their stacks and
/// page tables: the demo takes about 58 KiB at 2 CPUs), with room to spare: 256 KiB, and 32 KiB
/// more per CPU for a thread on each with its stack (the demo's: about 22 KiB of budget each;
/// with 256 KiB alone, 48 CPUs' demo ran out of memory behind modules that filled the budget).
fn start_reserve() -> u64 {
    start_reserve_for(rl4_smp::cpus::count())
}

/// [`start_reserve`] on a machine of `cpus` CPUs.
fn start_reserve_for(cpus: usize) -> u64 {
    256 * 1024 + 32 * 1024 * cpus as u64
}

/// Hands the boot modules to the root task: each is copied, page by page, into frames charged
/// to the root task's budget and mapped read-only after the embedded programs, and listed in
/// the `BootInfo` with its name (`module<N>` when the boot loader gave none). Copying (rather
/// than mapping the boot loader's pages) keeps every frame the root task sees an ordinary,
/// owned frame object that the consistency check counts, and keeps out whatever shares the
/// module's first and last pages; the boot loader's copy stays reserved. A module too big,
/// unreadable, past the directory's room or more than the budget leaves ([`start_reserve`]
/// kept back) is refused with a console line; the others go on.

fn modules(space: &Space, memory: &Arc<Memory>, bi: &mut BootInfo, at: &mut u64) -> Result<(), &'static str> {
    use rl4_arch::bootinfo::PhysMem;
    let Some(boot) = crate::boot_info() else { return Ok(()) };
    let mut page = alloc::vec![0u8; PAGE_SIZE as usize];
    let map = || boot.memory_map().iter().map(|e| (e.range, e.kind));
    let kernel = rl4_arch::kernel_phys_range();
    for (i, m) in boot.modules().iter().enumerate() {
        let default = alloc::format!("module{i}");
        let name = if m.name().is_empty() { default.as_str() } else { m.name() };
        // The loader's bytes, shown on the one line whatever they hold.
        let shown = rl4_arch::console::OneLine(name.as_bytes());
        let range = misplaced(i, m.range, kernel, map());
        // Where the boot loader says it is, read only if that is memory and not the kernel's
        // own image (since the forty-second session: before, a module the loader placed on the
        // kernel handed the kernel's data to the root task, and one on device registers read
        // them; a review found it).
        // (A map too long for the boot information lost entries, maybe the one that holds the
        // module (`mem.rs` maps the modules for that case): then only a range the map gives
        // to something other than memory is refused.)
        let in_memory = boot.in_memory(range);
        let refuse = if range.overlaps(kernel) {
            Some("it lies on the kernel image")
        } else if !in_memory {
            Some("part of it is not memory (the memory map gives it to no RAM, boot loader or module range)")
        } else {
            None
        };
        if let Some(why) = refuse {
            println!("boot module {i} '{shown}' ({:#x}..{:#x}) refused: {why}", range.start, range.end);
            continue;
        }
        let len = range.len();
        if len > rl4_abi::MAX_MODULE_BYTES {
            println!("boot module {i} '{shown}' refused: {len} bytes, more than the {} MiB limit", rl4_abi::MAX_MODULE_BYTES >> 20);
            continue;
        }
        if bi.nprograms as usize == rl4_abi::MAX_PROGRAMS {
            println!("boot module {i} '{shown}' refused: more than {} programs", rl4_abi::MAX_PROGRAMS);
            continue;
        }
        let pages = len.div_ceil(PAGE_SIZE);
        // Its frames, their mappings and page tables, and what the root task's start needs
        // after the modules (its BootInfo page and its thread, with room to spare): a module
        // that would leave less is refused here, whole, rather than failing the start half-way
        // (a set of modules sized to the budget panicked the boot before the fifteenth session).
        // The frames a user can take count too: a budget larger than memory (`overcommit=`) or
        // the kernel's own allocations meanwhile may leave fewer than the budget says (at 48
        // CPUs the frames were short before the budget was, and the boot panicked).
        let need = pages * (rl4_abi::cost::FRAME + rl4_abi::cost::MAP) + (pages / 512 + 3) * PAGE_SIZE + start_reserve();
        let left = memory.left().min(mem::user_frames_left() * PAGE_SIZE);
        if left < need {
            println!("boot module {i} '{shown}' refused: {len} bytes, more than the root task's budget leaves ({left} bytes left)");
            continue;
        }
        let mut frames = alloc::vec::Vec::with_capacity(pages as usize);
        let mut refused = None;
        for p in 0..pages {
            let n = (len - p * PAGE_SIZE).min(PAGE_SIZE) as usize;
            if rl4_arch::paging::DirectMapMem.read(range.start + p * PAGE_SIZE, &mut page[..n]).is_none() {
                refused = Some("its memory is not readable");
                break;
            }
            let Ok(f) = Frame::with_bytes(memory, &page[..n]) else {
                refused = Some("no memory left to copy it into");
                break;
            };
            frames.push(f);
        }
        if let Some(why) = refused {
            println!("boot module {i} '{shown}' ({:#x}..{:#x}) refused: {why}", range.start, range.end);
            continue; // the frames copied so far go back as `frames` drops (no lock held)
        }
        for (p, f) in frames.into_iter().enumerate() {
            map_frame(space, *at + p as u64 * PAGE_SIZE, f, false, false).map_err(mapping)?;
        }
        let p = program(name, *at, len, Program::MODULE);
        // A name an earlier module has already (names are cut to 31 bytes, and an archive's
        // members to their last path component): handed over all the same, but `start=` finds
        // the first, and the line says so (before the thirty-first session nothing did).
        let twin = bi.programs[..bi.nprograms as usize].iter().any(|q| q.kind == Program::MODULE && q.name == p.name);
        bi.programs[bi.nprograms as usize] = p;
        bi.nprograms += 1;
        println!("boot module {i} '{shown}': {len} bytes, handed to the root task at {:#x}", *at);
        if twin {
            println!(
                "boot module {i} '{shown}': a module handed over before has the same name (names are cut to {} bytes): start= finds that one",
                rl4_arch::bootinfo::MODULE_NAME_MAX
            );
        }
        *at += (pages + 1) * PAGE_SIZE;
    }
    Ok(())
}

/// Module `i`'s range as the boot loader gave it, or, under `inject=modplace`, misplaced as a
/// faulty boot loader would have it: module 0 on the kernel image's first two pages, module 1
/// on the first page of the memory map's first entry that is not memory.
fn misplaced(
    i: usize,
    range: rl4_core::memmap::Range,
    kernel: rl4_core::memmap::Range,
    mut map: impl Iterator<Item = (rl4_core::memmap::Range, rl4_core::memmap::MemKind)>,
) -> rl4_core::memmap::Range {
    use rl4_core::memmap::Range;
    if crate::inject() & rl4_core::cmdline::inject::MODPLACE == 0 {
        return range;
    }
    let moved = match i {
        0 => Some(Range::new(kernel.start, kernel.start + 2 * PAGE_SIZE)),
        1 => map.find(|(r, k)| !k.is_memory() && !r.is_empty()).map(|(r, _)| Range::new(r.start, r.end.min(r.start + PAGE_SIZE))),
        _ => None,
    };
    match moved {
        Some(to) => {
            println!("inject: boot module {i} taken to lie at {:#x}..{:#x}", to.start, to.end);
            to
        }
        None => range,
    }
}

/// Damages kernel state on purpose (`inject=` on the kernel command line), so that a test can
/// see the consistency check (`check.rs`) find each kind of damage. Never used otherwise.
fn inject(what: u32, memory: &Arc<Memory>, task: &Arc<Task>) {
    use rl4_core::cmdline::inject::*;
    if what & REFCOUNT != 0 {
        println!("inject: one reference too many on the root task (id {})", task.id);
        core::mem::forget(task.clone());
    }
    if what & FRAME != 0 {
        // Leaked: allocated, and no owner will ever free it.
        println!("inject: a frame owned by nothing at {:#x}", mem::alloc_frame().map_or(0, |f| f.into_raw()));
    }
    if what & DERIV != 0 {
        println!("inject: a derivation node owned by no slot, in the tree of the root task's memory capability");
        crate::obj::inject_orphan_node(task, rl4_abi::root_slots::MEMORY);
    }
    if what & BUDGET != 0 {
        println!("inject: 4096 bytes charged to the root budget for nothing");
        let _ = memory.charge(4096);
    }
    if what & LOCKS != 0 {
        // Against the lock order (never two home locks at once outside `HomeMutex::rehome_when`:
        // counted by a `lockcheck` kernel) and against reclamation (a kernel object destroyed
        // under a lock: counted always). The two threads have different homes (never placed,
        // the second's need not be a CPU that exists): one home's lock taken twice would never
        // come free.
        if let (Ok(a), Ok(b), Ok(f)) =
            (Thread::new(memory, task.clone(), 0, 0, 1, 0), Thread::new(memory, task.clone(), 0, 0, 1, 1), Frame::new(memory))
        {
            println!("inject: threads {} and {} (homes 0 and 1) locked together, and a frame destroyed under their locks", a.id, b.id);
            let la = a.life.lock();
            let lb = b.life.lock();
            drop(f);
            drop(lb);
            drop(la);
        }
    }
    if what & DEVICE != 0 {
        // A free page of RAM passed off as device page 0 (held in root slot CAP_SLOTS - 2).
        if let Some(f) = mem::alloc_frame() {
            let pa = f.addr();
            mem::free_frame(f);
            // SAFETY: none: this breaks `DeviceFrame::new`'s contract on purpose (the page is
            // free RAM), so that the test sees the consistency check report it. Only a boot
            // with `inject=device` on its command line gets here, never a normal one.
            #[allow(unsafe_code)]
            let forged = unsafe { rl4_core::device::DeviceFrame::new(pa) };
            if let Ok(f) = Frame::device(memory, forged, 0) {
                println!("inject: a device frame over RAM at {pa:#x} (held in root slot {})", rl4_abi::CAP_SLOTS - 2);
                let _ = task.insert_cap(rl4_abi::CAP_SLOTS - 2, Cap::new(KObj::Frame(f), Rights::NONE, 0));
            }
        }
    }
    if what & QUEUE != 0 {
        // A thread blocked on one notification (its wait made by the transitions a `Wait`
        // makes) but put into another's wait list (held in root slots CAP_SLOTS - 3..=5).
        let made = (crate::ipc::Notification::new(memory), crate::ipc::Notification::new(memory), Thread::new(memory, task.clone(), 0, 0, 1, 0));
        if let (Ok(n1), Ok(n2), Ok(t)) = made {
            let cpu = t.life.lock().cpu;
            let blocked = {
                let mut l = t.life.lock();
                l.resume().is_ok()
                    && l.run_here(cpu).is_ok()
                    && l.block(crate::obj::Wait::Notify { n: crate::obj::NtfRef(Arc::downgrade(&n1)) }, u64::MAX).is_ok()
                    && matches!(l.leave_cpu(cpu), rl4_core::life::Leave::Gone)
            };
            if blocked {
                println!("inject: thread {} waits on one notification but is queued on another's list (root slots {}..={})", t.id, rl4_abi::CAP_SLOTS - 5, rl4_abi::CAP_SLOTS - 3);
                crate::ipc::enqueue_waiter(&mut n2.q.lock().waiters, t.clone(), 1);
            }
            let _ = task.insert_cap(rl4_abi::CAP_SLOTS - 3, Cap::new(KObj::Thread(t), Rights::NONE, 0));
            let _ = task.insert_cap(rl4_abi::CAP_SLOTS - 4, Cap::new(KObj::Notification(n1), Rights::NONE, 0));
            let _ = task.insert_cap(rl4_abi::CAP_SLOTS - 5, Cap::new(KObj::Notification(n2), Rights::NONE, 0));
        }
    }
    if what & STRAY != 0 {
        let me = rl4_arch::percpu::cpu_index() as usize;
        println!("inject: an interrupt on vector 0x60 to this CPU, on 0x61 to the others");
        for i in 0..rl4_smp::cpus::count() {
            rl4_smp::cpus::send_ipi(i, if i == me { 0x60 } else { 0x61 });
        }
    }
    if what & PARENT != 0 {
        // A task made by another (both held in root slots CAP_SLOTS - 6 and - 7), whose maker
        // is marked ended without the end reaching it (as if `kill_task` had skipped its walk),
        // and one task more counted on the root task than it made.
        let made = Space::new(memory).and_then(|s| Task::new(memory, s, Some(task.clone())));
        let child = made.clone().and_then(|p| Space::new(memory).and_then(|s| Task::new(memory, s, Some(p))));
        if let (Ok(p), Ok(c)) = (made, child) {
            println!("inject: task {} lives on after task {}, which made it, ended; task {} counts one task more than it made", c.id, p.id, task.id);
            p.dead.store(true, core::sync::atomic::Ordering::SeqCst);
            p.ended.store(true, core::sync::atomic::Ordering::Release);
            task.children.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
            let _ = task.insert_cap(rl4_abi::CAP_SLOTS - 6, Cap::new(KObj::Task(p), Rights::NONE, 0));
            let _ = task.insert_cap(rl4_abi::CAP_SLOTS - 7, Cap::new(KObj::Task(c), Rights::NONE, 0));
        }
    }
    if what & IOMAP != 0 {
        if let Some(map) = rl4_arch::ioport::this_cpu() {
            println!("inject: port 0x3e8 opened in cpu {}'s I/O permission bitmap, and recorded nowhere", rl4_arch::percpu::cpu_index());
            map.set(0x3e8, 1, true);
        }
        // The last CPU (idle: the check test runs the root task alone) marked as owing itself
        // a re-read of its ranges, with no interrupt sent to do it.
        let last = rl4_smp::cpus::count().saturating_sub(1);
        if let Some(cs) = crate::sched::get(last).filter(|_| last != rl4_arch::percpu::cpu_index() as usize) {
            println!("inject: cpu {last} owes itself a re-read of its port ranges, and no interrupt was sent to do it");
            cs.tlb.io_owed.store(true, core::sync::atomic::Ordering::Relaxed);
        }
    }
    if what & STATE != 0 {
        if let Ok(t) = Thread::new(memory, task.clone(), 0, 0, 1, 0) {
            println!("inject: thread {} marked Runnable but put in no queue (held in root slot {})", t.id, rl4_abi::CAP_SLOTS - 1);
            // `resume` without the placing that must follow it.
            let _ = t.life.lock().resume();
            let _ = task.insert_cap(rl4_abi::CAP_SLOTS - 1, Cap::new(KObj::Thread(t), Rights::NONE, 0));
        }
    }
}

/// The bytes of a `BootInfo` (a plain `#[repr(C)]` struct of integers and byte arrays).
fn bootinfo_bytes(bi: &BootInfo) -> alloc::vec::Vec<u8> {
    let mut v = alloc::vec::Vec::with_capacity(core::mem::size_of::<BootInfo>());
    let w = |v: &mut alloc::vec::Vec<u8>, x: u64| v.extend_from_slice(&x.to_le_bytes());
    w(&mut v, bi.magic);
    w(&mut v, bi.cpus);
    w(&mut v, bi.tsc_hz);
    w(&mut v, bi.memory_bytes);
    w(&mut v, bi.cmdline_len);
    v.extend_from_slice(&bi.cmdline);
    w(&mut v, bi.nprograms);
    for p in &bi.programs {
        v.extend_from_slice(&p.name);
        w(&mut v, p.addr);
        w(&mut v, p.len);
        w(&mut v, p.kind);
    }
    w(&mut v, bi.hpet);
    w(&mut v, bi.ioapic);
    w(&mut v, bi.smi_port);
    assert_eq!(v.len(), core::mem::size_of::<BootInfo>(), "BootInfo layout");
    v
}
