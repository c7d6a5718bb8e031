//! The nested subcommands of the command line (`kiln db`, `bases`, `key`,
//! `secret`) and the closed sets of values some flags take.
//!
//! For: clap's definitions. Must never: act.

use std::path::PathBuf;

use clap::Subcommand;

use super::fleet_args::FleetArgs;

#[derive(Debug, Subcommand)]
pub(crate) enum DbCmd {
    /// Fetch osv.dev's exports for Debian, Alpine, crates.io and Go over HTTPS, check every record, and switch to them at once (a failed update keeps the current database).
    Update {
        /// A mirror laid out as osv.dev's bucket: URL/<Ecosystem>/all.zip (https only).
        #[arg(long, value_name = "URL")]
        mirror: Option<String>,
        /// An extra CA (PEM) for the mirror's certificate.
        #[arg(long, value_name = "PEM")]
        ca: Option<PathBuf>,
        /// Only this ecosystem (repeatable): Debian, Alpine, crates.io, Go.
        #[arg(long = "ecosystem", value_name = "NAME")]
        ecosystems: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum BasesCmd {
    /// List the images whose registry base tag now names a newer digest than kiln.lock pins (for nightly rebuilds: `kiln bake --update-base` moves the pins). With --json every registry base is listed with `outdated` true or false.
    Outdated {
        /// The spec file.
        #[arg(short, long, default_value = "kiln.toml", value_name = "PATH")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCmd {
    /// Create key pair NAME (default "default"); prints the public key.
    Generate {
        #[arg(default_value = "default")]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Re-encrypt the private keys under a new data key sealed by the current key-encryption key (KILN_KEY_FILE, the systemd credential kiln-key, or KILN_PASSPHRASE).
    Rotate {
        /// The key file the keys were sealed with, when it is not the current one (or KILN_OLD_PASSPHRASE).
        #[arg(long, value_name = "FILE")]
        old_key_file: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SbomFormat {
    Spdx,
    Cyclonedx,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum DrillKind {
    Canary,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SecretCmd {
    /// Store a secret; the value is read from standard input (one trailing newline is dropped). With --cluster: a new version of a fleet secret, sealed here with the fleet's key-encryption key and kept in etcd.
    Set {
        name: String,
        #[command(flatten)]
        cluster: FleetArgs,
    },
    /// List secret names (with --cluster: the fleet's, with their newest version).
    Ls {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cluster: FleetArgs,
    },
    /// Delete a secret (with --cluster: every version of a fleet secret no service uses).
    Rm {
        name: String,
        #[command(flatten)]
        cluster: FleetArgs,
    },
    /// Re-encrypt every secret under a new data key sealed by the current key-encryption key (KILN_KEY_FILE, the systemd credential kiln-key, or KILN_PASSPHRASE). With --cluster: the fleet's data key sealed under the current KEK (every version unchanged); with --cluster --new-data-key, a new data key and every version re-encrypted under it.
    RotateKey {
        /// The key file the secrets were sealed with, when it is not the current one (or KILN_OLD_KEY_FILE, KILN_OLD_PASSPHRASE).
        #[arg(long, value_name = "FILE")]
        old_key_file: Option<std::path::PathBuf>,
        /// With --cluster: make the fleet a new data key and re-encrypt every sealed version under it, in one etcd write (versions kept). A host's rotate-key always makes a new data key.
        #[arg(long)]
        new_data_key: bool,
        #[command(flatten)]
        cluster: FleetArgs,
    },
}
