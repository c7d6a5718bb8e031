//! The web dashboard `kiln serve` answers at `/`: one HTML page with its
//! script and styles inside (compiled into the binary, so there is nothing
//! to build or install). The page only reads the API (`/v1/status`,
//! `/v1/history`, `/v1/diff`, `/v1/logs`), follows `/v1/events`, and posts
//! the same requests the CLI sends; it holds no logic the API does not.
//! This module must never answer anything but the page.

/// The page; `__KILN_CSRF__` is replaced by the session's CSRF value.
const PAGE: &str = include_str!("dashboard.html");

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
    // The value is hex (or empty): nothing in it can break out of the
    // attribute.
    debug_assert!(csrf.bytes().all(|b| b.is_ascii_hexdigit()));
    PAGE.replace("__KILN_CSRF__", csrf)
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
}
