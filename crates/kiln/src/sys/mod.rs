//! What kiln needs of the host beyond runc: [`atomic`] file writes,
//! [`children`] (the processes a command abandons, reaped by `kiln
//! serve`), [`faults`] (the crash points tests inject).
//!
//! For: small, well-tested wrappers other modules share. Must never:
//! decide anything about images, instances or releases.

pub mod atomic;
pub mod children;
pub mod faults;

/// Set once SIGTERM or SIGINT arrives, after [`stop_on_signal`].
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A flag SIGTERM and SIGINT set, for a foreground loop (`kiln agent`) to
/// end cleanly: the handlers are installed on the first call.
pub fn stop_on_signal() -> &'static std::sync::atomic::AtomicBool {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for sig in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: `on_stop` only stores to an atomic, which is
            // async-signal-safe, and has the signature `signal` expects.
            unsafe {
                libc::signal(sig, on_stop as *const () as libc::sighandler_t);
            }
        }
    });
    &STOP
}
