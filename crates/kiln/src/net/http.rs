//! kiln's one HTTP/1.1 module, blocking, over any stream: the client
//! every part uses (the CLI to `kiln serve` on its unix socket, the
//! controller to a load balancer's admin API, the test gate's checks,
//! webhook deliveries, the registry client with its streamed blobs) and
//! the server primitives of `kiln serve`'s API (heads with a deadline,
//! bodies by length). One request per connection (`Connection: close`);
//! response bodies by `Content-Length`, chunked, or to the end.
//!
//! For: speaking HTTP/1.1 correctly once. Must never: retry (callers
//! decide what is safe), or buffer a body a caller asked to stream.

use std::io::{self, BufRead, BufReader, Read, Write};

/// What came back, read whole ([`exchange`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The status line and headers, as sent (for error reports).
    pub head: String,
    pub body: Vec<u8>,
}

/// A request body.
pub enum Body<'a> {
    None,
    Bytes(&'a [u8]),
    /// `len` bytes streamed from a reader (a blob file).
    Reader(&'a mut dyn Read, u64),
}

impl std::fmt::Debug for Body<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Body({} bytes)", self.len())
    }
}

impl Body<'_> {
    fn len(&self) -> u64 {
        match self {
            Body::None => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::Reader(_, n) => *n,
        }
    }
}

/// One request as a client sends it.
#[derive(Debug)]
pub struct Outgoing<'a, 'b> {
    pub method: &'a str,
    pub target: &'a str,
    /// The `Host` header.
    pub host: &'a str,
    /// More headers (`Name`, `value`).
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Body<'b>,
}

/// A response whose head is read and whose body is not yet.
#[derive(Debug)]
pub struct Streaming<S: Read> {
    pub status: u16,
    /// The status line and headers, as sent (for error reports).
    pub head: String,
    pub headers: Vec<(String, String)>,
    reader: BufReader<S>,
}

impl<S: Read> Streaming<S> {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn length(&self) -> Option<u64> {
        self.header("content-length").and_then(|v| v.trim().parse().ok())
    }

    /// Streams the body (chunked, by length, or to the end) into `out`;
    /// more than `max` bytes is an error.
    pub fn copy_to(mut self, out: &mut impl Write, max: u64) -> io::Result<u64> {
        let too_big = || io::Error::new(io::ErrorKind::InvalidData, format!("a body over {max} bytes"));
        if self.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            let mut total = 0u64;
            loop {
                let mut line = String::new();
                self.reader.read_line(&mut line)?;
                let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a bad chunk size"))?;
                if size == 0 {
                    return Ok(total);
                }
                total += size;
                if total > max {
                    return Err(too_big());
                }
                let n = io::copy(&mut (&mut self.reader).take(size), out)?;
                if n != size {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.reader.read_line(&mut line)?;
            }
        }
        match self.length() {
            Some(n) if n > max => Err(too_big()),
            Some(n) => {
                let got = io::copy(&mut (&mut self.reader).take(n), out)?;
                if got == n {
                    Ok(got)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the body ended after {got} of {n} bytes"),
                    ))
                }
            }
            None => io::copy(&mut (&mut self.reader).take(max + 1), out).and_then(|n| {
                if n > max {
                    Err(too_big())
                } else {
                    Ok(n)
                }
            }),
        }
    }

    /// The whole body, up to `max` bytes.
    pub fn bytes(self, max: u64) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        self.copy_to(&mut v, max)?;
        Ok(v)
    }
}

/// Sends `req` on `stream` and reads the response's head; the body is
/// the caller's to read ([`Streaming::copy_to`]).
pub fn send<S: Read + Write>(stream: S, req: Outgoing<'_, '_>) -> io::Result<Streaming<S>> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: kiln/{}\r\n",
        req.method,
        req.target,
        req.host,
        env!("CARGO_PKG_VERSION")
    );
    for (k, v) in req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let len = req.body.len();
    if len > 0 || !matches!(req.method, "GET" | "HEAD") {
        head.push_str(&format!("Content-Length: {len}\r\n"));
    }
    head.push_str("\r\n");
    let mut reader = BufReader::new(stream);
    {
        let mut w = io::BufWriter::with_capacity(64 * 1024, reader.get_mut());
        w.write_all(head.as_bytes())?;
        match req.body {
            Body::None => {}
            Body::Bytes(b) => w.write_all(b)?,
            Body::Reader(r, n) => {
                let copied = io::copy(&mut r.take(n), &mut w)?;
                if copied != n {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the body is shorter than its length"));
                }
            }
        }
        w.flush()?;
    }
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("not an HTTP response: {line:?}")))?;
    let mut head = line.trim_end().to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        head.push('\n');
        head.push_str(h);
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Ok(Streaming { status, head, headers, reader })
}

/// Sends one request with a JSON body and reads the whole response.
pub fn exchange<S: Read + Write>(stream: S, method: &str, target: &str, body: &[u8]) -> io::Result<Response> {
    exchange_with(stream, method, target, &[], body)
}

/// [`exchange`] with more request headers (`Name`, `value`).
pub fn exchange_with<S: Read + Write>(
    stream: S,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    let body = if body.is_empty() { Body::None } else { Body::Bytes(body) };
    let r = send(stream, Outgoing { method, target, host: "kiln", headers: &all, body })?;
    let (status, head) = (r.status, r.head.clone());
    let body = if method == "HEAD" { Vec::new() } else { r.bytes(u64::MAX / 2)? };
    Ok(Response { status, head, body })
}

/// A parsed request, as the API server reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Every header, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// A query parameter, percent-decoded.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// `%XX` and `+` decoded; a bad escape is kept as it is.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Largest request body the API reads.
const MAX_BODY: usize = 1 << 20;

/// Reads one request (head and `Content-Length` body) from a client.
pub fn read_request(r: &mut impl BufRead) -> io::Result<Request> {
    let (mut req, len) = read_head(r)?;
    read_body(r, &mut req, len)?;
    Ok(req)
}

/// Reads the body a head announced (`len` bytes, at most 1 MiB).
pub fn read_body(r: &mut impl BufRead, req: &mut Request, len: usize) -> io::Result<()> {
    if len > MAX_BODY {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "request body too large"));
    }
    req.body = vec![0; len];
    r.read_exact(&mut req.body)
}

/// Reads a request's line and headers, leaving its body unread (so that
/// who asks is known before a byte of it is read); returns the request
/// without a body, and the body's announced length.
pub fn read_head(r: &mut impl BufRead) -> io::Result<(Request, usize)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = match (parts.next(), parts.next()) {
        (Some(m), Some(t)) => (m.to_owned(), t.to_owned()),
        _ => return Err(bad("not an HTTP request line")),
    };
    let mut len = 0usize;
    let mut headers = 0;
    let mut headers_seen = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("connection closed inside the request head"));
        }
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        headers += 1;
        if headers > 100 {
            return Err(bad("too many headers"));
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().map_err(|_| bad("bad Content-Length"))?;
            }
            headers_seen.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Ok((Request { method, path: path.to_owned(), query, headers: headers_seen, body: Vec::new() }, len))
}

/// A stream whose reads can be given a timeout.
pub trait Timed: Read {
    fn set_timeout(&self, d: Option<std::time::Duration>) -> io::Result<()>;
}

impl Timed for std::net::TcpStream {
    fn set_timeout(&self, d: Option<std::time::Duration>) -> io::Result<()> {
        self.set_read_timeout(d)
    }
}

impl Timed for std::os::unix::net::UnixStream {
    fn set_timeout(&self, d: Option<std::time::Duration>) -> io::Result<()> {
        self.set_read_timeout(d)
    }
}

/// Reads from `S` until a moving deadline: each read may wait only for
/// what is left, so a client that trickles a byte at a time cannot hold a
/// connection longer than the deadline allows.
#[derive(Debug)]
pub struct Deadline<S> {
    pub stream: S,
    pub until: std::time::Instant,
}

impl<S: Timed> Read for Deadline<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the request was not received in time"));
        }
        self.stream.set_timeout(Some(left))?;
        self.stream.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => {
                io::Error::new(io::ErrorKind::TimedOut, "the request was not received in time")
            }
            _ => e,
        })
    }
}

/// Writes a JSON response and closes.
pub fn write_response(w: &mut impl Write, status: u16, body: &[u8]) -> io::Result<()> {
    write_response_typed(w, status, "application/json", body)
}

/// Writes a whole response with `content_type`.
pub fn write_response_typed(w: &mut impl Write, status: u16, content_type: &str, body: &[u8]) -> io::Result<()> {
    write_response_full(w, status, content_type, &[], body)
}

/// Writes a whole response with `content_type` and more headers.
pub fn write_response_full(
    w: &mut impl Write,
    status: u16,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let reason = reason(status);
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        422 => "Unprocessable Content",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_responses_round_trip() {
        let raw = b"POST /v1/deploy?service=web&x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        let req = read_request(&mut &raw[..]).unwrap();
        assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/v1/deploy"));
        assert_eq!(req.param("service"), Some("web"));
        assert_eq!(req.param("x"), Some(""));
        assert_eq!(percent_decode("a%20b+c%2Fd%zz%4"), "a b c/d%zz%4");
        assert_eq!(req.body, b"{}");
        assert!(read_request(&mut &b"garbage\r\n\r\n"[..]).is_err());
        assert!(read_request(&mut &b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"[..]).is_err());

        let mut out = Vec::new();
        write_response(&mut out, 409, b"{\"error\":\"x\"}").unwrap();
        struct Both(std::io::Cursor<Vec<u8>>, Vec<u8>);
        impl Read for Both {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                self.0.read(b)
            }
        }
        impl Write for Both {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.1.write(b)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let r = exchange(Both(std::io::Cursor::new(out), Vec::new()), "GET", "/", b"").unwrap();
        assert_eq!((r.status, r.body), (409, b"{\"error\":\"x\"}".to_vec()));
    }
}
