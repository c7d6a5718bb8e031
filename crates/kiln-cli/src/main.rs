//! The `kiln` binary: parses the command line into a [`kiln::command::Command`],
//! runs it, renders the output. `anyhow` lives here and nowhere else.

use std::io::IsTerminal;

use anyhow::{bail, Context as _};
use clap::{CommandFactory, Parser};

use kiln::bake::Progress;
use kiln::command::host::Host;
use kiln::command::remote::Job;
use kiln::command::{self, Command, Output};
use kiln::image::store::Store;
use kiln::runtime::driver::RuncDriver;
use kiln::runtime::logs::Retention;

mod cli;

use cli::convert::{self, Invocation, Then};
use kiln::serve::answer::Answer;

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
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
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
}

/// Runs the command line; its exit status.
fn run() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    let home = cli.home.unwrap_or_else(Store::default_home);
    match convert::invocation(cli.command)? {
        Invocation::Command { command, json, then } => {
            let host = open(&home)?;
            let output = execute(&home, &host, *command)?;
            finish(&home, &host, output, json, then)
        }
        Invocation::Deploy(d) => deploy(&home, d),
        Invocation::Serve { file, tcp, upgrade } => cli::release::serve(&home, &file, tcp, upgrade).map(|()| 0),
        Invocation::Dashboard(None) => {
            println!("{}", kiln::serve::dashboard_link(&home)?);
            Ok(0)
        }
        Invocation::Dashboard(Some(fleet_link)) => {
            println!("{fleet_link}");
            Ok(0)
        }
        Invocation::Chaos { options, json } => cli::heal::chaos(&home, &options, json).map(|()| 0),
        Invocation::Drill { service, window, json } => cli::heal::drill(&home, &service, window, json),
        Invocation::Completions(shell) => {
            clap_complete::generate(shell, &mut Cli::command(), "kiln", &mut std::io::stdout());
            Ok(0)
        }
        Invocation::FollowLogs { filter, json } => follow_logs(&home, &open(&home)?, filter, json).map(|()| 0),
        Invocation::FollowFleetLogs { filter, poll, json } => {
            let host = open(&home)?;
            let mut run = |f: kiln::runtime::logs::LogFilter| -> anyhow::Result<Output> {
                let job = Job { command: poll(f)?, source_date_epoch: None };
                carry_out(&home, &host, job, &mut PlainProgress { current: String::new() })
            };
            follow_fleet_logs(&mut run, filter, json).map(|()| 0)
        }
        Invocation::Shim { id } => {
            let store = Store::open(&home)?;
            let driver = RuncDriver::new(kiln::runtime::run_dir(&home).join("runc"));
            Ok(kiln::runtime::shim(&store, &driver, &id))
        }
    }
}

fn open(home: &std::path::Path) -> anyhow::Result<Host> {
    Host::open(home).with_context(|| format!("opening the store at {}", home.display()))
}

/// Carries one command out, showing progress on stderr.
fn execute(home: &std::path::Path, host: &Host, command: Command) -> anyhow::Result<Output> {
    let mut tty = TtyProgress { current: String::new() };
    let mut plain = PlainProgress { current: String::new() };
    let progress: &mut dyn Progress = if std::io::stderr().is_terminal() { &mut tty } else { &mut plain };
    let job = Job { command, source_date_epoch: source_date_epoch()? };
    carry_out(home, host, job, progress)
}

/// `kiln deploy` and `kiln up`: the bake (when the service runs an image of
/// its file), the deploy, and the release followed; the exit status.
fn deploy(home: &std::path::Path, d: convert::Deploy) -> anyhow::Result<i32> {
    let host = open(home)?;
    let mut image = d.image;
    if let Some((file, own)) = d.bake {
        let baked = execute(
            home,
            &host,
            Command::Bake { file, image: Some(own), no_cache: false, force: false, update_base: false },
        )?;
        let Output::Baked(reports) = baked else { bail!("the bake produced no image") };
        image = Some(reports.first().map(|r| r.digest.to_string()).context("the bake produced no image")?);
    }
    // `kiln up` starts its controller once the image is baked.
    if let Some(up) = &d.up {
        cli::release::serve_in_background(home, &up.file)?;
    }
    let req =
        kiln::serve::api::Request::Deploy { service: d.service.clone(), image, file: d.file, actor: cli::actor() };
    let Output::Controller { answer, .. } = execute(home, &host, Command::Controller(req))? else {
        bail!("kiln serve gave no answer to the deploy")
    };
    let Answer::Release(started) = *answer else { bail!("kiln serve answered the deploy with another answer") };
    let code = cli::release::deployed(home, &d.service, started, d.wait, d.json)?;
    if let Some(up) = d.up {
        if let Some(l) = up.listen {
            println!("serving http://{l}/ (Ctrl-C stops kiln serve; the load balancer and instances keep running)");
        }
        loop {
            std::thread::park();
        }
    }
    Ok(code)
}

/// Renders a command's output and does what follows it; the exit status.
fn finish(home: &std::path::Path, host: &Host, output: Output, json: bool, then: Then) -> anyhow::Result<i32> {
    let now = kiln::time::now_secs();
    if let Output::Pipeline(r) = &output {
        if json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            cli::verify::render(&output);
        }
        return match (r.passed, then, &r.digest) {
            (true, Then::DeployPassed, Some(d)) => {
                let d = convert::Deploy {
                    service: r.service.clone(),
                    image: Some(d.to_string()),
                    bake: None,
                    file: None,
                    wait: true,
                    json,
                    up: None,
                };
                deploy(home, d)
            }
            _ => Ok(r.exit_code),
        };
    }
    if let Output::Controller { request, answer } = &output {
        return cli::release::after_answer(home, request, answer, json, &then);
    }
    if json {
        if let Output::Logs(lines) = &output {
            for l in lines {
                print_log(l, true);
            }
        } else {
            println!("{}", output.payload_json());
        }
    } else {
        render(&output, now);
    }
    if let (Then::WriteSbom { path, cyclonedx }, Output::Sbom(r)) = (&then, &output) {
        cli::verify::write_sbom(host.store(), r, path, *cyclonedx)?;
    }
    if let (Then::ExitIfDrillFailed, Output::FleetDrill(r)) = (&then, &output) {
        if !r.passed() {
            return Ok(2);
        }
    }
    if let (Then::ExitIfDrifted, Output::FleetVerified(hosts)) = (&then, &output) {
        if hosts.iter().any(|(_, v)| v.as_ref().is_some_and(|v| !v.drifted.is_empty())) {
            return Ok(5);
        }
    }
    // A failed gate is a result (rendered), with its own exit status.
    Ok(cli::verify::gate_exit_code(&output).unwrap_or(0))
}
