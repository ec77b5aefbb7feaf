//! The multiprocessor layer of rl4.
//!
//! * [`acpi`] finds the ACPI tables from the RSDP (the `acpi` crate, from a root table it checks)
//!   and reads the MADT entry by entry: processors, IOAPICs, interrupt source overrides. It also lists every table's physical range
//!   early, so the frame allocator can keep its hands off them.
//! * [`madt`] decides which CPUs to start, in which order, and why the others are skipped (pure
//!   logic, unit-tested on the host).
//! * On the bare-metal target: [`lapic`] (the local APIC through the `x2apic` crate, in x2APIC
//!   mode where CPUID offers it and xAPIC MMIO mode otherwise), [`cpus`] (per-CPU blocks reached
//!   through `GS`, their descriptor tables and stacks), and [`boot`] (the real-mode trampoline and
//!   INIT-SIPI-SIPI).
#![cfg_attr(not(test), no_std)]
// `Box::try_new`: a CPU's blocks are made fallibly (`cpus::create`).
#![feature(allocator_api)]

extern crate alloc;

pub mod acpi;
pub mod madt;

#[cfg(target_os = "none")]
pub mod acpi_handler;
#[cfg(target_os = "none")]
pub mod boot;
#[cfg(target_os = "none")]
pub mod cpus;
#[cfg(target_os = "none")]
pub mod lapic;

/// Most CPUs rl4 runs on.
pub const MAX_CPUS: usize = 256;
