//! The third entry: the Limine boot protocol (base revision 2, as Limine 8.x speaks it), in
//! 64-bit mode.
//!
//! Limine reads the requests below from the kernel's `.requests` section (between the start
//! and end markers, see `arch/linker.ld`), loads the kernel's segments — all linked in the
//! higher half, as Limine requires — contiguously at physical addresses of its own choosing,
//! maps them at their link addresses, and jumps to [`limine_entry`] (named by the entry point
//! request: the ELF entry point is Multiboot2's 32-bit one) in long mode, on its own page
//! tables, GDT and stack, interrupts off.
//!
//! The entry zeroes `.bss`, moves to the kernel's boot stack and calls [`limine_handoff`], which
//! 1. notes Limine's answers in a [`LimineHandoff`] while Limine's page tables still map them
//!    (the responses are at higher-half direct map addresses);
//! 2. builds boot page tables of the shape `boot32` builds for the other two entries: the first
//!    4 GiB identity-mapped and at [`DIRECT_MAP`] (2 MiB pages), and the kernel image at its
//!    link address with 4 KiB pages pointing wherever Limine put it. The AP trampoline starts
//!    every other CPU through these tables too (they lie in the image, below 4 GiB);
//! 3. loads them, with global pages off so that none of Limine's translations survive.
//!
//! From there the kernel runs exactly as after PVH or Multiboot2: `rl4_kernel_entry(ENTRY_LIMINE,
//! 0, 0)`, which reads the responses with [`boot_info`]. Limine's own structures stay where they
//! are: bootloader-reclaimable memory never enters the frame allocator.
//!
//! Limine's MP request is not used: the bootstrap CPU starts the others itself from the MADT
//! (see `docs/boot.md`).
use core::cell::UnsafeCell;
use limine::BaseRevision;
use limine::paging::Mode;
use limine::request::{
    BootloaderInfoRequest, EntryPointRequest, ExecutableAddressRequest, ExecutableCmdlineRequest, ExecutableFileRequest,
    FirmwareTypeRequest, HhdmRequest, MemoryMapRequest, ModuleRequest, PagingModeRequest, RequestsEndMarker,
    RequestsStartMarker, RsdpRequest,
};
use x86_64::PhysAddr;
use x86_64::registers::control::{Cr3, Cr3Flags, Cr4, Cr4Flags};
use x86_64::structures::paging::PhysFrame;

use crate::bootinfo::{self, BootError, BootInfo, LIMINE_BASE_REVISION, LimineHandoff, PhysMem};
use crate::layout::{BOOT_MAPPED_LIMIT, DIRECT_MAP};

#[used]
#[unsafe(link_section = ".requests_start")]
static REQUESTS_START: RequestsStartMarker = RequestsStartMarker::new();

#[used]
#[unsafe(link_section = ".requests")]
static BASE_REVISION: BaseRevision = BaseRevision::with_revision(LIMINE_BASE_REVISION);
#[used]
#[unsafe(link_section = ".requests")]
static ENTRY_POINT: EntryPointRequest = EntryPointRequest::new().with_entry_point(limine_entry);
/// 4-level paging (Limine's default on x86_64, asked for explicitly): the boot page tables
/// below, and the kernel's own, are 4-level, and long mode cannot switch levels with paging on.
#[used]
#[unsafe(link_section = ".requests")]
static PAGING_MODE: PagingModeRequest =
    PagingModeRequest::new().with_mode(Mode::FOUR_LEVEL).with_max_mode(Mode::FOUR_LEVEL).with_min_mode(Mode::FOUR_LEVEL);
#[used]
#[unsafe(link_section = ".requests")]
static HHDM: HhdmRequest = HhdmRequest::new();
#[used]
#[unsafe(link_section = ".requests")]
static KERNEL_ADDRESS: ExecutableAddressRequest = ExecutableAddressRequest::new();
#[used]
#[unsafe(link_section = ".requests")]
static MEMORY_MAP: MemoryMapRequest = MemoryMapRequest::new();
#[used]
#[unsafe(link_section = ".requests")]
static MODULES: ModuleRequest = ModuleRequest::new();
#[used]
#[unsafe(link_section = ".requests")]
static RSDP: RsdpRequest = RsdpRequest::new();
/// Limine 8's kernel command line is the `cmdline` of the kernel file.
#[used]
#[unsafe(link_section = ".requests")]
static KERNEL_FILE: ExecutableFileRequest = ExecutableFileRequest::new();
/// Newer Limines answer this one too; it is preferred when answered.
#[used]
#[unsafe(link_section = ".requests")]
static CMDLINE: ExecutableCmdlineRequest = ExecutableCmdlineRequest::new();
#[used]
#[unsafe(link_section = ".requests")]
static FIRMWARE_TYPE: FirmwareTypeRequest = FirmwareTypeRequest::new();
#[used]
#[unsafe(link_section = ".requests")]
static BOOTLOADER_INFO: BootloaderInfoRequest = BootloaderInfoRequest::new();

#[used]
#[unsafe(link_section = ".requests_end")]
static REQUESTS_END: RequestsEndMarker = RequestsEndMarker::new();

/// Limine's entry into the kernel (see the module comment).
#[unsafe(naked)]
extern "C" fn limine_entry() -> ! {
    core::arch::naked_asm!(
        r#"
        cli
        cld
        /* The baseline the compiled code takes for granted (`boot.rs`, `rl4_baseline_stop`). */
        mov $1, %eax
        cpuid
        and ${baseline}, %edx
        cmp ${baseline}, %edx
        jne rl4_baseline_stop
        /* Zero .bss (the boot stack, the boot tables below) while still on Limine's stack. */
        movabs $__bss_start, %rdi
        movabs $__bss_end, %rcx
        sub %rdi, %rcx
        shr $3, %rcx
        xor %eax, %eax
        rep stosq
        movabs $boot_stack_top, %rsp
        xor %ebp, %ebp
        call {handoff}
        mov ${protocol}, %edi
        xor %esi, %esi
        xor %edx, %edx
        movabs $rl4_kernel_entry, %rax
        call *%rax
    2:  cli
        hlt
        jmp 2b
        "#,
        handoff = sym limine_handoff,
        protocol = const crate::boot::ENTRY_LIMINE,
        baseline = const crate::boot::BASELINE_EDX,
        options(att_syntax)
    );
}

static HANDOFF: spin::Once<LimineHandoff> = spin::Once::new();
/// Why the boot page tables could not be built (the kernel then stays on Limine's tables
/// until [`boot_info`] reports it).
static TABLES_ERROR: spin::Once<&'static str> = spin::Once::new();

fn addr<T>(r: Option<&T>) -> u64 {
    r.map_or(0, |r| r as *const T as u64)
}

/// Called once by [`limine_entry`] on the boot stack, Limine's page tables still loaded.
extern "C" fn limine_handoff() {
    let h = HANDOFF.call_once(|| LimineHandoff {
        revision_supported: BASE_REVISION.is_supported(),
        loaded_revision: BASE_REVISION.loaded_revision(),
        hhdm: HHDM.get_response().map(|r| r.offset()),
        kernel_address: KERNEL_ADDRESS.get_response().map(|r| (r.physical_base(), r.virtual_base())),
        memmap: addr(MEMORY_MAP.get_response()),
        modules: addr(MODULES.get_response()),
        rsdp: addr(RSDP.get_response()),
        kernel_file: addr(KERNEL_FILE.get_response()),
        cmdline: addr(CMDLINE.get_response()),
        firmware: addr(FIRMWARE_TYPE.get_response()),
        bootloader: addr(BOOTLOADER_INFO.get_response()),
    });
    let Some((phys, virt)) = h.kernel_address else {
        TABLES_ERROR.call_once(|| "Limine did not answer the kernel address request");
        return;
    };
    match build_boot_tables(phys, virt) {
        Ok(pml4) => {
            crate::boot::set_limine_image(virt.wrapping_sub(phys), pml4);
            // SAFETY: the new tables map everything this CPU touches from here on at the same
            // virtual addresses as Limine's did, to the same physical memory: the kernel image
            // (this code, its data, the boot stack) at its link addresses, and the first 4 GiB
            // at DIRECT_MAP (Limine's HHDM is not used after this). Global pages go off first,
            // so that no translation of Limine's stays in the TLB; `paging::activate` turns
            // them back on with the kernel's final tables.
            unsafe {
                Cr4::update(|c| c.remove(Cr4Flags::PAGE_GLOBAL));
                Cr3::write(PhysFrame::containing_address(PhysAddr::new(pml4)), Cr3Flags::empty());
            }
        }
        Err(why) => {
            TABLES_ERROR.call_once(|| why);
        }
    }
}

/// 2 MiB page tables for the kernel image: up to 32 MiB of image (text, data, bss).
const IMAGE_PTS: usize = 16;

/// The Limine path's boot page tables (the other entries' tables, in the boot segment, assume
/// the image at its link address minus `KERNEL_BASE`).
#[repr(C, align(4096))]
struct BootTables {
    pml4: [u64; 512],
    pdpt_low: [u64; 512],
    pdpt_high: [u64; 512],
    pd_low: [[u64; 512]; 4],
    pd_image: [u64; 512],
    pt_image: [[u64; 512]; IMAGE_PTS],
}

struct TablesCell(UnsafeCell<BootTables>);

// SAFETY: the tables are written once, by the bootstrap CPU in `limine_handoff` before any other
// CPU runs and before they are loaded; afterwards only page walks read them.
unsafe impl Sync for TablesCell {}

static TABLES: TablesCell = TablesCell(UnsafeCell::new(BootTables {
    pml4: [0; 512],
    pdpt_low: [0; 512],
    pdpt_high: [0; 512],
    pd_low: [[0; 512]; 4],
    pd_image: [0; 512],
    pt_image: [[0; 512]; IMAGE_PTS],
}));

unsafe extern "C" {
    static __kernel_virt_start: u8;
    static __kernel_virt_end: u8;
}

const PRESENT_WRITABLE: u64 = 0x3;
const HUGE: u64 = 0x80;

/// Fills [`TABLES`] for an image whose virtual base `virt` Limine put at physical `phys`, and
/// returns the physical address of the PML4.
fn build_boot_tables(phys: u64, virt: u64) -> Result<u64, &'static str> {
    let shift = virt.wrapping_sub(phys);
    let pa = |va: u64| va.wrapping_sub(shift);
    let start = (&raw const __kernel_virt_start) as u64;
    let end = (&raw const __kernel_virt_end) as u64;
    let t = TABLES.0.get();
    if phys % 4096 != 0 || virt % 4096 != 0 || virt > start {
        return Err("the kernel address response does not match the kernel image");
    }
    // The AP trampoline loads the boot PML4 in 32-bit mode.
    if pa(t as u64) + size_of::<BootTables>() as u64 > BOOT_MAPPED_LIMIT {
        return Err("Limine put the kernel above 4 GiB, where the AP trampoline cannot reach its boot page tables");
    }
    let first_pd = start & !((1 << 21) - 1);
    if (end - first_pd).div_ceil(1 << 21) > IMAGE_PTS as u64 || (start >> 30) != ((end - 1) >> 30) {
        return Err("the kernel image is larger than the Limine boot page tables can map");
    }
    // SAFETY: see `TablesCell`: nothing else reads or writes the tables yet.
    let t = unsafe { &mut *t };
    let at = |table: &[u64; 512]| pa(table as *const _ as u64) | PRESENT_WRITABLE;
    // First 4 GiB, 2 MiB pages: identity (slot 0) and the direct map (its slot).
    for (i, pd) in t.pd_low.iter_mut().enumerate() {
        for (j, e) in pd.iter_mut().enumerate() {
            *e = ((i as u64 * 512 + j as u64) << 21) | PRESENT_WRITABLE | HUGE;
        }
    }
    for i in 0..4 {
        t.pdpt_low[i] = at(&t.pd_low[i]);
    }
    t.pml4[0] = at(&t.pdpt_low);
    t.pml4[((DIRECT_MAP >> 39) & 511) as usize] = at(&t.pdpt_low);
    // The kernel image, 4 KiB pages, wherever Limine put it.
    let mut va = start;
    while va < end {
        let k = ((va - first_pd) >> 21) as usize;
        t.pt_image[k][((va >> 12) & 511) as usize] = pa(va) | PRESENT_WRITABLE;
        va += 4096;
    }
    for k in 0..IMAGE_PTS {
        let slot = ((first_pd >> 21) & 511) as usize + k;
        if slot < 512 {
            t.pd_image[slot] = at(&t.pt_image[k]);
        }
    }
    t.pdpt_high[((start >> 30) & 511) as usize] = at(&t.pd_image);
    t.pml4[((start >> 39) & 511) as usize] = at(&t.pdpt_high);
    Ok(pa(t.pml4.as_ptr() as u64))
}

/// The boot information from Limine's responses (called by the kernel after the entry, on the
/// boot page tables).
pub fn boot_info(mem: &impl PhysMem) -> Result<BootInfo, BootError> {
    if let Some(why) = TABLES_ERROR.get() {
        panic!("Limine boot: {why}");
    }
    let h = HANDOFF.get().copied().unwrap_or_default();
    bootinfo::parse_limine(mem, &h)
}
