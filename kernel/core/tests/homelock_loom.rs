//! `loom` models of `rl4_core::homelock`: every interleaving of two
//! simulated CPUs (every interleaving: the models are small enough) using real [`Homed`] values and [`HomeLock`]s, built with loom's atomics and
//! cells (this file compiles only with `RUSTFLAGS="--cfg loom"`, which `scripts/test` sets for
//! it). Loom's cell reports any two CPUs that reach one value at once, and every model checks
//! that no update was lost.
//!
//! - [`lock_against_rehome`]: one CPU moves a value to another home while another locks it.
//! - [`stale_home_against_new_home`]: the mover locks the value again at its new home while
//!   another CPU that read the old home locks it.
//! - [`other_against_rehome`]: one CPU moves a value while another reaches it through the lock
//!   of a neighbour of its old home (`HomeGuard::other`), or locks it on its own if it moved.
//! - [`opposite_rehomes`]: two values move between two homes in opposite directions (both
//!   locks each, in address order: no deadlock).
//! - [`held_lock_reaches_only_its_home`]: a value reached through a held lock of another value
//!   is reached only while it has that home; otherwise it is locked on its own.
//!
//! The models fail, as they should, when `Homed::lock` does not read the home again after it
//! took the lock (the locker then changes the value under the old home's lock while the mover
//! holds the new one).
#![allow(unexpected_cfgs)] // `cfg(loom)`: set by RUSTFLAGS for these models only.
#![cfg(loom)]
use loom::sync::Arc;
use loom::thread;
use rl4_core::homelock::{HomeLock, Homed};

/// Two homes' locks (leaked: a value holds `&'static` locks, as the kernel's static array).
fn homes() -> &'static [HomeLock; 2] {
    Box::leak(Box::new([HomeLock::new(), HomeLock::new()]))
}

fn model(bound: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = bound;
    }
    // The spinning of a contended lock (each round yields to the other CPUs) takes branches.
    b.max_branches = 100_000;
    b.check(f);
}

/// A value's final contents (every CPU is done).
fn read(v: &Homed<u64>) -> u64 {
    v.lock().with(|x| *x)
}

#[test]
fn lock_against_rehome() {
    model(None, || {
        let h = homes();
        let v = Arc::new(Homed::new(&h[0], 0u64));
        let mover = {
            let v = v.clone();
            thread::spawn(move || v.rehome(&h[1], |x| *x += 1))
        };
        v.lock().with(|x| *x += 10);
        mover.join().unwrap();
        assert_eq!(read(&v), 11);
        assert!(v.is_home(&h[1]));
    });
}

/// The race the second read of the home is for: a CPU that read the old home and takes its
/// lock after the move must not change the value while a CPU that locked the new home does.
#[test]
fn stale_home_against_new_home() {
    model(Some(2), || {
        let h = homes();
        let v = Arc::new(Homed::new(&h[0], 0u64));
        let mover = {
            let v = v.clone();
            thread::spawn(move || {
                v.rehome(&h[1], |x| *x += 1);
                v.lock().with(|x| *x += 10);
            })
        };
        v.lock().with(|x| *x += 100);
        mover.join().unwrap();
        assert_eq!(read(&v), 111);
    });
}

#[test]
fn other_against_rehome() {
    model(None, || {
        let h = homes();
        let v = Arc::new(Homed::new(&h[0], 0u64));
        let w = Homed::new(&h[0], 0u64);
        let mover = {
            let v = v.clone();
            thread::spawn(move || v.rehome(&h[1], |x| *x += 1))
        };
        // Through the lock of `w` (home 0): `v` only while it is still there.
        {
            let mut g = w.lock();
            if let Some(mut r) = g.other(&v) {
                r.with(|x| *x += 100);
            } else {
                drop(g);
                v.lock().with(|x| *x += 100);
            }
        }
        mover.join().unwrap();
        assert_eq!(read(&v), 101);
        assert!(v.is_home(&h[1]));
    });
}

/// A move that its closure refuses (`rehome_when`) leaves the value at its home, against a
/// CPU that locks it meanwhile: that CPU's change is kept, and later locks find it there.
#[test]
fn refused_rehome_stays_home() {
    model(None, || {
        let h = homes();
        let v = Arc::new(Homed::new(&h[0], 0u64));
        let mover = {
            let v = v.clone();
            thread::spawn(move || v.rehome_when(&h[1], || {}, |x| if *x >= 10 { Err(*x) } else { Ok(*x += 1) }))
        };
        v.lock().with(|x| *x += 10);
        let moved = mover.join().unwrap();
        match moved {
            Ok(()) => {
                assert_eq!(read(&v), 11);
                assert!(v.is_home(&h[1]));
            }
            Err(seen) => {
                assert_eq!(seen, 10);
                assert_eq!(read(&v), 10);
                assert!(v.is_home(&h[0]), "a refused move changes no home");
            }
        }
    });
}

#[test]
fn opposite_rehomes() {
    model(None, || {
        let h = homes();
        let a = Arc::new(Homed::new(&h[0], 0u64));
        let b = Arc::new(Homed::new(&h[1], 0u64));
        let ta = {
            let a = a.clone();
            thread::spawn(move || a.rehome(&h[1], |x| *x += 1))
        };
        b.rehome(&h[0], |x| *x += 1);
        ta.join().unwrap();
        assert_eq!((read(&a), read(&b)), (1, 1));
        assert!(a.is_home(&h[1]) && b.is_home(&h[0]));
    });
}

#[test]
fn held_lock_reaches_only_its_home() {
    model(None, || {
        let h = homes();
        let a = Arc::new(Homed::new(&h[0], 0u64));
        let b = Arc::new(Homed::new(&h[1], 0u64));
        // Another CPU changes `b` under its own home's lock.
        let t = {
            let b = b.clone();
            thread::spawn(move || b.lock().with(|x| *x += 1))
        };
        {
            let mut g = a.lock();
            assert!(g.other(&b).is_none(), "a value of another home is never reached through this one's lock");
            g.with(|x| *x += 1);
            if let Some(mut r) = g.other(&a) {
                r.with(|x| *x += 1);
            }
        }
        t.join().unwrap();
        assert_eq!((read(&a), read(&b)), (2, 1));
    });
}
