//! Children this process starts and never waits for: instance shims and
//! load balancers, which outlive their starter. They are registered here,
//! and a long-running process ([`crate::serve`]) reaps them when they exit,
//! since a zombie still answers `kill(pid, 0)`.
//!
//! Only registered children are ever reaped. A child that some thread waits
//! for (a bake's run step, a `runc` call, a test command) is never touched,
//! so any thread of `kiln serve` may run commands that start and wait for
//! their own processes. This module must never wait for any other pid.

use std::sync::Mutex;

static ABANDONED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Lets `child` run on without a waiter; [`reap`] collects it once it exits.
pub fn abandon(child: std::process::Child) {
    ABANDONED.lock().unwrap_or_else(|p| p.into_inner()).push(child.id());
    drop(child);
}

/// Reaps every abandoned child that has exited, without blocking; those
/// still running stay registered.
pub fn reap() {
    let mut pids = ABANDONED.lock().unwrap_or_else(|p| p.into_inner());
    pids.retain(|&pid| {
        // SAFETY: waits without blocking for one child this process started
        // and registered; no other code waits for it.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
        // 0: still running. The pid itself: reaped. -1: not our child any
        // more (nothing to wait for).
        r == 0
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_abandoned_children_are_reaped() {
        // A child waited for by its starter keeps its exit status even when
        // reap runs between its exit and the wait.
        let mut waited = std::process::Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let gone = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        abandon(gone);
        std::thread::sleep(std::time::Duration::from_millis(200));
        reap();
        assert_eq!(waited.wait().unwrap().code(), Some(3));
        assert!(!ABANDONED.lock().unwrap().contains(&gone_pid), "the exited abandoned child is reaped");
        // Reaped: /proc no longer lists it as a zombie of ours.
        let stat = std::fs::read_to_string(format!("/proc/{gone_pid}/stat")).unwrap_or_default();
        assert!(!stat.contains(") Z "), "{stat}");
    }
}
