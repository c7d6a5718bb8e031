//! Why a command failed ([`CommandError`]), by variant, and the exit code
//! each variant maps to.
//!
//! For: errors that name the thing. Must never: map an outcome by its
//! message text.

use std::path::PathBuf;

use crate::bake::BakeError;
use crate::image::store::StoreError;
use crate::runtime::RunError;
use crate::secrets::SecretError;
use crate::serve::history::HistoryError;
use crate::spec::SpecError;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Bake(#[from] BakeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error(transparent)]
    Test(#[from] crate::verify::gate::TestError),
    #[error(transparent)]
    Sign(#[from] crate::verify::sign::SignError),
    #[error(transparent)]
    Vuln(#[from] crate::verify::vulns::VulnError),
    #[error(transparent)]
    Db(#[from] crate::verify::osvdb::DbError),
    #[error(transparent)]
    Etcd(#[from] crate::fleet::etcd::EtcdError),
    #[error(transparent)]
    FleetChange(#[from] crate::fleet::change::ChangeError),
    #[error(transparent)]
    FleetHistory(#[from] crate::fleet::history::FleetHistoryError),
    #[error(transparent)]
    FleetSecret(#[from] crate::fleet::secrets::FleetSecretError),
    #[error(transparent)]
    Inventory(#[from] crate::verify::inventory::InventoryError),
    #[error(transparent)]
    Promote(#[from] crate::verify::promote::PromoteError),
    #[error(transparent)]
    Registry(#[from] crate::image::registry::RegistryError),
    #[error(transparent)]
    Serve(#[from] crate::serve::ServeError),
    /// A path a command names that is not there.
    #[error("{field}: {} is not there (or is not a file)", path.display())]
    NoFile { field: String, path: PathBuf },
    /// A command body that cannot be carried out, naming the field.
    #[error("bad request: {field}: {message}")]
    BadRequest { field: String, message: String },
    /// A fleet controller's API could not be reached, or answered what is
    /// not an answer.
    #[error("the controller at {url}: {source}")]
    Controller { url: String, source: std::io::Error },
    /// `kiln serve` carried the command out and it failed: its message, and
    /// the exit status it computed from the error's variant.
    #[error("{message}")]
    Remote { status: u16, exit: i32, message: String },
}

impl CommandError {
    /// The process exit status a CLI gives this error: 3 when a check
    /// found tampering (a broken history chain), 7 a refused signature or
    /// promotion, 2 and 4 a fleet release that failed or paused, 1
    /// otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::History(HistoryError::Broken { .. } | HistoryError::Anchor { .. }) => 3,
            CommandError::FleetHistory(
                crate::fleet::history::FleetHistoryError::Broken { .. }
                | crate::fleet::history::FleetHistoryError::Head { .. },
            ) => 3,
            CommandError::Sign(
                crate::verify::sign::SignError::Invalid { .. } | crate::verify::sign::SignError::Unsigned { .. },
            ) => 7,
            CommandError::Promote(p) if p.is_refusal() => 7,
            // The controller refused by the same rule (its 403 comes from
            // ServeError::Refused, by variant).
            CommandError::Serve(crate::serve::ServeError::Remote { status: 403, .. }) => 7,
            // As a single-host deploy: 2 failed or rolled back, 4 paused.
            CommandError::FleetChange(crate::fleet::change::ChangeError::Failed { .. }) => 2,
            CommandError::FleetChange(crate::fleet::change::ChangeError::Paused { .. }) => 4,
            CommandError::Remote { exit, .. } => *exit,
            _ => 1,
        }
    }
}
