//! The release controller's pure parts: what a deploy would do ([`plan`]),
//! what to do next in a release in progress ([`rollout::decide`]), and how
//! a canary step is judged ([`analysis`]).
//!
//! Nothing here does I/O or reads the clock: observations and the time come
//! in as arguments, decisions go out as values, so every rule is tested on
//! a paused clock. The parts that act (starting instances, feeding the load
//! balancer, recording history) live elsewhere and must never decide.

pub mod analysis;
pub mod diff;
pub mod plan;
pub mod rollout;
