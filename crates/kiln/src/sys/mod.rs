//! What kiln needs of the host beyond runc: [`atomic`] file writes,
//! [`children`] (the processes a command abandons, reaped by `kiln
//! serve`), [`faults`] (the crash points tests inject).
//!
//! For: small, well-tested wrappers other modules share. Must never:
//! decide anything about images, instances or releases.

pub mod atomic;
pub mod children;
pub mod faults;
