//! Each worker thread's keep-alive connections to backends: taken newest
//! first, checked for a close by the backend when idle a while, never
//! reused once their backend is retired, swept when idle too long.
//!
//! For: backend connection reuse on one thread. Must never: be shared
//! between threads or take a lock (a worker serves all its connections).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::table::Backend;

/// How long an idle backend connection is kept in the pool.
const BACKEND_IDLE: Duration = Duration::from_secs(30);
/// A pooled connection idle for longer than this is checked for a close by
/// the backend before it is used.
const CHECK_AFTER: Duration = Duration::from_secs(1);
const MAX_IDLE_PER_BACKEND: usize = 512;

/// An idle backend connection in this thread's pool.
#[derive(Debug)]
struct Idle {
    conn: TcpStream,
    backend: Arc<Backend>,
    since: Instant,
}

thread_local! {
    /// Each worker thread's keep-alive connections, by backend.
    static POOL: RefCell<HashMap<SocketAddr, Vec<Idle>>> = RefCell::new(HashMap::new());
}

/// Whether the backend closed (or wrote to) an idle connection: either
/// makes it unusable for the next request.
fn stale(conn: &TcpStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: the descriptor belongs to `conn`, which outlives the call; the
    // buffer is one valid, writable byte; MSG_PEEK | MSG_DONTWAIT neither
    // consumes data nor blocks.
    let n = unsafe { libc::recv(conn.as_raw_fd(), (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock
}

/// A connection to `backend` from this thread's pool, newest first.
/// `careful`: check even a recently used one for a close (for requests that
/// cannot be retried, where a race with the backend's keep-alive timeout
/// would cost the client a 502).
pub(super) fn take(backend: &Backend, now: Instant, careful: bool) -> Option<TcpStream> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.get_mut(&backend.addr)?;
        while let Some(i) = idle.pop() {
            backend.idle.fetch_sub(1, Ordering::Relaxed);
            let age = now.saturating_duration_since(i.since);
            // A retired backend's connections may share the address with
            // a new instance's: they are never reused.
            let retired = i.backend.draining.load(Ordering::Relaxed);
            if !retired && age < BACKEND_IDLE && ((age < CHECK_AFTER && !careful) || !stale(&i.conn)) {
                return Some(i.conn);
            }
        }
        None
    })
}

pub(super) fn put(backend: &Arc<Backend>, conn: TcpStream, now: Instant) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.entry(backend.addr).or_default();
        if idle.len() < MAX_IDLE_PER_BACKEND && !backend.draining.load(Ordering::Relaxed) {
            backend.idle.fetch_add(1, Ordering::Relaxed);
            idle.push(Idle { conn, backend: backend.clone(), since: now });
        }
    });
}

/// Closes this thread's idle connections to draining backends and those
/// idle too long. Runs every few hundred ms on each worker.
pub(crate) fn sweep(now: Instant) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        for idle in pool.values_mut() {
            idle.retain(|i| {
                let keep = !i.backend.draining.load(Ordering::Relaxed)
                    && now.saturating_duration_since(i.since) < BACKEND_IDLE;
                if !keep {
                    i.backend.idle.fetch_sub(1, Ordering::Relaxed);
                }
                keep
            });
        }
        pool.retain(|_, v| !v.is_empty());
    });
}
