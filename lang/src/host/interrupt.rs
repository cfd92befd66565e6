//! The interrupt flag: set from outside a running program (Ctrl-C in the REPL or under
//! `nabla run`), polled by compiled host code at every loop iteration and function entry,
//! and by builtins that loop long on their own (evaluation over a split, reading an image
//! folder). A poll that finds it set stops the program with an "interrupted" error, as
//! any runtime error stops it, so a REPL session keeps every earlier definition.
//!
//! Whoever runs programs clears it before each (the REPL before each input: a Ctrl-C
//! while an input is checked or compiled then stops it as soon as it runs), and after
//! reporting one that stopped.
//!
//! It is a process-wide atomic, not IO: `lang` only defines it; the binary's signal
//! handler sets it.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Nonzero while an interrupt is pending. A byte, so compiled code polls it with one load.
static REQUESTED: AtomicU8 = AtomicU8::new(0);

/// Asks the running program to stop (async-signal-safe: one atomic store).
pub fn request() {
    REQUESTED.store(1, Ordering::SeqCst);
}

/// Whether an interrupt is pending.
pub fn pending() -> bool {
    REQUESTED.load(Ordering::SeqCst) != 0
}

/// Clears a pending interrupt; whether there was one. Called when a program starts (an
/// interrupt between runs is not for the next one) and after a stopped program has been
/// reported (the flag stays set while it stops, so every poll on the way out sees it).
pub fn take() -> bool {
    REQUESTED.swap(0, Ordering::SeqCst) != 0
}

/// The flag's address, for compiled code to poll (`load.i8`).
pub fn flag_address() -> *const u8 {
    REQUESTED.as_ptr() as *const u8
}

/// Whether compiled host code is running (a second Ctrl-C then ends the process: the
/// program is stuck in a native call that does not poll).
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Marks compiled code as running while it lives.
pub struct Running(bool);

impl Running {
    pub fn start() -> Running {
        Running(RUNNING.swap(true, Ordering::SeqCst))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.store(self.0, Ordering::SeqCst);
    }
}

/// Whether compiled host code is running now (async-signal-safe).
pub fn running() -> bool {
    RUNNING.load(Ordering::SeqCst)
}

/// The message a program stopped by an interrupt reports.
pub const MESSAGE: &str = "interrupted";
