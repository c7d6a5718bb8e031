//! The shim: `kiln __shim <id>`, started detached by a [`Launcher`], owns
//! one container as a child subreaper, reports `started` (or the error)
//! over a pipe, records the exit, and moves log lines to the central store.
//!
//! For: keeping an instance supervised while no kiln runs. Must never:
//! stop or restart the container itself (its exit is recorded, not
//! judged).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use super::driver::Driver;
use super::*;
use crate::image::store::Store;

/// Starts the shim for an instance; behind a trait so the code above is
/// testable without processes.
pub trait Launcher {
    /// Starts the shim; the returned reader yields its one-line report,
    /// `started` or `error: …`.
    fn launch(&self, home: &Path, id: &InstanceId) -> io::Result<Box<dyn io::Read>>;
}

/// Starts `kiln __shim` in its own session, detached from the caller.
#[derive(Debug, Default)]
pub struct ShimLauncher;

impl Launcher for ShimLauncher {
    fn launch(&self, home: &Path, id: &InstanceId) -> io::Result<Box<dyn io::Read>> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe()?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.join("instances").join(id.as_str()).join("shim.log"))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("--home").arg(home).arg("__shim").arg(id.as_str());
        let (report, report_w) = io::pipe()?;
        cmd.stdin(std::process::Stdio::null()).stdout(report_w).stderr(log);
        // SAFETY: setsid is async-signal-safe and touches no memory; it only
        // makes the child a session leader so the caller's terminal and
        // process group signals do not reach the shim.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // Not waited for: the shim outlives the caller (a long-running
        // caller reaps it, see crate::sys::children).
        crate::sys::children::abandon(cmd.spawn()?);
        drop(cmd);
        Ok(Box::new(report))
    }
}

/// The shim: started detached by [`ShimLauncher`] as `kiln __shim ID`.
/// Creates and starts the container as this process's descendant (it is a
/// child subreaper, so it can read the exit status), removes the bundle and
/// secret files once the container holds them, moves log lines to the
/// central store every 200 ms, and records the exit. Returns the process
/// exit code.
pub fn shim(store: &Store, driver: &dyn Driver, id: &str) -> i32 {
    match shim_inner(store, driver, id) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kiln shim {id}: {e}");
            1
        }
    }
}

/// Writes the shim's one-line report to its stdout (a pipe to `kiln run`),
/// then points stdout at /dev/null: the reader is gone soon after.
fn report(line: &str) {
    let mut out = io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    if let Ok(null) = fs::File::open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 1 with a valid open fd; no memory is involved.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

fn shim_inner(store: &Store, driver: &dyn Driver, id: &str) -> Result<(), RunError> {
    let rt = Runtime::new(store, driver);
    let id = InstanceId(id.to_owned());
    let record = rt.load(&id)?;
    let idir = rt.instance_dir(&id);
    let fail = |message: String| {
        let _ = fs::write(idir.join("start-error"), &message);
        report(&format!("error: {}", message.replace('\n', " ")));
        RunError::StartFailed { id: id.clone(), message }
    };
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes plain integers and has no
    // memory-safety preconditions.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(fail(format!("cannot become a subreaper: {}", io::Error::last_os_error())));
    }
    let open = |name: &str| OpenOptions::new().create(true).append(true).mode(0o640).open(idir.join(name));
    let (out, err) = match (open("stdout.log"), open("stderr.log")) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => return Err(fail(format!("cannot open the log files: {e}"))),
    };
    let pid = match driver.run_detached(id.as_str(), &rt.bundle_dir(&id), out, err) {
        Ok(pid) => pid,
        Err(e) => {
            let _ = driver.delete(id.as_str(), true);
            let tail = fs::read_to_string(idir.join("stderr.log")).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(3).collect();
            return Err(fail(format!("{e}: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" / "))));
        }
    };
    // The container holds its config and secret mounts now; the clear
    // copies on tmpfs are no longer needed.
    rt.cleanup(&id);
    rt.keep_runtime_config(&id, &idir);
    let started = ShimStarted { shim_pid: std::process::id() as i32, container_pid: pid };
    write_json_atomic(&idir.join("shim.json"), &started, 0o644).map_err(io_err(&idir))?;
    report("started");

    let meta = rt.log_meta(&record);
    let logs = rt.logs();
    let done = std::sync::atomic::AtomicBool::new(false);
    let status = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = logs.ingest(&meta, &idir, now_ms(), false);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        // Reap every child (as subreaper the shim inherits the container's
        // orphans too) until the container itself exits.
        let status = loop {
            let mut st: libc::c_int = 0;
            // SAFETY: waitpid writes only into `st`, a valid local.
            let r = unsafe { libc::waitpid(-1, &mut st, 0) };
            if r == pid {
                break st;
            }
            if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                // No children left: the container is gone without a status.
                break -1;
            }
        };
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        status
    });
    let _ = logs.ingest(&meta, &idir, now_ms(), true);
    let exit = ExitInfo {
        code: (status >= 0 && libc::WIFEXITED(status)).then(|| libc::WEXITSTATUS(status)),
        signal: (status >= 0 && libc::WIFSIGNALED(status)).then(|| libc::WTERMSIG(status)),
        at: now_ms() / 1000,
        at_ms: now_ms(),
    };
    write_json_atomic(&idir.join("exit.json"), &exit, 0o644).map_err(io_err(&idir))?;
    let _ = driver.delete(id.as_str(), true);
    Ok(())
}
