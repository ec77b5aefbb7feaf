//! The x86_64 layer of rl4.
//!
//! Everything that knows the CPU lives here: the three boot entries (PVH and Multiboot2, with the
//! 32→64-bit trampoline they share, and Limine's 64-bit one), descriptor tables, exception reporting, paging, the serial
//! console, MSRs, CPUID, the TSC and the legacy timer chips. Nothing here knows about IPC or
//! scheduling; `rl4-smp` builds on it and the kernel wires it together.
//!
//! The boot-information parser ([`bootinfo`]) is pure logic over a [`bootinfo::PhysMem`] reader,
//! so it is compiled and unit-tested on the host too; every module that touches hardware is
//! built only for the bare-metal target (`target_os = "none"`).
#![cfg_attr(not(test), no_std)]
#![cfg_attr(target_os = "none", feature(abi_x86_interrupt))]

pub mod bootinfo;
pub mod features;
pub mod ioapic;
pub mod ioport;
pub mod layout;
pub mod pte;

#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
pub use boot::{ENTRY_LIMINE, ENTRY_MULTIBOOT2, ENTRY_PVH, boot_pml4_phys, image_phys, kernel_phys_range, kernel_sections};
#[cfg(target_os = "none")]
pub mod console;
#[cfg(target_os = "none")]
pub mod cpu;
#[cfg(target_os = "none")]
pub mod entry;
#[cfg(target_os = "none")]
pub mod fpu;
#[cfg(target_os = "none")]
pub mod gdt;
#[cfg(target_os = "none")]
pub mod idt;
#[cfg(target_os = "none")]
pub mod limine;
#[cfg(target_os = "none")]
pub mod paging;
#[cfg(target_os = "none")]
pub mod percpu;
#[cfg(target_os = "none")]
pub mod time;
