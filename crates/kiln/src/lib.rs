//! kiln: immutable infrastructure in one binary.
//!
//! The engine's folders follow the loop (see `docs/architecture.md` for
//! the data flow): bake → verify → store → run → route → release → heal →
//! observe.
//! - pure logic, from the `kiln-core` crate: [`spec`] (kiln.toml),
//!   [`digest`], [`oci`] (image types), [`time`], [`release`] (plan,
//!   rollout, analysis), [`heal`] (the healing policy);
//! - bake: [`bake`] (steps → layers → image; its `git` and `sandbox`);
//! - verify: [`verify`] (`kiln test`, the vulnerability and secret scans,
//!   SBOMs, signatures, promotion), each result a record stored as an OCI
//!   artifact on the image;
//! - store: [`image`] (the OCI layout under `$KILN_HOME/store`, layers,
//!   hostile layers unpacked safely, the registry client);
//! - run: [`runtime`] (instances through runc, logs, volumes, drift) and
//!   [`secrets`] (sealed at rest, given at run time);
//! - route: [`proxy`], the data plane, from the `kiln-proxy` crate, with
//!   [`handoff`] (listening sockets passed to a successor);
//! - release and heal: [`serve`] (`kiln serve`: its controller, API,
//!   history, the data plane and prober seams);
//! - observe: [`observe`] (webhooks, log shipping);
//! - around them: [`command`], the one command surface every front end maps
//!   onto; [`net`] (the one HTTP/1.1 client); [`sys`] (atomic writes,
//!   abandoned children, crash points).

// The pure core, re-exported under the names the engine has always used.
pub use kiln_core::{base64, digest, heal, oci, release, spec, time};
// The data plane, and the socket handoff it shares with `kiln serve`.
pub use kiln_proxy as proxy;
pub use kiln_proxy::handoff;

pub mod acme;
pub mod bake;
pub mod command;
pub mod fleet;
pub mod image;
pub mod net;
pub mod observe;
pub mod runtime;
pub mod secrets;
pub mod serve;
pub mod sys;
pub mod verify;
