//! The kernel's virtual memory layout (see `docs/memory.md`).
//!
//! | range | what |
//! |---|---|
//! | `0x0000_0000_0000_0000 ..= 0x0000_7fff_ffff_ffff` | user space (later issues) |
//! | `0xffff_8000_0000_0000 ..` ([`DIRECT_MAP`]) | every physical range of the memory map, at `phys + DIRECT_MAP` |
//! | `0xffff_fd80_0000_0000 ..` ([`HEAP_BASE`]) | the kernel heap, grown on demand, 4 KiB pages |
//! | `0xffff_fe00_0000_0000 ..` ([`MMIO_BASE`]) | device registers (local APIC, IOAPIC), uncached, 4 KiB pages |
//! | `0xffff_fe80_0000_0000 ..` ([`STACKS_BASE`]) | kernel and IST stacks, each above an unmapped guard page |
//! | `0xffff_ffff_8000_0000 ..` ([`KERNEL_BASE`]) | the kernel image, at `phys + KERNEL_BASE` (code model `kernel`) |

/// First address above user space.
pub const USER_END: u64 = 0x0000_8000_0000_0000;

/// Where all physical memory is mapped (PML4 slots 256 and up).
pub const DIRECT_MAP: u64 = 0xffff_8000_0000_0000;
/// Most physical memory the direct map covers (64 TiB: PML4 slots 256..384).
pub const DIRECT_MAP_SIZE: u64 = 64 << 40;
/// The kernel heap, which grows page by page on demand (PML4 slot 507).
pub const HEAP_BASE: u64 = 0xffff_fd80_0000_0000;
pub const HEAP_SIZE: u64 = 1 << 39;
/// Device register window (PML4 slot 508).
pub const MMIO_BASE: u64 = 0xffff_fe00_0000_0000;
pub const MMIO_SIZE: u64 = 1 << 39;
/// Kernel stacks with guard pages (PML4 slot 509).
pub const STACKS_BASE: u64 = 0xffff_fe80_0000_0000;
pub const STACKS_SIZE: u64 = 1 << 39;
/// The kernel image's virtual base: virtual = physical + KERNEL_BASE (PML4 slot 511).
pub const KERNEL_BASE: u64 = 0xffff_ffff_8000_0000;
/// Boot-time limit of the direct map: the boot page tables map the first 4 GiB only.
pub const BOOT_MAPPED_LIMIT: u64 = 4 << 30;

/// The kernel-virtual address of physical address `pa` in the direct map.
#[inline]
pub const fn phys_to_virt(pa: u64) -> u64 {
    pa + DIRECT_MAP
}
