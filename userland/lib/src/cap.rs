//! Typed capability handles: a slot number that says what it names, with the operations that
//! make sense on it. They are plain `Copy` numbers (the kernel checks every use); dropping one
//! deletes nothing (see [`crate::slots::free`]).
use rl4_abi::Error;
use rl4_abi::ipc::{FOREVER, NO_SLOT, Tag};

use crate::sys::{self, Msg};

/// An endpoint capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint(pub u64);

impl Endpoint {
    /// A new endpoint, charged to the budget in `memory`, in a fresh slot.
    pub fn create(memory: u64) -> Result<Endpoint, Error> {
        let s = crate::slots::alloc().ok_or(Error::SlotOccupied)?;
        sys::endpoint_create(memory, s).map(|_| Endpoint(s)).inspect_err(|_| crate::slots::free(s))
    }
    /// Sends `m` and waits for the reply (needs `SEND`).
    #[inline(always)]
    pub fn call(self, m: &Msg) -> Result<Msg, Error> {
        sys::call(self.0, m)
    }
    /// Like [`Endpoint::call`], also passing the capability in slot `cap` (needs `GRANT` on
    /// both; `NO_SLOT`: none). A reply carries no capability (`docs/ipc.md`): a server hands
    /// one back in a call of its own. (Before the twenty-seventh session this took a receive
    /// slot "for a capability in the reply", which never came.)
    pub fn call_with_cap(self, m: &Msg, cap: u64) -> Result<Msg, Error> {
        let m = Msg { tag: Tag::new(m.tag.label(), m.tag.len(), (cap != NO_SLOT) as u64), ..*m };
        sys::ipc(rl4_abi::Sys::Call, self.0, &m, FOREVER, cap, NO_SLOT)
    }
    /// Sends `m`, waiting for a receiver.
    #[inline(always)]
    pub fn send(self, m: &Msg) -> Result<(), Error> {
        sys::send(self.0, m)
    }
    /// Receives a message (needs `RECEIVE`); `badge` says which sender's capability it came
    /// through.
    #[inline(always)]
    pub fn recv(self) -> Result<Msg, Error> {
        sys::recv(self.0)
    }
    /// Replies to the last caller and receives the next message: the server loop's one call.
    #[inline(always)]
    pub fn reply_recv(self, m: &Msg) -> Result<Msg, Error> {
        sys::reply_recv(self.0, m)
    }
    /// Serves the endpoint forever: each message received goes to `handle`, whose answer is
    /// the reply (sent together with the next receive). Returns only when a receive fails for
    /// good (the endpoint was deleted: `PartnerGone`; the capability went), or when the kernel
    /// refuses `handle`'s answer as a message (`InvalidArgument`: more than four words on a
    /// thread with no IPC buffer, reserved tag bits), with that error — in the second case the
    /// caller still waits for its reply, which the serving thread owes until it replies or
    /// ends. A suspension of the serving thread while it waited (`Interrupted`, once it is
    /// resumed) only makes it wait again.
    pub fn serve(self, mut handle: impl FnMut(&Msg) -> Msg) -> Error {
        let mut m = match self.recv_on() {
            Ok(m) => m,
            Err(e) => return e,
        };
        loop {
            let r = handle(&m);
            m = match self.reply_recv(&r) {
                Ok(m) => m,
                // The caller went away before the reply (or its reply could not be taken), or
                // this thread was suspended while it waited for the next message (the reply
                // went before it waited): wait for the next one.
                Err(Error::NoCaller | Error::PartnerGone | Error::BadFaultReply | Error::Interrupted) => match self.recv_on() {
                    Ok(m) => m,
                    Err(e) => return e,
                },
                Err(e) => return e,
            };
        }
    }

    /// [`Endpoint::recv`], again after a suspension (`Interrupted`).
    fn recv_on(self) -> Result<Msg, Error> {
        loop {
            match self.recv() {
                Err(Error::Interrupted) => continue,
                r => return r,
            }
        }
    }
}

/// A notification capability: a word of signal bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notification(pub u64);

impl Notification {
    /// A new notification, charged to `memory`, in a fresh slot.
    pub fn create(memory: u64) -> Result<Notification, Error> {
        let s = crate::slots::alloc().ok_or(Error::SlotOccupied)?;
        sys::notification_create(memory, s).map(|_| Notification(s)).inspect_err(|_| crate::slots::free(s))
    }
    /// ORs into the word, waking a waiter: the capability's badge if it has one (`bits` is then
    /// ignored), else `bits`.
    pub fn signal(self, bits: u64) -> Result<(), Error> {
        sys::signal(self.0, bits)
    }
    /// Waits for a non-zero word and takes it.
    pub fn wait(self) -> Result<u64, Error> {
        sys::wait(self.0, FOREVER)
    }
    /// As [`Notification::wait`], for at most `ticks` TSC ticks (`Timeout` then).
    pub fn wait_timeout(self, ticks: u64) -> Result<u64, Error> {
        sys::wait(self.0, ticks)
    }
    /// Takes the word without waiting (0 if no bit is set).
    pub fn poll(self) -> Result<u64, Error> {
        sys::poll(self.0)
    }
}

/// A thread capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thread(pub u64);

impl Thread {
    /// Its state ([`rl4_abi::ThreadState`]), CPU and priority.
    pub fn info(self) -> Result<(rl4_abi::ThreadState, u64, u64), Error> {
        let r = sys::thread_info(self.0)?;
        Ok((rl4_abi::ThreadState::try_from(r[0]).map_err(|_| Error::InvalidState)?, r[1], r[2]))
    }
    /// Whether it has ended (`ThreadExit`, or returned from its function).
    pub fn is_dead(self) -> bool {
        matches!(self.info(), Ok((rl4_abi::ThreadState::Dead, _, _)))
    }
    pub fn suspend(self) -> Result<(), Error> {
        sys::thread_suspend(self.0)
    }
    pub fn resume(self) -> Result<(), Error> {
        sys::thread_resume(self.0)
    }
    /// Moves it to CPU `cpu`.
    pub fn set_cpu(self, cpu: u64) -> Result<(), Error> {
        sys::thread_set_affinity(self.0, cpu)
    }
    pub fn set_priority(self, prio: u64) -> Result<(), Error> {
        sys::thread_set_priority(self.0, prio)
    }
}

/// A frame capability: one 4 KiB page of memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame(pub u64);

impl Frame {
    /// A zeroed frame from the budget in `memory`, in a fresh slot.
    pub fn alloc(memory: u64) -> Result<Frame, Error> {
        let s = crate::slots::alloc().ok_or(Error::SlotOccupied)?;
        sys::frame_alloc(memory, s).map(|_| Frame(s)).inspect_err(|_| crate::slots::free(s))
    }
    /// Maps it at `vaddr` in the address space `space` with `rights` (within the capability's).
    pub fn map(self, space: u64, vaddr: u64, rights: rl4_abi::Rights) -> Result<(), Error> {
        sys::map(space, self.0, vaddr, rights)
    }
}

/// A task capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task(pub u64);

impl Task {
    /// Copies the capability in `src` into slot `dst` of this task, with at most `rights`
    /// (needs `GRANT` on this capability).
    pub fn give(self, src: u64, dst: u64, rights: rl4_abi::Rights) -> Result<(), Error> {
        sys::cap_copy(src, self.0, dst, rights)
    }
    /// Like [`Task::give`] for an endpoint or notification without a badge yet: the copy
    /// carries `badge`.
    pub fn give_badged(self, src: u64, dst: u64, rights: rl4_abi::Rights, badge: u64) -> Result<(), Error> {
        sys::cap_mint(src, self.0, dst, rights, badge)
    }
    /// Ends the task (needs `WRITE`): its threads stop and its capabilities are deleted.
    pub fn kill(self) -> Result<(), Error> {
        sys::task_kill(self.0)
    }
}
