//! `kiln test REF`: boots the image as a private instance, waits for it to
//! answer, runs its `[image.NAME.test]` checks and commands, and records
//! the result on the digest ([`super::attach`]).
//!
//! The instance runs with the service's env, secrets replaced by
//! placeholders (their names only), volumes of its own (service
//! `kiln-test`, so no controller adopts it and no real volume is touched),
//! and no load balancer routes to it. It is removed afterwards, whatever
//! happened. This module must never route traffic or read a secret value.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::digest::Digest;
use crate::image::store::{Store, StoreError};
use crate::oci::{self, Manifest};
use crate::runtime::driver::Driver;
use crate::runtime::{Launcher, RunError, RunRequest, Runtime};
use crate::spec::release::SmokeCheck;
use crate::spec::verify::TestSpec;
use crate::spec::{SpecError, SpecFile};

/// The service name of test instances.
pub const TEST_SERVICE: &str = "kiln-test";

/// Why a test could not run (a failing check is a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{}: image {image:?} has no [image.{image}.test] table: nothing to test", file.display())]
    NoTest { file: PathBuf, image: String },
    #[error("{reference}: the image names no [image.X] of {} (org.opencontainers.image.title {title:?})", file.display())]
    NotFromFile { file: PathBuf, reference: String, title: Option<String> },
}

/// One HTTP check's outcome.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CheckResult {
    /// `GET /healthz -> 200`.
    pub name: String,
    pub passed: bool,
    /// What was wrong; the response head when there was one.
    pub detail: Option<String>,
    pub response_head: Option<String>,
}

/// One host command's outcome.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CommandResult {
    pub command: String,
    pub passed: bool,
    pub exit_code: Option<i32>,
    /// Its last lines of output (stdout and stderr).
    pub output: String,
    pub ms: u64,
}

/// What `kiln test` found.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TestReport {
    pub reference: String,
    pub digest: Digest,
    pub image: String,
    pub service: Option<String>,
    pub instance: String,
    pub passed: bool,
    /// Why it failed before any check ran (boot, health, timeout).
    pub failure: Option<String>,
    /// From the start to the health path answering 200.
    pub ready_ms: Option<u64>,
    pub checks: Vec<CheckResult>,
    pub commands: Vec<CommandResult>,
    /// The first lines of the instance's logs, when something failed.
    pub logs: Vec<String>,
    pub duration_ms: u64,
    /// The verification record's artifact.
    pub record: Option<Digest>,
}

/// `method path -> status`, the name of a check.
fn check_name(c: &SmokeCheck) -> String {
    format!("{} {} -> {}", c.method, c.path, c.status)
}

fn run_check(addr: SocketAddr, c: &SmokeCheck, left: Duration) -> CheckResult {
    let mut r = CheckResult { name: check_name(c), passed: false, detail: None, response_head: None };
    let answer = TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(5))).and_then(|s| {
        s.set_read_timeout(Some(left.max(Duration::from_millis(100))))?;
        crate::net::http::exchange(s, &c.method, &c.path, b"")
    });
    let resp = match answer {
        Ok(resp) => resp,
        Err(e) => {
            r.detail = Some(format!("request {} {} to {addr}: {e}", c.method, c.path));
            return r;
        }
    };
    r.detail = c.judge(resp.status, &resp.body);
    r.passed = r.detail.is_none();
    if !r.passed {
        r.response_head = Some(resp.head);
    }
    r
}

fn run_command(cmd: &str, url: &str, instance: &str, left: Duration) -> CommandResult {
    let started = Instant::now();
    let mut r = CommandResult { command: cmd.to_owned(), passed: false, exit_code: None, output: String::new(), ms: 0 };
    let out_path = std::env::temp_dir().join(format!("kiln-test-{instance}-{}.out", std::process::id()));
    let spawned = std::fs::File::create(&out_path).and_then(|out| {
        let err = out.try_clone()?;
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .env("KILN_TEST_URL", url)
            .env("KILN_TEST_INSTANCE", instance)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
    });
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            r.output = format!("could not start sh: {e}");
            return r;
        }
    };
    let deadline = started + left;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                // Past the test's timeout: the command is ended (it is ours).
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let mut text = String::new();
    let _ = std::fs::File::open(&out_path).and_then(|mut f| f.read_to_string(&mut text));
    let _ = std::fs::remove_file(&out_path);
    let lines: Vec<&str> = text.lines().collect();
    r.output = lines[lines.len().saturating_sub(20)..].join("\n");
    r.exit_code = status.and_then(|s| s.code());
    r.passed = status.is_some_and(|s| s.success());
    if status.is_none() {
        r.output.push_str("\n(killed: the test's timeout ran out)");
    }
    r.ms = started.elapsed().as_millis() as u64;
    r
}

/// The `[image.X]` an image was baked from (its title annotation).
fn image_of<'f>(
    file: &'f SpecFile,
    store: &Store,
    reference: &str,
    digest: &Digest,
) -> Result<(&'f str, &'f TestSpec), TestError> {
    let m: Manifest = store.read_json(digest)?;
    let title = m.annotation(oci::ANNOTATION_TITLE).map(str::to_owned);
    let Some((name, spec)) = title.as_deref().and_then(|t| file.images.get_key_value(t)) else {
        return Err(TestError::NotFromFile { file: file.path.clone(), reference: reference.to_owned(), title });
    };
    let test = spec.test.as_ref().ok_or_else(|| TestError::NoTest { file: file.path.clone(), image: name.clone() })?;
    Ok((name.as_str(), test))
}

/// Runs the test gate of `reference` and records the result on its digest.
pub fn test(
    store: &Store,
    driver: &dyn Driver,
    launcher: &dyn Launcher,
    file: &SpecFile,
    reference: &str,
    now: i64,
) -> Result<TestReport, TestError> {
    let started = Instant::now();
    let (desc, _) = store.resolve(reference)?;
    let (image, spec) = image_of(file, store, reference, &desc.digest)?;
    let service = match &spec.service {
        Some(s) => Some(file.services.get(s).expect("checked by spec::parse")),
        None => {
            let mut users = file.services.values().filter(|s| s.image == image);
            users.next().filter(|_| users.next().is_none())
        }
    };
    let flags = RunRequest {
        reference: desc.digest.to_string(),
        service: Some(TEST_SERVICE.into()),
        placeholder_secrets: true,
        ..RunRequest::default()
    };
    let mut req = match service {
        Some(s) => RunRequest::for_service(s, flags),
        None => flags,
    };
    req.service = Some(TEST_SERVICE.into());
    let rt = Runtime::new(store, driver);
    let inst = rt.run(&req, launcher, now)?;
    let id = inst.id.to_string();
    let addr = SocketAddr::from(([127, 0, 0, 1], inst.port));
    let mut report = TestReport {
        reference: reference.to_owned(),
        digest: desc.digest.clone(),
        image: image.to_owned(),
        service: service.map(|s| s.name.clone()),
        instance: id.clone(),
        passed: false,
        failure: None,
        ready_ms: None,
        checks: Vec::new(),
        commands: Vec::new(),
        logs: Vec::new(),
        duration_ms: 0,
        record: None,
    };
    let deadline = started + Duration::from_millis(spec.timeout_ms);
    let left = || deadline.saturating_duration_since(Instant::now());
    let health = spec
        .health
        .clone()
        .or_else(|| service.and_then(|s| s.release.health.path.clone()))
        .unwrap_or_else(|| "/".into());
    let ready = SmokeCheck { method: "GET".into(), path: health, status: 200, contains: None, not_contains: None };
    loop {
        let mut r = rt.load(&inst.id)?;
        rt.observe(&mut r)?;
        if r.state.is_exited() {
            report.failure = Some(format!("the instance exited before it answered: {}", r.state.name()));
            break;
        }
        if run_check(addr, &ready, Duration::from_secs(1)).passed {
            report.ready_ms = Some(started.elapsed().as_millis() as u64);
            break;
        }
        if left().is_zero() {
            report.failure = Some(format!("{} never answered 200 within the test's timeout", check_name(&ready)));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if report.failure.is_none() {
        for c in &spec.checks {
            report.checks.push(run_check(addr, c, left()));
        }
        let url = format!("http://{addr}");
        for cmd in &spec.commands {
            report.commands.push(run_command(cmd, &url, &id, left()));
        }
        if left().is_zero() {
            report.failure = Some(format!("the test took longer than its timeout ({} ms)", spec.timeout_ms));
        }
    }
    report.passed =
        report.failure.is_none() && report.checks.iter().all(|c| c.passed) && report.commands.iter().all(|c| c.passed);
    if !report.passed {
        report.logs = rt.log_head(&inst.id, 20);
    }
    // The instance goes whatever happened; a stop that fails leaves a
    // record `kiln ps` shows, never a hidden process.
    let _ = rt.stop(&id, Some(Duration::from_secs(5)));
    let _ = rt.remove(&id, true);
    report.duration_ms = started.elapsed().as_millis() as u64;
    let record = super::Record {
        kind: "test".into(),
        subject: desc.digest.clone(),
        passed: report.passed,
        at: crate::time::rfc3339(now),
        duration_ms: report.duration_ms,
        kiln_version: env!("CARGO_PKG_VERSION").into(),
        detail: serde_json::to_value(&report).unwrap_or_default(),
    };
    report.record = Some(super::attach(store, image, &desc, &record, now)?);
    Ok(report)
}
