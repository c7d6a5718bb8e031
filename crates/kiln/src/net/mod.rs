//! kiln's network client and server primitives.
//!
//! For: [`http`], the one HTTP/1.1 implementation every part of the engine
//! speaks (the data plane has its own, tuned for the request path, in
//! `kiln-proxy`), and [`accept`], the side servers' accept loop. Must
//! never: decide what a request means.

pub mod accept;
pub mod http;
pub mod tls;
