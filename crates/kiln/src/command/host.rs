//! The real tools commands run with on this host (runc for bake steps and
//! instances, git, the instance shim), for every process that carries out
//! commands: the CLI when no `kiln serve` runs, and `kiln serve` itself.
//! It only assembles; it must never decide.

use std::path::Path;

use super::Context;
use crate::bake::git::GitCli;
use crate::bake::sandbox::Runc;
use crate::bake::{Progress, Tools};
use crate::image::store::{Store, StoreError};
use crate::runtime::driver::RuncDriver;
use crate::runtime::logs::Retention;
use crate::runtime::ShimLauncher;

/// The store of one kiln home and the tools that act on it.
#[derive(Debug)]
pub struct Host {
    store: Store,
    sandbox: Runc,
    git: GitCli,
    driver: RuncDriver,
    launcher: ShimLauncher,
}

impl Host {
    pub fn open(home: &Path) -> Result<Host, StoreError> {
        Ok(Host {
            store: Store::open(home)?,
            sandbox: Runc::new(home.join("runc")),
            git: GitCli,
            driver: RuncDriver::new(crate::runtime::run_dir(home).join("runc")),
            launcher: ShimLauncher,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// What one command runs against: `now` in seconds, progress going to
    /// `progress`.
    pub fn context<'a>(
        &'a self,
        progress: &'a mut dyn Progress,
        now: i64,
        source_date_epoch: Option<i64>,
        retention: Retention,
    ) -> Context<'a> {
        Context {
            store: self.store.clone(),
            tools: Tools { sandbox: &self.sandbox, git: &self.git },
            progress,
            now,
            source_date_epoch,
            driver: &self.driver,
            launcher: &self.launcher,
            retention,
        }
    }
}
