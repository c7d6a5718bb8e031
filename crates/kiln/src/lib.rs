//! kiln: immutable infrastructure in one binary.
//!
//! Module map (see `docs/architecture.md` for the data flow):
//! - pure logic, from the `kiln-core` crate: [`spec`] (kiln.toml),
//!   [`digest`], [`oci`] (image types), [`time`], [`release`], [`heal`];
//!   and here [`layer`] (deterministic tar/gzip);
//! - storage: [`store`] (OCI layout, tags, cache, gc);
//! - edges to the outside: [`unpack`] (hostile tarballs), [`git`],
//!   [`bake::sandbox`] and [`runtime::driver`] (runc);
//! - operations: [`bake`], [`runtime`] (instances through runc, logs,
//!   volumes; [`secrets`] at rest), and [`command`], the one enum every front end
//!   (CLI today, HTTP API later) maps onto;
//! - the controller: [`serve`] (`kiln serve`), deciding with [`release`]
//!   (rollouts) and [`heal`] (replacements, recycling, crash loops), both
//!   pure, recording in [`history`]; `kiln chaos` (in the binary) drives kills and drills
//!   through its API; [`handoff`] passes listening sockets to an upgraded
//!   process (`kiln serve --upgrade`, `kiln proxy --take-over`);
//! - gates on a digest: [`verify`] (`kiln test`, the vulnerability and
//!   secret scans, SBOMs, signatures, promotion), each result a record
//!   stored as an OCI artifact on the image; [`registry`] pushes and pulls
//!   an image with all of them through an OCI registry;
//! - [`faults`]: the crash hooks tests inject faults with.

// The pure core, re-exported under the names the engine has always used.
pub use kiln_core::{digest, heal, oci, release, spec, time};
// The data plane, and the socket handoff it shares with `kiln serve`.
pub use kiln_proxy as proxy;
pub use kiln_proxy::handoff;

pub mod atomic;
pub mod bake;
pub mod children;
pub mod command;
pub mod faults;
pub mod git;
pub mod history;
pub mod layer;
pub mod net;
pub mod notify;
pub mod registry;
pub mod runtime;
pub mod secrets;
pub mod serve;
pub mod ship;
pub mod store;
pub mod unpack;
pub mod verify;

#[cfg(test)]
mod testutil;
