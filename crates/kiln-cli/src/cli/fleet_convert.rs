//! The fleet's commands on the command line: `--cluster` and
//! `--controller` arguments converted into a [`Command`], a deploy's
//! kiln.toml service into the fleet's desired state.
//!
//! For: converting fleet arguments. Must never: carry a command out or
//! render one.

use anyhow::{bail, Context as _};
use kiln::command::fleet_api::FleetRequest;
use kiln::command::{self, Command};
use kiln::fleet::change::Change;

use super::args::*;
use super::convert::registry_settings;
use super::release::pick_service;

/// `kiln deploy --cluster` (and, with `dry_run`, `kiln plan --cluster`):
/// kiln.toml's service as the fleet's desired state, its `[image.X]`
/// baked and pushed first with `--push`.
#[allow(clippy::too_many_arguments)]
pub(super) fn fleet_deploy(
    fleet: FleetArgs,
    file: &std::path::Path,
    service: Option<String>,
    image: Option<String>,
    push: Option<String>,
    sign: Option<String>,
    no_wait: bool,
    dry_run: bool,
) -> anyhow::Result<Command> {
    let file = file.to_owned();
    let service = pick_service(&file, service)?;
    let spec = kiln::spec::load(&file)?;
    let Some(s) = spec.services.get(&service) else {
        bail!("{}: no [service.{service}]", file.display());
    };
    let image = image.unwrap_or_else(|| s.image.clone());
    // An [image.X] of the file is baked and pushed first, with --push.
    let bake = match (spec.images.contains_key(&image), push) {
        (true, Some(push_to)) => Some(command::FleetBake { file: file.clone(), image: image.clone(), push_to, sign }),
        (true, None) => bail!(
            "{}: service.{service}.image is [image.{image}] of this file: a fleet's hosts pull from a \
                     registry; give --push REGISTRY/REPO to bake and push it, or --image REGISTRY/REPO:TAG",
            file.display()
        ),
        (false, Some(_)) => {
            bail!("--push: service.{service}.image ({image}) is not an [image.X] of {}", file.display())
        }
        (false, None) => None,
    };
    let registry = match &bake {
        Some(b) => registry_settings(&file, &b.push_to)?,
        None => registry_settings(&file, &image)?,
    };
    let (settings, canary) = kiln::fleet::change::from_service(s, image)?;
    // Followed for the progress deadline, plus each canary step
    // with its three extensions.
    let steps_ms =
        canary.as_ref().map_or(0, |c| (c.steps.len() as u64 * c.step_secs * 4 + c.pauses.values().sum::<u64>()) * 1000);
    let wait = (!no_wait).then(|| std::time::Duration::from_millis(s.release.progress_deadline_ms + steps_ms));
    let change = Change::Deploy { settings: Box::new(settings), canary };
    fleet_command(fleet, service, change, registry, wait, bake, dry_run)
}

/// A change through etcd (`--cluster`) or a controller's API
/// (`--controller`).
fn fleet_command(
    fleet: FleetArgs,
    service: String,
    change: Change,
    registry: kiln::spec::registries::RegistrySpec,
    wait: Option<std::time::Duration>,
    bake: Option<command::FleetBake>,
    dry_run: bool,
) -> anyhow::Result<Command> {
    use kiln::command::fleet_api::Controller;
    let wait = wait.filter(|_| !dry_run);
    Ok(match fleet.controller.clone() {
        Some(url) => {
            let mut request = FleetRequest::of_change(service, change, registry, super::actor());
            if let FleetRequest::Deploy { dry_run: d, .. } = &mut request {
                *d = dry_run;
            }
            Command::FleetRemote {
                controller: Controller { url, token: controller_token(fleet.token_file.as_deref())? },
                request,
                wait,
                bake,
            }
        }
        None => Command::FleetChange {
            cluster: fleet.into(),
            service,
            change,
            registry,
            wait,
            bake,
            actor: super::actor(),
            dry_run,
        },
    })
}

/// A fleet command through etcd (`--cluster`) or a controller's API
/// (`--controller`).
pub(super) fn fleet_via(fleet: FleetArgs, request: FleetRequest) -> anyhow::Result<Command> {
    if !fleet.on() {
        bail!("give --cluster URLS (etcd's members) or --controller URL (a fleet controller's API)");
    }
    Ok(match fleet_target(fleet)? {
        command::FleetVia::Controller(controller) => {
            Command::FleetRemote { controller, request, wait: None, bake: None }
        }
        command::FleetVia::Cluster(cluster) => request.into_command(cluster),
    })
}

/// Where a command the caller's machine drives reaches the fleet: the
/// controller's API with `--controller`, else etcd (`--cluster`).
pub(super) fn fleet_target(fleet: FleetArgs) -> anyhow::Result<command::FleetVia> {
    Ok(match fleet.controller.clone() {
        Some(url) => command::FleetVia::Controller(kiln::command::fleet_api::Controller {
            url,
            token: controller_token(fleet.token_file.as_deref())?,
        }),
        None => command::FleetVia::Cluster(fleet.into()),
    })
}

/// A fleet secret's command: through etcd only. Its value is sealed here,
/// with this machine's KEK, so it never travels in clear, not even to a
/// controller.
pub(super) fn fleet_secret(
    fleet: FleetArgs,
    action: kiln::command::FleetSecretAction,
    json: bool,
) -> anyhow::Result<(Command, bool)> {
    if fleet.controller.is_some() {
        bail!(
            "--controller: a fleet secret is sealed on this machine with the fleet's key-encryption key and written \
             to etcd; give --cluster URLS (and KILN_KEY_FILE)"
        );
    }
    Ok((Command::FleetSecret { cluster: fleet.into(), action }, json))
}

/// The controller's API token: `--token-file`, else `$KILN_TOKEN`.
pub(super) fn controller_token(token_file: Option<&std::path::Path>) -> anyhow::Result<String> {
    match token_file {
        Some(f) => {
            Ok(std::fs::read_to_string(f).with_context(|| format!("--token-file {}", f.display()))?.trim().to_owned())
        }
        None => std::env::var("KILN_TOKEN").map(|t| t.trim().to_owned()).context(
            "--controller needs the controller's token: --token-file (its $KILN_HOME/serve.token) or $KILN_TOKEN",
        ),
    }
}

/// The `[[notify]]` webhooks of a fleet controller's kiln.toml.
pub(super) fn fleet_hooks(file: &std::path::Path) -> anyhow::Result<Vec<kiln::spec::notify::NotifySpec>> {
    Ok(kiln::spec::load(file)?.notify)
}

/// `name`, else the machine's hostname.
pub(super) fn host_name(name: Option<String>) -> anyhow::Result<String> {
    match name {
        Some(n) => Ok(n),
        None => std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .context("reading /etc/hostname (or give --name)"),
    }
}

/// A change to fleet service `service` (default: kiln.toml's only
/// service with a listen address); with `follow`, followed for the
/// service's progress deadline (kiln.toml's, else 10 minutes).
pub(super) fn fleet_change(
    fleet: FleetArgs,
    file: &std::path::Path,
    service: Option<String>,
    change: Change,
    follow: bool,
) -> anyhow::Result<Command> {
    let service = pick_service(file, service)?;
    let deadline_ms = match file.is_file() {
        true => kiln::spec::load(file)?.services.get(&service).map(|s| s.release.progress_deadline_ms),
        false => None,
    };
    let wait = follow.then(|| std::time::Duration::from_millis(deadline_ms.unwrap_or(600_000)));
    fleet_command(fleet, service, change, Default::default(), wait, None, false)
}
