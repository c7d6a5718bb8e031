//! `kiln release`: the whole pipeline in one command, callable from any
//! CI: bake → test → scan → secret scan → SBOM → sign → promote. (The
//! deploy that follows is an API call to `kiln serve`, made by the front
//! end with the digest this reports.) Each step is the same function its
//! own command runs; a failing gate stops the pipeline and its exit code
//! says which.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::{no_such_service, CommandError, Context};
use crate::bake::{self, BakeOptions};
use crate::digest::Digest;
use crate::spec;
use crate::verify::{self, promote, sign};

/// Exit codes, shared with the single commands.
pub const EXIT_TEST: i32 = 6;
pub const EXIT_REFUSED: i32 = 7;
pub const EXIT_SECRETS: i32 = 8;
pub const EXIT_VULNS: i32 = 9;

/// What `kiln release` is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRun {
    pub file: PathBuf,
    /// Default: the file's only service.
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub db: Option<PathBuf>,
    #[serde(default)]
    pub force_db: bool,
    /// Promote through the channels up to this one (default: the
    /// service's `channel`; none when it has none).
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default = "super::api_actor")]
    pub actor: String,
}

/// One step's outcome.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Step {
    pub name: String,
    pub passed: bool,
    pub ms: u64,
    pub summary: String,
    /// The step's own report (what its single command prints with --json).
    pub detail: serde_json::Value,
}

/// The pipeline's report.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PipelineReport {
    pub service: String,
    pub image: String,
    pub digest: Option<Digest>,
    pub steps: Vec<Step>,
    pub channels: Vec<String>,
    pub passed: bool,
    /// 0 when every step passed; else the failing gate's code.
    pub exit_code: i32,
    pub duration_ms: u64,
}

fn step(name: &str, started: Instant, passed: bool, summary: String, detail: impl Serialize) -> Step {
    Step {
        name: name.to_owned(),
        passed,
        ms: started.elapsed().as_millis() as u64,
        summary,
        detail: serde_json::to_value(detail).unwrap_or_default(),
    }
}

/// Runs the pipeline. Errors (a bad kiln.toml, a store failure) are
/// errors; a gate that fails is a report with its exit code.
pub fn release(run: ReleaseRun, ctx: &mut Context<'_>) -> Result<PipelineReport, CommandError> {
    let began = Instant::now();
    let f = spec::load(&run.file)?;
    let service = match run.service {
        Some(s) => f.services.get(&s).ok_or_else(|| no_such_service(&f, &s))?,
        None if f.services.len() == 1 => f.services.values().next().expect("one"),
        None => {
            return Err(spec::SpecError {
                file: f.path.clone(),
                line: None,
                key: "service".into(),
                message: "name the service to release (the file has several, or none)".into(),
            }
            .into())
        }
    };
    let image = service.image.clone();
    let mut report = PipelineReport {
        service: service.name.clone(),
        image: image.clone(),
        digest: None,
        steps: Vec::new(),
        channels: Vec::new(),
        passed: false,
        exit_code: 0,
        duration_ms: 0,
    };
    let finish = |mut r: PipelineReport, code: i32| {
        r.exit_code = code;
        r.passed = code == 0;
        r.duration_ms = began.elapsed().as_millis() as u64;
        Ok(r)
    };

    // Bake (a cache hit when nothing changed), unless the service runs an
    // image from elsewhere.
    let t = Instant::now();
    let reference = if f.images.contains_key(&image) {
        let opts = BakeOptions {
            no_cache: false,
            force: false,
            source_date_epoch: ctx.source_date_epoch,
            now: ctx.now,
            update_base: false,
        };
        let b = bake::bake(&ctx.store, &f, &image, &opts, &ctx.tools, ctx.progress)?;
        report.steps.push(step("bake", t, true, format!("{} tagged {}", b.digest, b.tags.join(", ")), &b));
        b.digest.to_string()
    } else {
        image.clone()
    };
    let (desc, _) = ctx.store.resolve(&reference)?;
    report.digest = Some(desc.digest.clone());
    let digest = desc.digest.to_string();

    let t = Instant::now();
    let r = verify::gate::test(&ctx.store, ctx.driver, ctx.launcher, &f, &digest, ctx.now)?;
    let summary = format!("{} checks, {} commands in {} ms", r.checks.len(), r.commands.len(), r.duration_ms);
    report.steps.push(step("test", t, r.passed, summary, &r));
    if !r.passed {
        return finish(report, EXIT_TEST);
    }

    let t = Instant::now();
    let db = run.db.or_else(|| verify::osvdb::current(ctx.store.home())).ok_or(verify::vulns::VulnError::NoDatabase)?;
    let v = verify::vulns::gate(&ctx.store, Some(&f), &digest, &db, run.force_db, ctx.now)?;
    let summary = format!("{} packages, {} findings, {} failing", v.packages, v.findings.len(), v.failing);
    report.steps.push(step("scan", t, v.passed, summary, &v));
    if !v.passed {
        return finish(report, EXIT_VULNS);
    }

    let t = Instant::now();
    let l = verify::leaks::gate(&ctx.store, Some(&f), &digest, ctx.now)?;
    let summary = format!("{} files, {} findings", l.report.files, l.report.findings.len());
    report.steps.push(step("secrets", t, l.passed, summary, &l));
    if !l.passed {
        return finish(report, EXIT_SECRETS);
    }

    let t = Instant::now();
    let s = verify::sbom::generate(&ctx.store, &digest, ctx.now)?;
    report.steps.push(step(
        "sbom",
        t,
        true,
        format!("{} packages; spdx {}, cyclonedx {}", s.packages, s.spdx, s.cyclonedx),
        &s,
    ));

    // Sign the image and every record about it (as `kiln sign` does).
    let t = Instant::now();
    let key = &f.promotion.key;
    let mut signed = vec![sign::sign(&ctx.store, key, &digest, Default::default(), ctx.now)?];
    for record in verify::record_artifacts(&ctx.store, &desc.digest)? {
        signed.push(sign::sign(&ctx.store, key, record.as_str(), Default::default(), ctx.now)?);
    }
    report.steps.push(step("sign", t, true, format!("{} signatures with key {key}", signed.len()), &signed));

    let target = run.to.or_else(|| service.channel.as_ref().map(|c| c.channel.clone()));
    if let Some(target) = target {
        let t = Instant::now();
        let upto = f.promotion.channels.iter().position(|c| *c == target).ok_or_else(|| {
            promote::PromoteError::UnknownChannel { channel: target.clone(), channels: f.promotion.channels.clone() }
        })?;
        let mut done = Vec::new();
        for channel in &f.promotion.channels[..=upto] {
            match promote::promote(&ctx.store, &f.promotion, &digest, channel, &run.actor, ctx.now) {
                Ok(p) => {
                    report.channels = p.channels.clone();
                    done.push(p);
                }
                Err(e) if e.is_refusal() => {
                    report.steps.push(step("promote", t, false, e.to_string(), &done));
                    return finish(report, EXIT_REFUSED);
                }
                Err(e) => return Err(e.into()),
            }
        }
        report.steps.push(step("promote", t, true, format!("promoted to {}", report.channels.join(", ")), &done));
    }
    finish(report, 0)
}
