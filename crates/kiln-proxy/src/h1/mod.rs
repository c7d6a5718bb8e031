//! HTTP/1.1 message heads and framing for the proxy's request path: parse a
//! request or response head (httparse), decide how its body is delimited,
//! and write the head that goes to the next hop with hop-by-hop headers
//! removed (RFC 9110 §7.6.1) and the forwarding headers added.
//!
//! Pure: no I/O, no clock, no allocation beyond appending to the caller's
//! reused output buffer, so it is cheap on the hot path and easy to test and
//! fuzz. It must never accept a message whose framing is ambiguous (both
//! `Content-Length` and `Transfer-Encoding`, differing lengths, a
//! non-chunked request coding): those are how request smuggling starts.

use std::io::Write as _;

/// The most headers a message may have (more is answered 431 / 502).
pub const MAX_HEADERS: usize = 128;

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed message head: {0}")]
    Malformed(&'static str),
    #[error("message head too large")]
    TooLarge,
    #[error("method not supported by the proxy")]
    Method,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes (responses only).
    UntilClose,
}

/// What the request path needs to know about a request, beyond the head
/// already written for the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    /// Bytes of the head in the input.
    pub head_len: usize,
    pub framing: Framing,
    pub idempotent: bool,
    pub head_method: bool,
    /// HTTP/1.0 client.
    pub http10: bool,
    /// The client wants the connection kept (HTTP/1.1 default, or 1.0 with keep-alive).
    pub keep_alive: bool,
    pub upgrade: bool,
    /// `Expect: 100-continue` was sent (the proxy answers it itself).
    pub expect_continue: bool,
    /// Value of `X-Request-Id` as written to the backend (kept or generated).
    pub request_id: RequestId,
    /// Value of the `kiln_release` cookie, as a range into the input.
    pub sticky_cookie: Option<(usize, usize)>,
    /// FNV hash of the sticky header's value, when present.
    pub sticky_hash: Option<u64>,
}

/// An `X-Request-Id` value, kept inline (at most 128 bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId {
    len: u8,
    bytes: [u8; 128],
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl RequestId {
    fn new(v: &[u8]) -> Option<Self> {
        if v.is_empty() || v.len() > 128 {
            return None;
        }
        let mut bytes = [0u8; 128];
        bytes[..v.len()].copy_from_slice(v);
        Some(RequestId { len: v.len() as u8, bytes })
    }

    /// 24 hex digits from a per-request number.
    pub fn generate(n: u64, salt: u64) -> Self {
        let mut bytes = [0u8; 128];
        let v = (u128::from(fnv(&n.to_le_bytes()) ^ salt) << 32) | u128::from(n as u32);
        for (i, b) in bytes[..24].iter_mut().enumerate() {
            let nibble = ((v >> ((23 - i) * 4)) & 0xf) as u8;
            *b = if nibble < 10 { b'0' + nibble } else { b'a' + nibble - 10 };
        }
        RequestId { len: 24, bytes }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// How the request head is rewritten for the backend.
#[derive(Clone, Copy)]
pub struct Forward<'a> {
    pub client_ip: std::net::IpAddr,
    /// The client connected over TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
    /// Lower-case name of the header whose value picks a sticky release.
    pub sticky_header: Option<&'a str>,
    /// Used when the client sent no usable `X-Request-Id`.
    pub generated_id: &'a dyn Fn() -> RequestId,
}

impl std::fmt::Debug for Forward<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("client_ip", &self.client_ip)
            .field("https", &self.https)
            .field("sticky_header", &self.sticky_header)
            .finish()
    }
}

pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// Headers that describe one hop only (RFC 9110 §7.6.1) and are never
/// forwarded; framing headers are handled separately.
fn hop_by_hop(name: &str) -> bool {
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether `token` is one of the comma-separated tokens of the `Connection`
/// header values (a header name to drop, or close / keep-alive / upgrade).
fn has_token(connection: &[&[u8]], token: &str) -> bool {
    connection.iter().any(|v| v.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes())))
}

/// The values of a message's `Connection` headers, without allocating
/// (the first four; more than one is already unusual).
struct Tokens<'a> {
    values: [&'a [u8]; 4],
    n: usize,
}

impl<'a> Tokens<'a> {
    fn of(headers: &[httparse::Header<'a>]) -> Self {
        let mut t = Tokens { values: [&[]; 4], n: 0 };
        for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")) {
            if t.n < t.values.len() {
                t.values[t.n] = h.value;
                t.n += 1;
            }
        }
        t
    }

    fn as_slice(&self) -> &[&'a [u8]] {
        &self.values[..self.n]
    }
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// The framing headers of a message: a single agreed `Content-Length`, or
/// a `Transfer-Encoding` whose last coding is (or is not) chunked.
fn framing_headers(headers: &[httparse::Header<'_>]) -> Result<(Option<u64>, Option<bool>), HeadError> {
    let mut length = None;
    let mut chunked = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            // A list like "5, 5" is allowed when every member agrees.
            for part in h.value.split(|b| *b == b',') {
                let n = parse_length(part.trim_ascii()).ok_or(HeadError::Malformed("bad Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(HeadError::Malformed("conflicting Content-Length"));
                }
                length = Some(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default().trim_ascii();
            chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        }
    }
    Ok((length, chunked))
}

/// The length of a parsed head; `None` while it is incomplete.
fn head_len(parsed: httparse::Result<usize>, malformed: &'static str) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Malformed(malformed)),
    }
}

/// A request's host (when it names one) and path, borrowed from its head.
pub type Target<'a> = (Option<&'a [u8]>, &'a [u8]);

/// Where a request is going, for routing by host and path: its `Host`
/// (or an absolute-form target's authority) and its path, from a complete
/// head at the start of `input`. `Ok(None)`: the head is not complete yet.
/// Two `Host` headers are refused (RFC 9112 §3.2), so the route and the
/// backend can never see different hosts.
pub fn target(input: &[u8]) -> Result<Option<Target<'_>>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if head_len(req.parse(input), "not an HTTP/1 request")?.is_none() {
        return Ok(None);
    }
    let mut host = None;
    for h in req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host")) {
        if host.replace(h.value).is_some() {
            return Err(HeadError::Malformed("more than one Host header"));
        }
    }
    let path = req.path.unwrap_or("/");
    // Offsets into `input`, so the answer borrows the input, not the parser.
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - input.as_ptr() as usize;
        &input[start..start + s.len()]
    };
    for scheme in ["http://", "https://"] {
        if path.len() > scheme.len() && path.as_bytes()[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes()) {
            let rest = &path[scheme.len()..];
            let (authority, p) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
            let p = if p == "/" && !rest.contains('/') { &b"/"[..] } else { at(p.as_bytes()) };
            return Ok(Some((Some(at(authority.as_bytes())), p)));
        }
    }
    Ok(Some((host.map(at), at(path.as_bytes()))))
}

/// Parses a request head at the start of `input` and writes the head for
/// the backend into `out` (cleared first). `Ok(None)`: the head is not
/// complete yet.
pub fn request(input: &[u8], fwd: &Forward<'_>, out: &mut Vec<u8>) -> Result<Option<RequestInfo>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Some(head_len) = head_len(req.parse(input), "not an HTTP/1 request")? else { return Ok(None) };
    let method = req.method.unwrap_or_default();
    let mut target = req.path.unwrap_or("/");
    let http10 = req.version == Some(0);
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(HeadError::Method);
    }
    // Absolute form (a client talking to us as a forward proxy): keep the
    // origin form only.
    for scheme in ["http://", "https://"] {
        // Bytes, not str slicing: the target may hold non-ASCII UTF-8.
        if target.len() > scheme.len() && target.as_bytes()[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes()) {
            let rest = &target[scheme.len()..];
            target = rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    let (length, chunked) = framing_headers(req.headers)?;
    let framing = match (length, chunked) {
        (Some(_), Some(_)) => return Err(HeadError::Malformed("both Content-Length and Transfer-Encoding")),
        (_, Some(false)) => return Err(HeadError::Malformed("Transfer-Encoding must end in chunked")),
        (_, Some(true)) => Framing::Chunked,
        (Some(0) | None, None) => Framing::None,
        (Some(n), None) => Framing::Length(n),
    };

    let connection = Tokens::of(req.headers);
    let connection = connection.as_slice();
    let upgrade = req.headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade"))
        && (has_token(connection, "upgrade") || connection.is_empty());
    let keep_alive = if http10 { has_token(connection, "keep-alive") } else { !has_token(connection, "close") };

    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    // An HTTP/1.0 client gets a 1.0 exchange end to end: the backend will
    // then neither chunk the response nor keep the connection.
    out.extend_from_slice(if http10 { b" HTTP/1.0\r\n" } else { b" HTTP/1.1\r\n" });
    let mut xff: Option<&[u8]> = None;
    let mut host: Option<&[u8]> = None;
    let mut request_id = None;
    let mut sticky_cookie = None;
    let mut sticky_hash = None;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name;
        if fwd.sticky_header.is_some_and(|s| name.eq_ignore_ascii_case(s)) {
            sticky_hash = Some(fnv(h.value));
        }
        if name.eq_ignore_ascii_case("cookie") && sticky_cookie.is_none() {
            sticky_cookie = cookie_value(input, h.value, b"kiln_release");
        }
        if hop_by_hop(name) || has_token(connection, name) {
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            xff = Some(h.value);
        } else if name.eq_ignore_ascii_case("x-request-id") {
            request_id = RequestId::new(h.value);
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("x-forwarded-proto") || name.eq_ignore_ascii_case("x-forwarded-host") {
        } else {
            if name.eq_ignore_ascii_case("host") {
                host = Some(h.value);
            }
            header(out, name.as_bytes(), h.value);
        }
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(prev) = xff {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    let _ = write!(out, "{}\r\n", fwd.client_ip);
    out.extend_from_slice(if fwd.https { b"X-Forwarded-Proto: https\r\n" } else { b"X-Forwarded-Proto: http\r\n" });
    if let Some(host) = host {
        header(out, b"X-Forwarded-Host", host);
    }
    let request_id = request_id.unwrap_or_else(fwd.generated_id);
    header(out, b"X-Request-Id", request_id.as_bytes());
    if upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
        for h in req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("upgrade")) {
            header(out, b"Upgrade", h.value);
        }
    }
    out.extend_from_slice(b"\r\n");

    let idempotent = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"].contains(&method);
    Ok(Some(RequestInfo {
        head_len,
        framing,
        idempotent,
        head_method: method == "HEAD",
        http10,
        keep_alive,
        upgrade,
        expect_continue: expect_continue && framing != Framing::None,
        request_id,
        sticky_cookie,
        sticky_hash,
    }))
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The value of cookie `name` in a `Cookie` header, as a range into `input`
/// (the header value borrows from it).
fn cookie_value(input: &[u8], value: &[u8], name: &[u8]) -> Option<(usize, usize)> {
    let base = value.as_ptr() as usize - input.as_ptr() as usize;
    let mut at = 0;
    for part in value.split(|b| *b == b';') {
        let start = at;
        at += part.len() + 1;
        let trimmed_start = part.iter().take_while(|b| b.is_ascii_whitespace()).count();
        let p = &part[trimmed_start..];
        if let Some(v) = p.strip_prefix(name).and_then(|r| r.strip_prefix(b"=")) {
            let v_start = base + start + trimmed_start + name.len() + 1;
            let v = v.trim_ascii_end();
            return Some((v_start, v_start + v.len()));
        }
    }
    None
}

/// What the request path needs to know about a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseInfo {
    pub head_len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The backend will keep the connection after this response.
    pub reusable: bool,
    /// The client connection ends after this response (asked for, or the
    /// body runs until the backend closes and cannot be re-framed).
    pub close: bool,
    /// A body that runs until the backend closes goes to the client
    /// chunked (as nginx does), so its connection is kept.
    pub rechunk: bool,
}

/// What the proxy adds to a response head.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    pub request_id: &'a [u8],
    /// `X-Kiln-Release`, when asked for.
    pub release: Option<&'a str>,
    /// Sets the sticky cookie to this release.
    pub set_cookie: Option<&'a str>,
    /// The answer to a `HEAD` request: no body whatever the headers say.
    pub head_method: bool,
    /// The client connection closes after this response.
    pub close: bool,
    pub http10_keep_alive: bool,
    /// The client speaks HTTP/1.1, so a body may go to it chunked.
    pub chunked_ok: bool,
}

/// Parses a response head at the start of `input` and writes the head for
/// the client into `out` (cleared first). 1xx heads other than 101 are
/// returned too (with `Framing::None`); the caller skips them.
pub fn response(input: &[u8], reply: &Reply<'_>, out: &mut Vec<u8>) -> Result<Option<ResponseInfo>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let Some(head_len) = head_len(resp.parse(input), "not an HTTP/1 response")? else { return Ok(None) };
    let status = resp.code.unwrap_or(0);
    if !(100..=599).contains(&status) {
        return Err(HeadError::Malformed("status code out of range"));
    }
    let http10 = resp.version == Some(0);
    let (length, chunked) = framing_headers(resp.headers)?;
    let framing = if reply.head_method || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::None
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    let connection = Tokens::of(resp.headers);
    let connection = connection.as_slice();
    // After a HEAD, a backend that wrongly sends a body would poison the
    // connection's next response: it is not reused.
    let reusable = framing != Framing::UntilClose
        && !reply.head_method
        && if http10 { has_token(connection, "keep-alive") } else { !has_token(connection, "close") };
    let switching = status == 101;
    // A close-delimited body (HTTP/1.0 servers, CGI, busybox httpd) is
    // re-framed as chunked for an HTTP/1.1 client, which keeps its
    // connection; a coding other than chunked stays close-delimited.
    let rechunk = framing == Framing::UntilClose && chunked.is_none() && reply.chunked_ok && !switching;
    let close = !switching && (reply.close || (framing == Framing::UntilClose && !rechunk));

    out.clear();
    let _ = write!(out, "HTTP/1.1 {status} ");
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name;
        if switching && name.eq_ignore_ascii_case("upgrade") {
            header(out, name.as_bytes(), h.value);
            continue;
        }
        if hop_by_hop(name)
            || has_token(connection, name)
            || name.eq_ignore_ascii_case("x-request-id")
            || name.eq_ignore_ascii_case("x-kiln-release")
        {
            continue;
        }
        header(out, name.as_bytes(), h.value);
    }
    header(out, b"X-Request-Id", reply.request_id);
    if let Some(r) = reply.release {
        header(out, b"X-Kiln-Release", r.as_bytes());
    }
    if let Some(r) = reply.set_cookie {
        let _ = write!(out, "Set-Cookie: kiln_release={r}; Path=/; HttpOnly; SameSite=Lax\r\n");
    }
    if rechunk {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if switching {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if reply.http10_keep_alive {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseInfo { head_len, status, framing, reusable, close, rechunk }))
}

/// Makes a response head written by [`response`] end its connection (the
/// backend answered before the request body was read whole).
pub fn close_after(head: &mut Vec<u8>) {
    const KEEP: &[u8] = b"Connection: keep-alive\r\n";
    if let Some(at) = head.windows(KEEP.len()).position(|w| w == KEEP) {
        head.drain(at..at + KEEP.len());
    }
    if head.ends_with(b"\r\n\r\n") {
        head.truncate(head.len() - 2);
        head.extend_from_slice(b"Connection: close\r\n\r\n");
    }
}

/// A response the proxy makes itself.
pub fn local(out: &mut Vec<u8>, status: u16, msg: &str, request_id: Option<&[u8]>, close: bool) {
    let reason = match status {
        400 => "Bad Request",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        msg.len() + 1
    );
    if let Some(id) = request_id {
        header(out, b"X-Request-Id", id);
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(msg.as_bytes());
    out.push(b'\n');
}

/// Finds where a chunked body ends while its bytes pass through unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Chunked {
    /// Reading a chunk-size line: the size so far, and whether a digit was seen.
    #[default]
    Start,
    Size(u64),
    /// Skipping a chunk extension up to CR.
    Ext(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

impl Chunked {
    /// Consumes bytes of a chunked body; returns how many belong to it (all
    /// of `input` unless the body ends inside it).
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, HeadError> {
        let bad = |what| Err(HeadError::Malformed(what));
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            *self = match *self {
                Chunked::Start | Chunked::Size(_) => {
                    let so_far = if let Chunked::Size(n) = *self { Some(n) } else { None };
                    match (b as char).to_digit(16) {
                        Some(d) => {
                            let n = so_far.unwrap_or(0);
                            if n > (u64::MAX >> 4) {
                                return bad("chunk size overflows");
                            }
                            Chunked::Size(n << 4 | u64::from(d))
                        }
                        None => match (so_far, b) {
                            (None, _) => return bad("chunk size expected"),
                            (Some(n), b'\r') => Chunked::SizeLf(n),
                            (Some(n), b';' | b' ' | b'\t') => Chunked::Ext(n),
                            _ => return bad("bad chunk size"),
                        },
                    }
                }
                Chunked::Ext(n) => match b {
                    b'\r' => Chunked::SizeLf(n),
                    b'\n' => return bad("bare LF in chunk extension"),
                    _ => Chunked::Ext(n),
                },
                Chunked::SizeLf(n) => match (b, n) {
                    (b'\n', 0) => Chunked::TrailerStart,
                    (b'\n', n) => Chunked::Data(n),
                    _ => return bad("CRLF expected after chunk size"),
                },
                Chunked::Data(n) => {
                    let take = (n.min((input.len() - i) as u64)) as usize;
                    i += take;
                    let left = n - take as u64;
                    *self = if left == 0 { Chunked::DataCr } else { Chunked::Data(left) };
                    continue;
                }
                Chunked::DataCr if b == b'\r' => Chunked::DataLf,
                Chunked::DataLf if b == b'\n' => Chunked::Start,
                Chunked::DataCr | Chunked::DataLf => return bad("CRLF expected after chunk data"),
                Chunked::TrailerStart => match b {
                    b'\r' => Chunked::FinalLf,
                    _ => Chunked::Trailer,
                },
                Chunked::Trailer => match b {
                    b'\r' => Chunked::TrailerLf,
                    _ => Chunked::Trailer,
                },
                Chunked::TrailerLf if b == b'\n' => Chunked::TrailerStart,
                Chunked::FinalLf if b == b'\n' => Chunked::Done,
                Chunked::TrailerLf | Chunked::FinalLf => return bad("CRLF expected in trailers"),
                Chunked::Done => return Ok(i),
            };
            i += 1;
            if *self == Chunked::Done {
                return Ok(i);
            }
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests;
