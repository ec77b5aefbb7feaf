//! The kernel's handler for the `acpi` crate: physical memory through the direct map, port I/O and
//! PCI configuration space through the legacy 0xcf8/0xcfc mechanism.
//!
//! rl4 reads static tables only; it never starts the AML interpreter, so the AML mutex hooks
//! are never called and say so if they ever are.
use acpi::{Handle, PciAddress, PhysicalMapping};
use core::ptr::NonNull;
use rl4_arch::bootinfo::PhysMem;
use rl4_arch::layout::phys_to_virt;
use rl4_arch::paging::DirectMapMem;
use rl4_arch::{cpu, time};
use x86_64::instructions::port::Port;

#[derive(Clone, Copy)]
pub struct KernelAcpi;

fn mem<T>(pa: usize) -> *mut T {
    phys_to_virt(pa as u64) as *mut T
}

fn pci_address(a: PciAddress, offset: u16) -> u32 {
    0x8000_0000 | (a.bus() as u32) << 16 | (a.device() as u32) << 11 | (a.function() as u32) << 8 | (offset as u32 & 0xfc)
}

fn pci_read(a: PciAddress, offset: u16) -> u32 {
    let mut addr: Port<u32> = Port::new(0xcf8);
    let mut data: Port<u32> = Port::new(0xcfc);
    // SAFETY: the legacy PCI configuration mechanism; rl4 has no other user of these ports.
    unsafe {
        addr.write(pci_address(a, offset));
        data.read()
    }
}

fn pci_write(a: PciAddress, offset: u16, v: u32) {
    let mut addr: Port<u32> = Port::new(0xcf8);
    let mut data: Port<u32> = Port::new(0xcfc);
    // SAFETY: as in `pci_read`.
    unsafe {
        addr.write(pci_address(a, offset));
        data.write(v)
    }
}

/// What a region the direct map cannot read is answered with: zeros, which no table's
/// signature is, so the crate passes over it (a wild entry in the XSDT, a table outside the
/// memory map). In an `UnsafeCell`: `PhysicalMapping` hands out `&mut` too (the crate's table
/// readers only read; were one to write, it would write this page, not read-only memory).
#[repr(C, align(4096))]
struct Zeros(core::cell::UnsafeCell<[u8; 4096]>);
// SAFETY: only the acpi crate's table readers reach it, at boot, on the bootstrap CPU.
unsafe impl Sync for Zeros {}
static ZEROS: Zeros = Zeros(core::cell::UnsafeCell::new([0; 4096]));

/// Whether every page of `size` bytes (at least one) from `pa` is readable through the direct map.
fn readable(pa: usize, size: usize) -> bool {
    let pa = pa as u64;
    let Some(end) = pa.checked_add(size.max(1) as u64) else { return false };
    let mut b = [0u8];
    (pa & !0xfff..end).step_by(4096).all(|p| DirectMapMem.read(p.max(pa), &mut b).is_some())
}

impl PhysMem for KernelAcpi {
    fn read(&self, pa: u64, buf: &mut [u8]) -> Option<()> {
        DirectMapMem.read(pa, buf)
    }
}

impl acpi::Handler for KernelAcpi {
    unsafe fn map_physical_region<T>(&self, pa: usize, size: usize) -> PhysicalMapping<Self, T> {
        // The crate reads a whole `T` whatever `size` says (a FADT that claims 36 bytes is read
        // 276 deep): both are checked.
        let want = size.max(core::mem::size_of::<T>());
        let (v, len) = if readable(pa, want) { (mem::<T>(pa), size) } else { (ZEROS.0.get() as *mut T, size.min(4096)) };
        PhysicalMapping {
            physical_start: pa,
            virtual_start: NonNull::new(v).expect("direct map address is never null"),
            region_length: len,
            mapped_length: len,
            handler: *self,
        }
    }
    fn unmap_physical_region<T>(_: &PhysicalMapping<Self, T>) {}

    fn read_u8(&self, a: usize) -> u8 {
        // SAFETY: the AML-facing accessors read physical memory through the direct map.
        unsafe { mem::<u8>(a).read_volatile() }
    }
    fn read_u16(&self, a: usize) -> u16 {
        // SAFETY: as above.
        unsafe { mem::<u16>(a).read_volatile() }
    }
    fn read_u32(&self, a: usize) -> u32 {
        // SAFETY: as above.
        unsafe { mem::<u32>(a).read_volatile() }
    }
    fn read_u64(&self, a: usize) -> u64 {
        // SAFETY: as above.
        unsafe { mem::<u64>(a).read_volatile() }
    }
    fn write_u8(&self, a: usize, v: u8) {
        // SAFETY: as above.
        unsafe { mem::<u8>(a).write_volatile(v) }
    }
    fn write_u16(&self, a: usize, v: u16) {
        // SAFETY: as above.
        unsafe { mem::<u16>(a).write_volatile(v) }
    }
    fn write_u32(&self, a: usize, v: u32) {
        // SAFETY: as above.
        unsafe { mem::<u32>(a).write_volatile(v) }
    }
    fn write_u64(&self, a: usize, v: u64) {
        // SAFETY: as above.
        unsafe { mem::<u64>(a).write_volatile(v) }
    }
    fn read_io_u8(&self, p: u16) -> u8 {
        // SAFETY: port I/O requested by firmware tables.
        unsafe { Port::new(p).read() }
    }
    fn read_io_u16(&self, p: u16) -> u16 {
        // SAFETY: as above.
        unsafe { Port::new(p).read() }
    }
    fn read_io_u32(&self, p: u16) -> u32 {
        // SAFETY: as above.
        unsafe { Port::new(p).read() }
    }
    fn write_io_u8(&self, p: u16, v: u8) {
        // SAFETY: as above.
        unsafe { Port::new(p).write(v) }
    }
    fn write_io_u16(&self, p: u16, v: u16) {
        // SAFETY: as above.
        unsafe { Port::new(p).write(v) }
    }
    fn write_io_u32(&self, p: u16, v: u32) {
        // SAFETY: as above.
        unsafe { Port::new(p).write(v) }
    }
    fn read_pci_u8(&self, a: PciAddress, o: u16) -> u8 {
        (pci_read(a, o) >> ((o & 3) * 8)) as u8
    }
    fn read_pci_u16(&self, a: PciAddress, o: u16) -> u16 {
        (pci_read(a, o) >> ((o & 2) * 8)) as u16
    }
    fn read_pci_u32(&self, a: PciAddress, o: u16) -> u32 {
        pci_read(a, o)
    }
    fn write_pci_u8(&self, a: PciAddress, o: u16, v: u8) {
        let shift = (o & 3) * 8;
        let old = pci_read(a, o) & !(0xff << shift);
        pci_write(a, o, old | (v as u32) << shift)
    }
    fn write_pci_u16(&self, a: PciAddress, o: u16, v: u16) {
        let shift = (o & 2) * 8;
        let old = pci_read(a, o) & !(0xffff << shift);
        pci_write(a, o, old | (v as u32) << shift)
    }
    fn write_pci_u32(&self, a: PciAddress, o: u16, v: u32) {
        pci_write(a, o, v)
    }
    fn nanos_since_boot(&self) -> u64 {
        time::ticks_to_us(cpu::rdtsc()) * 1000
    }
    fn stall(&self, us: u64) {
        time::delay_us(us)
    }
    fn sleep(&self, ms: u64) {
        time::delay_us(ms * 1000)
    }
    fn create_mutex(&self) -> Handle {
        panic!("rl4 does not run ACPI AML (create_mutex called)")
    }
    fn acquire(&self, _: Handle, _: u16) -> Result<(), acpi::aml::AmlError> {
        panic!("rl4 does not run ACPI AML (acquire called)")
    }
    fn release(&self, _: Handle) {
        panic!("rl4 does not run ACPI AML (release called)")
    }
}

/// Reads the MADT through the direct map (see [`crate::acpi::discover`]).
pub fn discover(rsdp: u64) -> Result<crate::acpi::Platform, (acpi::AcpiError, crate::acpi::Platform)> {
    // SAFETY: `KernelAcpi` maps through the direct map what it can read there and answers zeros
    // (read-only: the crate only reads tables) for what it cannot; the RSDP address comes
    // from the boot loader, and `discover` checks what it hands the crate.
    unsafe { crate::acpi::discover(KernelAcpi, rsdp) }
}
