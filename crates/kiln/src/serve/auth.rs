//! Who may call the API over TCP, decided from the request alone (pure).
//!
//! - The unix socket (mode 0600) needs nothing more: the file mode is the
//!   credential.
//! - Over TCP, a program sends `Authorization: Bearer TOKEN`.
//! - A browser opens `/?token=TOKEN` once (the link `kiln dashboard`
//!   prints) and gets a session cookie (`HttpOnly`, `SameSite=Strict`)
//!   derived from the token, never the token itself. A cookie is sent by
//!   the browser on its own, so every request that changes something on a
//!   session must also carry `X-Kiln-CSRF` (a second value derived from the
//!   token, which only the dashboard page holds) and, when the browser says
//!   where it comes from, an `Origin` equal to the API's own.
//!
//! This module must never read files or act: the caller hands it the token.

use crate::net::http::Request;

/// How a request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// Came through the unix socket.
    Socket,
    /// Sent the bearer token.
    Bearer,
    /// A browser session (cookie), CSRF-checked when it changes anything.
    Session,
}

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No credential, or a wrong one: 401.
    Unauthenticated,
    /// A session request that changes something without the CSRF proof,
    /// or from another origin: 403.
    Csrf(&'static str),
}

/// The name of the session cookie.
pub const COOKIE: &str = "kiln_session";

/// Values derived from the API token.
#[derive(Debug, Clone)]
pub struct Keys {
    token: String,
}

impl Keys {
    pub fn new(token: &str) -> Self {
        Keys { token: token.to_owned() }
    }

    fn derive(&self, purpose: &str) -> String {
        crate::digest::hex(&crate::digest::hmac_sha256(self.token.as_bytes(), purpose.as_bytes()))
    }

    /// The session cookie's value.
    pub fn session(&self) -> String {
        self.derive("kiln dashboard session")
    }

    /// What a session's changing request must send as `X-Kiln-CSRF`.
    pub fn csrf(&self) -> String {
        self.derive("kiln dashboard csrf")
    }

    /// Whether `given` is the token, compared in constant time.
    pub fn is_token(&self, given: &str) -> bool {
        same(given, &self.token)
    }
}

/// Compares in time that depends only on the lengths.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: Option<&'a str>, name: &str) -> Option<&'a str> {
    header?.split(';').filter_map(|c| c.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// Whether the request changes something (what CSRF protection covers).
fn changes(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS")
}

/// Lets a request in, or says why not. `keys` is `None` on the unix socket.
pub fn check(req: &Request, keys: Option<&Keys>) -> Result<Caller, Denied> {
    let Some(keys) = keys else { return Ok(Caller::Socket) };
    // The scheme is case-insensitive (RFC 9110, section 11.1).
    let bearer = req
        .header("authorization")
        .and_then(|a| a.trim().split_once(' '))
        .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"));
    if let Some((_, t)) = bearer {
        return if keys.is_token(t.trim()) { Ok(Caller::Bearer) } else { Err(Denied::Unauthenticated) };
    }
    match cookie(req.header("cookie"), COOKIE) {
        Some(s) if same(s, &keys.session()) => {
            if changes(&req.method) {
                if !req.header("x-kiln-csrf").is_some_and(|c| same(c, &keys.csrf())) {
                    return Err(Denied::Csrf("missing or wrong X-Kiln-CSRF header"));
                }
                if let (Some(origin), Some(host)) = (req.header("origin"), req.header("host")) {
                    if origin != format!("http://{host}") {
                        return Err(Denied::Csrf("Origin is not this API's"));
                    }
                }
            }
            Ok(Caller::Session)
        }
        _ => Err(Denied::Unauthenticated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.into(),
            path: "/v1/abort".into(),
            query: Vec::new(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: Vec::new(),
        }
    }

    #[test]
    fn the_socket_needs_nothing_and_tcp_needs_the_exact_token() {
        let k = Keys::new("abc");
        assert_eq!(check(&req("POST", &[]), None), Ok(Caller::Socket));
        assert_eq!(check(&req("POST", &[("authorization", "Bearer abc")]), Some(&k)), Ok(Caller::Bearer));
        for scheme in ["bearer abc", "BEARER abc", "Bearer  abc"] {
            assert_eq!(check(&req("GET", &[("authorization", scheme)]), Some(&k)), Ok(Caller::Bearer), "{scheme}");
        }
        for bad in ["Bearer abd", "Bearer ab", "abc", "Bearer ", "Basic abc", "Bearerabc"] {
            assert_eq!(check(&req("GET", &[("authorization", bad)]), Some(&k)), Err(Denied::Unauthenticated), "{bad}");
        }
        assert_eq!(check(&req("GET", &[]), Some(&k)), Err(Denied::Unauthenticated));
    }

    #[test]
    fn a_session_reads_freely_but_changes_only_with_the_csrf_value_from_its_own_origin() {
        let k = Keys::new("abc");
        let cookie = format!("theme=dark; {COOKIE}={}", k.session());
        let csrf = k.csrf();
        assert_ne!(k.session(), "abc", "the cookie is not the token");
        assert_ne!(csrf, k.session());
        assert_eq!(check(&req("GET", &[("cookie", &cookie)]), Some(&k)), Ok(Caller::Session));
        assert!(matches!(check(&req("POST", &[("cookie", &cookie)]), Some(&k)), Err(Denied::Csrf(_))));
        let wrong = [("cookie", cookie.as_str()), ("x-kiln-csrf", "00")];
        assert!(matches!(check(&req("POST", &wrong), Some(&k)), Err(Denied::Csrf(_))));
        let good = [("cookie", cookie.as_str()), ("x-kiln-csrf", csrf.as_str()), ("host", "127.0.0.1:7070")];
        assert_eq!(check(&req("POST", &good), Some(&k)), Ok(Caller::Session));
        let mut same_origin = good.to_vec();
        same_origin.push(("origin", "http://127.0.0.1:7070"));
        assert_eq!(check(&req("POST", &same_origin), Some(&k)), Ok(Caller::Session));
        let mut other = good.to_vec();
        other.push(("origin", "http://evil.example"));
        assert!(matches!(check(&req("POST", &other), Some(&k)), Err(Denied::Csrf(_))));
        let forged = format!("{COOKIE}=abc");
        assert_eq!(check(&req("GET", &[("cookie", &forged)]), Some(&k)), Err(Denied::Unauthenticated));
    }
}
