//! Images at rest: [`store`] (the OCI layout under `$KILN_HOME/store`:
//! blobs, tags, the step cache, gc), [`layer`] (deterministic tar and the
//! pinned gzip), [`unpack`] (hostile layers applied safely) and
//! [`registry`] (an image and its records through an OCI registry).
//!
//! For: the "store" stage of the loop, between bake and run. Must never:
//! return a blob it has not verified, or run anything.

pub mod layer;
pub mod registry;
pub mod store;
pub mod unpack;
