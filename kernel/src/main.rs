//! rl4: an SMP L4-family microkernel for x86_64.
//!
//! This crate is the kernel image: the boot sequence that wires the `arch` and `smp` layers
//! together (see `docs/boot.md`). The BSP arrives in [`rl4_kernel_entry`] from any of the three
//! boot entries (PVH, Multiboot2, Limine); every AP arrives in [`ap_main`] from the trampoline.
#![no_std]
#![no_main]
// The system-call entry and its dispatcher save no registers for the entry code: it saved the
// user's already (`trap::rl4_syscall`, docs/decisions.md).
#![feature(rust_preserve_none_cc)]
#![deny(unsafe_code)]
#![feature(allocator_api)]
// The spaces' mapping B-trees take their nodes from a stock (`mem::MapNodes`).
#![feature(btreemap_alloc)]
#![feature(get_mut_unchecked)]

extern crate alloc;

mod check;
mod count;
mod device;
mod irq;
mod fault;
mod lock;
mod reclaim;
mod thread;
mod timeout;
mod tlb;
mod fastpath;
mod ipc;
mod measure;
mod mem;
mod obj;
mod qsbr;
mod panic;
mod root;
mod run;
mod sched;
mod syscall;
mod timeline;
mod trace;
mod trap;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use rl4_arch::bootinfo::{self, BootInfo, Firmware};
use rl4_arch::time::RefClock;
use rl4_arch::{console, cpu, percpu, println, time};
use rl4_core::cmdline::{self, Options};
use rl4_core::memmap::{MemKind, Range};
use rl4_smp::acpi::Platform;
use rl4_smp::cpus::{self, Cpu};
use rl4_smp::madt::{self};
use rl4_smp::{boot as apboot, lapic};
use spin::Once;

static BOOT_INFO: Once<BootInfo> = Once::new();
/// Whether the boot looked for the RSDP in the BIOS area (the boot loader passed none).
static RSDP_SCANNED: AtomicBool = AtomicBool::new(false);

/// What the boot loader passed (parsed), once the boot has read it.
pub fn boot_info() -> Option<&'static BootInfo> {
    BOOT_INFO.get()
}
static OPTIONS: Once<Options> = Once::new();
static TRAMPOLINE: Once<Option<u64>> = Once::new();
/// The bootstrap CPU's CPUID, which every application processor is held to
/// (`cpu::Features::lacks`).
static BSP_FEATURES: Once<cpu::Features> = Once::new();
/// The CPU `inject=apcpuid` makes lack the optional features: the plan's last (0: none).
static UNLIKE_CPU: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

fn options() -> &'static Options {
    OPTIONS.get().expect("options parsed at boot")
}

/// Called by the boot trampoline on the BSP: 64-bit mode, boot page tables, boot stack.
// The one symbol the boot assembly calls by name; `no_mangle` is the only unsafe thing here.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn rl4_kernel_entry(protocol: u32, magic: u32, info: u64) -> ! {
    percpu::install_early();
    rl4_arch::idt::load_early();
    console::init();
    println!("rl4 {} booting", env!("CARGO_PKG_VERSION"));

    let parsed = match protocol {
        rl4_arch::ENTRY_PVH => bootinfo::parse_pvh(&rl4_arch::paging::DirectMapMem, info),
        rl4_arch::ENTRY_MULTIBOOT2 => bootinfo::parse_multiboot2(&rl4_arch::paging::DirectMapMem, magic, info),
        rl4_arch::ENTRY_LIMINE => rl4_arch::limine::boot_info(&rl4_arch::paging::DirectMapMem),
        _ => unreachable!("the boot entries pass one of the three protocols"),
    };
    // Kept here until the direct map is up (archives above 4 GiB are expanded then), then
    // published (`boot_info`).
    let mut bi = match parsed {
        Ok(bi) => bi,
        Err(e) => panic!("cannot read the boot information ({e:?}); protocol {protocol}, info at {info:#x}"),
    };
    println!(
        "boot protocol: {}, command line: \"{}\"{}",
        bi.protocol.name(),
        rl4_arch::console::OneLine(bi.cmdline().as_bytes()),
        if bi.cmdline_truncated { " (truncated)" } else { "" }
    );
    // A byte that is not UTF-8 ends the line: what follows it is ignored, and said so (before
    // the thirty-fourth session silently: a review found it).
    if let Some(at) = bi.cmdline_cut() {
        println!("command line: byte {at} is not UTF-8: the line ends there, the rest is ignored");
    }
    println!(
        "boot loader: {}, firmware: {}",
        rl4_arch::console::OneLine(if bi.loader().is_empty() { b"not named" } else { bi.loader().as_bytes() }),
        bi.firmware.describe()
    );
    if let Some(l) = bi.limine {
        println!(
            "limine: base revision {}, HHDM at {:#x}, kernel image at physical {:#x} (virtual {:#x})",
            l.base_revision, l.hhdm, l.kernel_phys, l.kernel_virt
        );
    }
    // A loader need not pass the RSDP (Multiboot2's tags are optional): on a BIOS, or under
    // PVH, it is looked for where the ACPI specification puts it — here, before memory is set
    // up, so that its tables are kept out of the frame allocator as a passed one's are. (Never
    // under UEFI, or a Limine boot that does not name its firmware: low memory promises nothing.)
    if bi.rsdp.is_none() && (bi.firmware == Firmware::Bios || bi.protocol == bootinfo::Protocol::Pvh) {
        RSDP_SCANNED.store(true, Ordering::Relaxed);
        bi.rsdp = bootinfo::scan_bios_rsdp(&rl4_arch::paging::DirectMapMem);
        if let Some(r) = bi.rsdp {
            println!("acpi: the boot loader passed no RSDP; found one at {r:#x} in the BIOS area");
        }
    }
    let (kernel_args, _root_args) = cmdline::split(bi.cmdline());
    let opts = OPTIONS.call_once(|| cmdline::parse(kernel_args, |p| println!("cmdline: {p}")));
    println!(
        "options: run={} maxcpus={} ap_timeout_ms={} hz={} poll_us={} fastpath={}{}",
        opts.run.name(),
        run::OrAll(opts.maxcpus),
        opts.ap_timeout_ms,
        opts.hz,
        opts.poll_us,
        if opts.fastpath { "on" } else { "off" },
        if opts.inject != 0 { " inject (damaging kernel state on purpose, for a test)" } else { "" }
    );
    for r in opts.reserved() {
        println!("reserve: {:#x}..{:#x} kept out of the frame allocator", r.start, r.end);
    }
    if opts.overcommit_mib != 0 {
        println!("overcommit: the root budget promises {} MiB more than memory backs (for a test)", opts.overcommit_mib);
    }
    for e in bi.memory_map() {
        println!("memory map: {:#014x}..{:#014x} {:?}", e.range.start, e.range.end, e.kind);
    }
    let m = mem::init(&bi, options().reserved());
    // Modules the parser could not read (above the 4 GiB the boot page tables map) are looked
    // into now: an archive among them becomes its files, as one below would have.
    let (late, unread) = bi.expand_unread_archives(&rl4_arch::paging::DirectMapMem);
    if late > 0 {
        println!("boot info: {} module(s) above the boot page tables' reach read after the switch to the kernel's", late - unread);
    }
    if unread > 0 {
        println!("boot info: {unread} module(s) not readable even then: handed over as they are, not looked into");
    }
    // Modules are kept out of the frame allocator; `root::start` hands them to the root task.
    for (i, m) in bi.modules().iter().enumerate() {
        println!("boot module {i}: {:#x}..{:#x} ({} bytes) '{}'", m.range.start, m.range.end, m.range.len(), rl4_arch::console::OneLine(m.name().as_bytes()));
    }
    if bi.memmap_dropped > 0 || bi.modules_dropped > 0 {
        println!("boot info: {} memory ranges and {} modules beyond rl4's limits ignored", bi.memmap_dropped, bi.modules_dropped);
    }
    BOOT_INFO.call_once(|| bi);
    TRAMPOLINE.call_once(|| m.trampoline);
    println!(
        "memory: {} MiB usable, {} MiB free in the frame allocator, heap {} KiB at {:#x} (grows on demand), AP trampoline {}",
        m.usable >> 20,
        (m.free_frames * 4096) >> 20,
        m.heap.len() >> 10,
        m.heap.start,
        match m.trampoline {
            Some(p) => alloc::format!("at {p:#x}"),
            None => alloc::string::String::from("none (no free page below 640 KiB: the bootstrap CPU runs alone)"),
        }
    );

    // The BSP's own per-CPU block and a guarded stack; the boot stack is left behind.
    let f = cpu::Features::read();
    // rl4 needs a local APIC (its timer, its interrupts between CPUs, the start of the others),
    // which long mode does not promise (firmware may turn it off; `-cpu max,-apic` has none), and
    // FXSAVE, SSE and SSE2, which every x86_64 CPU has but an emulator may be told to hide.
    // Without one the kernel stops with a line, rather than fault at the APIC's first register
    // or the first fence (before the thirty-third session a #GP panic where the timer was set
    // up, or a double fault; for SSE alone, before the forty-third).
    if let Some(what) = f.missing() {
        println!("cpu: this CPU has no {what}; rl4 needs it; stopping");
        cpu::exit(cpu::QemuExit::Failure);
    }
    let bsp = cpus::create(0, f.apic_id, &mut mem::Frames).expect("BSP per-CPU block");
    cpu::run_on_stack(bsp.stack_top, bsp_main, bsp as *const Cpu as u64)
}

extern "C" fn bsp_main(_bsp: u64) -> ! {
    let bsp = cpus::get(0).expect("BSP block created");
    cpus::init_this_cpu(bsp);
    let f = *BSP_FEATURES.call_once(cpu::Features::read);
    rl4_arch::paging::enable_protection(f.smep, f.smap, f.pcid);
    let Ok(fpu) = rl4_arch::fpu::init_this_cpu() else { unreachable!("the first CPU sets the FPU up") };
    sched::prepare_cpu(0, f.pcid).expect("kernel heap for the bootstrap CPU's scheduler");
    sched::init_cpu(f.pcid);
    let mut brand = [0u8; 48];
    println!(
        "cpu: {}; x2apic={} tsc-deadline={} pcid={} smep={} smap={} nx={} 1g-pages={} invariant-tsc={} hypervisor={}",
        cpu::Features::brand(&mut brand),
        f.x2apic,
        f.tsc_deadline,
        f.pcid,
        f.smep,
        f.smap,
        f.nx,
        f.page1g,
        f.invariant_tsc,
        f.hypervisor
    );
    println!(
        "fpu: {:?}, state components {:#x}, save area {} bytes per thread{}{}",
        fpu.mechanism,
        fpu.components,
        fpu.size,
        if fpu.clear_error_pointers { "; x87 error pointers reset before each load (AMD without XSaveErPtr)" } else { "" },
        if fpu.tcg_quirk { "; XSAVE left off: QEMU's TCG cannot turn it on for a CPU model without XSAVEOPT, XSAVEC, XGETBV1 or XSAVES" } else { "" }
    );

    // What the machine has comes from ACPI, not from assuming a PC/AT: the 8259 PICs only
    // when the MADT says so, the timers to measure the TSC against from the FADT and HPET table.
    // Without readable tables rl4 still runs, on the bootstrap CPU alone
    // (`Platform::without_acpi`), and says why.
    let bi = BOOT_INFO.get().expect("boot info");
    let found = bi.rsdp.map(|r| (r, rl4_smp::acpi_handler::discover(r)));
    let (mut platform, rsdp) = match found {
        Some((r, Ok(p))) => (p, Some(r)),
        Some((r, Err((e, read)))) => {
            println!("acpi: cannot read the MADT through the RSDP at {r:#x} ({e:?}): running on the bootstrap CPU alone, without device interrupts");
            (Platform::without_madt(cpu::apic_base(), read), None)
        }
        None => {
            println!(
                "acpi: the boot loader passed no RSDP (no ACPI tables): running on the bootstrap CPU alone, without device interrupts{}",
                if RSDP_SCANNED.load(Ordering::Relaxed) { " (none in the BIOS area either)" } else { "" }
            );
            (Platform::without_acpi(cpu::apic_base()), None)
        }
    };
    if let Some(a) = platform.fadt_unreadable {
        println!("acpi: warning: the FADT at {a:#x} cannot be read: its fixed ports (SMI command, PM1 control) are not known, nor kept from tasks");
    }
    if platform.has_8259 {
        cpu::disable_legacy_pic();
    }
    check_register_blocks(bi, &mut platform);
    let refs = reference_clocks(bi.firmware, &platform);
    // No clock to measure the TSC against (no PIT, HPET or PM timer answered, and CPUID does
    // not give its frequency): the kernel cannot keep time, and stops with a line, as for a
    // CPU without what it needs (before the thirty-fourth session a panic).
    let Some((hz, src)) = time::init_tsc(&f, &refs, &mut mem::Frames) else {
        println!("tsc: CPUID does not give the TSC frequency and no reference clock answered (tried {refs:?}); rl4 needs one; stopping");
        cpu::exit(cpu::QemuExit::Failure);
    };
    println!("tsc: {}.{:03} MHz ({})", hz / 1_000_000, (hz / 1000) % 1000, src.describe());
    sched::set_poll_us(options().poll_us as u64);
    fastpath::enable(options().fastpath);
    if let Some(rsdp) = rsdp {
        run::log_platform(&platform, rsdp);
    }

    let xapic_base = if f.x2apic {
        0
    } else {
        // SAFETY: the MADT gives the local APIC's register page (firmware tables are trusted
        // at boot); `device.rs` keeps it out of the pages tasks may map.
        #[allow(unsafe_code)]
        let mapped = unsafe { rl4_arch::paging::map_mmio(&mut mem::Frames, platform.lapic_address, 4096) };
        mapped.unwrap_or_else(|e| panic!("mapping the local APIC: {e:?}"))
    };
    // Every I/O APIC pin masked before the first interrupt window (the timer's calibration
    // opens one): a level-triggered pin the firmware left unmasked would interrupt again after
    // each acknowledgement.
    irq::init(&platform, &mut mem::Frames);
    let timer_rate = lapic::configure(lapic::Config {
        x2apic: f.x2apic,
        tsc_deadline: f.tsc_deadline,
        xapic_base,
        hz: options().hz,
        unmask_unused_lvts: options().inject & rl4_core::cmdline::inject::LVT != 0,
    });
    cpus::enable_lapic_this_cpu(bsp);
    if options().inject & rl4_core::cmdline::inject::BSP_ID != 0 {
        let id = platform.cpus.iter().map(|c| c.apic_id).max().unwrap_or(0).saturating_add(1).min(254) as u8;
        if lapic::set_own_xapic_id(id) {
            // And its MADT entry, as such firmware would list it.
            if let Some(e) = platform.cpus.iter_mut().find(|e| e.apic_id == bsp.apic_id()) {
                e.apic_id = id as u32;
            }
            println!("inject: the bootstrap CPU's xAPIC ID set to {id} (and its MADT entry), as firmware that moved it would have");
        } else {
            println!("inject: bspid does nothing in x2APIC mode (the ID is read-only there)");
        }
    }
    // The bootstrap CPU's APIC ID is its APIC's, not the initial one CPUID reports (read before
    // the APIC was up): firmware may have moved it (xAPIC IDs can be written), and IPIs and
    // interrupt routes must name the ID the APIC answers to (before the thirty-eighth session
    // CPUID's was used: on such a machine every interrupt routed to the bootstrap CPU, and
    // every IPI it sent itself, went nowhere).
    let own = lapic::own_id();
    if own != bsp.apic_id() {
        println!("cpu 0: its local APIC reports apic id {own}, CPUID {}: the APIC's is used", bsp.apic_id());
        bsp.header.set_apic_id(own);
    }
    if options().inject & rl4_core::cmdline::inject::HPET_TABLE != 0 {
        match rsdp.and_then(|r| table_in_reserved(bi, r)) {
            Some(pa) => {
                platform.hpet = Some(pa);
                println!("inject: the HPET's base taken to be {pa:#x}, a firmware table's page in memory the map calls reserved");
            }
            None => println!("inject: hpettable found no firmware table above 1 MiB in reserved memory: nothing changed"),
        }
    }
    device::init(&platform);
    println!(
        "local APIC: {} mode, timer {} at {} Hz ({} Hz input)",
        if f.x2apic { "x2APIC" } else { "xAPIC" },
        if f.tsc_deadline { "TSC-deadline" } else { "periodic" },
        options().hz,
        timer_rate
    );
    println!("cpu 0 online (apic id {}, bootstrap processor)", bsp.apic_id());

    let mut plan = madt::plan(&platform.cpus, bsp.apic_id(), f.x2apic, options().maxcpus, rl4_smp::MAX_CPUS);
    if TRAMPOLINE.get().copied().flatten().is_none() {
        plan.bsp_only(madt::Skip::NoTrampoline);
    }
    if plan.bsp_missing && rsdp.is_some() {
        println!("madt: the bootstrap CPU (apic id {}) is not listed; added it anyway", bsp.apic_id());
    }
    for (e, why) in &plan.skipped {
        println!("madt: processor uid {} apic id {} not started: {}", e.uid, e.apic_id, why.describe());
    }
    start_aps(&mut plan);
    run::after_boot(&plan)
}

/// Why the register block `pa..pa + len` (named by a firmware table) must not be mapped, if it
/// must not: beyond this CPU's physical addresses (an entry with such an address faults at every
/// access), or a page of it is memory by the memory map (anything but reserved), the kernel
/// image or what the boot loader passed (a memory map too long for `BootInfo` may have lost its
/// entry): mapped as registers, uncached and written, it would alias memory in use. Whole
/// pages, as `map_mmio` maps them.
fn misplaced(bi: &BootInfo, pa: u64, len: u64) -> Option<&'static str> {
    let Some(end) = pa.checked_add(len).filter(|&e| e <= 1 << cpu::phys_bits()) else {
        return Some("beyond this CPU's physical addresses");
    };
    let (start, end) = (rl4_core::align_down(pa, 4096), rl4_core::align_up(end, 4096));
    let hits = |r: &Range| r.start < end && start < r.end;
    // Anything the map calls other than reserved (as `device.rs` decides which pages tasks may
    // map as devices): RAM of every kind, defective RAM, persistent memory, the framebuffer.
    let ram = bi.memory_map().iter().any(|e| e.kind != MemKind::Reserved && hits(&e.range));
    let in_use = hits(&rl4_arch::kernel_phys_range()) || bi.info_ranges().iter().any(hits);
    (ram || in_use).then_some("in RAM")
}

/// `inject=hpettable`: the page of the first firmware table (`acpi::table_ranges`) above the
/// first megabyte that lies wholly in memory the map calls reserved — where an HPET table's
/// base would pass [`misplaced`] — if there is one.
fn table_in_reserved(bi: &BootInfo, rsdp: u64) -> Option<u64> {
    let mut out = [Range::default(); rl4_smp::acpi::MAX_TABLE_RANGES];
    let (n, _) = rl4_smp::acpi::table_ranges(&rl4_arch::paging::DirectMapMem, rsdp, &mut out);
    let reserved = |pa: u64| bi.memory_map().iter().any(|e| e.kind == MemKind::Reserved && e.range.start <= pa && pa + 4096 <= e.range.end);
    out[..n.min(out.len())].iter().map(|r| r.start & !0xfff).find(|&pa| pa >= 0x10_0000 && reserved(pa))
}

/// The register blocks the firmware's tables name, checked before anything maps them: the
/// local APIC's is the one the CPU itself reports (`IA32_APIC_BASE`, as the application
/// processors' start code uses), whatever the MADT says; an HPET or an I/O APIC whose block is
/// [`misplaced`] (or an HPET table `acpi::read_hpet` refused) is passed over, with a line in the
/// log (the TSC is then measured against another clock; the I/O APIC's lines are unusable).
fn check_register_blocks(bi: &BootInfo, p: &mut Platform) {
    let base = cpu::apic_base();
    if p.lapic_address != base {
        println!("acpi: the MADT places the local APIC at {:#x}, the CPU at {base:#x}: the CPU's address is used", p.lapic_address);
        p.lapic_address = base;
    }
    if let Some((h, why)) = p.hpet_refused {
        println!("acpi: the HPET table places the HPET's registers at {h:#x}, {why}: no HPET");
    }
    if let Some(h) = p.hpet
        && let Some(why) = misplaced(bi, h, 1024)
    {
        println!("acpi: the HPET table places the HPET's registers at {h:#x}, {why}: no HPET");
        p.hpet = None;
    }
    p.ioapics.retain(|a| {
        // An I/O APIC's window starts on 1 KiB (chipsets place it in 1 KiB or 4 KiB steps): an
        // address inside one would write the kernel's register indexes into a real chip's data
        // window (a review of the thirty-seventh session).
        let why = if a.address % 1024 != 0 { Some("not on a 1 KiB boundary") } else { misplaced(bi, a.address as u64, 0x20) };
        if let Some(why) = why {
            println!("acpi: the MADT places I/O APIC {} at {:#x}, {why}: its lines are unusable", a.id, a.address);
        }
        why.is_none()
    });
    // The interrupt controllers win a page the HPET table names too: the kernel would read the
    // HPET's 64-bit registers there (an I/O APIC takes 32-bit accesses only), and offer the page
    // as the HPET's to drivers, which the I/O APIC's set-up then refuses to share (the same
    // review).
    let page = |a: u64| rl4_core::align_down(a, 4096);
    if let Some(h) = p.hpet
        && (page(h) == page(p.lapic_address) || p.ioapics.iter().any(|a| page(a.address as u64) == page(h)))
    {
        println!("acpi: the HPET table places the HPET's registers at {h:#x}, on an interrupt controller's page: no HPET");
        p.hpet = None;
    }
}

/// The clocks to measure the TSC against when CPUID does not give its frequency, best first.
/// A PC BIOS (and PVH, which says nothing and runs on a PC) promises the PIT, as it always did
/// here; UEFI promises no legacy device, so there the timers ACPI describes come first and the
/// PIT last; a hardware-reduced ACPI machine promises no PIT, but may have one (QEMU's microvm
/// has no other clock under TCG): tried last there too.
fn reference_clocks(firmware: Firmware, p: &Platform) -> Vec<RefClock> {
    let mut acpi = Vec::new();
    if let Some(phys) = p.hpet {
        acpi.push(RefClock::Hpet { phys });
    }
    if let Some(t) = p.pm_timer {
        acpi.push(RefClock::PmTimer { port: t.port, bits32: t.bits32 });
    }
    match (firmware, p.hw_reduced) {
        (Firmware::Uefi, _) | (_, true) => {
            acpi.push(RefClock::Pit);
            acpi
        }
        _ => {
            acpi.insert(0, RefClock::Pit);
            acpi
        }
    }
}

/// Frames one more CPU takes as it starts (an estimate, for [`root::room_for_cpu`]): its
/// kernel and IST stacks, its blocks on the kernel heap, two page-table pages.
fn cpu_frames() -> u64 {
    let heap = core::mem::size_of::<Cpu>()
        + core::mem::size_of::<rl4_arch::gdt::CpuTables>()
        + core::mem::size_of::<x86_64::structures::idt::InterruptDescriptorTable>()
        + sched::CPU_BYTES;
    cpus::STACK_PAGES + 4 * cpus::IST_PAGES + (heap as u64).div_ceil(4096) + 2
}

/// Starts the application processors of `plan`, in order. One that memory has no room for
/// ([`make_cpu`]) is not started, nor any after it (the CPU numbers stay without gaps): they
/// leave the plan, as skipped for want of memory, and the kernel runs on the others.
fn start_aps(plan: &mut madt::Plan) {
    // (No trampoline: the plan has the bootstrap CPU only.)
    let Some(page) = TRAMPOLINE.get().copied().flatten() else { return };
    apboot::install_trampoline(page);
    if options().inject & rl4_core::cmdline::inject::AP_CPUID != 0 {
        UNLIKE_CPU.store(plan.cpus.len() as u32 - 1, Ordering::Relaxed);
    }
    let timeout_us = options().ap_timeout_ms as u64 * 1000;
    for i in 1..plan.cpus.len() {
        let e = plan.cpus[i];
        let cpu = match make_cpu(i, e.apic_id) {
            Ok(c) => c,
            Err(why) => {
                let last = plan.cpus.len() - 1;
                if i == last {
                    println!("cpu {i} (apic id {}) not started: {why}; running on {i} CPU(s)", e.apic_id);
                } else {
                    println!("cpus {i} to {last} (apic ids from {}) not started: {why}; running on {i} CPU(s)", e.apic_id);
                }
                plan.keep_first(i, madt::Skip::NoMemory);
                return;
            }
        };
        let t0 = cpu::rdtsc();
        let needs = apboot::Needs {
            page1g: BSP_FEATURES.get().is_some_and(|f| f.page1g),
            hide_nx_1g: options().inject & rl4_core::cmdline::inject::AP_EXT != 0 && i == plan.cpus.len() - 1,
            silent: options().inject & rl4_core::cmdline::inject::AP_SILENT != 0 && i == plan.cpus.len() - 1,
        };
        match apboot::start_ap(cpu, page, ap_main, timeout_us, needs) {
            apboot::Started::Online => run::record_start(i, cpu::rdtsc() - t0),
            apboot::Started::NoResponse if options().run == rl4_core::cmdline::Run::Root => {
                // Its offer is withdrawn (if it answers later, it parks in the trampoline): the
                // kernel runs on the CPUs before it, as Linux runs without a CPU that does not
                // answer, rather than stop (before the thirty-seventh session the root task did
                // not start: a review of firmware input). The CPUs after it are not started,
                // so that the CPU numbers have no gap.
                let last = plan.cpus.len() - 1;
                println!(
                    "cpu {i} (apic id {}) did NOT come up: no response to INIT-SIPI-SIPI within {} ms; {}running on {i} CPU(s)",
                    e.apic_id,
                    options().ap_timeout_ms,
                    if i == last { alloc::string::String::new() } else { alloc::format!("cpus {} to {last} not started; ", i + 1) }
                );
                sched::unprepare_cpu(i as u32);
                plan.keep_first(i, madt::Skip::NoAnswer);
                return;
            }
            // The boot check (`run=boot`) starts every CPU and reports each one that failed.
            apboot::Started::NoResponse => println!(
                "cpu {i} (apic id {}) did NOT come up: no response to INIT-SIPI-SIPI within {} ms",
                e.apic_id,
                options().ap_timeout_ms
            ),
            apboot::Started::Refused(why) => {
                let last = plan.cpus.len() - 1;
                println!(
                    "cpu {i} (apic id {}) stays offline: its CPUID lacks {}, which the bootstrap CPU set up for every CPU; {}running on {i} CPU(s)",
                    e.apic_id,
                    why.describe(),
                    if i == last { alloc::string::String::new() } else { alloc::format!("cpus {} to {last} not started either; ", i + 1) }
                );
                // Its scheduler never runs (it stores its refusal, then only halts).
                sched::unprepare_cpu(i as u32);
                plan.keep_first(i, madt::Skip::Unlike);
                return;
            }
            apboot::Started::Stuck => println!(
                "cpu {i} (apic id {}) did NOT come up: reached 64-bit mode but not its set-up within {} ms",
                e.apic_id,
                options().ap_timeout_ms
            ),
            apboot::Started::Lost => {
                println!(
                    "cpu {i} (apic id {}) did NOT come up: it took its start as the wait ended and never said it runs; \
                     no further CPU is started (the trampoline page may still be read)",
                    e.apic_id
                );
                return;
            }
        }
    }
}

/// Makes CPU `i`'s blocks — scheduler, stacks, descriptor tables — before it starts, if the
/// memory leaves room for the root task with one more CPU ([`root::room_for_cpu`]); otherwise
/// why not (the scheduler made is given back; what `cpus::create` made before it failed stays,
/// unused: once, as no CPU is started after it).
fn make_cpu(i: usize, apic_id: u32) -> Result<&'static Cpu, &'static str> {
    if !root::room_for_cpu(i + 1, cpu_frames()) {
        return Err("the memory left would not start the root task with one more CPU");
    }
    // With PCIDs if this CPU has them (an AP whose own CPUID differs runs without).
    sched::prepare_cpu(i as u32, cpu::Features::read().pcid).map_err(|()| "no kernel heap for its scheduler")?;
    cpus::create(i, apic_id, &mut mem::Frames).map_err(|_| {
        sched::unprepare_cpu(i as u32);
        "no memory for its stacks and descriptor tables"
    })
}

/// Every AP starts here, on its own stack, with the kernel's page tables; everything it sets
/// up was made before it started ([`make_cpu`]): nothing here can run out of memory.
extern "C" fn ap_main(cpu: &'static Cpu) -> ! {
    cpus::init_this_cpu(cpu);
    let mut f = cpu::Features::read();
    if cpu.index == UNLIKE_CPU.load(Ordering::Relaxed) {
        f = f.without_optional();
    }
    // A CPU that lacks what the bootstrap CPU set up for every CPU — a feature of its CPUID,
    // or an FPU set-up of the same size and kind (from its own CPUID: firmware may have left
    // it otherwise than the BSP) — stays offline, and the BSP starts no CPU after it (before
    // the thirty-fifth session it ran as it was: SMAP, one switch for all CPUs, was set by the
    // last CPU up, so one CPU without it or one with it alone took an invalid-opcode fault at
    // its first `stac` or ran user copies with SMAP open; a different FPU area stopped the
    // machine with an assertion).
    let bsp = BSP_FEATURES.get().expect("the bootstrap CPU read its CPUID first");
    let lack = f.lacks(bsp, lapic::is_x2apic(), lapic::uses_tsc_deadline());
    if let Some(why) = lack.or_else(|| rl4_arch::fpu::init_this_cpu().err().map(|_| cpu::Lack::Fpu)) {
        cpus::refuse(cpu, why);
    }
    // PCIDs if its CPUID offers them and its scheduler was made with their table (by the BSP,
    // from the BSP's CPUID: nothing here may allocate); SMEP and SMAP as on the bootstrap CPU.
    let pcid = f.pcid && sched::prepared_pcid(cpu.index);
    rl4_arch::paging::enable_protection(bsp.smep, bsp.smap, pcid);
    sched::init_cpu(pcid);
    cpus::enable_lapic_this_cpu(cpu);
    println!(
        "cpu {} online (apic id {}, {})",
        cpu.index,
        cpu.apic_id(),
        if lapic::is_x2apic() { "x2APIC" } else { "xAPIC" }
    );
    let _ = cpu;
    sched::idle()
}

/// The `inject=` faults (`rl4_core::cmdline::inject`).
pub fn inject() -> u32 {
    OPTIONS.get().map_or(0, |o| o.inject)
}

/// `overcommit=`: bytes added to the root task's budget beyond what memory backs.
pub fn overcommit() -> u64 {
    OPTIONS.get().map_or(0, |o| o.overcommit_mib as u64) << 20
}

/// The root task's part of the command line (after `--`).
pub fn root_args() -> &'static str {
    cmdline::split(BOOT_INFO.get().map_or("", |b| b.cmdline())).1
}
