//! `kiln bake`: turns one `[image.NAME]` spec into an OCI image in the store.
//!
//! The image is built as a chain of steps (base, each `copy`, each `run`).
//! Each step has a cache key covering its parent's key, its own definition
//! and the content of its inputs, so an unchanged rebuild only hashes inputs
//! and does no compression. Everything that reaches the image is normalised
//! (see `layer`), and `created` comes from the caller (SOURCE_DATE_EPOCH, the
//! git commit time, or 0), so the same inputs give the same digest anywhere.
//! This module never reads the clock or the environment itself.

pub mod base;
pub mod copy;
pub mod diff;
pub mod git;
pub mod lock;
pub mod sandbox;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::bake::git::{Git, GitInfo};
use crate::digest::{Digest, Hasher};
use crate::image::layer::{self, LayerDigests, COMPRESSOR};
use crate::image::store::{CachedLayer, Store, StoreError, TagEvent};
use crate::image::unpack::{UnpackError, Unpacker};
use crate::oci::{self, Descriptor, History, ImageConfig, Manifest, RootFs, RunConfig};
use crate::spec::{BaseRef, ImageSpec, SpecFile};
use sandbox::{RunSpec, Sandbox, SandboxError};

/// The external things a bake uses, behind their traits.
pub struct Tools<'a> {
    pub sandbox: &'a dyn Sandbox,
    pub git: &'a dyn Git,
}

impl std::fmt::Debug for Tools<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tools")
    }
}

#[derive(Debug, Clone, Default)]
pub struct BakeOptions {
    /// Rebuild every step, ignoring the cache.
    pub no_cache: bool,
    /// Allow moving existing tags (recorded in the tag log).
    pub force: bool,
    /// `SOURCE_DATE_EPOCH`, when set: wins over the git commit time.
    pub source_date_epoch: Option<i64>,
    /// Wall-clock time, for the tag log only (never enters the image).
    pub now: i64,
    /// Resolve a registry base's tag again and move its kiln.lock pin.
    pub update_base: bool,
}

/// A bake failure, located at the spec step it came from.
#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    #[error("{at}: {message}")]
    Step { at: String, message: String },
    #[error("{at}: {source}")]
    Store { at: String, source: StoreError },
    #[error("{at}: {source}")]
    Unpack { at: String, source: UnpackError },
    #[error("{at}: {source}")]
    Sandbox { at: String, source: SandboxError },
    #[error("{at}: {source}")]
    Io { at: String, source: io::Error },
}

/// How a step was satisfied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Cached,
    Built,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StepReport {
    pub description: String,
    pub outcome: Outcome,
    pub millis: u64,
}

/// What a bake produced.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BakeReport {
    pub image: String,
    pub digest: Digest,
    /// Compressed size of config and layers.
    pub size: u64,
    pub tags: Vec<String>,
    pub tag_changes: Vec<TagEvent>,
    pub steps: Vec<StepReport>,
    /// A registry base: its digest and how kiln.lock pinned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<base::BasePin>,
}

/// Receives progress while baking.
pub trait Progress {
    fn step_started(&mut self, index: usize, total: usize, description: &str);
    fn step_output(&mut self, line: &str);
    fn step_finished(&mut self, report: &StepReport);
}

/// The image being assembled.
struct Chain {
    key: Digest,
    layers: Vec<Descriptor>,
    diff_ids: Vec<Digest>,
    history: Vec<History>,
    base_config: RunConfig,
    architecture: String,
    /// An OCI base's `created`.
    base_created: Option<String>,
}

impl Chain {
    fn push(&mut self, key: Digest, l: &CachedLayer, created_by: String, created: &str) {
        self.key = key;
        self.layers.push(Descriptor::new(&l.media_type, l.digest.clone(), l.size));
        self.diff_ids.push(l.diff_id.clone());
        self.history.push(History {
            created: Some(created.to_owned()),
            created_by: Some(created_by),
            comment: None,
            empty_layer: false,
        });
    }
}

fn key(parent: &Digest, kind: &str, parts: &[&[u8]]) -> Digest {
    let mut h = Hasher::new();
    h.field(b"kiln-step-v1");
    h.field(parent.as_str().as_bytes());
    h.field(kind.as_bytes());
    h.field(COMPRESSOR.as_bytes());
    for p in parts {
        h.field(p);
    }
    h.finish()
}

fn cached(l: &LayerDigests) -> CachedLayer {
    CachedLayer {
        digest: l.digest.clone(),
        diff_id: l.diff_id.clone(),
        size: l.size,
        media_type: oci::MEDIA_LAYER_GZIP.to_owned(),
    }
}

/// A scratch rootfs for `run` steps, removed when dropped.
struct Workspace {
    bundle: PathBuf,
}

impl Workspace {
    fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.bundle);
    }
}

/// Bakes `name` from `file` into `store`.
pub fn bake(
    store: &Store,
    file: &SpecFile,
    name: &str,
    opts: &BakeOptions,
    tools: &Tools<'_>,
    progress: &mut dyn Progress,
) -> Result<BakeReport, BakeError> {
    let spec = file.images.get(name).ok_or_else(|| BakeError::Step {
        at: file.path.display().to_string(),
        message: format!(
            "no [image.{name}] (it defines: {})",
            file.images.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    })?;
    let dir = file.dir();
    let at = |line: usize, key: &str| format!("{}:{line}: image.{name}.{key}", file.path.display());
    let git = tools.git.info(dir);
    // The image's time: SOURCE_DATE_EPOCH, else the commit's. Outside git,
    // the base's own time (a rootfs tarball's newest entry, an OCI base's
    // `created`): a function of the inputs, so bakes stay reproducible, and
    // a date the SBOMs can carry. Only a scratch image outside git is 1970.
    let pinned = opts.source_date_epoch.or(git.as_ref().map(|g| g.commit_time));
    let rootfs_time = match (&pinned, &spec.from) {
        (None, BaseRef::Rootfs { path }) => base::newest_mtime(&dir.join(path)).ok().flatten(),
        _ => None,
    };
    let mut created = crate::time::rfc3339(pinned.or(rootfs_time).unwrap_or(0));

    let total = 1 + spec.copy.len() + spec.run.len();
    let mut reports = Vec::with_capacity(total);
    // Base.
    let mut chain: Option<Chain> = None;
    let mut lock = match &spec.from {
        BaseRef::Registry(_) => Some(
            lock::Lock::load(dir).map_err(|e| BakeError::Step { at: at(spec.line, "from"), message: e.to_string() })?,
        ),
        _ => None,
    };
    let mut pin: Option<base::BasePin> = None;
    run_step(0, total, format!("from {}", spec.from), progress, &mut reports, &mut |progress| {
        let inputs = BaseInputs { store, file, spec, opts, lock: lock.as_ref() };
        let (c, outcome, p) = base_chain(&inputs, &created, progress)
            .map_err(|message| BakeError::Step { at: at(spec.line, "from"), message })?;
        chain = Some(c);
        pin = p;
        Ok(outcome)
    })?;
    let mut chain = chain.ok_or_else(|| BakeError::Step { at: at(spec.line, "from"), message: "no base".into() })?;
    if pinned.is_none() {
        if let Some(t) = chain.base_created.as_deref().and_then(crate::time::parse_rfc3339) {
            created = crate::time::rfc3339(t);
        }
    }

    // Copies: plan all (entries, key, cache hit), then compress the misses
    // in parallel. A copy layer's bytes depend only on its own inputs; the
    // chain of keys depends on content hashes, not on compressed bytes.
    let mut planned = Vec::with_capacity(spec.copy.len());
    let mut parent = chain.key.clone();
    for (i, c) in spec.copy.iter().enumerate() {
        let t = Instant::now();
        let at = at(c.line, &format!("copy[{i}]"));
        let entries = copy::copy_entries(dir, c).map_err(|message| BakeError::Step { at: at.clone(), message })?;
        let diff_id = layer::diff_id(&entries).map_err(|source| BakeError::Io { at: at.clone(), source })?;
        let spec_json = serde_json::to_vec(c).unwrap_or_default();
        let key = key(&parent, "copy", &[&spec_json, diff_id.as_str().as_bytes()]);
        let hit = lookup(store, &key, opts, progress);
        parent = key.clone();
        let description = format!("copy {} -> {}", c.src.join(" "), c.dest);
        planned.push(PlannedCopy { description, at, entries, key, hit, planning: t.elapsed() });
    }
    let mut built = compress_misses(store, &planned);
    for (i, p) in planned.into_iter().enumerate() {
        progress.step_started(1 + i, total, &p.description);
        let (l, outcome, extra) = match (p.hit, built[i].take()) {
            (Some(l), _) => (l, Outcome::Cached, Duration::ZERO),
            (None, Some(r)) => {
                let (l, took) = r?;
                (l, Outcome::Built, took)
            }
            (None, None) => return Err(BakeError::Step { at: p.at, message: "layer was not built".into() }),
        };
        chain.push(p.key, &l, format!("kiln {}", p.description), &created);
        let r = StepReport { description: p.description, outcome, millis: (p.planning + extra).as_millis() as u64 };
        progress.step_finished(&r);
        reports.push(r);
    }

    // Runs.
    let mut env = merged_env(&chain.base_config, spec);
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    let workdir = spec.workdir.clone().or_else(|| chain.base_config.working_dir.clone()).unwrap_or_else(|| "/".into());
    let mut workspace: Option<Workspace> = None;
    for (i, cmd) in spec.run.iter().enumerate() {
        let where_ = at(spec.line, &format!("run[{i}]"));
        run_step(1 + spec.copy.len() + i, total, format!("run {cmd}"), progress, &mut reports, &mut |progress| {
            let env_json = serde_json::to_vec(&(&env, &workdir)).unwrap_or_default();
            let k = key(&chain.key, "run", &[cmd.as_bytes(), &env_json]);
            if let Some(l) = lookup(store, &k, opts, progress) {
                chain.push(k, &l, format!("kiln run {cmd}"), &created);
                return Ok(Outcome::Cached);
            }
            let io_at = |source| BakeError::Io { at: where_.clone(), source };
            if workspace.is_none() {
                workspace = Some(unpack_chain(store, &chain, &where_)?);
            }
            let ws = workspace
                .as_ref()
                .ok_or_else(|| BakeError::Step { at: where_.clone(), message: "no workspace".into() })?;
            let rootfs = ws.rootfs();
            if fs::symlink_metadata(rootfs.join("bin/sh")).is_err() {
                return Err(BakeError::Step {
                    at: where_.clone(),
                    message: "run steps need /bin/sh in the image, and it has none".into(),
                });
            }
            let before = diff::snapshot(&rootfs).map_err(io_at)?;
            fs::create_dir_all(rootfs.join(workdir.trim_start_matches('/'))).map_err(io_at)?;
            let run = RunSpec { rootfs: &rootfs, command: cmd, env: &env, workdir: &workdir };
            tools
                .sandbox
                .run(&run, &mut |line| progress.step_output(line))
                .map_err(|source| BakeError::Sandbox { at: where_.clone(), source })?;
            let after = diff::snapshot(&rootfs).map_err(io_at)?;
            let entries = diff::diff(&rootfs, &before, &after).map_err(io_at)?;
            let w = store.blob_writer().map_err(|source| BakeError::Store { at: where_.clone(), source })?;
            let (w, d) = layer::write_gzip_layer(&entries, w).map_err(io_at)?;
            w.commit().map_err(|source| BakeError::Store { at: where_.clone(), source })?;
            let l = cached(&d);
            store.cache_put(&k, &l).map_err(|source| BakeError::Store { at: where_.clone(), source })?;
            chain.push(k, &l, format!("kiln run {cmd}"), &created);
            Ok(Outcome::Built)
        })?;
    }
    drop(workspace);

    // Config, manifest, tags.
    let where_ = format!("{}:{}: image.{name}", file.path.display(), spec.line);
    let store_at = |source| BakeError::Store { at: where_.clone(), source };
    let config = image_config(&chain, spec, &created);
    let config_bytes = oci::to_canonical_json(&config);
    let config_digest = store.put_blob(&config_bytes).map_err(store_at)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_MANIFEST.to_owned()),
        artifact_type: None,
        config: Descriptor::new(oci::MEDIA_CONFIG, config_digest, config_bytes.len() as u64),
        layers: chain.layers.clone(),
        subject: None,
        annotations: Some(annotations(spec, git.as_ref(), &created, pin.as_ref())),
    };
    let manifest_bytes = oci::to_canonical_json(&manifest);
    let digest = store.put_blob(&manifest_bytes).map_err(store_at)?;
    let desc = Descriptor::new(oci::MEDIA_MANIFEST, digest.clone(), manifest_bytes.len() as u64);

    let mut tags = Vec::new();
    if let Some(g) = &git {
        tags.push(format!("{name}:{}", g.tag()));
    }
    if let Some(v) = &spec.version {
        tags.push(format!("{name}:{v}"));
    }
    // Check the tags that can conflict before spending a build number.
    store.check_tags(&tags, &desc, opts.force).map_err(store_at)?;
    let n = store.next_build_number(name).map_err(store_at)?;
    tags.insert(0, format!("{name}:b{n}"));
    let tag_changes = store.set_tags(&tags, &desc, opts.force, opts.now).map_err(store_at)?;
    let size = manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>();
    // The pin is written once the image it made is in the store: a failed
    // bake leaves kiln.lock as it was.
    if let (Some(p), Some(l)) = (pin.as_ref().filter(|p| p.changed), lock.as_mut()) {
        l.set(lock::Pin {
            from: p.from.clone(),
            platform: lock::platform(),
            digest: p.digest.clone(),
            index: p.index.clone(),
        });
        l.save().map_err(|e| BakeError::Step { at: at(spec.line, "from"), message: e.to_string() })?;
    }
    Ok(BakeReport { image: name.to_owned(), digest, size, tags, tag_changes, steps: reports, base: pin })
}

/// What choosing a base reads.
struct BaseInputs<'a> {
    store: &'a Store,
    file: &'a SpecFile,
    spec: &'a ImageSpec,
    opts: &'a BakeOptions,
    lock: Option<&'a lock::Lock>,
}

fn base_chain(
    inputs: &BaseInputs<'_>,
    created: &str,
    progress: &mut dyn Progress,
) -> Result<(Chain, Outcome, Option<base::BasePin>), String> {
    let BaseInputs { store, file, spec, opts, lock } = *inputs;
    let dir = file.dir();
    let root = Hasher::new().finish();
    let empty = |key| Chain {
        key,
        layers: Vec::new(),
        diff_ids: Vec::new(),
        history: Vec::new(),
        base_config: RunConfig::default(),
        architecture: oci::host_architecture().to_owned(),
        base_created: None,
    };
    match &spec.from {
        BaseRef::Scratch => Ok((empty(key(&root, "scratch", &[])), Outcome::Cached, None)),
        BaseRef::Rootfs { path } => {
            let p = dir.join(path);
            let file_digest = base::file_digest(&p).map_err(|e| format!("rootfs tarball {}: {e}", p.display()))?;
            // v2: names normalised and /dev nodes left out at ingestion.
            let k = key(&root, "rootfs-v2", &[file_digest.as_str().as_bytes()]);
            let mut chain = empty(root);
            let (l, outcome) = match lookup(store, &k, opts, progress) {
                Some(l) => (l, Outcome::Cached),
                None => {
                    let (layer, dropped) = base::import_rootfs(store, &p)?;
                    if dropped > 0 {
                        progress.step_output(&format!(
                            "note: {dropped} device node(s), fifo(s) or socket(s) under /dev left out of {path}: the runtime provides /dev"
                        ));
                    }
                    let l = cached(&layer);
                    store.cache_put(&k, &l).map_err(|e| e.to_string())?;
                    (l, Outcome::Built)
                }
            };
            chain.push(k, &l, format!("kiln from rootfs:{path}"), created);
            Ok((chain, outcome, None))
        }
        BaseRef::Oci { path, reference } => {
            let b = base::import_oci(store, &dir.join(path), reference.as_ref())?;
            let mut chain = empty(key(&root, "oci", &[b.manifest_digest.as_str().as_bytes()]));
            chain.layers = b.layers;
            chain.diff_ids = b.config.rootfs.diff_ids;
            chain.history = b.config.history;
            chain.base_config = b.config.config;
            chain.architecture = b.config.architecture;
            chain.base_created = b.config.created;
            Ok((chain, Outcome::Cached, None))
        }
        BaseRef::Registry(remote) => {
            let access = file.registries.get(&remote.host).cloned().unwrap_or_default();
            let lock = lock.ok_or("kiln.lock was not read")?;
            let (b, pin) = base::import_registry(store, remote, &access, lock, opts.update_base)?;
            if pin.pulled_blobs > 0 {
                progress.step_output(&format!(
                    "pulled {} blob(s), {} bytes, of {}@{}",
                    pin.pulled_blobs,
                    pin.pulled_bytes,
                    remote.repository(),
                    pin.digest
                ));
            }
            let mut chain = empty(key(&root, "oci", &[b.manifest_digest.as_str().as_bytes()]));
            chain.layers = b.layers;
            chain.diff_ids = b.config.rootfs.diff_ids;
            chain.history = b.config.history;
            chain.base_config = b.config.config;
            chain.architecture = b.config.architecture;
            chain.base_created = b.config.created;
            let outcome = if pin.pulled_blobs > 0 { Outcome::Built } else { Outcome::Cached };
            Ok((chain, outcome, Some(pin)))
        }
    }
}

/// Runs one step, timing it and reporting it.
fn run_step(
    index: usize,
    total: usize,
    description: String,
    progress: &mut dyn Progress,
    reports: &mut Vec<StepReport>,
    f: &mut dyn FnMut(&mut dyn Progress) -> Result<Outcome, BakeError>,
) -> Result<(), BakeError> {
    progress.step_started(index, total, &description);
    let t = Instant::now();
    let outcome = f(progress)?;
    let r = StepReport { description, outcome, millis: t.elapsed().as_millis() as u64 };
    progress.step_finished(&r);
    reports.push(r);
    Ok(())
}

/// A copy step whose entries and key are known.
struct PlannedCopy {
    description: String,
    at: String,
    entries: Vec<layer::Entry>,
    key: Digest,
    hit: Option<CachedLayer>,
    planning: Duration,
}

type Built = Result<(CachedLayer, Duration), BakeError>;

/// Compresses every planned copy that missed the cache, on as many threads
/// as there are cores, biggest first.
fn compress_misses(store: &Store, planned: &[PlannedCopy]) -> Vec<Option<Built>> {
    let bytes = |p: &PlannedCopy| -> u64 {
        p.entries.iter().map(|e| if let layer::Kind::File { size, .. } = e.kind { size } else { 0 }).sum()
    };
    let mut misses: Vec<usize> = (0..planned.len()).filter(|&i| planned[i].hit.is_none()).collect();
    misses.sort_by_key(|&i| std::cmp::Reverse(bytes(&planned[i])));
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(misses.len());
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Built>>> = planned.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while let Some(&i) = misses.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let r = build_layer(store, &planned[i]);
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(r);
                    }
                }
            });
        }
    });
    results.into_iter().map(|m| m.into_inner().ok().flatten()).collect()
}

fn build_layer(store: &Store, p: &PlannedCopy) -> Built {
    let t = Instant::now();
    let store_at = |source| BakeError::Store { at: p.at.clone(), source };
    let w = store.blob_writer().map_err(store_at)?;
    let (w, d) = layer::write_gzip_layer(&p.entries, w).map_err(|source| BakeError::Io { at: p.at.clone(), source })?;
    w.commit().map_err(store_at)?;
    let l = cached(&d);
    store.cache_put(&p.key, &l).map_err(store_at)?;
    Ok((l, t.elapsed()))
}

/// A usable cached layer for `key`, if any. A corrupted cached blob is
/// reported and treated as a miss, so the step rebuilds (and rewrites) it.
fn lookup(store: &Store, key: &Digest, opts: &BakeOptions, progress: &mut dyn Progress) -> Option<CachedLayer> {
    if opts.no_cache {
        return None;
    }
    match store.cache_get(key) {
        Ok(hit) => hit,
        Err(e) => {
            progress.step_output(&format!("warning: {e}; rebuilding it"));
            None
        }
    }
}

/// Unpacks the chain so far into a fresh bundle for `run` steps.
fn unpack_chain(store: &Store, chain: &Chain, at: &str) -> Result<Workspace, BakeError> {
    let ws = Workspace { bundle: store.tmp_path("bundle") };
    let rootfs = ws.rootfs();
    let io_at = |source| BakeError::Io { at: at.to_owned(), source };
    let mut u = Unpacker::new(&rootfs).map_err(io_at)?;
    for (i, l) in chain.layers.iter().enumerate() {
        let mut reader = store.open_layer(l).map_err(|source| BakeError::Store { at: at.to_owned(), source })?;
        u.apply_layer(i, &mut reader).map_err(|source| BakeError::Unpack { at: at.to_owned(), source })?;
        // Read to the end so the verifying reader checks the digest.
        io::copy(&mut reader, &mut io::sink()).map_err(io_at)?;
    }
    u.finish().map_err(io_at)?;
    Ok(ws)
}

/// The image's environment: the base's, with the spec's values replacing
/// or adding to it.
fn merged_env(base: &RunConfig, spec: &ImageSpec) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for e in base.env.iter().flatten() {
        let k = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        match spec.env.get(k) {
            Some(v) => out.push(format!("{k}={v}")),
            None => out.push(e.clone()),
        }
        seen.insert(k.to_owned());
    }
    out.extend(spec.env.iter().filter(|(k, _)| !seen.contains(*k)).map(|(k, v)| format!("{k}={v}")));
    out
}

fn image_config(chain: &Chain, spec: &ImageSpec, created: &str) -> ImageConfig {
    let b = &chain.base_config;
    let env = merged_env(b, spec);
    let mut ports = b.exposed_ports.clone().unwrap_or_default();
    ports.extend(spec.expose.iter().map(|p| (p.clone(), oci::Empty {})));
    let mut labels = b.labels.clone().unwrap_or_default();
    labels.extend(spec.labels.clone());
    // As with Docker, a new entrypoint drops an inherited cmd.
    let cmd = match (&spec.entrypoint, &spec.cmd) {
        (_, Some(c)) => Some(c.clone()),
        (Some(_), None) => None,
        (None, None) => b.cmd.clone(),
    };
    ImageConfig {
        created: Some(created.to_owned()),
        architecture: chain.architecture.clone(),
        os: "linux".into(),
        config: RunConfig {
            user: spec.user.clone().or_else(|| b.user.clone()),
            exposed_ports: (!ports.is_empty()).then_some(ports),
            env: (!env.is_empty()).then_some(env),
            entrypoint: spec.entrypoint.clone().or_else(|| b.entrypoint.clone()),
            cmd,
            working_dir: spec.workdir.clone().or_else(|| b.working_dir.clone()),
            labels: (!labels.is_empty()).then_some(labels),
            stop_signal: spec.stop_signal.clone().or_else(|| b.stop_signal.clone()),
        },
        rootfs: RootFs { kind: "layers".into(), diff_ids: chain.diff_ids.clone() },
        history: chain.history.clone(),
    }
}

fn annotations(
    spec: &ImageSpec,
    git: Option<&GitInfo>,
    created: &str,
    base: Option<&base::BasePin>,
) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    if let Some(b) = base {
        // As the OCI annotations say where an image came from: what a
        // scanner or `kiln bases outdated` follows back to the registry.
        a.insert(oci::ANNOTATION_BASE_NAME.to_owned(), b.from.clone());
        a.insert(oci::ANNOTATION_BASE_DIGEST.to_owned(), b.digest.to_string());
    }
    a.insert(oci::ANNOTATION_CREATED.to_owned(), created.to_owned());
    a.insert(oci::ANNOTATION_TITLE.to_owned(), spec.name.clone());
    a.insert(
        oci::ANNOTATION_SPEC_HASH.to_owned(),
        Digest::of(&serde_json::to_vec(spec).unwrap_or_default()).to_string(),
    );
    a.insert(oci::ANNOTATION_COMPRESSOR.to_owned(), COMPRESSOR.to_owned());
    if let Some(g) = git {
        a.insert(oci::ANNOTATION_REVISION.to_owned(), g.revision.clone());
        if g.dirty {
            a.insert("dev.kiln.source.dirty".to_owned(), "true".to_owned());
        }
        if let Some(r) = &g.remote {
            a.insert(oci::ANNOTATION_SOURCE.to_owned(), r.clone());
        }
    }
    if let Some(v) = &spec.version {
        a.insert(oci::ANNOTATION_VERSION.to_owned(), v.clone());
    }
    a
}

#[cfg(test)]
mod tests;
