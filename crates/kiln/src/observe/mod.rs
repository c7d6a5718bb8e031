//! What leaves kiln for people and other systems: [`notify`] (signed
//! webhooks with retries, a delivery log) and [`ship`] (instance logs to
//! syslog over TCP or RELP). The history, the metrics and the event stream
//! are `kiln serve`'s (`serve::history`, `serve::metrics`, `serve::events`).
//!
//! For: delivering what the controller records. Must never: decide what
//! is worth an alert (the controller records; these deliver).

pub mod notify;
pub mod ship;
