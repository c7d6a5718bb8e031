//! The release commands' front end: `kiln serve`, `deploy`, `status`,
//! `rollback`, `promote`, `abort`, and how plans and history are printed.
//! It converts arguments into `serve::api::Request`s and renders answers;
//! the controller behind the socket does the work.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use kiln::serve::answer::{self, Answer, Released, ServiceStatus};
use kiln::serve::{self, api::Request};

/// Exit status of a deploy whose release failed, was rolled back, aborted
/// or superseded.
pub const EXIT_RELEASE_FAILED: i32 = 2;
/// Exit status of a deploy that paused for a person (`kiln promote`).
pub const EXIT_PAUSED: i32 = 4;

/// The service a command means: the one named, or the only one with a
/// `listen` address in the file.
pub fn pick_service(file: &Path, service: Option<String>) -> anyhow::Result<String> {
    if let Some(s) = service {
        return Ok(s);
    }
    let f = kiln::spec::load(file)?;
    let listed: Vec<&String> = f.services.iter().filter(|(_, s)| s.release.listen.is_some()).map(|(n, _)| n).collect();
    match listed.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("{}: no [service.NAME] with a listen address to release", file.display()),
        many => bail!(
            "{}: several services ({}); name one",
            file.display(),
            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

pub fn serve(home: &Path, file: &Path, tcp: Option<std::net::SocketAddr>, upgrade: bool) -> anyhow::Result<()> {
    let store = kiln::image::store::Store::open(home)?;
    let driver = kiln::runtime::driver::RuncDriver::new(kiln::runtime::run_dir(home).join("runc"));
    let file = std::fs::canonicalize(file).with_context(|| format!("{}", file.display()))?;
    // Everything else the CLI can do, carried out for the API's clients.
    let commands =
        std::sync::Arc::new(kiln::command::remote::Runner { home: home.to_owned(), retention: crate::retention()? });
    let options = serve::Options { tcp, upgrade, commands };
    serve::run(home, &file, &store, &driver, &kiln::runtime::ShimLauncher, options)?;
    Ok(())
}

/// Starts the controller on a thread of this process, unless a `kiln
/// serve` already answers on `home`; returns once it answers.
pub fn serve_in_background(home: &Path, file: &Path) -> anyhow::Result<()> {
    if serve::call(home, &Request::Status { service: None }).is_ok() {
        return Ok(());
    }
    let (h, f) = (home.to_owned(), file.to_owned());
    std::thread::spawn(move || {
        if let Err(e) = serve(&h, &f, None, false) {
            eprintln!("kiln: {e:#}");
            std::process::exit(1);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while serve::call(home, &Request::Status { service: None }).is_err() {
        if std::time::Instant::now() > deadline {
            bail!("kiln serve did not start on {}", home.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The status of one service.
pub fn service_status(home: &Path, service: &str) -> anyhow::Result<ServiceStatus> {
    let st: answer::Status = serve::ask(home, &Request::Status { service: Some(service.to_owned()) })?;
    st.services.into_iter().next().with_context(|| format!("kiln serve has no service {service}"))
}

/// Whether exactly `to` instances of `release` serve, healthy, none leaving.
fn scaled(home: &Path, service: &str, release: &str, to: u32) -> anyhow::Result<bool> {
    let s = service_status(home, service)?;
    let serving: Vec<_> = s.instances.iter().filter(|i| i.release == release && !i.leaving).collect();
    Ok(serving.len() == to as usize && serving.iter().all(|i| i.health.healthy))
}

pub(crate) fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string(v).expect("answers serialize"));
}

/// What follows the controller's answer to a request `kiln` sent: it
/// rendered (or printed as JSON), a cold rollback followed, a service going
/// down waited for, drift turned into exit status 5.
pub(crate) fn after_answer(
    home: &Path,
    req: &Request,
    answer: &Answer,
    json: bool,
    then: &crate::cli::convert::Then,
) -> anyhow::Result<i32> {
    use crate::cli::convert::Then;
    match (then, answer) {
        (Then::WaitDown { wait, purge }, Answer::Down(d)) => return down(home, d, *purge, *wait, json),
        (Then::FollowRollback, Answer::Release(r)) => {
            if json {
                print_json(answer);
            } else {
                render_answer(req, answer);
            }
            if let (false, Some(release)) = (r.instant, &r.release) {
                return follow(home, &r.service, release, json);
            }
            return Ok(0);
        }
        _ => {}
    }
    if json {
        print_json(answer);
    } else {
        render_answer(req, answer);
    }
    Ok(match (then, answer) {
        (Then::ExitIfDrifted, Answer::VerifyInstances(d)) if d.instances.iter().any(|i| !i.drift.is_empty()) => 5,
        _ => 0,
    })
}

/// `kiln down`: kiln serve took `service` down (or had); with `wait`,
/// followed until its instances and load balancer are gone.
fn down(home: &Path, asked: &answer::WentDown, purge: bool, wait: bool, json: bool) -> anyhow::Result<i32> {
    let service = &asked.service;
    if !json {
        match asked.already {
            true => println!("{service}: already taken down"),
            false => println!("{service}: going down (instances drain, then go; then its load balancer)"),
        }
    }
    let mut st = Answer::Down(asked.clone());
    if wait {
        loop {
            let status: answer::Status = serve::ask(home, &Request::Status { service: Some(service.clone()) })?;
            let down = status.services.first().and_then(|s| s.down.as_ref());
            let Some(down) = down else {
                anyhow::bail!("{service} was deployed again while it was going down");
            };
            if down.done {
                st = Answer::Status(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    if json {
        print_json(&st);
    } else if wait {
        let purged = if purge { "; its volumes were removed" } else { "" };
        println!("{service}: down: no instance left, load balancer stopped{purged}; history and archive kept");
    }
    Ok(0)
}

/// `kiln deploy`: kiln serve began the release (`started`); with `wait` it
/// is followed until it ends (or pauses), each change printed. Returns the
/// exit status.
pub fn deployed(home: &Path, service: &str, started: Released, wait: bool, json: bool) -> anyhow::Result<i32> {
    if started.noop {
        if json {
            print_json(&started);
        } else {
            println!("{service}: {} already runs that image; nothing to do", started.release.as_deref().unwrap_or("?"));
        }
        return Ok(0);
    }
    let release = started.release.clone().unwrap_or_default();
    if let Some(answer::Scaled { from, to }) = started.scaled {
        if !json {
            println!("{service}: {release} scales from {from} to {to} instance(s)");
        }
        // Followed until that many of its instances serve (none leaving).
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while wait && !scaled(home, service, &release, to)? {
            if std::time::Instant::now() > deadline {
                anyhow::bail!("{service}: {release} did not reach {to} healthy instance(s) within 120 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if json {
            print_json(&started);
        } else if wait {
            println!("{service}: {release} runs {to} instance(s)");
        }
        return Ok(0);
    }
    if !json {
        println!("{service}: release {release} started");
        if let Some(p) = &started.plan {
            render_plan(p);
        }
    }
    if !wait {
        if json {
            print_json(&started);
        }
        return Ok(0);
    }
    follow(home, service, &release, json)
}

/// Follows `release` of `service` to its end, printing each step (or, with
/// `json`, the final status): exit 0 succeeded, 2 failed, rolled back,
/// aborted or superseded, 4 paused for a person. Deploys and cold
/// rollbacks end the same way.
fn follow(home: &Path, service: &str, release: &str, json: bool) -> anyhow::Result<i32> {
    use kiln::release::plan::Step;
    let mut last_line = String::new();
    loop {
        let st: answer::Status = serve::ask(home, &Request::Status { service: Some(service.to_owned()) })?;
        let s = st.services.first().with_context(|| format!("kiln serve has no service {service}"))?;
        match &s.rollout {
            Some(r) if r.release == release => {
                // The step as it is meant: a shift names the share it moves
                // to, an analysis the share it judges (never the share before).
                let what = match &r.current {
                    Some(Step::Shift { new_percent }) => format!("shift to {new_percent}% new"),
                    Some(Step::Analyse { .. }) => format!("analyse at {}% new", r.new_percent),
                    Some(Step::Pause { .. }) => format!("pause at {}% new", r.new_percent),
                    Some(other) => other.name().replace('_', " "),
                    None => "-".into(),
                };
                let paused = r.paused.as_deref().map(|p| format!(" — {p}")).unwrap_or_default();
                let line = format!("  step {}/{}: {what}{paused}", r.step, r.steps);
                if line != last_line && !json && r.current.is_some() {
                    println!("{line}");
                    last_line = line;
                }
                if r.paused.is_some() {
                    if json {
                        print_json(&st);
                    }
                    return Ok(EXIT_PAUSED);
                }
            }
            _ => {
                if json {
                    print_json(&st);
                }
                return Ok(match &s.last {
                    Some(last) if last.release == release => {
                        let outcome = last.outcome.name();
                        if !json {
                            println!("{service}: release {release} {outcome}: {}", last.reason);
                        }
                        if last.outcome == kiln::serve::history::Outcome::Succeeded {
                            0
                        } else {
                            EXIT_RELEASE_FAILED
                        }
                    }
                    _ => {
                        if !json {
                            println!("{service}: release {release} was superseded");
                        }
                        EXIT_RELEASE_FAILED
                    }
                });
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `kiln status`'s answer as text.
pub fn render_status(st: &answer::Status) {
    use kiln::release::plan::Step;
    for s in &st.services {
        let rel = |r: &kiln::serve::controller::ReleaseRef| format!("{} ({})", r.id, short(r.digest.as_str()));
        println!(
            "service {} on {} ({}, {} replicas): stable {}",
            s.service,
            s.listen.as_deref().unwrap_or(""),
            s.strategy,
            s.replicas,
            s.stable.as_ref().map_or("none".into(), rel)
        );
        if !s.hosts.is_empty() {
            println!("  hosts {}", s.hosts.join(", "));
        }
        if let Some(t) = &s.tls {
            match (&t.not_after, t.days_left) {
                (Some(at), Some(days)) => println!("  https with {} until {at} ({days} days left)", t.cert),
                _ => println!("  https with {} (cannot be read now: the load balancer keeps the pair it has)", t.cert),
            }
        }
        if let Some(p) = &s.previous {
            println!("  previous {} warm for {} s (instant rollback)", rel(&p.release), p.warm_for_ms / 1000);
        }
        if let Some(r) = &s.rollout {
            println!(
                "  rollout {} ({}): step {}/{} {}, canary {}%{}",
                r.release,
                r.image,
                r.step,
                r.steps,
                r.current.as_ref().map_or("", Step::name),
                r.new_percent,
                r.paused.as_deref().map(|p| format!(" — {p}")).unwrap_or_default()
            );
        }
        if let Some(l) = &s.last {
            println!("  last release {}: {} ({})", l.release, l.outcome.name(), l.reason);
        }
        let traffic: Vec<String> =
            s.traffic.iter().map(|t| format!("{}={}% ({} backends)", t.release, t.weight, t.backends.len())).collect();
        println!("  traffic: {}", if traffic.is_empty() { "none".into() } else { traffic.join(", ") });
        let h = &s.heal;
        if h.failing {
            println!(
                "  FAILING: crash loop, {} failures in a row; next start in {} ms",
                h.failures_in_a_row, h.next_start_in_ms
            );
        }
        for f in &h.last_failures {
            println!(
                "  failed {} at {} ({}){}",
                f.instance,
                kiln::time::rfc3339_millis(f.at_ms as i64),
                f.cause.name(),
                match &f.cause {
                    kiln::heal::Cause::Exited { code: Some(c), .. } => format!(" exit code {c}"),
                    kiln::heal::Cause::Exited { signal: Some(sig), .. } => format!(" signal {sig}"),
                    _ => String::new(),
                }
            );
            for l in &f.logs {
                println!("    | {l}");
            }
        }
        for p in &h.pending {
            println!(
                "  replacing {} ({}): {}",
                p.old,
                p.cause.name(),
                p.replacement.as_deref().map_or("waiting to start".into(), |r| format!("{r} starting"))
            );
        }
        println!(
            "  {:<22} {:<12} {:<14} {:<11} {:<9} {:>6} {:>8} {:>6}  TRAFFIC",
            "INSTANCE", "RELEASE", "DIGEST", "STATE", "HEALTH", "AGE", "RECYCLE", "PORT"
        );
        for i in &s.instances {
            let state = if i.quarantined {
                "quarantined"
            } else if i.draining {
                "draining"
            } else {
                i.state.as_str()
            };
            let health = match i.health {
                _ if i.leaving => "leaving".to_owned(),
                h if h.healthy => "healthy".to_owned(),
                h if h.fails > 0 => format!("failing {}", h.fails),
                _ => "starting".to_owned(),
            };
            println!(
                "  {:<22} {:<12} {:<14} {:<11} {:<9} {:>5}s {:>8} {:>6}  {}",
                i.id,
                i.release,
                short(&i.digest),
                state,
                health,
                i.age_s,
                i.recycle_in_s.map_or("-".into(), |r| format!("{r}s")),
                i.port,
                match (i.share_percent, i.release_weight) {
                    (Some(s), Some(w)) => format!("{s}% (release at {w}%)"),
                    _ => "not routed".into(),
                }
            );
        }
    }
}

fn short(d: &str) -> String {
    d.strip_prefix("sha256:").unwrap_or(d).chars().take(12).collect()
}

/// The controller's answer to a request `kiln` sent (rollback, promote,
/// abort, quarantine, release-quarantine, status), as text.
pub fn render_answer(req: &Request, a: &Answer) {
    match (req, a) {
        (Request::Rollback { service, .. }, Answer::Release(r)) => {
            let release = r.release.as_deref().unwrap_or("?");
            match (r.instant, &r.rollback) {
                (true, Some(id)) => println!("{service}: traffic is back on {release} (rollback release {id})"),
                (true, None) => println!("{service}: traffic is back on {release}"),
                (false, _) => println!("{service}: rolling back by release {release} (new instances first)"),
            }
        }
        (_, Answer::Promote(p)) => println!("{}: {} goes on", p.service, p.release),
        (_, Answer::Abort(p)) => println!("{}: {} aborted; traffic is on stable", p.service, p.release),
        (_, Answer::Quarantine(q)) => {
            println!("{}: out of traffic and frozen; a replacement starts. Kept in {}", q.instance, q.dir.display())
        }
        (_, Answer::ReleaseQuarantine(q)) => println!("{}: destroyed, with what was kept of it", q.instance),
        (_, Answer::Status(st)) => render_status(st),
        (_, Answer::Inspect(v)) => crate::cli::heal::render_inspect(v),
        (_, Answer::VerifyInstances(d)) => crate::cli::heal::render_drifts(d),
        (_, other) => print_json(other),
    }
}

pub fn render_plan(p: &kiln::release::plan::Plan) {
    use kiln::release::plan::Step;
    let from = match &p.from {
        Some(c) => format!("{} instance(s) of {}", c.instances, c.digest.short()),
        None => "nothing running".into(),
    };
    println!("service {}: {} → {} replica(s) of {} ({})", p.service, from, p.replicas, p.to.short(), p.strategy);
    for w in &p.warnings {
        println!("  WARNING: {w}");
    }
    if !p.changed.is_empty() {
        println!("  same image, new settings ({}): its instances are replaced", p.changed.join(", "));
    }
    if p.steps.is_empty() {
        println!("  nothing to do: already running");
    }
    let secs = |ms: u64| if ms.is_multiple_of(1000) { format!("{}s", ms / 1000) } else { format!("{ms}ms") };
    for (i, s) in p.steps.iter().enumerate() {
        let what = match s {
            Step::Start { count, start_deadline_ms } => {
                format!("start {count} new instance(s); wait until healthy (deadline {})", secs(*start_deadline_ms))
            }
            Step::Smoke { checks } => format!("run {checks} smoke check(s) through a private preview listener"),
            Step::Shift { new_percent } => format!("traffic: {new_percent}% new, {}% old", 100 - new_percent),
            Step::Analyse { window_ms } => format!("analyse canary against stable for {}", secs(*window_ms)),
            Step::Pause { for_ms: None } => "pause until `kiln promote`".into(),
            Step::Pause { for_ms: Some(ms) } => format!("pause for {}", secs(*ms)),
            Step::KeepWarm { for_ms } => {
                format!("keep the old instances warm for {} (instant rollback)", secs(*for_ms))
            }
            Step::StopOld { count, drain_timeout_ms } => {
                format!("drain (up to {}) and destroy {count} old instance(s)", secs(*drain_timeout_ms))
            }
            Step::StopSame { count, drain_timeout_ms } => {
                format!("drain (up to {}) and destroy {count} surplus instance(s)", secs(*drain_timeout_ms))
            }
        };
        println!("  {:>2}. {what}", i + 1);
    }
    let downtime =
        if p.downtime { "YES: no instance serves between stopping the old and starting the new" } else { "none" };
    println!("  capacity: at least {} serving, at most {} running; downtime: {downtime}", p.min_serving, p.max_running);
}

pub fn render_history(entries: &[kiln::serve::history::Entry], verified: Option<u64>) {
    use kiln::serve::history::Event;
    if entries.is_empty() {
        println!("no releases yet");
    }
    let mut last_release = "";
    for e in entries {
        let time = kiln::time::rfc3339_millis(e.at_ms);
        // A fleet-wide entry (a host's) names no service.
        let who = match (e.release == last_release, e.service.is_empty()) {
            (true, _) => String::new(),
            (false, true) => "fleet".to_owned(),
            (false, false) => format!("{} {}", e.service, e.release),
        };
        last_release = &e.release;
        let what = match &e.event {
            Event::Started { digest, tags, revision, strategy, actor, previous, changed } => format!(
                "started {strategy}: {digest} [{}]{} by {actor}{}{}",
                tags.join(", "),
                revision.as_deref().map(|r| format!(" git {r}")).unwrap_or_default(),
                previous.as_deref().map(|p| format!(", replacing {p}")).unwrap_or_default(),
                if changed.is_empty() { String::new() } else { format!("; settings: {}", changed.join(", ")) }
            ),
            Event::Step { index, weights } => {
                let w: Vec<String> = weights.iter().map(|(r, w)| format!("{r}={w}")).collect();
                format!("step {}: {}", index + 1, w.join(" "))
            }
            Event::Verdict { step, verdict, .. } => {
                let m: Vec<String> = verdict
                    .metrics
                    .iter()
                    .map(|m| {
                        let stable = m.stable.map_or("-".into(), |s| format!("{s:.4}"));
                        let p = m.p_value.map_or(String::new(), |p| format!(", p={p:.4}"));
                        let judged = if m.inconclusive {
                            "inconclusive"
                        } else if m.passed {
                            "pass"
                        } else {
                            "FAIL"
                        };
                        format!("{} {judged}: canary {:.4} stable {stable} limit {:.4}{p}", m.name, m.canary, m.limit)
                    })
                    .collect();
                format!(
                    "verdict at step {}: {} (n={} vs {}; {})",
                    step + 1,
                    verdict.outcome.name(),
                    verdict.canary_requests,
                    verdict.stable_requests,
                    m.join("; ")
                )
            }
            Event::Finished { outcome, reason, .. } => format!("finished {}: {reason}", outcome.name()),
            Event::Replacing { instance, cause, detail } => {
                format!("replacing {instance} ({}): {detail}", cause.name())
            }
            Event::Replaced { instance, replacement, took_ms } => {
                format!("replaced {instance} by {replacement}, serving after {took_ms} ms")
            }
            Event::CrashLoop { failures, backoff_ms } => {
                format!("crash loop: {failures} failures in a row; next start in {} ms", backoff_ms)
            }
            Event::Quarantined { instance, reason, actor } => format!("quarantined {instance} by {actor}: {reason}"),
            Event::Unquarantined { instance, actor } => format!("destroyed quarantined {instance} ({actor})"),
            Event::Failing { error, retry_ms } => format!("cannot reconcile: {error}; retrying in {retry_ms} ms"),
            Event::Scaled { from, to, actor } => format!("scaled from {from} to {to} instance(s) by {actor}"),
            Event::Down { actor, purge } => {
                format!("taken down by {actor}{}", if *purge { ", volumes purged" } else { "" })
            }
            Event::CertExpiring { cert, not_after, days_left } => {
                format!("certificate {cert} expires in {days_left} day(s), at {}", kiln::time::rfc3339(*not_after))
            }
            Event::CertObtained { hosts, not_after, directory } => {
                format!(
                    "certificate for {} obtained from {directory}, valid until {}",
                    hosts.join(", "),
                    kiln::time::rfc3339(*not_after)
                )
            }
            Event::Recovered { failed_ms, attempts } => {
                format!("reconciled again after {failed_ms} ms and {attempts} failed attempt(s)")
            }
            Event::Drain { host, on: true, actor } => format!("host {host} set draining by {actor}"),
            Event::Drain { host, on: false, actor } => format!("host {host} no longer draining ({actor})"),
            Event::HostLost { host, slots } => {
                format!("host {host} lost (its lease expired): {} moved to other hosts", slots.join(", "))
            }
        };
        println!("{:>4}  {time}  {who:<28}  {what}", e.seq);
    }
    if let Some(n) = verified {
        println!("hash chain verified: {n} entries");
    }
}
