//! What the CLI prints: bake progress, and each command's output as text
//! (or JSON lines for logs). Rendering only; nothing here acts, except
//! `follow_logs`, which asks for new log lines in a loop.

use kiln::bake::{Outcome, Progress, StepReport};
use kiln::command::host::Host;
use kiln::command::remote::Job;
use kiln::command::{Command, Output};
use kiln::runtime::logs::{LogFilter, LogLine};
use std::io::Write;
use std::path::Path;

use crate::cli::{release as cli_release, verify as cli_verify};

/// Step progress on a terminal: one line per step, rewritten in place.
pub(crate) struct TtyProgress {
    pub(crate) current: String,
}

impl Progress for TtyProgress {
    fn step_started(&mut self, index: usize, total: usize, description: &str) {
        self.current = format!("[{}/{total}] {description}", index + 1);
        eprint!("{} ...", self.current);
        let _ = std::io::stderr().flush();
    }
    fn step_output(&mut self, line: &str) {
        eprint!("\r\x1b[K    | {line}\n{} ...", self.current);
    }
    fn step_finished(&mut self, r: &StepReport) {
        eprintln!("\r\x1b[K{} {}", self.current, outcome(r));
    }
}

/// Step progress elsewhere: plain lines.
pub(crate) struct PlainProgress {
    pub(crate) current: String,
}

impl Progress for PlainProgress {
    fn step_started(&mut self, index: usize, total: usize, description: &str) {
        self.current = format!("[{}/{total}] {description}", index + 1);
    }
    fn step_output(&mut self, line: &str) {
        eprintln!("    | {line}");
    }
    fn step_finished(&mut self, r: &StepReport) {
        eprintln!("{} {}", self.current, outcome(r));
    }
}

pub(crate) fn outcome(r: &StepReport) -> String {
    match r.outcome {
        Outcome::Cached => format!("cached ({} ms)", r.millis),
        Outcome::Built => format!("built ({} ms)", r.millis),
    }
}

pub(crate) fn human_size(n: u64) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1024 * 1024 => format!("{:.1} KiB", n as f64 / 1024.0),
        n if n < 1024 * 1024 * 1024 => format!("{:.1} MiB", n as f64 / 1048576.0),
        n => format!("{:.1} GiB", n as f64 / 1073741824.0),
    }
}

pub(crate) fn print_log(l: &LogLine, json: bool) {
    if json {
        println!("{}", serde_json::to_string(l).unwrap_or_default());
    } else {
        let err = if l.stream == "stderr" { " !" } else { "" };
        println!("{} {}{err} {}", kiln::time::rfc3339_millis(l.ts), l.meta.instance, l.line);
    }
}

/// `kiln logs --follow`: prints what is there, then new lines as they come,
/// asking again every 250 ms (through `kiln serve` when it runs).
pub(crate) fn follow_logs(home: &Path, host: &Host, mut filter: LogFilter, json: bool) -> anyhow::Result<()> {
    let mut seen_at_last: Vec<LogLine> = Vec::new();
    let mut quiet = PlainProgress { current: String::new() };
    loop {
        let job = Job { command: Command::Logs(filter.clone()), source_date_epoch: None };
        let lines = match crate::carry_out(home, host, job, &mut quiet)? {
            Output::Logs(lines) => lines,
            _ => Vec::new(),
        };
        let last = lines.last().map(|l| l.ts);
        for l in &lines {
            if !seen_at_last.contains(l) {
                print_log(l, json);
            }
        }
        if let Some(ts) = last {
            // Lines at the newest timestamp may still be joined by others at
            // the same millisecond; remember them rather than skip the ms.
            seen_at_last = lines.into_iter().filter(|l| l.ts == ts).collect();
            filter.since = Some(ts);
        }
        let _ = std::io::stdout().flush();
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// `kiln logs --follow --cluster`: every host's new lines, polled each
/// second (`run` carries one poll out) until interrupted; a host that
/// cannot answer is named when that changes.
pub(crate) fn follow_fleet_logs(
    run: &mut dyn FnMut(LogFilter) -> anyhow::Result<Output>,
    mut filter: LogFilter,
    json: bool,
) -> anyhow::Result<()> {
    let mut follow = kiln::fleet::peer::Follow::new(filter.since);
    let mut missing_before: Vec<(String, String)> = Vec::new();
    loop {
        filter.since = follow.since();
        let logs = match run(filter.clone())? {
            Output::FleetLogs(logs) => logs,
            _ => anyhow::bail!("the fleet did not answer with logs"),
        };
        for l in follow.fresh(logs.lines) {
            if json {
                println!("{}", serde_json::to_string(&l)?);
            } else {
                let time = kiln::time::rfc3339_millis(l.line.ts);
                println!("{time} {} {} {}: {}", l.host, l.line.meta.instance, l.line.stream, l.line.line);
            }
        }
        let hosts = |m: &[(String, String)]| m.iter().map(|(h, _)| h.clone()).collect::<Vec<_>>();
        if hosts(&logs.missing) != hosts(&missing_before) {
            for (host, why) in &logs.missing {
                eprintln!("kiln: {host}: no logs: {why}");
            }
            missing_before = logs.missing;
        }
        let _ = std::io::stdout().flush();
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

pub(crate) fn render_image_config(config: &kiln::oci::ImageConfig, manifest: &kiln::oci::Manifest) {
    println!("platform: {}/{}", config.os, config.architecture);
    if let Some(c) = &config.created {
        println!("created:  {c}");
    }
    println!("annotations:");
    for (k, v) in manifest.annotations.iter().flatten() {
        println!("  {k} = {v}");
    }
    let c = &config.config;
    println!("config:");
    if let Some(e) = &c.entrypoint {
        println!("  entrypoint: {e:?}");
    }
    if let Some(e) = &c.cmd {
        println!("  cmd:        {e:?}");
    }
    for e in c.env.iter().flatten() {
        println!("  env:        {e}");
    }
    if let Some(u) = &c.user {
        println!("  user:       {u}");
    }
    if let Some(w) = &c.working_dir {
        println!("  workdir:    {w}");
    }
    for p in c.exposed_ports.iter().flat_map(|p| p.keys()) {
        println!("  expose:     {p}");
    }
    if let Some(s) = &c.stop_signal {
        println!("  stop:       {s}");
    }
    println!("layers:");
    for (l, h) in manifest.layers.iter().zip(config.history.iter().filter(|h| !h.empty_layer)) {
        println!("  {} {:>10}  {}", l.digest, human_size(l.size), h.created_by.as_deref().unwrap_or(""));
    }
}

pub(crate) fn render(output: &Output, now: i64) {
    match output {
        Output::Controller { request, answer } => cli_release::render_answer(request, answer),
        Output::Test(_)
        | Output::Leaks(_)
        | Output::Vulns(_)
        | Output::Sbom(_)
        | Output::Promoted(_)
        | Output::Transfer(_)
        | Output::Pipeline(_)
        | Output::Key { .. }
        | Output::Signed(_)
        | Output::Verified(_) => cli_verify::render(output),
        Output::Hosts(rows) => {
            println!("{:<20} {:>12} {:>5} {:>10} {:>12}", "HOST", "MEMORY", "CPUS", "INSTANCES", "LEASE");
            for r in rows {
                let lease =
                    r.lease_left_secs.map_or_else(|| "expired".to_owned(), |l| format!("{l}s/{}s", r.lease_ttl_secs));
                println!(
                    "{:<20} {:>10}Mi {:>5} {:>10} {:>12}{}",
                    r.host.name,
                    r.host.memory_bytes >> 20,
                    r.host.cpus,
                    r.host.instances,
                    lease,
                    if r.draining { "  draining" } else { "" }
                );
            }
        }
        Output::FleetServices(rows) => {
            for r in rows {
                let d = &r.desired;
                let lb = d.listen.map_or_else(|| "no load balancer".to_owned(), |p| format!("port {p}"));
                println!("{}: {} replicas of {} ({lb})", r.name, d.replicas, d.image);
                if let Some(c) = &d.canary {
                    let state = match &c.progress {
                        _ if c.steps.is_empty() => "fixed weight".to_owned(),
                        None => "waiting for its instances".to_owned(),
                        Some(p) => match &p.paused {
                            Some(why) => format!("paused: {why}"),
                            None => format!("step {} of {}", p.step + 1, c.steps.len()),
                        },
                    };
                    println!("  canary {} x{} at {} %, {state}", c.image, c.replicas, c.weight);
                }
                if let Some(bg) = &d.blue_green {
                    use kiln::fleet::bluegreen::Phase;
                    match &bg.phase {
                        Phase::Next { smoke, .. } => println!(
                            "  blue-green: new set {} starting beside stable, no traffic; {} smoke check(s) on each \
                             instance, then the switch",
                            bg.image,
                            smoke.len()
                        ),
                        Phase::Kept { until } => println!(
                            "  blue-green: previous set {} kept warm until {} (kiln rollback --cluster switches back at \
                             once)",
                            bg.image,
                            kiln::time::rfc3339(*until)
                        ),
                        Phase::Failed { why } => println!("  blue-green: release of {} failed: {why}", bg.image),
                    }
                }
                if let Some(v) = &r.verdict {
                    println!(
                        "  last verdict: {} ({}) at {} % for {}: {} canary / {} stable requests over {} hosts",
                        v.action,
                        v.verdict.outcome.name(),
                        v.weight,
                        v.image,
                        v.verdict.canary_requests,
                        v.verdict.stable_requests,
                        v.hosts.len()
                    );
                }
            }
        }
        Output::DbUpdated(u) => {
            for e in &u.exports {
                println!("{:<10} {:>7} records  {:>12} bytes  {}", e.ecosystem, e.records, e.bytes, e.url);
            }
            let age = u.age_days.map_or_else(|| "-".to_owned(), |d| format!("{d} days"));
            println!(
                "{} records, newest {} ({age} old), in {} ms; kiln scan uses it when no --db is given",
                u.records,
                u.newest_record.as_deref().unwrap_or("-"),
                u.duration_ms
            );
        }
        Output::Bases(rows) => {
            let outdated: Vec<_> = rows.iter().filter(|r| r.outdated || r.error.is_some()).collect();
            if outdated.is_empty() {
                println!("every registry base is as kiln.lock pins it ({} checked)", rows.len());
            }
            for r in outdated {
                let short = |d: &Option<kiln::digest::Digest>| {
                    d.as_ref().map_or_else(|| "-".to_owned(), |d| format!("sha256:{}", d.short()))
                };
                match &r.error {
                    Some(e) => println!("{}: {}: cannot tell: {e}", r.image, r.from),
                    None => println!("{}: {} pinned {} now {}", r.image, r.from, short(&r.pinned), short(&r.current)),
                }
            }
        }
        Output::Baked(reports) => {
            for r in reports {
                println!("{} {}", r.image, r.digest);
                if let Some(b) = &r.base {
                    match (&b.previous, b.changed) {
                        (Some(old), true) => {
                            println!("  base {} moved from {old} to {} (kiln.lock updated)", b.from, b.digest)
                        }
                        (None, true) => println!("  base {} pinned at {} (kiln.lock written)", b.from, b.digest),
                        _ => println!("  base {}@{}", b.from, b.digest),
                    }
                }
                for t in &r.tags {
                    println!("  tag {t}");
                }
                for c in r.tag_changes.iter().filter(|c| c.from.is_some()) {
                    println!(
                        "  moved {} from {} (forced)",
                        c.tag,
                        c.from.as_ref().map(|d| d.to_string()).unwrap_or_default()
                    );
                }
            }
        }
        Output::Images(rows) => {
            println!("{:<19} {:>10} {:>6}  {:<12}  TAGS", "DIGEST", "SIZE", "AGE", "REVISION");
            for r in rows {
                let age = r.tagged_at.map(|t| kiln::time::age(now - t)).unwrap_or_else(|| "-".into());
                let rev = r.revision.as_deref().map(|s| &s[..s.len().min(12)]).unwrap_or("-");
                let digest = format!("sha256:{}", r.digest.short());
                println!("{digest:<19} {:>10} {age:>6}  {rev:<12}  {}", human_size(r.size), r.tags.join(" "));
            }
        }
        Output::Inspect(i) => {
            println!("digest:   {}", i.digest);
            println!("tags:     {}", if i.tags.is_empty() { "-".into() } else { i.tags.join(", ") });
            println!("size:     {}", human_size(i.size));
            match &i.config {
                Some(config) => render_image_config(config, &i.manifest),
                None => {
                    let kind = i.manifest.artifact_type.as_deref().unwrap_or("");
                    println!("artifact: {kind}");
                    if let Some(sub) = &i.manifest.subject {
                        println!("about:    {}", sub.digest);
                    }
                    println!("annotations:");
                    for (k, v) in i.manifest.annotations.iter().flatten() {
                        println!("  {k} = {v}");
                    }
                }
            }
            for r in &i.records {
                let verdict = if r.passed { "passed" } else { "FAILED" };
                println!("verified: {} {verdict} at {} ({} ms)", r.kind, r.at, r.duration_ms);
            }
            println!("tag history:");
            for e in &i.tag_history {
                match &e.from {
                    Some(f) if *f == i.digest => println!("  {} {} moved away to {}", e.time, e.tag, e.to),
                    Some(f) => println!("  {} {} moved here from {}", e.time, e.tag, f),
                    None => println!("  {} {} set", e.time, e.tag),
                }
            }
        }
        Output::Instance(r) => {
            println!("{} {} port {} image {} ({})", r.id, r.state.name(), r.port, r.image_ref, r.image.short());
            if let kiln::runtime::InstanceState::Exited { reason, .. } = &r.state {
                println!("  {reason}");
            }
        }
        Output::Instances { instances, orphans_removed } => {
            for o in orphans_removed {
                eprintln!("kiln: removed container {o}, which no instance record knows");
            }
            println!("{:<22} {:<12} {:<30} {:<10} {:>6} {:>6}", "ID", "SERVICE", "IMAGE", "STATE", "AGE", "PORT");
            for r in instances {
                let image = format!("{} ({})", r.image_ref, &r.image.short()[..7]);
                let state = match &r.state {
                    kiln::runtime::InstanceState::Exited { code: Some(c), .. } => format!("exited({c})"),
                    kiln::runtime::InstanceState::Exited { signal: Some(sig), .. } => format!("killed({sig})"),
                    other => other.name().to_owned(),
                };
                println!(
                    "{:<22} {:<12} {:<30} {:<10} {:>6} {:>6}",
                    r.id,
                    r.service,
                    image,
                    state,
                    kiln::time::age(now - r.created),
                    r.port
                );
            }
        }
        Output::Logs(lines) => {
            for l in lines {
                print_log(l, false);
            }
        }
        Output::Volumes(vs) => {
            println!("{:<14} {:<14} {:>10}  USERS", "SERVICE", "VOLUME", "SIZE");
            for v in vs {
                let users: Vec<String> = v.users.iter().map(|u| u.to_string()).collect();
                println!(
                    "{:<14} {:<14} {:>10}  {}",
                    v.service,
                    v.name,
                    human_size(v.bytes),
                    if users.is_empty() { "-".into() } else { users.join(",") }
                );
            }
        }
        Output::FleetPlan(p) => {
            println!("{}: {}", p.service, p.summary);
            for c in &p.changed {
                println!("  {c}");
            }
            if p.entries.is_empty() {
                println!("  nothing to record: the fleet already runs this");
            }
            for e in &p.entries {
                println!("  would record: {}", e.kind());
            }
            println!("(nothing written: kiln deploy --cluster does it)");
        }
        Output::FleetMetrics(text) => print!("{text}"),
        Output::FleetChaos(r) => {
            let ms = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v} ms"));
            println!(
                "{}: {} kills ({} refused: too many slots down), {} replaced (median {}, max {})",
                r.service,
                r.kills,
                r.refused,
                r.replaced,
                ms(r.replace_median_ms),
                ms(r.replace_max_ms)
            );
            for i in &r.unreplaced {
                println!("  {i}: its slot did not serve again in time");
            }
        }
        Output::FleetDrill(r) => {
            let ms = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v} ms"));
            println!(
                "drill on {}: a {} % canary of {}, failed at every load balancer, judged over {} ms",
                r.service, r.canary_percent, r.image, r.window_ms
            );
            println!("  {}: {}", r.outcome, r.reason);
            println!(
                "  caught after {} of traffic; out of the desired state at {}; canary gone at {}",
                ms(r.detect_ms),
                ms(r.rollback_ms),
                ms(r.cleaned_ms)
            );
            let hosts: Vec<String> = r.hosts.iter().map(|(h, (c, s))| format!("{h} {c}/{s}")).collect();
            println!(
                "  stable {}; {} faulted canary requests judged as one over the fleet (canary/stable by host: {})",
                if r.stable_untouched { "untouched" } else { "CHANGED" },
                r.canary_requests,
                hosts.join(", ")
            );
            println!(
                "  clients: {} requests in the judged window, {} failed (a faulted canary pick is served by stable)",
                r.requests, r.failed_requests
            );
        }
        Output::FleetVerified(hosts) => {
            for (host, v) in hosts {
                match v {
                    None => println!("{host}: did not answer within 15 s"),
                    Some(v) => {
                        println!("{host}: {} instances checked, {} drifted", v.checked, v.drifted.len());
                        for d in &v.drifted {
                            println!("  {} {}: DRIFT: {} (replacing it)", d.slot, d.instance, d.findings.join("; "));
                        }
                    }
                }
            }
        }
        Output::FleetPs(rows) => {
            println!("{:<14} {:<18} {:<10} {:<20} {:>6}  IMAGE", "HOST", "SLOT", "STATE", "INSTANCE", "PORT");
            for r in rows {
                let port = r.port.map_or_else(|| "-".to_owned(), |p| p.to_string());
                let digest = r.image.rsplit_once('@').map_or(r.image.as_str(), |(_, d)| d);
                // Serving at its host, not yet routed to by every load
                // balancer (their checks have not passed it).
                let routing = r.state == kiln::fleet::ps::SlotState::Serving && !r.routed;
                println!(
                    "{:<14} {:<18} {:<10} {:<20} {:>6}  {}",
                    r.host,
                    r.slot,
                    if r.standby {
                        "standby"
                    } else if routing {
                        "routing"
                    } else {
                        r.state.name()
                    },
                    r.instance.as_deref().unwrap_or("-"),
                    port,
                    &digest[..digest.len().min(19)]
                );
            }
        }
        Output::FleetLogs(logs) => {
            for l in &logs.lines {
                let time = kiln::time::rfc3339_millis(l.line.ts);
                println!("{time} {} {} {}: {}", l.host, l.line.meta.instance, l.line.stream, l.line.line);
            }
            for (host, why) in &logs.missing {
                eprintln!("kiln: {host}: no logs: {why}");
            }
        }
        Output::FleetSecrets(rows) => {
            if rows.is_empty() {
                println!("no fleet secrets");
            }
            for r in rows {
                println!("{}  version {} ({} kept)", r.name, r.version, r.versions);
            }
        }
        Output::Secrets(names) => {
            for n in names {
                println!("{n}");
            }
        }
        Output::Done { message } => println!("{message}"),
        Output::History { entries, verified } => cli_release::render_history(entries, *verified),
        Output::Plans(plans) => plans.iter().for_each(cli_release::render_plan),
        Output::Gc(g) => {
            for (d, size) in &g.removed {
                println!("removed {d} ({})", human_size(*size));
            }
            println!("{} blobs removed ({}), {} kept", g.removed.len(), human_size(g.freed_bytes), g.kept);
        }
    }
}
