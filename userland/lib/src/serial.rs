//! The serial driver's interface (`userland/serial`, docs/drivers.md).
//!
//! The driver task's slots, filled by whoever starts it: [`IRQ`] its `Irq` capability,
//! [`PORTS`] its `IoPort` capability (the UART's eight ports), [`NTF`] the notification the
//! interrupt is bound to, [`EP`] the endpoint it serves (receive right). Its first thread
//! ([`ROLE_IRQ`]) sets the UART up, binds the interrupt and moves received bytes into a
//! ring buffer; its second ([`ROLE_SERVE`]) answers these calls on the endpoint:
//!
//! | label (bits 0..7 of the tag's label) | request | reply |
//! |---|---|---|
//! | [`READ`] | — | label = bytes (0..=32), words 0..3 = the bytes ([`pack`]), oldest first |
//! | [`WRITE`] | label bits 8.. = byte count (at most 32), words 0..3 = the bytes ([`write_msg`]) | label = bytes written |
//! | [`SUBSCRIBE`] | carries a notification capability (`SEND` right) | label 0, or 1 if a subscriber is there already or the capability is not a notification with `SEND` (it is deleted) |
//! | [`STATS`] | — | words: bytes received, bytes dropped, interrupts taken |
//!
//! A subscriber's notification is signalled (bit 1) whenever bytes arrive; it then reads
//! until `READ` answers 0 bytes. Bytes that arrive while the ring is full are counted, not
//! kept (`STATS` answers them).
use rl4_abi::ipc::Tag;

use crate::sys::Msg;

pub const IRQ: u64 = 6;
pub const PORTS: u64 = 7;
pub const NTF: u64 = 8;
pub const EP: u64 = 9;
/// Where a subscriber's notification lands in the driver.
pub const SUB: u64 = 10;

pub const ROLE_IRQ: u64 = 1;
pub const ROLE_SERVE: u64 = 2;

pub const READ: u64 = 1;
pub const WRITE: u64 = 2;
pub const SUBSCRIBE: u64 = 3;
/// → words: bytes received, bytes dropped (ring full), interrupts taken.
pub const STATS: u64 = 4;

/// Most bytes one `READ` or `WRITE` carries (the four message registers).
pub const CHUNK: usize = 32;

/// Packs up to [`CHUNK`] bytes into a message's words.
pub fn pack(bytes: &[u8]) -> [u64; 4] {
    let mut w = [0u64; 4];
    for (i, &b) in bytes.iter().take(CHUNK).enumerate() {
        w[i / 8] |= (b as u64) << (8 * (i % 8));
    }
    w
}

/// The `n` bytes packed in `w`.
pub fn unpack(w: &[u64; 4], n: usize, out: &mut [u8; CHUNK]) -> usize {
    let n = n.min(CHUNK);
    for (i, o) in out.iter_mut().enumerate().take(n) {
        *o = (w[i / 8] >> (8 * (i % 8))) as u8;
    }
    n
}

/// A `WRITE` request for `bytes` (the first [`CHUNK`] of them): label `WRITE | count << 8`.
pub fn write_msg(bytes: &[u8]) -> Msg {
    let n = bytes.len().min(CHUNK) as u64;
    Msg { tag: Tag::new(WRITE | n << 8, 4, 0), badge: 0, w: pack(bytes) }
}
