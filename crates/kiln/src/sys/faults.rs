//! Test hooks for fault injection: `KILN_CRASH_AT=<point>` kills this
//! process (SIGKILL) the first time it reaches that named point, so tests
//! can prove recovery from each one (the controller's release steps, a
//! registry transfer cut half-way). Never set in production.

/// Dies here if `KILN_CRASH_AT` names `name`.
pub fn crash_point(name: &str) {
    if std::env::var("KILN_CRASH_AT").is_ok_and(|p| p == name) {
        eprintln!("kiln: crash hook {name}");
        // SAFETY: a signal to this very process; nothing is borrowed.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
