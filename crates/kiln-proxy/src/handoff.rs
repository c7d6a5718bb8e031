//! Handing listening sockets from a running kiln process to its successor
//! (an upgraded `kiln proxy` or `kiln serve`), HAProxy's seamless reload
//! done over a unix socket: the successor connects, receives the sockets
//! themselves (`SCM_RIGHTS`) with a state blob, starts accepting on them,
//! and says `READY`; only then does the predecessor stop accepting. Both
//! processes hold the same sockets in between, so a connection waiting in
//! the accept queue is taken by one of them and never refused. A successor
//! that dies before `READY` leaves the predecessor serving as before.
//!
//! Wire format (one connection per handoff):
//! successor → `kiln-handoff-1\n`;
//! predecessor → 12 bytes (`u32` socket count, `u64` state length, little
//! endian) carrying the sockets, then the state;
//! successor → `READY\n`.
//!
//! This module moves descriptors and bytes. It must never decide when to
//! hand over or what the state means: that is the caller's.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

const HELLO: &[u8] = b"kiln-handoff-1\n";
const READY: &[u8] = b"READY\n";
/// More sockets than any kiln process listens on.
const MAX_FDS: usize = 64;
/// A state blob is a small JSON document.
const MAX_STATE: u64 = 16 << 20;

/// Why a handoff failed; the socket path names which one.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("handoff socket {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("handoff socket {}: {detail}", path.display())]
    Protocol { path: PathBuf, detail: String },
}

impl HandoffError {
    fn io(path: &Path) -> impl Fn(io::Error) -> HandoffError + '_ {
        move |source| HandoffError::Io { path: path.to_owned(), source }
    }
    fn protocol(path: &Path, detail: impl Into<String>) -> HandoffError {
        HandoffError::Protocol { path: path.to_owned(), detail: detail.into() }
    }
}

/// The predecessor's side: the socket a successor connects to.
#[derive(Debug)]
pub struct Offer {
    listener: UnixListener,
    path: PathBuf,
}

impl Offer {
    /// Listens on `path` (mode 0600; a stale file there is replaced).
    pub fn bind(path: &Path) -> Result<Offer, HandoffError> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(HandoffError::io(path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(HandoffError::io(path))?;
        Ok(Offer { listener, path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next successor and reads its greeting.
    pub fn accept(&self) -> Result<Successor, HandoffError> {
        let (mut conn, _) = self.listener.accept().map_err(HandoffError::io(&self.path))?;
        conn.set_read_timeout(Some(Duration::from_secs(10))).map_err(HandoffError::io(&self.path))?;
        let mut hello = [0u8; HELLO.len()];
        conn.read_exact(&mut hello).map_err(HandoffError::io(&self.path))?;
        if hello != HELLO {
            return Err(HandoffError::protocol(&self.path, "a peer that is not a kiln successor connected"));
        }
        Ok(Successor { conn, path: self.path.clone() })
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A successor that asked for the sockets.
#[derive(Debug)]
pub struct Successor {
    conn: UnixStream,
    path: PathBuf,
}

impl Successor {
    /// Sends `fds` and `state`, then waits up to `ready_within` for the
    /// successor's `READY`. `Ok(true)`: it serves now, the predecessor may
    /// stop accepting. `Ok(false)`: it went away first (crashed, refused
    /// the state); the predecessor goes on as before.
    pub fn hand_over(
        mut self,
        fds: &[BorrowedFd<'_>],
        state: &[u8],
        ready_within: Duration,
    ) -> Result<bool, HandoffError> {
        let io = HandoffError::io(&self.path);
        if fds.len() > MAX_FDS {
            return Err(HandoffError::protocol(&self.path, format!("{} sockets, at most {MAX_FDS}", fds.len())));
        }
        let mut head = [0u8; 12];
        head[..4].copy_from_slice(&(fds.len() as u32).to_le_bytes());
        head[4..].copy_from_slice(&(state.len() as u64).to_le_bytes());
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let sent = send_with_fds(&self.conn, &head, &raw).map_err(&io)?;
        // The descriptors went with the first byte; the rest of the head
        // (if the kernel took only part of it) follows plainly.
        self.conn.write_all(&head[sent..]).map_err(&io)?;
        self.conn.write_all(state).map_err(&io)?;
        self.conn.set_read_timeout(Some(ready_within)).map_err(&io)?;
        let mut answer = Vec::new();
        let _ = (&mut self.conn).take(READY.len() as u64).read_to_end(&mut answer);
        Ok(answer == READY)
    }
}

/// The successor's side: what it inherited, until it says it is ready.
#[derive(Debug)]
pub struct Inherited {
    pub fds: Vec<OwnedFd>,
    pub state: Vec<u8>,
    conn: UnixStream,
    path: PathBuf,
}

/// Connects to a predecessor's handoff socket and receives its sockets
/// and state (close-on-exec, so children never hold them).
pub fn take_over(path: &Path) -> Result<Inherited, HandoffError> {
    let io = HandoffError::io(path);
    let mut conn = UnixStream::connect(path).map_err(&io)?;
    conn.set_read_timeout(Some(Duration::from_secs(30))).map_err(&io)?;
    conn.write_all(HELLO).map_err(&io)?;
    let mut head = [0u8; 12];
    let (n, fds) = recv_with_fds(&conn, &mut head).map_err(&io)?;
    if n == 0 {
        return Err(HandoffError::protocol(path, "the predecessor closed without handing over"));
    }
    conn.read_exact(&mut head[n..]).map_err(&io)?;
    let want = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let len = u64::from_le_bytes(head[4..].try_into().expect("8 bytes"));
    if fds.len() != want {
        return Err(HandoffError::protocol(path, format!("{} sockets arrived, {want} were sent", fds.len())));
    }
    if len > MAX_STATE {
        return Err(HandoffError::protocol(path, format!("a state of {len} bytes, at most {MAX_STATE}")));
    }
    let mut state = vec![0u8; len as usize];
    conn.read_exact(&mut state).map_err(&io)?;
    Ok(Inherited { fds, state, conn, path: path.to_owned() })
}

impl Inherited {
    /// Tells the predecessor that this process accepts on the sockets now.
    pub fn ready(mut self) -> Result<(), HandoffError> {
        self.conn.write_all(READY).map_err(HandoffError::io(&self.path))
    }
}

/// `sendmsg` of `data` with `fds` as `SCM_RIGHTS`; the bytes sent.
fn send_with_fds(sock: &UnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    // u64 cells: the control buffer must be aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: msghdr is plain data; all-zero is its empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` zeroed, aligned bytes, room
        // for one header and `fds`; CMSG_FIRSTHDR is then non-null, and
        // CMSG_DATA points inside that buffer, with room for `fd_bytes`.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), fd_bytes as usize);
        }
    }
    loop {
        // SAFETY: msg and what it points at (iov, data, control) outlive the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `recvmsg` into `buf`, with the `SCM_RIGHTS` descriptors that came along
/// (close-on-exec). Descriptors past the control buffer are an error.
fn recv_with_fds(sock: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; all-zero is its empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: msg points at `buf` and `control`, both alive and writable
        // for the lengths given.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` and set msg_controllen; the CMSG
    // macros walk only headers inside it, and each SCM_RIGHTS payload is
    // whole descriptors, read unaligned. Each descriptor is new to this
    // process and owned by nothing else, so OwnedFd may take it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg);
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(format!("more than {MAX_FDS} sockets were sent")));
    }
    Ok((n, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_successor_inherits_live_sockets_and_the_state() {
        let dir = kiln_testutil::tempdir("handoff");
        let path = dir.join("h.sock");
        let offer = Offer::bind(&path).unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let succ = std::thread::spawn(move || {
            let inh = take_over(&path).unwrap();
            assert_eq!(inh.state, b"{\"n\":1}");
            assert_eq!(inh.fds.len(), 2);
            let fd = inh.fds[0].as_raw_fd();
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim();
            assert!(u32::from_str_radix(flags, 8).unwrap() & 0o2000000 != 0, "close-on-exec: {flags}");
            let l = std::net::TcpListener::from(inh.fds.into_iter().next().unwrap());
            let (mut c, _) = l.accept().unwrap();
            c.write_all(b"from the successor").unwrap();
            // Dropped without READY: the predecessor must hear that.
        });
        let s = offer.accept().unwrap();
        // A client connects before the successor accepts: it waits in the
        // shared queue and the successor takes it.
        let client = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            let mut got = String::new();
            c.read_to_string(&mut got).unwrap();
            got
        });
        let ready = s.hand_over(&[tcp.as_fd(), tcp.as_fd()], b"{\"n\":1}", Duration::from_secs(5)).unwrap();
        assert!(!ready, "the successor closed without READY");
        succ.join().unwrap();
        assert_eq!(client.join().unwrap(), "from the successor");
    }

    #[test]
    fn ready_reaches_the_predecessor_and_a_stranger_is_refused() {
        let dir = kiln_testutil::tempdir("handoff-ready");
        let path = dir.join("h.sock");
        let offer = Offer::bind(&path).unwrap();
        let p = path.clone();
        let succ = std::thread::spawn(move || {
            let inh = take_over(&p).unwrap();
            assert!(inh.fds.is_empty());
            inh.ready().unwrap();
        });
        assert!(offer.accept().unwrap().hand_over(&[], b"x", Duration::from_secs(5)).unwrap());
        succ.join().unwrap();
        let p = path.clone();
        let stranger = std::thread::spawn(move || {
            let mut c = UnixStream::connect(&p).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        });
        let e = offer.accept().unwrap_err();
        assert!(e.to_string().contains("not a kiln successor") && e.to_string().contains("h.sock"), "{e}");
        stranger.join().unwrap();
        drop(offer);
        assert!(!path.exists(), "the offer removes its socket file");
        let e = take_over(&path).unwrap_err();
        assert!(e.to_string().contains("h.sock"), "{e}");
    }
}
