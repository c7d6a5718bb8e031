//! The `kiln` binary: parses the command line into a [`kiln::command::Command`],
//! runs it, renders the output. `anyhow` lives here and nowhere else.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{CommandFactory, Parser};

use kiln::bake::Progress;
use kiln::command::host::Host;
use kiln::command::remote::Job;
use kiln::command::{self, Command, Output};
use kiln::image::store::Store;
use kiln::runtime::driver::RuncDriver;
use kiln::runtime::logs::{LogFilter, Retention};
use kiln::runtime::RunRequest;

mod cli;

use cli::args::*;
use cli::render::*;

fn source_date_epoch() -> anyhow::Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => match v.trim().parse::<i64>() {
            Ok(n) if n >= 0 => Ok(Some(n)),
            _ => bail!("SOURCE_DATE_EPOCH={v:?}: expected a non-negative number of seconds since 1970"),
        },
        _ => Ok(None),
    }
}

fn now_ms() -> i64 {
    kiln::time::now_ms() as i64
}

/// Log retention from `KILN_LOG_MAX_BYTES` and `KILN_LOG_MAX_AGE` (a duration).
fn retention() -> anyhow::Result<Retention> {
    let mut r = Retention::default();
    if let Ok(v) = std::env::var("KILN_LOG_MAX_BYTES") {
        r.max_bytes = parse_size(&v).map_err(|e| anyhow::anyhow!("KILN_LOG_MAX_BYTES: {e}"))?;
    }
    if let Ok(v) = std::env::var("KILN_LOG_MAX_AGE") {
        r.max_age_secs = kiln::time::parse_duration(&v)
            .with_context(|| format!("KILN_LOG_MAX_AGE={v:?}: expected a duration like 7d"))?;
    }
    Ok(r)
}

/// The request with who asked (user@host), for the history.
fn with_actor(req: kiln::serve::api::Request) -> kiln::serve::api::Request {
    use kiln::serve::api::Request;
    let actor = cli::actor();
    match req {
        Request::Rollback { service, to, .. } => Request::Rollback { service, to, actor },
        Request::Promote { service, .. } => Request::Promote { service, actor },
        Request::Abort { service, .. } => Request::Abort { service, actor },
        other => other,
    }
}

/// Carries `job` out: with a `kiln serve` on this home, as a call to its
/// API (carried out there, beside the releases it may race with); without
/// one, here, the same way.
fn carry_out(home: &std::path::Path, host: &Host, job: Job, progress: &mut dyn Progress) -> anyhow::Result<Output> {
    if job.is_remote() {
        let sent = job.clone().absolute().context("making the command's paths absolute")?;
        if let Some(answer) = command::remote::send(home, &sent, progress) {
            return Ok(answer?);
        }
    }
    let now = kiln::time::now_secs();
    let mut ctx = host.context(progress, now, job.source_date_epoch, retention()?);
    Ok(command::execute(job.command, &mut ctx)?)
}

fn main() {
    // SAFETY: restores the default SIGPIPE action before any thread starts,
    // so `kiln status | head` ends quietly instead of panicking on EPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    if let Err(e) = run() {
        // Each cause once: many errors name their cause in their own text.
        let mut text = String::new();
        for c in e.chain() {
            let t = c.to_string();
            if !text.ends_with(&t) {
                if !text.is_empty() {
                    text.push_str(": ");
                }
                text.push_str(&t);
            }
        }
        eprintln!("kiln: {text}");
        std::process::exit(e.downcast_ref::<command::CommandError>().map_or(1, |c| c.exit_code()));
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A deploy whose image is an [image.X] of the file bakes it first (a
    // cache hit when nothing changed), then releases that digest.
    let mut deploy_after = None;
    // `kiln up`: after the deploy, stay in the foreground serving.
    let mut up_listen = None;
    // `kiln sbom --output FILE`: where the chosen document goes.
    let mut sbom_out = None;
    // `kiln release`: deploy the digest once the pipeline passed (json?).
    let mut release_deploy = None;
    let (cmd, json) = match cli.command {
        Cmd::Serve { file, tcp, upgrade } => {
            return crate::cli::release::serve(&crate::cli::release::default_home(cli.home), &file, tcp, upgrade)
        }
        Cmd::Dashboard => {
            println!("{}", kiln::serve::dashboard_link(&crate::cli::release::default_home(cli.home))?);
            return Ok(());
        }
        Cmd::Status { service, json } => (Command::Controller(kiln::serve::api::Request::Status { service }), json),
        Cmd::Rollback { service, to, file, json } => {
            let service = crate::cli::release::pick_service(&file, service)?;
            (
                Command::Controller(with_actor(kiln::serve::api::Request::Rollback {
                    service,
                    to,
                    actor: String::new(),
                })),
                json,
            )
        }
        Cmd::Promote { service, file, json } => {
            let service = crate::cli::release::pick_service(&file, service)?;
            (
                Command::Controller(with_actor(kiln::serve::api::Request::Promote { service, actor: String::new() })),
                json,
            )
        }
        Cmd::Abort { service, file, json } => {
            let service = crate::cli::release::pick_service(&file, service)?;
            (Command::Controller(with_actor(kiln::serve::api::Request::Abort { service, actor: String::new() })), json)
        }
        Cmd::Quarantine { instance, reason, json } => {
            (Command::Controller(kiln::serve::api::Request::Quarantine { instance, reason, actor: cli::actor() }), json)
        }
        Cmd::ReleaseQuarantine { instance, json } => {
            (Command::Controller(kiln::serve::api::Request::ReleaseQuarantine { instance, actor: cli::actor() }), json)
        }
        Cmd::InspectInstance { instance, json } => {
            return crate::cli::heal::inspect(&crate::cli::release::default_home(cli.home), instance, json)
        }
        Cmd::VerifyInstances { service, json } => {
            let drifted = crate::cli::heal::verify(&crate::cli::release::default_home(cli.home), service, json)?;
            std::process::exit(if drifted { 5 } else { 0 });
        }
        Cmd::Chaos { service, kill_rate, duration, max_share, kills, drill, window, file, json } => {
            let service = crate::cli::release::pick_service(&file, service)?;
            if let Some(DrillKind::Canary) = drill {
                let home = crate::cli::release::default_home(cli.home);
                std::process::exit(crate::cli::heal::drill(&home, &service, window, json)?);
            }
            if kill_rate.is_nan() || kill_rate <= 0.0 {
                bail!("--kill-rate {kill_rate}: must be more than 0 kills per second");
            }
            if !(max_share > 0.0 && max_share <= 1.0) {
                bail!("--max-share {max_share}: must be more than 0 and at most 1");
            }
            let actor = cli::actor();
            let o = crate::cli::chaos::Options { service, kill_rate, duration, max_share, max_kills: kills, actor };
            return crate::cli::heal::chaos(&crate::cli::release::default_home(cli.home), &o, json);
        }
        Cmd::Up { dir } => {
            let file = dir.join("kiln.toml");
            let service = crate::cli::release::pick_service(&file, None)?;
            let spec = kiln::spec::load(&file)?;
            let own = spec.services.get(&service).map(|s| s.image.clone()).filter(|i| spec.images.contains_key(i));
            let listen = spec.services.get(&service).and_then(|s| s.release.listen);
            deploy_after = Some((service, true, false, None));
            up_listen = Some((listen, file.clone()));
            match own {
                Some(own) => (Command::Bake { file, image: Some(own), no_cache: false, force: false }, false),
                None => (Command::Images {}, false),
            }
        }
        Cmd::Down { service, file, purge, no_wait, json } => {
            let service = crate::cli::release::pick_service(&file, service)?;
            let home = crate::cli::release::default_home(cli.home);
            std::process::exit(crate::cli::release::down(&home, service, purge, !no_wait, json)?);
        }
        Cmd::Deploy { service, image, file, no_wait, json } => {
            let service = crate::cli::release::pick_service(&file, service)?;
            let spec = kiln::spec::load(&file)?;
            // kiln serve releases the service as its own kiln.toml says; it
            // refuses a deploy that names another file (see README).
            let named = Some(std::path::absolute(&file).with_context(|| format!("{}", file.display()))?);
            let own = spec.services.get(&service).map(|s| s.image.clone()).filter(|i| spec.images.contains_key(i));
            match (image, own) {
                (Some(image), _) => {
                    let code = crate::cli::release::deploy(
                        &crate::cli::release::default_home(cli.home),
                        service,
                        Some(image),
                        named,
                        !no_wait,
                        json,
                    )?;
                    std::process::exit(code);
                }
                (None, Some(own)) => {
                    deploy_after = Some((service, !no_wait, json, named));
                    (Command::Bake { file, image: Some(own), no_cache: false, force: false }, false)
                }
                (None, None) => {
                    let home = crate::cli::release::default_home(cli.home);
                    let code = crate::cli::release::deploy(&home, service, None, named, !no_wait, json)?;
                    std::process::exit(code);
                }
            }
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "kiln", &mut std::io::stdout());
            return Ok(());
        }
        Cmd::Bake { image, file, no_cache, force, json } => (Command::Bake { file, image, no_cache, force }, json),
        Cmd::Images { json } => (Command::Images {}, json),
        Cmd::Inspect { reference, json } => (Command::Inspect { reference }, json),
        Cmd::Gc { dry_run, json } => (Command::Gc { dry_run }, json),
        Cmd::Key { action: KeyCmd::Generate { name, json } } => (Command::KeyGenerate { name }, json),
        Cmd::ScanSecrets { reference, file, json } => (Command::ScanSecrets { file, reference }, json),
        Cmd::Scan { reference, file, db, force, json } => {
            let db = db.or_else(|| std::env::var_os("KILN_OSV_DB").map(PathBuf::from));
            (Command::Scan { file, reference, db, force }, json)
        }
        Cmd::PromoteImage { reference, to, file, json } => {
            (Command::PromoteImage { file, reference, to, actor: cli::actor() }, json)
        }
        Cmd::Release { service, file, db, force_db, to, no_deploy, json } => {
            let db = db.or_else(|| std::env::var_os("KILN_OSV_DB").map(PathBuf::from));
            if !no_deploy {
                release_deploy = Some(json);
            }
            let run = command::pipeline::ReleaseRun { file, service, db, force_db, to, actor: cli::actor() };
            (Command::Release(run), json)
        }
        Cmd::Push { reference, remote, json } => (Command::Push { reference, remote }, json),
        Cmd::Pull { remote, name, json } => (Command::Pull { remote, name }, json),
        Cmd::Sbom { reference, format, output, json } => {
            sbom_out = output.map(|o| (o, format));
            (Command::Sbom { reference }, json)
        }
        Cmd::Sign { reference, key, json } => (Command::Sign { reference, key }, json),
        Cmd::Verify { reference, key, json } => (Command::VerifySignature { reference, key }, json),
        Cmd::Test { reference, file, json } => {
            let reference = match reference {
                Some(r) => r,
                None => {
                    let f = kiln::spec::load(&file)?;
                    let tested: Vec<&String> =
                        f.images.iter().filter(|(_, i)| i.test.is_some()).map(|(n, _)| n).collect();
                    match tested.as_slice() {
                        [one] => (*one).clone(),
                        [] => bail!("{}: no [image.X.test] table: nothing to test", file.display()),
                        many => bail!(
                            "{}: several images have tests ({}): name one",
                            file.display(),
                            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    }
                }
            };
            (Command::Test { file, reference }, json)
        }
        Cmd::Run {
            reference,
            service,
            file,
            name,
            env,
            volume,
            secret,
            memory,
            cpus,
            pids,
            stop_timeout,
            release,
            json,
        } => {
            let limits = kiln::runtime::bundle::Limits { memory_bytes: memory, cpus, pids };
            let service_file = service.is_some().then_some(file);
            let req = RunRequest {
                reference: reference.unwrap_or_default(),
                service: service.or(name),
                env,
                volumes: volume,
                secrets: secret,
                limits,
                stop_grace_secs: stop_timeout,
                release,
                placeholder_secrets: false,
                release_fields: Default::default(),
            };
            (Command::Run { request: req, service_file }, json)
        }
        Cmd::Ps { all, json } => (Command::Ps { all }, json),
        Cmd::Stop { instance, time } => (Command::Stop { instance, grace_secs: time }, false),
        Cmd::Rm { instance, force } => (Command::Rm { instance, force }, false),
        Cmd::Pause { instance } => (Command::Pause { instance }, false),
        Cmd::Resume { instance } => (Command::Resume { instance }, false),
        Cmd::Logs { service, release, instance, image, since, follow, json } => {
            let since = match since {
                None => None,
                Some(s) => Some(match kiln::time::parse_duration(&s) {
                    Some(d) => now_ms() - d * 1000,
                    None => kiln::time::parse_rfc3339(&s)
                        .map(|t| t * 1000)
                        .with_context(|| format!("--since {s:?}: expected a duration like 15m or an RFC 3339 time"))?,
                }),
            };
            let filter = LogFilter { service, release, instance, image, since };
            if follow {
                let home = cli.home.unwrap_or_else(Store::default_home);
                return follow_logs(&home, &Host::open(&home)?, filter, json);
            }
            (Command::Logs(filter), json)
        }
        Cmd::Volumes { json } => (Command::Volumes {}, json),
        Cmd::Plan { service, file, json } => (Command::Plan { file, service }, json),
        Cmd::History { service, verify, json } => (Command::History { service, verify }, json),
        Cmd::Secret { action: SecretCmd::Set { name } } => {
            let mut value = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut value)
                .context("reading the secret from standard input")?;
            if value.ends_with(b"\n") {
                value.pop();
            }
            (Command::SecretSet { name, value }, false)
        }
        Cmd::Secret { action: SecretCmd::Ls { json } } => (Command::SecretList {}, json),
        Cmd::Secret { action: SecretCmd::Rm { name } } => (Command::SecretRemove { name }, false),
        Cmd::Secret { action: SecretCmd::RotateKey { old_key_file } } => {
            (Command::RotateKey { store: kiln::command::KeyStore::Secrets, old_key_file }, false)
        }
        Cmd::Key { action: KeyCmd::Rotate { old_key_file } } => {
            (Command::RotateKey { store: kiln::command::KeyStore::SigningKeys, old_key_file }, false)
        }
        Cmd::Proxy {
            listen,
            admin,
            releases,
            releases_file,
            service,
            health_path,
            health_interval_ms,
            health_timeout_ms,
            healthy_threshold,
            unhealthy_threshold,
            sticky,
            release_header,
            retries,
            backend_timeout_ms,
            header_timeout_ms,
            workers,
            shutdown_grace_ms,
            handoff,
            take_over,
        } => {
            let health = health_path.map(|path| kiln::proxy::HealthCheck {
                path,
                interval: std::time::Duration::from_millis(health_interval_ms),
                timeout: std::time::Duration::from_millis(health_timeout_ms),
                healthy_threshold,
                unhealthy_threshold,
            });
            let config = kiln::proxy::ProxyConfig {
                service,
                sticky,
                release_header,
                retries,
                backend_timeout: std::time::Duration::from_millis(backend_timeout_ms),
                health,
                header_timeout: std::time::Duration::from_millis(header_timeout_ms),
                ..Default::default()
            };
            let shutdown_grace = std::time::Duration::from_millis(shutdown_grace_ms);
            let workers = usize::from(workers);
            let run = command::ProxyRun {
                listen,
                admin,
                releases,
                releases_file,
                shutdown_grace,
                config,
                workers,
                handoff,
                take_over,
            };
            (Command::Proxy(run), false)
        }
        Cmd::Shim { id } => {
            let home = cli.home.unwrap_or_else(Store::default_home);
            let store = Store::open(&home)?;
            let driver = RuncDriver::new(kiln::runtime::run_dir(&home).join("runc"));
            std::process::exit(kiln::runtime::shim(&store, &driver, &id));
        }
    };
    let home = cli.home.unwrap_or_else(Store::default_home);
    let host = Host::open(&home).with_context(|| format!("opening the store at {}", home.display()))?;
    let mut tty = TtyProgress { current: String::new() };
    let mut plain = PlainProgress { current: String::new() };
    let progress: &mut dyn Progress = if std::io::stderr().is_terminal() { &mut tty } else { &mut plain };
    let now = kiln::time::now_secs();
    let job = Job { command: cmd, source_date_epoch: source_date_epoch()? };
    let output = carry_out(&home, &host, job, progress)?;
    if let Some((service, wait, json, named)) = deploy_after {
        let digest = match &output {
            Output::Baked(reports) => {
                Some(reports.first().map(|r| r.digest.to_string()).context("the bake produced no image")?)
            }
            _ => None,
        };
        // `kiln up` starts its controller once the image is baked.
        if let Some((_, file)) = &up_listen {
            crate::cli::release::serve_in_background(&home, file)?;
        }
        let code = crate::cli::release::deploy(&home, service, digest, named, wait, json)?;
        if let Some((listen, _)) = up_listen {
            if let Some(l) = listen {
                println!("serving http://{l}/ (Ctrl-C stops kiln serve; the load balancer and instances keep running)");
            }
            loop {
                std::thread::park();
            }
        }
        std::process::exit(code);
    }
    if let (Some((path, format)), Output::Sbom(r)) = (&sbom_out, &output) {
        crate::cli::verify::write_sbom(host.store(), r, path, *format == SbomFormat::Cyclonedx)?;
    }
    if let Output::Pipeline(r) = &output {
        if json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            crate::cli::verify::render(&output);
        }
        match (r.passed, release_deploy, &r.digest) {
            (true, Some(json), Some(d)) => {
                let code =
                    crate::cli::release::deploy(&home, r.service.clone(), Some(d.to_string()), None, true, json)?;
                std::process::exit(code);
            }
            _ => std::process::exit(r.exit_code),
        }
    }
    if json {
        if let Output::Logs(lines) = &output {
            for l in lines {
                print_log(l, true);
            }
        } else if let Output::Controller { answer, .. } = &output {
            println!("{}", answer.to_json());
        } else {
            println!("{}", output.payload_json());
        }
    } else {
        render(&output, now);
    }
    // A cold rollback is a release: followed to its end like a deploy, with
    // the same exit codes.
    if let Output::Controller { request: kiln::serve::api::Request::Rollback { service, .. }, answer } = &output {
        if let kiln::serve::answer::Answer::Release(kiln::serve::answer::Released {
            instant: false,
            release: Some(release),
            ..
        }) = answer.as_ref()
        {
            std::process::exit(crate::cli::release::follow(&home, service, release, json)?);
        }
    }
    // A failed gate is a result (rendered), with its own exit status.
    if let Some(code) = crate::cli::verify::gate_exit_code(&output) {
        std::process::exit(code);
    }
    Ok(())
}
