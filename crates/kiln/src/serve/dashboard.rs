//! The web dashboards, each one HTML page with its script and styles
//! inside (compiled into the binary, so there is nothing to build or
//! install):
//! - `kiln serve` answers one host's at `/`. It only reads the API
//!   (`/v1/status`, `/v1/history`, `/v1/diff`, `/v1/logs`), follows
//!   `/v1/events`, and posts the same requests the CLI sends.
//! - A fleet controller's API answers the fleet's at `/`. It polls
//!   `/v1/fleet/hosts`, `/v1/fleet/services`, `/v1/fleet/ps` and
//!   `/v1/fleet/history`, and posts the same [`FleetRequest`]s the CLI
//!   sends (`crate::command::fleet_api`).
//!
//! Neither holds logic the API does not. This module must never answer
//! anything but the pages and their sign-in.
//!
//! [`FleetRequest`]: crate::command::fleet_api::FleetRequest

use std::io::Write;

use super::auth;
use crate::net::http;

/// The pages; `__KILN_CSRF__` is replaced by the session's CSRF value.
const PAGE: &str = include_str!("dashboard.html");
const FLEET_PAGE: &str = include_str!("fleet_dashboard.html");
/// The styles both pages share, put in at `/*__KILN_BASE_CSS__*/`.
const BASE_CSS: &str = include_str!("dashboard_base.css");

/// Which dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// One host's (`kiln serve`).
    Host,
    /// A fleet's (a controller's API).
    Fleet,
}

/// What a browser gets without a session.
pub const SIGN_IN: &str = "<!doctype html><meta charset=utf-8><title>kiln</title>\
<p>Sign in with the link <code>kiln dashboard</code> prints (it carries the API token once, \
then a session cookie does).</p>";

/// Headers of the page: never cached, never framed, scripts only its own.
pub const HEADERS: &[(&str, &str)] = &[
    ("Cache-Control", "no-store"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'; form-action 'none'",
    ),
];

/// The page for a session whose CSRF value is `csrf` (empty on the unix
/// socket, which needs none).
pub fn page(csrf: &str) -> String {
    page_of(Page::Host, csrf)
}

fn page_of(which: Page, csrf: &str) -> String {
    // The value is hex (or empty): nothing in it can break out of the
    // attribute.
    debug_assert!(csrf.bytes().all(|b| b.is_ascii_hexdigit()));
    match which {
        Page::Host => PAGE,
        Page::Fleet => FLEET_PAGE,
    }
    .replace("/*__KILN_BASE_CSS__*/", BASE_CSS)
    .replace("__KILN_CSRF__", csrf)
}

/// Answers `GET /` (`token`: its `?token=`): a browser signing in with the
/// token gets the session cookie and a redirect to `/` (so the token
/// leaves the address bar); a session gets the page; anyone else, how to
/// sign in. `keys` is None on the unix socket (no session needed).
pub fn answer(
    w: &mut impl Write,
    req: &http::Request,
    token: Option<&str>,
    keys: Option<&auth::Keys>,
    which: Page,
) -> std::io::Result<()> {
    if let (Some(t), Some(k)) = (token, keys) {
        if k.is_token(t) {
            let cookie = format!("{}={}; HttpOnly; SameSite=Strict; Path=/", auth::COOKIE, k.session());
            let headers = [("Location", "/"), ("Set-Cookie", cookie.as_str()), ("Cache-Control", "no-store")];
            return http::write_response_full(w, 303, "text/plain", &headers, b"signed in\n");
        }
    }
    if auth::check(req, keys).is_err() {
        http::write_response_typed(w, 401, "text/html; charset=utf-8", SIGN_IN.as_bytes())
    } else {
        let page = page_of(which, &keys.map(|k| k.csrf()).unwrap_or_default());
        http::write_response_full(w, 200, "text/html; charset=utf-8", HEADERS, page.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_carries_the_csrf_value_and_reads_only_the_api() {
        let p = page("abc123");
        assert!(p.contains("content=\"abc123\""));
        assert!(!p.contains("__KILN_CSRF__"));
        for path in ["/v1/status", "/v1/events", "/v1/history", "/v1/diff", "/v1/logs"] {
            assert!(p.contains(path), "{path}");
        }
        // Actions post to /v1/<action>, the same requests the CLI sends.
        assert!(p.contains(r#"api("/v1/" + action"#));
        for action in ["promote", "abort", "rollback"] {
            assert!(p.contains(&format!(r#"data-action="{action}""#)), "{action}");
        }
        assert!(!p.contains("http://") && !p.contains("https://"), "no asset from elsewhere");
    }

    #[test]
    fn the_fleet_page_reads_only_the_fleet_api_and_posts_its_requests() {
        let p = page_of(Page::Fleet, "abc123");
        assert!(p.contains("content=\"abc123\"") && !p.contains("__KILN_CSRF__"));
        for path in ["/v1/fleet/hosts", "/v1/fleet/services", "/v1/fleet/ps", "/v1/fleet/history"] {
            assert!(p.contains(path), "{path}");
        }
        for action in ["promote", "abort", "rollback"] {
            assert!(p.contains(&format!(r#"data-action="{action}""#)), "{action}");
        }
        assert!(p.contains(r#"api("/v1/fleet", "POST""#));
        for page in [&p, &page("abc123")] {
            assert!(
                !page.contains("__KILN_BASE_CSS__") && page.contains("--canary:#d9480f"),
                "the shared styles put in"
            );
        }
        assert!(!p.contains("http://") && !p.contains("https://"), "no asset from elsewhere");
    }
}
