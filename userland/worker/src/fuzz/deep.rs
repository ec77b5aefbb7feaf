//! Deep object graphs, built and torn down by the fuzzer itself while the task's other fuzzing
//! threads race on their slots (issue 17).
//!
//! Three kinds, one of each at most per fuzzer task at a time:
//!
//! * **Task chains**: tasks made by `TaskCreate`, each holding the next one's capability (in
//!   its slot 0), 16 to 3,000 deep. The fuzzer keeps only the first (the *head*, made in a
//!   slot of its own and copied into one of its visible range, where the other threads'
//!   ordinary calls find it as a task it made; the builder's own copy goes once the second
//!   link is made) and the last, in a slot of its own.
//! * **Endpoint chains**: endpoints E1, E2, ... where a sender thread (a loop-free helper in
//!   assembly, `fz_deep_sender`) blocks in `Send` on Ei carrying a capability to Ei+1; once it
//!   waits, the fuzzer deletes its own capabilities to Ei+1 and to the thread. 8 to 1,000
//!   deep. A capability in flight keeps nothing alive (its source's deletion makes it one that
//!   can never arrive): each Ei+1 dies as the fuzzer's capability to it goes, and its sender
//!   gets `PartnerGone`. (Before the thirty-fourth session Ei+1 lived on, held only by that
//!   capability in flight, and deleting E1 took the whole chain down, link by link.)
//! * **Derivation chains**: a new endpoint or notification (the root, visible), a badge minted
//!   from it, then a copy of the copy of the copy... in the fuzzer's own slots, up to 88 deep;
//!   now and then a copy of a link goes to another task (another fuzzer's with `cross`, or a
//!   visible slot of its own), so that the tree spans tasks; never to a task made here (see
//!   `deriv_chain`).
//!
//! Each build is limited by the memory budget (a quarter of what is left above half of it: the
//! budget is shared by every fuzzer, and the deep graphs of all of them together never take
//! more than half, so that fuzzers can still be started and make their ordinary objects). Its head is
//! deleted, its first task killed, or its root revoked at a random point: during the build
//! (the rest of the chain then hangs from the builder's last slot, and goes when that slot is
//! deleted at the end), right after it, or later: a structure left standing is taken down by
//! the next build of its kind, by the other threads' calls, or when the fuzzer task ends (the
//! kernel empties its table). Meanwhile the task's other fuzzing threads race on the heads and
//! on the builder's own slots ([`Fz::race`]): they delete, revoke, copy, identify, kill, send
//! and receive on them. Every teardown of any depth runs before the call that caused it
//! returns, one object at a time (`kernel/src/reclaim.rs`): the longest such call is reported.
//!
//! Safety of the run's own accounting: a chain task only ever receives the capability to a
//! task just made, from a slot only the builders write, and only through a slot only the
//! builders write (no unforced call of any fuzzer writes one: `guard_destinations`), so no
//! chain holds a cycle (which would outlive the fuzzer task and fail the run's memory check).
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use rl4_user::abi::ipc::{FOREVER, NO_SLOT, Tag};
use rl4_user::abi::{Error, Rights, Sys, ThreadState, cost};

use super::*;

/// The builders' own slots: above the range the shadow chooses from (0..128), so that the
/// other threads' ordinary calls do not use them (only [`Fz::race`] and a hostile value do,
/// and neither ever writes one: `guard_destinations`);
/// their kinds stay fixed (a copy made from one takes its kind).
const TASK_TAIL: [u64; 2] = [128, 129];
const TASK_HEAD: u64 = 133;
const EP_NEXT: [u64; 2] = [130, 131];
const EP_SENDER: u64 = 132;
const DERIV_LO: u64 = 136;
const DERIV_HI: u64 = slot::INBOX;

const TASKS: usize = 0;
const EPS: usize = 1;
const DERIV: usize = 2;
const NONE: u64 = u64::MAX;

/// Per kind: the head's slot while the structure stands (for the racers and the next build).
static HEAD: [AtomicU64; 3] = [const { AtomicU64::new(NONE) }; 3];
/// Per kind: a builder is at work.
static BUSY: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
/// The links of the derivation chain in the builder's slots (`DERIV_LO ..`).
static DERIV_LEN: AtomicU64 = AtomicU64::new(0);

/// One link of an endpoint chain: the endpoint and its sender thread (4 KiB and the FPU save
/// area, at most 1 KiB here).
const EP_LINK: u64 = cost::ENDPOINT + cost::THREAD + 1024;

// The sender of an endpoint chain: `Send` on the endpoint in slot `rdi` carrying the
// capability in slot `rsi`, timeout `FOREVER`; whatever the result, the thread ends. No stack.
core::arch::global_asm!(
    ".pushsection .text.fz_helpers, \"ax\"",
    ".global fz_deep_sender",
    "fz_deep_sender:",
    "    mov r13, rsi",
    "    mov r14, -1",
    "    mov r12, {forever}",
    "    mov esi, {tag}",
    "    mov eax, {send}",
    "    syscall",
    "    mov rcx, {page}",
    "    lock inc qword ptr [rcx + {helper_calls}]",
    "    mov eax, {exit}",
    "    syscall",
    "    ud2",
    ".popsection",
    forever = const FOREVER,
    tag = const Tag::new(0, 0, 1).0,
    send = const Sys::Send as u64,
    exit = const Sys::ThreadExit as u64,
    page = const PAGE,
    helper_calls = const word::HELPER_CALLS * 8,
);

unsafe extern "C" {
    fn fz_deep_sender();
}

fn stopping() -> bool {
    counter(word::STOP).load(Relaxed) != 0
}

fn max(w: usize, v: u64) {
    counter(w).fetch_max(v, Relaxed);
}

/// The kinds the builders' own slots keep (set once; see [`TASK_TAIL`]).
pub(super) fn init_kinds() {
    for s in TASK_TAIL {
        set_kind(s, SUB_TASK);
    }
    set_kind(TASK_HEAD, SUB_TASK);
    for s in EP_NEXT {
        set_kind(s, EP);
    }
    set_kind(EP_SENDER, OWN_THREAD);
    for s in DERIV_LO..DERIV_HI {
        set_kind(s, EP_BADGED);
    }
}

impl Fz {
    fn forced(&mut self, n: Sys, a: [u64; 6]) -> (u64, u64, u64) {
        let mut c = Req::new(n, a);
        c.force = true;
        self.exec_out(c)
    }

    /// Deletes a builder's own slot (its kind stays).
    fn drop_own(&mut self, s: u64) {
        self.forced(Sys::CapDelete, [s, 0, 0, 0, 0, 0]);
    }

    /// Makes an object into one of the builder's own slots; one found there (a hostile copy,
    /// another fuzzer's copy) is deleted first.
    fn make_own(&mut self, n: Sys, s: u64) -> bool {
        let m = self.memory();
        for _ in 0..2 {
            match self.forced(n, [m, s, 0, 0, 0, 0]).0 {
                0 => return true,
                e if e == Error::SlotOccupied as u64 => self.drop_own(s),
                _ => return false,
            }
        }
        false
    }

    /// How deep a build of `link` bytes a link may go: a random depth up to `most`, and what a
    /// quarter of the budget left above half of it pays for (the budget is the root task's,
    /// shared by every fuzzer: the deep graphs of all of them together never take more than
    /// half of it, and the rest of the run keeps the other half).
    fn depth(&mut self, link: u64, least: u64, most: u64) -> u64 {
        let m = self.memory();
        let (rax, left, total) = self.exec_out(Req::new(Sys::MemoryInfo, [m, 0, 0, 0, 0, 0]));
        if rax != 0 {
            return 0;
        }
        let afford = left.saturating_sub(total / 2) / 4 / link;
        let d = match self.rnd() % 4 {
            0 => least + self.rnd() % (most / 8).max(1),
            1 => least + self.rnd() % (most / 2).max(1),
            _ => most / 2 + self.rnd() % (most / 2 + 1),
        };
        d.min(most).min(afford)
    }

    /// Takes a structure's head down: `CapDelete`; `CapRevoke` then `CapDelete` (the copies
    /// the racers made go first); or, for a task chain, `TaskKill` of its first task (whose
    /// table is emptied) then `CapDelete`. The longest call is counted.
    fn cut(&mut self, k: usize, h: u64) {
        let _ = HEAD[k].compare_exchange(h, NONE, Relaxed, Relaxed);
        let how = self.rnd() % if k == TASKS { 3 } else { 2 };
        let t0 = rl4_user::rdtsc();
        if how == 1 {
            let (rax, n, _) = self.exec_out(Req::new(Sys::CapRevoke, [h, 0, 0, 0, 0, 0]));
            max(word::DEEP_LONGEST, rl4_user::rdtsc() - t0);
            if rax == 0 {
                add(word::DEEP_ROOTS_REVOKED, 1);
                add(word::DEEP_REVOKED_CAPS, n);
            }
        } else if how == 2 && self.exec(Req::new(Sys::TaskKill, [h, 0, 0, 0, 0, 0])) == 0 {
            max(word::DEEP_LONGEST, rl4_user::rdtsc() - t0);
            add(word::DEEP_HEADS_DELETED, 1);
        }
        let t0 = rl4_user::rdtsc();
        let mut c = Req::new(Sys::CapDelete, [h, 0, 0, 0, 0, 0]);
        c.effect = Effect::Clear(h);
        if self.exec(c) == 0 {
            max(word::DEEP_LONGEST, rl4_user::rdtsc() - t0);
            add(word::DEEP_HEADS_DELETED, 1);
        }
    }

    /// At the end of a build that was not cut: its head goes now (mostly), or is left standing.
    fn finish(&mut self, k: usize, h: u64) {
        if self.one_in(4) {
            add(word::DEEP_LEFT, 1);
        } else {
            self.cut(k, h);
        }
    }

    /// One deep action: a build of a kind chosen at random.
    pub(super) fn deep(&mut self) {
        let k = self.rnd() % 3;
        self.deep_of(k);
    }

    /// A build of kind `k % 3` (if no other thread of the task builds one).
    pub(super) fn deep_of(&mut self, k: u64) {
        let k = (k % 3) as usize;
        if BUSY[k].swap(1, Relaxed) != 0 {
            return;
        }
        // The structure of this kind left standing, if any, goes first.
        let old = HEAD[k].load(Relaxed);
        if old != NONE {
            self.cut(k, old);
        }
        match k {
            TASKS => self.task_chain(),
            EPS => self.ep_chain(),
            _ => self.deriv_chain(),
        }
        BUSY[k].store(0, Relaxed);
    }

    fn task_chain(&mut self) {
        let want = self.depth(cost::TASK, 16, 3000);
        if want < 2 {
            return;
        }
        // The head is made in a builder's slot, which only the builders write, and the chain
        // grows from there: the slot a link is copied into always holds the task made just
        // before. A copy in a visible slot (`h`) is what the other threads and `cut` see; the
        // chain never grows through `h`, which any call may empty and refill meanwhile.
        if !self.make_own(Sys::TaskCreate, TASK_HEAD) {
            return;
        }
        let h = self.free();
        let mut c = Req::new(Sys::CapCopy, [TASK_HEAD, slot::TASK, h, Rights::ALL.0, 0, 0]);
        c.effect = Effect::Set(h, SUB_TASK);
        if self.exec(c) != 0 {
            self.drop_own(TASK_HEAD);
            return;
        }
        HEAD[TASKS].store(h, Relaxed);
        let at = self.rnd() % (2 * want);
        let (mut tail, mut links, mut i, mut cut) = (TASK_HEAD, 1u64, 0usize, false);
        while links < want && !stopping() {
            if !cut && links >= at {
                cut = true;
                self.cut(TASKS, h);
            }
            let a = TASK_TAIL[i % 2];
            i += 1;
            if !self.make_own(Sys::TaskCreate, a) {
                break;
            }
            // The new task into the last one's slot 0 (or, rarely, another of its slots).
            let dst = if self.one_in(16) { self.rnd() % 256 } else { 0 };
            let r = self.forced(Sys::CapCopy, [a, tail, dst, Rights::ALL.0, 0, 0]).0;
            self.drop_own(tail);
            tail = a;
            if r != 0 {
                break;
            }
            links += 1;
        }
        self.drop_own(tail);
        add(word::DEEP_TASK_CHAINS, 1);
        add(word::DEEP_TASK_LINKS, links);
        max(word::DEEP_TASK_MAX, links);
        if !cut {
            self.finish(TASKS, h);
        }
    }

    fn ep_chain(&mut self) {
        let want = self.depth(EP_LINK, 8, 1000);
        if want < 2 {
            return;
        }
        let h = self.free();
        let m = self.memory();
        let mut c = Req::new(Sys::EndpointCreate, [m, h, 0, 0, 0, 0]);
        c.effect = Effect::Set(h, EP);
        if self.exec(c) != 0 {
            return;
        }
        HEAD[EPS].store(h, Relaxed);
        // The senders run on this thread's CPU, where a `Yield` lets them reach their `Send`.
        let me = self.me;
        let (rax, _, cpu) = self.exec_out(Req::new(Sys::ThreadInfo, [me, 0, 0, 0, 0, 0]));
        let cpu = if rax == 0 { cpu } else { self.rnd() % self.cpus };
        let own = slot::TASK;
        let at = self.rnd() % (2 * want);
        let (mut cur, mut links, mut i, mut cut) = (h, 1u64, 0usize, false);
        while links < want && !stopping() {
            if !cut && links >= at {
                cut = true;
                self.cut(EPS, h);
            }
            let next = EP_NEXT[i % 2];
            i += 1;
            if !self.make_own(Sys::EndpointCreate, next) {
                break;
            }
            let entry = fz_deep_sender as *const () as u64;
            let mut ok = false;
            for _ in 0..2 {
                match self.forced(Sys::ThreadCreate, [m, own, entry, 0, PRIO | cpu << 32, EP_SENDER]).0 {
                    0 => {
                        ok = true;
                        break;
                    }
                    e if e == Error::SlotOccupied as u64 => self.drop_own(EP_SENDER),
                    _ => break,
                }
            }
            let mut blocked = false;
            if ok {
                self.exec(Req::new(Sys::ThreadSetArg, [EP_SENDER, cur, next, 0, 0, 0]));
                if self.exec(Req::new(Sys::ThreadResume, [EP_SENDER, 0, 0, 0, 0, 0])) == 0 {
                    add(word::HELPERS_STARTED, 1);
                    for _ in 0..200 {
                        let (rax, st, _) = self.exec_out(Req::new(Sys::ThreadInfo, [EP_SENDER, 0, 0, 0, 0, 0]));
                        if rax != 0 || st == ThreadState::BlockedSend as u64 || st >= ThreadState::Suspended as u64 {
                            blocked = rax == 0 && st == ThreadState::BlockedSend as u64;
                            break;
                        }
                        self.exec(Req::new(Sys::Yield, [0; 6]));
                    }
                }
                // The thread lives on in the endpoint's queue without a capability (one that
                // has not reached its `Send` yet is destroyed: the chain ends here).
                self.drop_own(EP_SENDER);
            }
            if cur != h {
                self.drop_own(cur);
            }
            cur = next;
            if !blocked {
                break;
            }
            links += 1;
        }
        if cur != h {
            self.drop_own(cur);
        }
        add(word::DEEP_EP_CHAINS, 1);
        add(word::DEEP_EP_LINKS, links);
        max(word::DEEP_EP_MAX, links);
        if !cut {
            self.finish(EPS, h);
        }
    }

    fn deriv_chain(&mut self) {
        let want = self.depth(cost::ENDPOINT, 8, DERIV_HI - DERIV_LO);
        if want < 2 {
            return;
        }
        let h = self.free();
        let m = self.memory();
        let note = self.one_in(3);
        let (n, kd) = if note { (Sys::NotificationCreate, NOTE) } else { (Sys::EndpointCreate, EP) };
        let mut c = Req::new(n, [m, h, 0, 0, 0, 0]);
        c.effect = Effect::Set(h, kd);
        if self.exec(c) != 0 {
            return;
        }
        HEAD[DERIV].store(h, Relaxed);
        let own = slot::TASK;
        let badge = self.rnd() | 1;
        let at = self.rnd() % (2 * want);
        let (mut prev, mut links, mut cut) = (h, 0u64, false);
        for p in DERIV_LO..DERIV_LO + want {
            if stopping() {
                break;
            }
            if !cut && links >= at {
                cut = true;
                self.cut(DERIV, h);
            }
            // GRANT always (a copy to another task needs it), other rights at random.
            let rights = (self.rnd() & Rights::ALL.0) | Rights::GRANT.0;
            let mut r = Error::SlotOccupied as u64;
            for _ in 0..2 {
                r = if prev == h {
                    self.forced(Sys::CapMint, [prev, own, p, rights, badge, 0]).0
                } else {
                    self.forced(Sys::CapCopy, [prev, own, p, rights, 0, 0]).0
                };
                if r != Error::SlotOccupied as u64 {
                    break;
                }
                self.drop_own(p);
            }
            if r != 0 {
                break;
            }
            links += 1;
            DERIV_LEN.store(links, Relaxed);
            prev = p;
            if self.one_in(4) {
                // A child of this link in another table.
                // Never into a task made here (the head of a task chain, as this once did):
                // a helper thread of that task faulting to this endpoint as its handler waits
                // in the endpoint's queue, which holds it, and it holds its task, which holds
                // the endpoint: a cycle no fuzzer's end breaks (found by the 10-minute runs).
                let (dst, s, peer) = match self.rnd() % 2 {
                    0 if cross() => match self.find(&[PEER_TASK], slot::PEERS, slot::PEERS_END) {
                        Some(t) => (t, self.peer_slot(), true),
                        None => (own, self.free(), false),
                    },
                    _ => (own, self.free(), false),
                };
                let mut c = Req::new(Sys::CapCopy, [p, dst, s, self.rights() | Rights::GRANT.0, 0, 0]);
                c.cross = peer;
                if dst == own {
                    c.effect = Effect::Set(s, if note { NOTE_BADGED } else { EP_BADGED });
                }
                self.exec(c);
            }
        }
        add(word::DEEP_DERIV_CHAINS, 1);
        add(word::DEEP_DERIV_LINKS, links);
        max(word::DEEP_DERIV_MAX, links);
        if !cut && self.one_in(4) {
            // Left standing, its links too (the next derivation build revokes the root and
            // reuses the slots).
            add(word::DEEP_LEFT, 1);
            return;
        }
        // Down: the root revoked (or deleted), or a link in the middle revoked, then the
        // builder's slots emptied.
        match self.rnd() % 4 {
            0 if links > 2 => {
                let mid = DERIV_LO + self.rnd() % links;
                let t0 = rl4_user::rdtsc();
                let (rax, n, _) = self.forced(Sys::CapRevoke, [mid, 0, 0, 0, 0, 0]);
                if rax == 0 {
                    max(word::DEEP_LONGEST, rl4_user::rdtsc() - t0);
                    add(word::DEEP_ROOTS_REVOKED, 1);
                    add(word::DEEP_REVOKED_CAPS, n);
                }
                if !cut {
                    self.cut(DERIV, h);
                }
            }
            _ if !cut => self.cut(DERIV, h),
            _ => {}
        }
        for p in DERIV_LO..DERIV_LO + links {
            self.drop_own(p);
        }
        DERIV_LEN.store(0, Relaxed);
    }

    /// One call of another fuzzing thread on a deep structure's slots: a head (while one
    /// stands) or one of the builders' own slots, whatever they hold at that moment.
    pub(super) fn race(&mut self) {
        // A kind with a structure standing or being built (none: no call).
        let k0 = self.rnd() as usize;
        let Some(k) = (0..3).map(|i| (k0 + i) % 3).find(|&k| HEAD[k].load(Relaxed) != NONE || BUSY[k].load(Relaxed) != 0) else {
            return;
        };
        let head = HEAD[k].load(Relaxed);
        let s = if head != NONE && self.one_in(2) {
            head
        } else {
            match k {
                TASKS => TASK_TAIL[(self.rnd() % 2) as usize],
                EPS => self.pick_of([EP_NEXT[0], EP_NEXT[1], EP_SENDER]),
                _ => DERIV_LO + self.rnd() % DERIV_LEN.load(Relaxed).max(1),
            }
        };
        let kd = kind(s);
        let mut c = match self.rnd() % 8 {
            0 => {
                let mut c = Req::new(Sys::CapDelete, [s, 0, 0, 0, 0, 0]);
                if s < 128 {
                    c.effect = Effect::Clear(s);
                }
                c
            }
            1 => Req::new(Sys::CapRevoke, [s, 0, 0, 0, 0, 0]),
            2 => {
                // A copy into a visible slot of this task (never into a task: see the module's
                // comment), which the ordinary calls then use.
                let d = self.free();
                let own = slot::TASK;
                let mut c = Req::new(Sys::CapCopy, [s, own, d, keep_grant(s, self.rights()), 0, 0]);
                c.effect = Effect::Copy(s, d);
                c
            }
            3 => Req::new(Sys::CapIdentify, [s, 0, 0, 0, 0, 0]),
            4 if is_task(kd) => Req::new(Sys::TaskKill, [s, 0, 0, 0, 0, 0]),
            4 | 5 if matches!(kd, EP | EP_BADGED) => {
                let n = if self.one_in(2) { Sys::NbRecv } else { Sys::NbSend };
                let mut c = Req::new(n, [s, Tag::new(3, self.rnd() % 5, 0).0, 0, 0, 0, 0]);
                c.r14 = self.free();
                c
            }
            4 | 5 if kd == OWN_THREAD => {
                let n = self.pick_of([Sys::ThreadSuspend as u64, Sys::ThreadResume as u64, Sys::ThreadInfo as u64]);
                Req::new(Sys::try_from(n).unwrap_or(Sys::ThreadInfo), [s, 0, 0, 0, 0, 0])
            }
            _ => {
                let d = self.free();
                let own = slot::TASK;
                let mut c = Req::new(Sys::CapMint, [s, own, d, Rights::ALL.0, self.rnd() | 1, 0]);
                c.effect = Effect::Copy(s, d);
                c
            }
        };
        if c.n == Sys::NbSend as u64 || c.n == Sys::NbRecv as u64 {
            c.r13 = NO_SLOT;
        }
        add(word::DEEP_RACES, 1);
        if self.exec(c) == 0 {
            add(word::DEEP_RACES_OK, 1);
        }
    }
}
