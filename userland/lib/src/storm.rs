//! The storm protocol, shared by the root task (`userland/root/src/storm.rs`) and its victims
//! (the `worker` program's [`crate::worker::STORM`] command): the layout of the page they share,
//! the kinds of victim threads, and the messages and their checks.
//!
//! A victim thread's operand is `index | kind << 8 | timeout class << 16`. It loops forever
//! on its kind's system call and, after each one, counts the outcome in its record of the shared
//! page and writes down the CPU it runs on (`CpuInfo`). It never prints and writes nothing but
//! its record and the page's error counter, so that a victim killed or suspended at any
//! instruction leaves nothing half done.
use core::sync::atomic::AtomicU64;

use crate::sys::Msg;
use rl4_abi::ipc::Tag;

/// Where the shared page is mapped in every victim task.
pub const PAGE: u64 = 0x0000_6d00_0000_0000;

/// Victim slots (besides the worker's `MACHINE`): the endpoint the victims call and send to
/// (served by the root task), the endpoint they receive from (fed by the root task), the
/// notification they signal and wait on.
pub const EP_CALL: u64 = crate::worker::EP_SLOT;
pub const EP_RECV: u64 = 6;
pub const NOTE: u64 = 7;

/// Header words of the shared page.
pub mod header {
    /// The finite timeout of timeout class [`super::TMO_FINITE`], in TSC ticks (set by the root).
    pub const FINITE_TICKS: usize = 0;
    /// Messages or replies whose contents were wrong (the victims add to it).
    pub const BAD: usize = 1;
    /// Words before the first record.
    pub const WORDS: usize = 16;
}

/// The words of a victim's record (at `header::WORDS + index * RECORD_WORDS`).
pub mod rec {
    /// System calls completed (for [`super::K_SPIN`]: loop turns).
    pub const ITERATIONS: usize = 0;
    /// 1 + the CPU `CpuInfo` last reported (0: not known yet).
    pub const CPU: usize = 1;
    /// Outcomes: success, `Timeout`, `PartnerGone`, `Interrupted`, any other error.
    pub const OK: usize = 2;
    pub const TIMEOUT: usize = 3;
    pub const PARTNER_GONE: usize = 4;
    pub const INTERRUPTED: usize = 5;
    pub const OTHER: usize = 6;
    /// The last error counted in [`OTHER`].
    pub const LAST_OTHER: usize = 7;
    /// `ON_CPU + c`: calls that returned on CPU `c` (c < 8; for [`super::K_SPIN`], looks).
    pub const ON_CPU: usize = 8;
}
pub const RECORD_WORDS: usize = 16;
/// Records that fit the page.
pub const MAX_VICTIMS: usize = (4096 / 8 - header::WORDS) / RECORD_WORDS;

/// Victim kinds: loop on `Call` to [`EP_CALL`] (the reply checked), `Send` (or `NbSend`) to
/// [`EP_CALL`], `Recv` (or `NbRecv`) on [`EP_RECV`] (the message checked), `ReplyRecv` on
/// [`EP_RECV`] (answering each call), `Signal` + `Wait` on [`NOTE`], or count in its record
/// without any system call but a `CpuInfo` every 64 turns.
pub const K_CALL: u64 = 0;
pub const K_SEND: u64 = 1;
pub const K_RECV: u64 = 2;
pub const K_REPLY_RECV: u64 = 3;
pub const K_WAIT: u64 = 4;
pub const K_SPIN: u64 = 5;
pub const KINDS: u64 = 6;
pub const KIND_NAMES: [&str; KINDS as usize] = ["call", "send", "recv", "reply-recv", "wait", "spin"];

/// Timeout classes: 0 (poll), finite ([`header::FINITE_TICKS`]), forever.
pub const TMO_ZERO: u64 = 0;
pub const TMO_FINITE: u64 = 1;
pub const TMO_FOREVER: u64 = 2;
pub const TMO_NAMES: [&str; 3] = ["0", "finite", "forever"];

/// Labels: who sent a message and whether it waits for a reply.
pub const L_VICTIM_CALL: u64 = 0x5701;
pub const L_VICTIM_SEND: u64 = 0x5702;
pub const L_HELPER_CALL: u64 = 0x5703;
pub const L_HELPER_SEND: u64 = 0x5704;
pub const L_ROOT_CALL: u64 = 0x5705;
pub const L_REPLY: u64 = 0x5706;

const CHECK: u64 = 0x3c3c_a5a5_0f0f_9696;
const ANSWER: u64 = 0x7e57_0000_f00d_0001;

/// A message of sequence number `seq` from `who`.
pub fn msg(label: u64, seq: u64, who: u64) -> Msg {
    Msg { tag: Tag::new(label, 4, 0), badge: 0, w: [seq, seq ^ CHECK, who, !who] }
}

/// Whether a received message is one [`msg`] made (labels of any sender).
pub fn msg_ok(m: &Msg) -> bool {
    m.tag.len() == 4 && m.w[1] == m.w[0] ^ CHECK && m.w[3] == !m.w[2] && (L_VICTIM_CALL..=L_ROOT_CALL).contains(&m.tag.label())
}

/// The answer to message `m`.
pub fn answer(m: &Msg) -> Msg {
    Msg { tag: Tag::new(L_REPLY, 3, 0), badge: 0, w: [m.w[0] ^ ANSWER, !m.w[0], m.w[2], 0] }
}

/// Whether `r` answers the message of sequence number `seq` from `who`.
pub fn answer_ok(r: &Msg, seq: u64, who: u64) -> bool {
    r.tag.label() == L_REPLY && r.tag.len() == 3 && r.w[0] == seq ^ ANSWER && r.w[1] == !seq && r.w[2] == who
}

/// A word of the shared page mapped at `base`.
///
/// # Safety
/// `base` must be the address of a mapped, writable page (shared or not) for as long as the
/// reference is used, and `i` < 512.
pub unsafe fn word(base: u64, i: usize) -> &'static AtomicU64 {
    // SAFETY: the caller guarantees the page; AtomicU64 has the layout of u64, and the page is
    // 8-byte aligned.
    unsafe { &*((base + 8 * i as u64) as *const AtomicU64) }
}

/// Word `w` of victim `index`'s record in the page at `base`.
///
/// # Safety
/// As for [`word`]; `index` < [`MAX_VICTIMS`], `w` < [`RECORD_WORDS`].
pub unsafe fn record(base: u64, index: usize, w: usize) -> &'static AtomicU64 {
    // SAFETY: forwarded.
    unsafe { word(base, header::WORDS + index * RECORD_WORDS + w) }
}
