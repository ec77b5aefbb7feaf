//! Per-CPU GDT and TSS.
//!
//! Layout (fixed, because `syscall`/`sysret` derive selectors from STAR):
//! 1 = kernel code (0x08), 2 = kernel data (0x10), 3 = user data (0x1b), 4 = user code (0x23),
//! 5..6 = the TSS. The TSS carries this CPU's IST stacks: [`IST_DOUBLE_FAULT`], [`IST_NMI`],
//! [`IST_MACHINE_CHECK`] and [`IST_DEBUG`], so those four exceptions always run on a known-good
//! stack (#DB because it can come on the kernel's first instruction after `syscall`, with the
//! user's stack pointer: `entry::rl4_debug_entry`).
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, FS, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::segmentation::SegmentSelector;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;

/// IST slots (0-based, as the `x86_64` crate counts them; the CPU calls them IST1..IST4).
pub const IST_DOUBLE_FAULT: u16 = 0;
pub const IST_NMI: u16 = 1;
pub const IST_MACHINE_CHECK: u16 = 2;
pub const IST_DEBUG: u16 = 3;

/// The bootstrap CPU's first GDT, from the kernel's entry until its own ([`CpuTables::load`]):
/// kernel code at 0x08 and data at 0x10, as in every CPU's own, so that the first IDT's gates
/// (`idt::load_early`, which name the code selector loaded when they are written) stay right
/// across the switch to the CPU's own GDT, until its own IDT is loaded. The boot loader's GDT
/// has its 64-bit code elsewhere (0x18 under PVH and Multiboot2, 0x28 under Limine): in the CPU's
/// own GDT that is the user data segment or the TSS, and an NMI between the two loads went
/// through a gate naming it — a silent reset (a review of the twenty-sixth session).
static EARLY: spin::Once<GlobalDescriptorTable<3>> = spin::Once::new();

/// Loads [`EARLY`] and the kernel's segments from it (the bootstrap CPU, at the kernel's entry).
pub fn load_early() {
    let gdt = EARLY.call_once(|| {
        let mut gdt = GlobalDescriptorTable::<3>::empty();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        debug_assert!(code.0 == 0x08 && data.0 == 0x10);
        gdt
    });
    gdt.load();
    // SAFETY: 0x08 and 0x10 index the GDT just loaded, a 64-bit kernel code and a kernel data
    // descriptor.
    unsafe { load_segments(SegmentSelector(0x08), SegmentSelector(0x10)) };
}

/// Reloads CS with `code` and SS, DS, ES, FS with `data` (not GS: its base is the CPU's block).
///
/// # Safety
/// Both index the GDT loaded on this CPU: a 64-bit kernel code and a kernel data descriptor.
unsafe fn load_segments(code: SegmentSelector, data: SegmentSelector) {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        CS::set_reg(code);
        SS::set_reg(data);
        DS::set_reg(data);
        ES::set_reg(data);
        FS::set_reg(data);
    }
}

/// One CPU's descriptor tables. Must live forever once loaded. The I/O permission bitmap
/// follows the TSS (`repr(C)`): the TSS names it by its offset.
#[repr(C)]
pub struct CpuTables {
    pub gdt: GlobalDescriptorTable<8>,
    pub tss: TaskStateSegment,
    pub iomap: crate::ioport::IoMap,
}

#[derive(Clone, Copy, Debug)]
pub struct Selectors {
    pub kernel_code: SegmentSelector,
    pub kernel_data: SegmentSelector,
    pub user_data: SegmentSelector,
    pub user_code: SegmentSelector,
    pub tss: SegmentSelector,
    /// This CPU's I/O permission bitmap (register it with `ioport::register`).
    pub iomap: &'static crate::ioport::IoMap,
}

impl CpuTables {
    /// Empty tables; fill the stacks with [`CpuTables::set_ist`] before [`CpuTables::load`].
    pub fn new() -> Self {
        CpuTables { gdt: GlobalDescriptorTable::new(), tss: TaskStateSegment::new(), iomap: crate::ioport::IoMap::new() }
    }

    pub fn set_ist(&mut self, slot: u16, stack_top: u64) {
        self.tss.interrupt_stack_table[slot as usize] = VirtAddr::new(stack_top);
    }

    /// The stack the CPU switches to on an interrupt from user mode.
    pub fn set_kernel_stack(&mut self, stack_top: u64) {
        self.tss.privilege_stack_table[0] = VirtAddr::new(stack_top);
    }

    /// Builds the GDT around this CPU's TSS and loads both, then reloads the segment registers.
    pub fn load(&'static mut self) -> Selectors {
        let iomap_offset = self.iomap.as_ptr() as u64 - (&raw const self.tss) as u64;
        assert!(iomap_offset <= 0xdfff, "the I/O bitmap must follow the TSS closely");
        self.tss.iomap_base = iomap_offset as u16;
        // The GDT refers to the TSS by address; both live in `self`, which is 'static.
        let tss: &'static TaskStateSegment = {
            let p: *const TaskStateSegment = &self.tss;
            // SAFETY: `self` is 'static and the TSS is never moved or mutated after this point
            // (the CPU only reads it and updates its busy bit in the GDT, not in the TSS).
            unsafe { &*p }
        };
        // SAFETY: as for the TSS: `self` is 'static; the bitmap is only changed through its
        // atomics.
        let iomap: &'static crate::ioport::IoMap = unsafe { &*(&raw const self.iomap) };
        let kernel_code = self.gdt.append(Descriptor::kernel_code_segment());
        let kernel_data = self.gdt.append(Descriptor::kernel_data_segment());
        let user_data = self.gdt.append(Descriptor::user_data_segment());
        let user_code = self.gdt.append(Descriptor::user_code_segment());
        let tss_sel = self.gdt.append(tss_descriptor(tss, iomap_offset + crate::ioport::IOMAP_LEN as u64));
        let gdt: &'static GlobalDescriptorTable<8> = &self.gdt;
        gdt.load();
        // SAFETY: the selectors index the GDT just loaded, with the right descriptor kinds; the
        // TSS descriptor is fresh (not busy).
        unsafe {
            load_segments(kernel_code, kernel_data);
            load_tss(tss_sel);
        }
        Selectors { kernel_code, kernel_data, user_data, user_code, tss: tss_sel, iomap }
    }
}

/// A 64-bit TSS descriptor for `tss` whose limit covers `len` bytes (the TSS and the I/O
/// permission bitmap after it, with its terminating byte).
fn tss_descriptor(tss: &'static TaskStateSegment, len: u64) -> Descriptor {
    let base = tss as *const TaskStateSegment as u64;
    let limit = len - 1;
    let mut low = 1u64 << 47; // present
    low |= limit & 0xffff;
    low |= (base & 0xff_ffff) << 16;
    low |= 0b1001 << 40; // available 64-bit TSS
    low |= ((limit >> 16) & 0xf) << 48;
    low |= ((base >> 24) & 0xff) << 56;
    Descriptor::SystemSegment(low, base >> 32)
}

impl Default for CpuTables {
    fn default() -> Self {
        Self::new()
    }
}
