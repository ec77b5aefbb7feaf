//! Free capability slots of a program started by the root task: [`alloc`] hands out slots from
//! [`crate::env::FIRST_FREE`] up, [`free`] deletes what a slot holds and gives it back. Lock-free
//! (one bit per slot), so any thread may use it.
use core::sync::atomic::{AtomicU64, Ordering};
use rl4_abi::CAP_SLOTS;

const WORDS: usize = (CAP_SLOTS / 64) as usize;
/// Bit set = slot in use. The slots below `FIRST_FREE` are the ones the root task fills.
static USED: [AtomicU64; WORDS] = {
    let mut a = [const { AtomicU64::new(0) }; WORDS];
    a[0] = AtomicU64::new((1 << crate::env::FIRST_FREE) - 1);
    a
};

/// A free slot, or `None` when the table is full.
pub fn alloc() -> Option<u64> {
    for (w, word) in USED.iter().enumerate() {
        let mut v = word.load(Ordering::Relaxed);
        while v != u64::MAX {
            let b = (!v).trailing_zeros() as u64;
            match word.compare_exchange(v, v | 1 << b, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(w as u64 * 64 + b),
                Err(now) => v = now,
            }
        }
    }
    None
}

/// Deletes the capability in `slot` (if any) and makes the slot free again.
pub fn free(slot: u64) {
    if slot < CAP_SLOTS {
        let _ = crate::sys::cap_delete(slot);
        USED[(slot / 64) as usize].fetch_and(!(1 << (slot % 64)), Ordering::AcqRel);
    }
}
