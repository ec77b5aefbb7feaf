//! A 16550 UART's registers, for the driver tests (the serial driver itself uses the
//! `uart_16550` crate). Every access is an `in`/`out` the calling task must have opened.
use crate::sys::{inb, outb};

/// COM2's ports and ISA interrupt.
pub const COM2: u16 = 0x2f8;
pub const COM2_IRQ: u64 = 3;
pub const RBR: u16 = 0;
pub const THR: u16 = 0;
pub const IER: u16 = 1;
pub const FCR: u16 = 2;
pub const LCR: u16 = 3;
pub const MCR: u16 = 4;
pub const LSR: u16 = 5;
pub const SCRATCH: u16 = 7;
/// LSR: a received byte waits in RBR.
pub const LSR_DATA: u8 = 1;

/// Puts the UART at `base` in loopback mode (every byte written comes back as received) with
/// the receive interrupt on and the FIFOs cleared and off.
pub fn loopback(base: u16) {
    outb(base + IER, 0);
    outb(base + LCR, 0x03);
    outb(base + FCR, 0x06);
    outb(base + MCR, 0x10 | 0x08 | 0x03);
    while inb(base + LSR) & LSR_DATA != 0 {
        inb(base + RBR);
    }
    outb(base + IER, 0x01);
}

/// Reads every byte waiting; returns how many.
pub fn drain(base: u16) -> u32 {
    let mut n = 0;
    while inb(base + LSR) & LSR_DATA != 0 {
        inb(base + RBR);
        n += 1;
    }
    n
}
