//! A small server's accept loop: a thread per connection, a bound on how
//! many at once, and a stop flag polled between accepts. For the fleet's
//! side servers (a peer's store, a controller's API), whose connections
//! each carry one request.
//!
//! For: accepting and bounding. Must never: read or answer a request (the
//! caller's `handle` and `busy` do).

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Accepts on `listener` until `stop`, each connection handled by
/// `handle` on a thread of its own, at most `max` at once; a connection
/// over that is given to `busy` (to refuse it) on this thread. A panic in
/// one `handle` ends that connection only.
pub fn serve(
    listener: TcpListener,
    stop: &AtomicBool,
    max: usize,
    busy: impl Fn(TcpStream),
    handle: Arc<dyn Fn(TcpStream) + Send + Sync>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        let conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(_) => continue,
        };
        // Accepted sockets do not inherit non-blocking mode on Linux, but
        // say so rather than rely on it.
        let _ = conn.set_nonblocking(false);
        if active.load(Ordering::Relaxed) >= max {
            busy(conn);
            continue;
        }
        active.fetch_add(1, Ordering::Relaxed);
        let (handle, active) = (handle.clone(), active.clone());
        std::thread::spawn(move || {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(conn)));
            active.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn connections_over_the_bound_are_refused_and_a_panic_ends_only_its_own() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
        // One at a time; the first connection holds its slot until told.
        let gate = Arc::new(std::sync::Mutex::new(()));
        let held = gate.lock().unwrap();
        let g = gate.clone();
        let handle: Arc<dyn Fn(TcpStream) + Send + Sync> = Arc::new(move |mut c: TcpStream| {
            let mut b = [0u8; 1];
            let _ = c.read(&mut b);
            if b[0] == b'p' {
                panic!("a bug in one connection");
            }
            let _g = g.lock();
            let _ = c.write_all(b"ok");
        });
        let t = std::thread::spawn(move || serve(l, stop, 1, |mut c| drop(c.write_all(b"busy")), handle));
        let mut first = TcpStream::connect(addr).unwrap();
        first.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut second = TcpStream::connect(addr).unwrap();
        let mut out = String::new();
        second.read_to_string(&mut out).unwrap();
        assert_eq!(out, "busy");
        drop(held);
        let mut out = String::new();
        first.read_to_string(&mut out).unwrap();
        assert_eq!(out, "ok");
        // A panicking handler frees its slot: the next one is served.
        let mut p = TcpStream::connect(addr).unwrap();
        p.write_all(b"p").unwrap();
        let _ = p.read_to_string(&mut String::new());
        std::thread::sleep(Duration::from_millis(200));
        let mut next = TcpStream::connect(addr).unwrap();
        next.write_all(b"x").unwrap();
        let mut out = String::new();
        next.read_to_string(&mut out).unwrap();
        assert_eq!(out, "ok");
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
    }
}
