//! kiln-core: what kiln decides and the types its parts exchange, with no
//! I/O of its own beyond reading a kiln.toml.
//!
//! For: [`spec`] (kiln.toml, validated once), [`digest`], [`oci`] (image
//! types), [`time`] (formats and the one clock), the release decisions in
//! [`release`] (plan, rollout, analysis, diff), the heal policy in [`heal`],
//! and [`metrics`], the data plane's counters and window statistics that
//! the analysis judges.
//!
//! Must never: depend on the store, the runtime, the network or a process
//! (its dependencies are serde, sha2, toml and thiserror, so the compiler
//! holds it to that); decide anything from a clock it reads itself where a
//! caller can pass `now`.

pub mod base64;
pub mod digest;
pub mod heal;
pub mod metrics;
pub mod oci;
pub mod release;
pub mod spec;
pub mod time;
