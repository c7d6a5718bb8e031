//! The whole command surface as one enum. The CLI (and later the HTTP API)
//! parse their input into a [`Command`] and render the [`Output`]; neither
//! contains logic of its own.

mod agent;
mod agent_heal;
mod agent_routes;
mod error;
mod fleet;
mod fleet_acme;
pub mod fleet_api;
mod fleet_heal;
pub mod host;
mod output;
pub mod pipeline;
pub mod remote;
mod surface;

pub use error::*;
pub use output::*;
pub use surface::*;

use crate::bake::{self, BakeOptions, Progress, Tools};
use crate::digest::Digest;
use crate::image::store::{Store, StoreError};
use crate::oci::{self, Descriptor, ImageConfig, Manifest};
use crate::release::plan::{self, Current};
use crate::runtime::driver::Driver;
use crate::runtime::logs::{LogFilter, Retention};
use crate::runtime::{InstanceRecord, Launcher, RunError, RunRequest, Runtime};
use crate::secrets::{SecretError, Secrets};
use crate::serve::history::History;
use crate::spec::{self, SpecError};

/// Who asked, when an API client does not say.
pub(crate) fn api_actor() -> String {
    "api".into()
}

pub use kiln_proxy::run::ProxyRun;

/// What commands run against.
pub struct Context<'a> {
    pub store: Store,
    pub tools: Tools<'a>,
    pub progress: &'a mut dyn Progress,
    pub now: i64,
    pub source_date_epoch: Option<i64>,
    pub driver: &'a dyn Driver,
    pub launcher: &'a dyn Launcher,
    pub retention: Retention,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("store", &self.store).finish()
    }
}

/// Checks a fetched image's signature with the PEM public key at `path`:
/// a valid signature over a payload naming this digest, else refused.
fn verify_fetched(
    store: &Store,
    fetched: &crate::image::registry::Fetched,
    path: &std::path::Path,
    reference: &str,
) -> Result<crate::verify::sign::Verified, CommandError> {
    use crate::verify::sign;
    let pem = std::fs::read_to_string(path).map_err(|source| sign::SignError::Io { path: path.to_owned(), source })?;
    let what = path.display().to_string();
    let key = sign::read_public_key(&pem, &what)?;
    let Some(sig) = fetched.signature() else {
        return Err(sign::SignError::Unsigned {
            reference: reference.to_owned(),
            tag: format!("sha256-{}.sig", fetched.digest.hex()),
        }
        .into());
    };
    let m: Manifest = store.read_json(sig)?;
    Ok(sign::verify_manifest(store, reference, &fetched.digest, &m, &key, &what)?)
}

pub fn execute(cmd: Command, ctx: &mut Context<'_>) -> Result<Output, CommandError> {
    match cmd {
        Command::Controller(request) => {
            let answer = crate::serve::call(ctx.store.home(), &request)?;
            Ok(Output::Controller { request, answer: Box::new(answer) })
        }
        Command::Bake { file, image, no_cache, force, update_base } => {
            let f = spec::load(&file)?;
            let names: Vec<String> = match image {
                Some(n) => vec![n],
                None => f.images.keys().cloned().collect(),
            };
            let opts =
                BakeOptions { no_cache, force, source_date_epoch: ctx.source_date_epoch, now: ctx.now, update_base };
            let mut out = Vec::new();
            for n in names {
                out.push(bake::bake(&ctx.store, &f, &n, &opts, &ctx.tools, ctx.progress)?);
            }
            Ok(Output::Baked(out))
        }
        Command::BasesOutdated { file } => {
            let f = spec::load(&file)?;
            Ok(Output::Bases(bake::base::statuses(&ctx.store, &f)?))
        }
        Command::Images {} => Ok(Output::Images(images(&ctx.store)?)),
        Command::Inspect { reference } => Ok(Output::Inspect(Box::new(inspect(&ctx.store, &reference)?))),
        Command::Gc { dry_run } => Ok(Output::Gc(ctx.store.gc(dry_run)?)),
        Command::Run { request, service_file } => {
            let mut channel = None;
            let req = match (service_file, request.service.clone()) {
                (Some(path), Some(name)) => {
                    let f = spec::load(&path)?;
                    let service = f.services.get(&name).ok_or_else(|| no_such_service(&f, &name))?;
                    channel.clone_from(&service.channel);
                    RunRequest::for_service(service, request)
                }
                _ => request,
            };
            if req.reference.is_empty() {
                return Err(RunError::Invalid("name an image to run, or a --service from kiln.toml".into()).into());
            }
            // A service with a channel runs only digests promoted to it.
            if let Some(rule) = &channel {
                let (desc, _) = ctx.store.resolve(&req.reference)?;
                crate::verify::promote::admit(&ctx.store, rule, &desc.digest)?;
            }
            let rt = Runtime::new(&ctx.store, ctx.driver);
            Ok(Output::Instance(Box::new(rt.run(&req, ctx.launcher, ctx.now)?)))
        }
        Command::Ps { all } => {
            let rt = Runtime::new(&ctx.store, ctx.driver);
            let (mut instances, orphans_removed) = rt.observe_all()?;
            if !all {
                instances.retain(|r| !r.state.is_exited());
            }
            Ok(Output::Instances { instances, orphans_removed })
        }
        Command::Stop { instance, grace_secs } => {
            let rt = Runtime::new(&ctx.store, ctx.driver);
            let grace = grace_secs.map(std::time::Duration::from_secs);
            Ok(Output::Instance(Box::new(rt.stop(&instance, grace)?)))
        }
        Command::Rm { instance, force } => {
            let rt = Runtime::new(&ctx.store, ctx.driver);
            Ok(Output::Instance(Box::new(rt.remove(&instance, force)?)))
        }
        Command::Pause { instance } => {
            Ok(Output::Instance(Box::new(Runtime::new(&ctx.store, ctx.driver).pause(&instance)?)))
        }
        Command::Resume { instance } => {
            Ok(Output::Instance(Box::new(Runtime::new(&ctx.store, ctx.driver).resume(&instance)?)))
        }
        Command::Logs(filter) => {
            let rt = Runtime::new(&ctx.store, ctx.driver);
            rt.ingest_all()?;
            let live = rt.live_ids()?;
            let logs = rt.logs();
            let io = |source| RunError::Io { path: ctx.store.home().join("logs"), source };
            logs.prune(&ctx.retention, ctx.now, &live).map_err(io)?;
            Ok(Output::Logs(logs.query(&filter).map_err(io)?))
        }
        Command::Volumes {} => Ok(Output::Volumes(Runtime::new(&ctx.store, ctx.driver).volumes()?)),
        Command::SecretSet { name, value } => {
            Secrets::new(ctx.store.home()).set(&name, &value)?;
            Ok(Output::Done { message: format!("secret {name} stored ({} bytes, encrypted)", value.len()) })
        }
        Command::SecretList {} => Ok(Output::Secrets(Secrets::new(ctx.store.home()).list()?)),
        cmd @ Command::Agent { .. } => agent::execute(cmd, ctx),
        cmd @ (Command::Assign { .. }
        | Command::FleetController { .. }
        | Command::Place { .. }
        | Command::FleetChange { .. }
        | Command::FleetRemote { .. }
        | Command::DrainHost { .. }
        | Command::Hosts { .. }
        | Command::FleetHistory { .. }
        | Command::FleetSecret { .. }
        | Command::FleetLogs { .. }
        | Command::FleetPs { .. }
        | Command::FleetMetrics { .. }
        | Command::FleetVerify { .. }
        | Command::FleetChaos { .. }
        | Command::FleetKill { .. }
        | Command::FleetDrill { .. }
        | Command::FleetQuarantine { .. }
        | Command::FleetServices { .. }) => fleet::execute(cmd, ctx),
        Command::Proxy(run) => {
            kiln_proxy::run::run(run).map_err(|e| RunError::Invalid(format!("kiln proxy: {e}")))?;
            Ok(Output::Done { message: "kiln proxy stopped".into() })
        }
        Command::SecretRemove { name } => {
            Secrets::new(ctx.store.home()).remove(&name)?;
            Ok(Output::Done { message: format!("secret {name} removed") })
        }
        Command::RotateKey { store, old_key_file } => {
            let home = ctx.store.home();
            let (secrets, what) = match store {
                KeyStore::Secrets => (Secrets::new(home), "secret(s)"),
                KeyStore::SigningKeys => (Secrets::signing_keys(home), "signing key(s)"),
            };
            let old = old_kek(old_key_file.as_deref(), home)?;
            let r = secrets.rotate(old.clone())?;
            // The keys of certificates kiln obtained go with the secrets.
            // The keys of certificates kiln obtained, and registry
            // credentials, go with the secrets.
            if matches!(store, KeyStore::Secrets) {
                for (other, dir) in [(Secrets::tls_keys(home), "tls"), (Secrets::credentials(home), "auth")] {
                    if home.join(dir).join("dek").exists() {
                        other.rotate(old.clone())?;
                    }
                }
            }
            let migrated = if r.migrated { "; the bare key that sat beside them is removed" } else { "" };
            Ok(Output::Done {
                message: format!(
                    "{} {what} re-encrypted under a new data key, sealed with {}{migrated}",
                    r.count, r.sealed_with
                ),
            })
        }
        Command::Plan { file, service } => {
            let f = spec::load(&file)?;
            let chosen: Vec<&spec::ServiceSpec> = match &service {
                Some(name) => vec![f.services.get(name).ok_or_else(|| no_such_service(&f, name))?],
                None => f.services.values().collect(),
            };
            if chosen.is_empty() {
                return Err(SpecError {
                    file: f.path.clone(),
                    line: None,
                    key: "service".into(),
                    message: "no [service.NAME] table to plan".into(),
                }
                .into());
            }
            let rt = Runtime::new(&ctx.store, ctx.driver);
            let (instances, _) = rt.observe_all()?;
            let mut plans = Vec::new();
            for s in chosen {
                let (target, _) = ctx.store.resolve(&s.image).map_err(|e| match e {
                    StoreError::NotFound(_) => CommandError::Spec(SpecError {
                        file: f.path.clone(),
                        line: Some(s.image_line),
                        key: format!("service.{}.image", s.name),
                        message: if f.images.contains_key(&s.image) {
                            format!("[image.{}] has not been baked yet (kiln bake {})", s.image, s.image)
                        } else {
                            format!("{:?} is neither an [image.NAME] of this file nor an image in the store", s.image)
                        },
                    }),
                    other => other.into(),
                })?;
                let secrets = crate::secrets::Secrets::new(ctx.store.home());
                let versions = s
                    .secrets
                    .iter()
                    .filter_map(|x| secrets.version(&x.name).ok().map(|v| (x.name.clone(), v)))
                    .collect();
                let fields = s.release_fields(&versions);
                let now = current(&instances, &s.name);
                let mut p = plan::plan_release(&s.name, &s.release, now.as_ref(), &target.digest, &fields);
                p.warnings = s.sandbox.warnings();
                plans.push(p);
            }
            Ok(Output::Plans(plans))
        }
        Command::Test { file, reference } => {
            let f = spec::load(&file)?;
            let r = crate::verify::gate::test(&ctx.store, ctx.driver, ctx.launcher, &f, &reference, ctx.now)?;
            Ok(Output::Test(Box::new(r)))
        }
        Command::ScanSecrets { file, reference } => {
            // The allowlist is in kiln.toml; an image from elsewhere has none.
            let f = if file.is_file() { Some(spec::load(&file)?) } else { None };
            let g = crate::verify::leaks::gate(&ctx.store, f.as_ref(), &reference, ctx.now)?;
            Ok(Output::Leaks(Box::new(g)))
        }
        Command::Scan { file, reference, db, force } => {
            let f = if file.is_file() { Some(spec::load(&file)?) } else { None };
            let db = db
                .or_else(|| crate::verify::osvdb::current(ctx.store.home()))
                .ok_or(crate::verify::vulns::VulnError::NoDatabase)?;
            let r = crate::verify::vulns::gate(&ctx.store, f.as_ref(), &reference, &db, force, ctx.now)?;
            Ok(Output::Vulns(Box::new(r)))
        }
        Command::PromoteImage { file, reference, to, actor } => {
            let policy = if file.is_file() { spec::load(&file)?.promotion } else { Default::default() };
            let p = crate::verify::promote::promote(&ctx.store, &policy, &reference, &to, &actor, ctx.now)?;
            Ok(Output::Promoted(Box::new(p)))
        }
        Command::Release(run) => Ok(Output::Pipeline(Box::new(pipeline::release(run, ctx)?))),
        Command::Push { reference, remote, registry, sign } => {
            use crate::image::registry;
            let r = registry::Remote::parse(&remote).map_err(registry::RegistryError::from)?;
            if let Some(key) = &sign {
                let image = crate::verify::sign::sign_as(
                    &ctx.store,
                    key,
                    &reference,
                    Some(&r.repository()),
                    Default::default(),
                    ctx.now,
                )?;
                for record in crate::verify::record_artifacts(&ctx.store, &image.digest)? {
                    crate::verify::sign::sign(&ctx.store, key, record.as_str(), Default::default(), ctx.now)?;
                }
            }
            let mut t = registry::push(&ctx.store, &reference, &r, &registry)?;
            t.signed_by = sign;
            Ok(Output::Transfer(Box::new(t)))
        }
        Command::Pull { remote, name, registry } => {
            use crate::image::registry;
            let r = registry::Remote::parse(&remote).map_err(registry::RegistryError::from)?;
            let fetched = registry::fetch(&ctx.store, &r, &registry, name.as_deref())?;
            // A registry with `signed_by`: no tag is set for an image
            // without a valid signature by that key.
            if let Some(path) = &registry.signed_by {
                verify_fetched(&ctx.store, &fetched, path, &remote)?;
            }
            let mut t = registry::tag_fetched(&ctx.store, fetched, ctx.now)?;
            t.signed_by = registry.signed_by.map(|p| p.display().to_string());
            Ok(Output::Transfer(Box::new(t)))
        }
        Command::DbUpdate { mirror, ca, ecosystems } => {
            let source = mirror.as_deref().unwrap_or(crate::verify::osvdb::DEFAULT_SOURCE);
            let u = crate::verify::osvdb::update(ctx.store.home(), source, ca.as_deref(), &ecosystems, ctx.now)?;
            Ok(Output::DbUpdated(Box::new(u)))
        }
        Command::Login { registry, username, password, settings } => {
            let creds = crate::image::registry::Credentials { username, password: password.0 };
            crate::image::registry::login(ctx.store.home(), &registry, &settings, &creds)?;
            Ok(Output::Done {
                message: format!("logged in to {registry} as {}; credentials kept encrypted", creds.username),
            })
        }
        Command::Logout { registry } => {
            let had = crate::image::registry::forget_credentials(ctx.store.home(), &registry)?;
            let message = if had {
                format!("forgot the credentials of {registry}")
            } else {
                format!("no credentials kept for {registry}")
            };
            Ok(Output::Done { message })
        }
        Command::Sbom { reference } => {
            Ok(Output::Sbom(Box::new(crate::verify::sbom::generate(&ctx.store, &reference, ctx.now)?)))
        }
        Command::KeyGenerate { name } => {
            let pem = crate::verify::sign::generate(ctx.store.home(), &name)?;
            let public_key = crate::verify::sign::public_key_path(ctx.store.home(), &name);
            Ok(Output::Key { name, public_key, pem })
        }
        Command::Sign { reference, key } => {
            use crate::verify::sign;
            let image = sign::sign(&ctx.store, &key, &reference, Default::default(), ctx.now)?;
            // Its verification records are signed too.
            let mut out = vec![image.clone()];
            for record in crate::verify::record_artifacts(&ctx.store, &image.digest)? {
                out.push(sign::sign(&ctx.store, &key, record.as_str(), Default::default(), ctx.now)?);
            }
            Ok(Output::Signed(out))
        }
        Command::VerifySignature { reference, key } => {
            use crate::verify::sign;
            let path = key.unwrap_or_else(|| sign::public_key_path(ctx.store.home(), "default"));
            let pem =
                std::fs::read_to_string(&path).map_err(|e| sign::SignError::Io { path: path.clone(), source: e })?;
            let k = sign::read_public_key(&pem, &path.display().to_string())?;
            Ok(Output::Verified(sign::verify(&ctx.store, &reference, &k, &path.display().to_string())?))
        }
        Command::History { service, verify } => {
            let path = History::path_in(ctx.store.home());
            if !path.exists() {
                // No release yet: an empty history, and no file created by a read.
                return Ok(Output::History { entries: Vec::new(), verified: verify.then_some(0) });
            }
            let h = History::open(&path)?;
            let verified = if verify { Some(h.verify()?) } else { None };
            Ok(Output::History { entries: h.entries(service.as_deref())?, verified })
        }
    }
}

/// The KEK a store was sealed with, for a rotation: `--old-key-file`,
/// else `KILN_OLD_KEY_FILE` or `KILN_OLD_PASSPHRASE`, else none.
pub(super) fn old_kek(
    old_key_file: Option<&std::path::Path>,
    home: &std::path::Path,
) -> Result<Option<crate::secrets::kek::Kek>, SecretError> {
    use crate::secrets::kek;
    Ok(match old_key_file {
        Some(p) => Some(kek::from_file(p, "--old-key-file", home)?),
        None => kek::old_from_env(home)?,
    })
}

fn no_such_service(f: &spec::SpecFile, name: &str) -> CommandError {
    SpecError {
        file: f.path.clone(),
        line: None,
        key: format!("service.{name}"),
        message: format!(
            "no such service (the file defines: {})",
            f.services.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    }
    .into()
}

/// What serves a service now: the digest most of its live instances run.
/// What runs of `service`: the (digest, settings) pair most of its live
/// instances run, as the controller's releases started them.
fn current(instances: &[InstanceRecord], service: &str) -> Option<Current> {
    type Key<'a> = (&'a Digest, &'a std::collections::BTreeMap<String, String>);
    let mut by_release: std::collections::BTreeMap<Key<'_>, u32> = std::collections::BTreeMap::new();
    for r in instances.iter().filter(|r| r.service == service && !r.state.is_exited() && !r.stop_requested) {
        *by_release.entry((&r.image, &r.release_fields)).or_default() += 1;
    }
    by_release.into_iter().max_by_key(|(_, n)| *n).map(|((d, f), n)| Current {
        digest: d.clone(),
        instances: n,
        fields: f.clone(),
    })
}

fn image_size(m: &Manifest) -> u64 {
    m.config.size + m.layers.iter().map(|l| l.size).sum::<u64>()
}

fn images(store: &Store) -> Result<Vec<ImageRow>, StoreError> {
    let log = store.tag_log()?;
    let mut rows = Vec::new();
    for (desc, tags) in store.tagged()? {
        let m: Manifest = store.read_json(&desc.digest)?;
        if m.artifact_type.is_some() || m.subject.is_some() {
            // Records and signatures about an image, not images: `kiln
            // inspect` shows them.
            continue;
        }
        let tagged_at = log
            .iter()
            .filter(|e| e.to == desc.digest && tags.contains(&e.tag))
            .filter_map(|e| crate::time::parse_rfc3339(&e.time))
            .max();
        rows.push(ImageRow {
            tags,
            digest: desc.digest.clone(),
            size: image_size(&m),
            tagged_at,
            revision: m.annotation(oci::ANNOTATION_REVISION).map(str::to_owned),
            created: m.annotation(oci::ANNOTATION_CREATED).map(str::to_owned),
        });
    }
    rows.sort_by(|a, b| b.tagged_at.cmp(&a.tagged_at).then_with(|| a.tags.cmp(&b.tags)));
    Ok(rows)
}

fn inspect(store: &Store, reference: &str) -> Result<Inspection, StoreError> {
    let (desc, tags): (Descriptor, Vec<String>) = store.resolve(reference)?;
    let manifest: Manifest = store.read_json(&desc.digest)?;
    let config: Option<ImageConfig> = match manifest.artifact_type {
        Some(_) => None,
        None => Some(store.read_json(&manifest.config.digest)?),
    };
    let tag_history =
        store.tag_log()?.into_iter().filter(|e| e.to == desc.digest || e.from.as_ref() == Some(&desc.digest)).collect();
    let records = crate::verify::records_of(store, &desc.digest)?;
    Ok(Inspection { digest: desc.digest, tags, size: image_size(&manifest), manifest, config, tag_history, records })
}
