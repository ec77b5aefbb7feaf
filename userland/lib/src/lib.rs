//! rl4's user library.
//!
//! The boot issue leaves user mode out: this crate is the skeleton the syscall ABI issue fills
//! (syscall wrappers over the ABI crate, `_start`, the panic handler, console printing). It is
//! part of the workspace now so that the layout and the build are in place.
#![no_std]
