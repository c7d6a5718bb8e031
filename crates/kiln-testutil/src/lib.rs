//! Helpers for the unit tests of kiln's crates: a dev-dependency of each,
//! so the one copy is shared and nothing here is linked into kiln.
//!
//! For: test scaffolding. Must never: be a normal dependency of a crate.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh empty directory under the system temp dir.
pub fn tempdir(what: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let p = std::env::temp_dir().join(format!(
        "kiln-test-{what}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
    p
}
