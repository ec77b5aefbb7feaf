//! rl4's serial driver: a 16550 UART (COM2) driven from user space through the `uart_16550`
//! crate, its receive interrupt delivered as a notification, received bytes kept in a ring
//! buffer, and an IPC interface (`rl4_user::serial`: read, write, subscribe, stats).
//!
//! Two threads share the ring: the interrupt thread (`ROLE_IRQ`) waits on the notification,
//! moves every byte the UART holds into the ring, acknowledges the interrupt (`IrqAck`), and
//! looks at the UART once more (an edge-triggered line that was masked while a byte arrived
//! raises nothing when it is unmasked); the server thread (`ROLE_SERVE`) answers calls on the
//! endpoint. One producer and one consumer: the ring needs no lock.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU8, AtomicU64, Ordering::{Acquire, Relaxed, Release}};
use rl4_user::abi::ipc::{FOREVER, NO_SLOT, Tag};
use rl4_user::abi::{IRQ_CPU_CALLER, Rights, Sys};
use rl4_user::serial::*;
use rl4_user::sys::{self, Msg};
use rl4_user::{com, println};
use uart_16550::SerialPort;

const RING: usize = 4096;
static RING_BYTES: [AtomicU8; RING] = [const { AtomicU8::new(0) }; RING];
/// Bytes ever pushed (written by the interrupt thread) and popped (by the server thread).
static HEAD: AtomicU64 = AtomicU64::new(0);
static TAIL: AtomicU64 = AtomicU64::new(0);
static RECEIVED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static INTERRUPTS: AtomicU64 = AtomicU64::new(0);
static SUBSCRIBED: AtomicU64 = AtomicU64::new(0);

fn port() -> SerialPort {
    // SAFETY: COM2's eight ports, opened to this task (`IoPortOpen`) before any use; the two
    // threads use different registers (receive / transmit) and only read the shared status.
    unsafe { SerialPort::new(com::COM2) }
}

fn push(b: u8) {
    let h = HEAD.load(Relaxed);
    if h - TAIL.load(Acquire) >= RING as u64 {
        DROPPED.fetch_add(1, Relaxed);
        return;
    }
    RING_BYTES[h as usize % RING].store(b, Relaxed);
    HEAD.store(h + 1, Release);
    RECEIVED.fetch_add(1, Relaxed);
}

fn pop(out: &mut [u8]) -> usize {
    let (t, h) = (TAIL.load(Relaxed), HEAD.load(Acquire));
    let n = ((h - t) as usize).min(out.len());
    for (i, o) in out.iter_mut().enumerate().take(n) {
        *o = RING_BYTES[(t as usize + i) % RING].load(Relaxed);
    }
    TAIL.store(t + n as u64, Release);
    n
}

#[unsafe(no_mangle)]
fn rl4_main(role: u64, _: u64) {
    match role {
        ROLE_IRQ => irq_thread(),
        ROLE_SERVE => serve(),
        _ => println!("serial: unknown role {role}"),
    }
}

fn irq_thread() {
    if let Err(e) = sys::ioport_open(PORTS) {
        return println!("serial: cannot open the UART's ports: {e}");
    }
    let mut uart = port();
    uart.init();
    if let Err(e) = sys::irq_bind(IRQ, NTF, 1, IRQ_CPU_CALLER) {
        return println!("serial: cannot bind the interrupt: {e}");
    }
    println!("serial: COM2 at {:#x}, interrupt {} bound to this thread's CPU", com::COM2, com::COM2_IRQ);
    loop {
        if sys::wait(NTF, FOREVER).is_err() {
            return;
        }
        INTERRUPTS.fetch_add(1, Relaxed);
        let before = HEAD.load(Relaxed);
        loop {
            while let Ok(b) = uart.try_receive() {
                push(b);
            }
            let _ = sys::irq_ack(IRQ);
            // A byte that came while the line was masked raised no edge: look again.
            if sys::inb(com::COM2 + com::LSR) & com::LSR_DATA == 0 {
                break;
            }
        }
        if HEAD.load(Relaxed) != before && SUBSCRIBED.load(Acquire) != 0 {
            let _ = sys::signal(SUB, 1);
        }
    }
}

fn serve() {
    if let Err(e) = sys::ioport_open(PORTS) {
        return println!("serial: cannot open the UART's ports: {e}");
    }
    let mut uart = port();
    let recv_slot = |subscribed: bool| if subscribed { NO_SLOT } else { SUB };
    let mut m = match sys::ipc(Sys::Recv, EP, &Msg::default(), FOREVER, NO_SLOT, recv_slot(false)) {
        Ok(m) => m,
        Err(e) => return println!("serial: receive failed: {e}"),
    };
    loop {
        let label = m.tag.label();
        // Until a subscription, a capability a message carries lands in `SUB`: one that is not a
        // `SUBSCRIBE`'s, or is not a notification this driver may signal, is deleted, so that a
        // client cannot fill the slot and keep the real subscriber out (a review found it).
        let carried = m.tag.caps() == 1 && SUBSCRIBED.load(Relaxed) == 0;
        let signallable = || {
            sys::cap_identify(SUB).is_ok_and(|r| {
                r[0] == rl4_user::abi::ObjType::Notification as u64 && Rights(r[1]).contains(Rights::SEND)
            })
        };
        if carried && (label & 0xff != SUBSCRIBE || !signallable()) {
            let _ = sys::cap_delete(SUB);
        }
        let reply = match label & 0xff {
            READ => {
                let mut b = [0u8; CHUNK];
                let n = pop(&mut b);
                Msg { tag: Tag::new(n as u64, 4, 0), badge: 0, w: pack(&b[..n]) }
            }
            WRITE => {
                let mut b = [0u8; CHUNK];
                let n = unpack(&m.w, (label >> 8) as usize, &mut b);
                for &x in &b[..n] {
                    uart.send_raw(x);
                }
                Msg { tag: Tag::new(n as u64, 0, 0), badge: 0, w: [0; 4] }
            }
            SUBSCRIBE if carried && sys::cap_identify(SUB).is_ok() => {
                SUBSCRIBED.store(1, Release);
                Msg { tag: Tag::new(0, 0, 0), badge: 0, w: [0; 4] }
            }
            SUBSCRIBE => Msg { tag: Tag::new(1, 0, 0), badge: 0, w: [0; 4] },
            STATS => Msg {
                tag: Tag::new(0, 3, 0),
                badge: 0,
                w: [RECEIVED.load(Relaxed), DROPPED.load(Relaxed), INTERRUPTS.load(Relaxed), 0],
            },
            _ => Msg { tag: Tag::new(u64::MAX >> 16, 0, 0), badge: 0, w: [0; 4] },
        };
        let subscribed = SUBSCRIBED.load(Relaxed) != 0;
        m = match sys::ipc(Sys::ReplyRecv, EP, &reply, FOREVER, NO_SLOT, recv_slot(subscribed)) {
            Ok(m) => m,
            Err(e) => return println!("serial: reply_recv failed: {e}"),
        };
    }
}
