//! `kiln serve --upgrade`: a new controller process takes over from the
//! running one without losing an API call or a request.
//!
//! 1. The successor connects to `$KILN_HOME/serve-handoff.sock`.
//! 2. The predecessor pauses: its API threads stop accepting (connections
//!    wait in the shared accept queue), it answers the calls it already
//!    took, and lets its drains finish.
//! 3. It hands over (see [`crate::handoff`]) the lock file (the `flock` goes
//!    with the descriptor), the API socket and the TCP listener.
//! 4. The successor adopts the instances and the load balancers, which it
//!    replaces with its own binary's, each taking its predecessor's
//!    listeners over. Then it serves the API and says `READY`.
//! 5. The predecessor exits. A successor that fails before `READY` leaves
//!    the predecessor to resume.
//!
//! This module moves sockets and pauses the loop. It must never decide
//! anything about releases or instances.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::controller::Controller;
use super::{now_ms, Call, Lock, ServeError};
use crate::handoff::{self, HandoffError, Inherited, Successor};

/// The socket a successor connects to.
pub fn offer_path(home: &Path) -> PathBuf {
    home.join("serve-handoff.sock")
}

/// Whether the API threads accept connections, and how many connections
/// they are taking or answering.
#[derive(Debug, Default)]
pub struct Gate {
    paused: AtomicBool,
    active: AtomicUsize,
}

impl Gate {
    fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }
    fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
    fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
    /// A successor is taking over: long answers (the event stream) end, so
    /// that their clients reconnect to it.
    pub(super) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }
}

/// Whether `fd` has a connection to accept within `ms`.
fn readable(fd: std::os::fd::RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd, alive for the call.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// Connections answered at once, over every listener of the gate; one
/// more is refused (503) by the accepting thread, without a thread of its
/// own, so that clients that never finish a request cannot exhaust the
/// process before they are even authenticated.
pub const MAX_CONNECTIONS: usize = 256;

/// Accepts connections on `listener` (set non-blocking here: a successor
/// shares the socket, and whichever process loses a wake-up must not block)
/// and answers each on its own thread, while the gate is open; past
/// [`MAX_CONNECTIONS`] a connection gets `refuse` instead.
pub(super) fn accept_loop<L, C>(
    listener: L,
    gate: Arc<Gate>,
    accept: impl Fn(&L) -> io::Result<C> + Send + 'static,
    handle: impl Fn(C) + Send + Sync + 'static,
    refuse: impl Fn(C) + Send + 'static,
) where
    L: AsRawFd + Send + 'static,
    C: Send + 'static,
{
    let handle = Arc::new(handle);
    std::thread::spawn(move || loop {
        if gate.paused.load(Ordering::SeqCst) || !readable(listener.as_raw_fd(), 100) {
            if gate.paused.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        // Counted before the pause is read again: a pauser that sees no
        // active connection knows none is being taken.
        gate.active.fetch_add(1, Ordering::SeqCst);
        if gate.paused.load(Ordering::SeqCst) {
            gate.active.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        match accept(&listener) {
            // This one is counted already: more than the cap is refused.
            Ok(conn) if gate.active.load(Ordering::SeqCst) > MAX_CONNECTIONS => {
                refuse(conn);
                gate.active.fetch_sub(1, Ordering::SeqCst);
            }
            Ok(conn) => {
                let (gate, handle) = (gate.clone(), handle.clone());
                std::thread::spawn(move || {
                    handle(conn);
                    gate.active.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(_) => {
                // Taken by the other process (WouldBlock), or out of
                // descriptors: try again shortly.
                gate.active.fetch_sub(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
}

/// What the predecessor says besides its sockets.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    pid: u32,
    file: PathBuf,
    tcp: bool,
}

/// The sockets a controller serves on, and (after a takeover) the
/// predecessor waiting for `READY`.
#[derive(Debug)]
pub struct Listeners {
    pub lock: Lock,
    pub api: UnixListener,
    pub tcp: Option<std::net::TcpListener>,
    pub predecessor: Option<Inherited>,
}

/// Copies of the sockets, kept to hand them over in turn.
#[derive(Debug)]
pub struct Kept {
    fds: Vec<OwnedFd>,
    tcp: bool,
    file: PathBuf,
}

impl Listeners {
    /// Copies of the same sockets (not new ones) for a later successor.
    pub fn kept(&self, file: &Path) -> Result<Kept, ServeError> {
        let io = |source| ServeError::Io { path: file.to_owned(), source };
        let mut fds = vec![self.lock.file.try_clone().map_err(io)?.into(), self.api.try_clone().map_err(io)?.into()];
        if let Some(t) = &self.tcp {
            fds.push(t.try_clone().map_err(io)?.into());
        }
        Ok(Kept { fds, tcp: self.tcp.is_some(), file: file.to_owned() })
    }
}

/// The successor's side: takes the running controller's lock and sockets.
/// `file` is checked against the predecessor's: an upgrade keeps serving
/// the same kiln.toml.
pub fn take_over(home: &Path, file: &Path) -> Result<Listeners, ServeError> {
    let path = offer_path(home);
    let mut inh = handoff::take_over(&path).map_err(|e| match e {
        HandoffError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
            ServeError::NotRunning { home: home.to_owned(), source }
        }
        e => e.into(),
    })?;
    let state: State = serde_json::from_slice(&inh.state)
        .map_err(|e| HandoffError::Protocol { path: path.clone(), detail: format!("the predecessor's state: {e}") })?;
    if state.file != file {
        return Err(ServeError::UpgradeFile { running: state.file, given: file.to_owned() });
    }
    let mut fds = std::mem::take(&mut inh.fds).into_iter();
    let want = 2 + usize::from(state.tcp);
    if fds.len() != want {
        let detail = format!("{} sockets arrived, expected {want}", fds.len());
        return Err(HandoffError::Protocol { path, detail }.into());
    }
    let (lock, api) = (fds.next().expect("counted"), fds.next().expect("counted"));
    let lock = std::fs::File::from(lock);
    // The flock belongs to the shared open file; only the pid changes.
    let pid = format!("{}\n", std::process::id());
    let lock_path = home.join("serve.lock");
    lock.set_len(0)
        .and_then(|_| lock.write_all_at(pid.as_bytes(), 0))
        .map_err(|source| ServeError::Io { path: lock_path, source })?;
    eprintln!("kiln serve: taking over from pid {}", state.pid);
    Ok(Listeners {
        lock: Lock { file: lock },
        api: UnixListener::from(api),
        tcp: fds.next().map(std::net::TcpListener::from),
        predecessor: Some(inh),
    })
}

/// Listens for successors; each one that connects arrives on the channel.
pub fn offer(home: &Path) -> Result<mpsc::Receiver<Successor>, ServeError> {
    let offer = handoff::Offer::bind(&offer_path(home))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || loop {
        match offer.accept() {
            Ok(s) => {
                if tx.send(s).is_err() {
                    return;
                }
            }
            Err(e) => eprintln!("kiln serve: {e}"),
        }
    });
    Ok(rx)
}

/// The predecessor's side: pauses, answers what it took, hands the
/// sockets over and exits once the successor serves. If the successor
/// fails first, it resumes (re-adopting the load balancers, some of which
/// the successor may have replaced).
pub fn hand_over(c: &mut Controller<'_>, gate: &Gate, calls: &mpsc::Receiver<Call>, successor: Successor, kept: &Kept) {
    eprintln!("kiln serve: a successor asks to take over; pausing");
    gate.pause();
    let deadline = Instant::now() + Duration::from_secs(15);
    while gate.active() > 0 && Instant::now() < deadline {
        if let Ok((req, reply)) = calls.recv_timeout(Duration::from_millis(10)) {
            let _ = reply.send(c.handle(req, now_ms()));
        }
    }
    c.settle(Instant::now() + Duration::from_secs(30), now_ms);
    let state = State { pid: std::process::id(), file: kept.file.clone(), tcp: kept.tcp };
    let state = serde_json::to_vec(&state).expect("serializes");
    let fds: Vec<_> = kept.fds.iter().map(|f| f.as_fd()).collect();
    match successor.hand_over(&fds, &state, Duration::from_secs(120)) {
        Ok(true) => {
            eprintln!("kiln serve: the successor serves; exiting");
            std::process::exit(0);
        }
        Ok(false) => eprintln!("kiln serve: the successor went away before it served; resuming"),
        Err(e) => eprintln!("kiln serve: {e}; resuming"),
    }
    if let Err(e) = c.reload_data_planes() {
        eprintln!("kiln serve: {e}");
    }
    gate.resume();
}
