//! Waiting for SIGTERM or SIGINT without a signal handler.
//!
//! [`block_shutdown_signals`] blocks both signals in the calling thread before any other thread
//! starts, so every thread inherits the mask; [`wait_for_shutdown_signal`] then takes them
//! synchronously with `sigwait(3)`. No code runs in signal context.

/// Blocks SIGTERM and SIGINT in this thread and the threads it starts afterwards.
pub fn block_shutdown_signals() {
    // SAFETY: the set is initialised by sigemptyset before use, and pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits until SIGTERM or SIGINT arrives and returns its name.
pub fn wait_for_shutdown_signal() -> &'static str {
    // SAFETY: as above; sigwait writes the received signal number into `signal`.
    let signal = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let mut signal: libc::c_int = 0;
        while libc::sigwait(&set, &mut signal) != 0 {}
        signal
    };
    if signal == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    }
}
