//! kiln's integration tests, linked as one binary: the real `kiln`
//! binary, runc, skopeo, umoci, a registry and a browser, driven end to
//! end. Each file was once a test binary of its own; [`common::room`]
//! keeps what that guaranteed (tests that share runc, ports and timing
//! windows never overlap another file's), while the tests that need no
//! runc run side by side.

mod common;

mod acme;
mod api;
mod bake;
mod bases;
mod edge;
mod fleet;
mod fleet_acme;
mod fleet_bluegreen;
mod fleet_canary;
mod fleet_cli;
mod fleet_dashboard;
mod fleet_edge;
mod fleet_heal;
mod fleet_images;
mod fleet_lab;
mod fleet_place;
mod fleet_secrets;
mod fleet_tls;
mod heal;
mod history;
mod observe;
mod plan;
mod promote;
mod proxy;
mod proxy_wire;
mod registry;
mod registry_auth;
mod release;
mod release_crash;
mod run;
mod sandbox;
mod scan;
mod syslog;
mod unpack;
mod verify;
