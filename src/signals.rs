//! Process-wide signal behaviour, set once at start.
//!
//! * **SIGPIPE** goes back to its default (Rust ignores it, so a write to a closed pipe
//!   fails and `println!` panics): `nabla ir big.net | head -1` then ends quietly when
//!   `head` has read its line, as Unix tools do. Checkpoints are written atomically, so a
//!   run ended this way leaves the last complete one.
//! * **SIGINT** (Ctrl-C), for `nabla run` and the REPL, asks the running program to stop
//!   ([`nabla_lang::host::interrupt`]): compiled host code polls the flag at every loop
//!   iteration and call, so a long loop or a `train` call ends with an "interrupted" error
//!   and the REPL returns to its prompt with the session intact. A second Ctrl-C while a
//!   program runs and the first was not yet noticed ends the process at once (exit 130),
//!   for code stuck in a long native call.

/// Restores SIGPIPE's default action.
pub fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Makes Ctrl-C interrupt the running program instead of ending the process.
pub fn interrupt_on_ctrl_c() {
    #[cfg(unix)]
    // SAFETY: the handler only touches an atomic and calls `_exit`, both
    // async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

#[cfg(unix)]
extern "C" fn on_sigint(_: libc::c_int) {
    use nabla_lang::host::interrupt;
    if interrupt::pending() && interrupt::running() {
        // SAFETY: `_exit` is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
    nabla_lang::host::interrupt::request();
}

/// Whether the program that just failed was stopped by Ctrl-C (exit status 130, as a
/// process ended by it reports); clears the request.
pub fn was_interrupted() -> bool {
    nabla_lang::host::interrupt::take()
}
