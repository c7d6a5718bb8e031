//! Rendering of the verify commands' results (`kiln test`, `scan`,
//! `scan-secrets`, `sbom`, `key`, `sign`, `verify`) and the exit status a
//! failed gate gives. Front-end only: no logic beyond formatting.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use kiln::command::Output;

/// The exit status of a gate that ran and failed: 6 test, 8 secrets, 9
/// vulnerabilities. (7, a bad signature, is an error: see `CommandError`.)
pub fn gate_exit_code(output: &Output) -> Option<i32> {
    match output {
        Output::Test(r) if !r.passed => Some(6),
        Output::Leaks(g) if !g.passed => Some(8),
        Output::Vulns(r) if !r.passed => Some(9),
        _ => None,
    }
}

/// Writes one SBOM document to `path` (`-`: standard output).
/// It is read back from the store (the command may have run in `kiln serve`).
pub fn write_sbom(
    store: &kiln::image::store::Store,
    r: &kiln::verify::sbom::SbomReport,
    path: &Path,
    cyclonedx: bool,
) -> anyhow::Result<()> {
    let doc = kiln::verify::sbom::document(store, if cyclonedx { &r.cyclonedx } else { &r.spdx })?;
    let text = serde_json::to_string_pretty(&doc)? + "\n";
    if path == Path::new("-") {
        std::io::stdout().write_all(text.as_bytes())?;
    } else {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn render_vulns(r: &kiln::verify::vulns::VulnReport) {
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    let os = r.os.as_ref().and_then(|o| o.pretty_name.clone().or(Some(o.id.clone()))).unwrap_or("no os-release".into());
    println!(
        "vulnerability scan of {} ({}): {verdict}; {os}, {} packages, {} findings ({} failing) in {} ms",
        r.reference,
        r.digest,
        r.packages,
        r.findings.len(),
        r.failing,
        r.duration_ms
    );
    let age = r.db.age_days.map_or("no records".to_owned(), |d| format!("{d} days old"));
    let forced = if r.db.forced { " (older than the limit: --force)" } else { "" };
    println!("  database {}: {} advisories, {age}{forced}", r.db.path.display(), r.db.advisories);
    println!(
        "  policy: fail on {:?} and above{}",
        r.fail_on,
        if r.fail_unknown { ", and on unknown severity" } else { "" }
    );
    for j in &r.findings {
        let f = &j.finding;
        let mark = if j.failing { "FAIL" } else { "    " };
        let score = f.score.map_or(String::new(), |s| format!(" {s:.1}"));
        let fixed = f.fixed.as_ref().map_or("no fix yet".to_owned(), |v| format!("fixed in {v}"));
        let alias = f.aliases.first().map_or(String::new(), |a| format!(" ({a})"));
        let allowed = j.allowed.as_ref().map_or(String::new(), |r| format!("; allowed: {r}"));
        println!(
            "  {mark} {}{alias} {:?}{score}: {} {} (source {} {}), {fixed}{allowed}",
            f.id, f.severity, f.package, f.version, f.source, f.source_version
        );
    }
    for e in &r.expired_allows {
        println!("  FAIL [image.X.scan] allow[{}] ({}) expired on {}", e.index, e.id, e.expires);
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
    println!("  recorded: {}", r.record);
}

/// Renders a verify command's output.
pub fn render(output: &Output) {
    match output {
        Output::Vulns(r) => render_vulns(r),
        Output::Promoted(p) => {
            println!("promoted {} ({}) to {} by {} at {}", p.reference, p.digest, p.channel, p.by, p.at);
            println!("  channels: {}", p.channels.join(", "));
            println!("  signature: {}", p.signature);
        }
        Output::Pipeline(r) => {
            let d = r.digest.as_ref().map_or("-".to_owned(), |d| d.to_string());
            println!("release pipeline for {} ({} {d}):", r.service, r.image);
            for s in &r.steps {
                println!("  {} {:<8} {:>6} ms  {}", if s.passed { "ok  " } else { "FAIL" }, s.name, s.ms, s.summary);
            }
            let verdict = if r.passed { "passed".to_owned() } else { format!("stopped (exit {})", r.exit_code) };
            println!("  {verdict} in {} ms", r.duration_ms);
        }
        Output::Transfer(t) => {
            let d = t.digest.as_ref().map_or(String::new(), |d| d.to_string());
            println!("{} -> {} ({d}) in {} ms", t.reference, t.remote, t.duration_ms);
            println!("  {} blobs moved ({} bytes), {} already there", t.blobs, t.bytes, t.blobs_present);
            if t.blobs_mounted > 0 || t.blobs_chunked > 0 {
                println!("  {} mounted from another repository, {} sent in chunks", t.blobs_mounted, t.blobs_chunked);
            }
            if let Some(k) = &t.signed_by {
                println!("  signature: {k}");
            }
            for a in &t.artifacts {
                println!("  with {a}");
            }
            for tag in &t.tags {
                println!("  tagged {tag}");
            }
        }
        Output::Sbom(r) => {
            println!("sbom of {} ({}): {} packages", r.reference, r.digest, r.packages);
            println!("  spdx 2.3:       {}", r.spdx);
            println!("  cyclonedx 1.5:  {}", r.cyclonedx);
        }
        Output::Test(r) => render_test(r),
        Output::Leaks(g) => {
            let verdict = if g.passed { "no secrets found" } else { "SECRETS FOUND" };
            println!(
                "secret scan of {} ({}): {verdict}; {} files, {} bytes in {} ms",
                g.reference, g.digest, g.report.files, g.report.bytes, g.duration_ms
            );
            for f in &g.report.findings {
                let layer = f.layer.as_ref().map_or("config".to_owned(), |d| format!("layer {}", d.short()));
                let allowed = f.allowed.as_ref().map_or(String::new(), |r| format!(" (allowed: {r})"));
                println!("  {} {}:{} [{}] {}{allowed}", layer, f.path, f.line, f.rule, f.fingerprint);
            }
            for p in &g.report.truncated {
                println!("  read only the first 64 MiB of {p}");
            }
            if g.report.packaged > 0 {
                println!(
                    "  {} files not searched: byte for byte as their Debian package installed them (dpkg md5sums)",
                    g.report.packaged
                );
            }
            println!("  recorded: {}", g.record);
        }
        Output::Key { name, public_key, pem } => {
            println!("key {name}: public key in {}", public_key.display());
            print!("{pem}");
        }
        Output::Signed(list) => {
            for s in list {
                println!("signed {} ({}) with key {}: {}", s.reference, s.digest, s.key, s.tag);
            }
        }
        Output::Verified(v) => {
            println!("verified {} ({}) as {}", v.reference, v.digest, v.docker_reference);
            for (k, val) in &v.optional {
                println!("  {k}: {val}");
            }
            for (channel, o) in &v.channels {
                let field = |k: &str| o.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_owned();
                println!("  promoted to {channel} by {} at {}", field("promoted_by"), field("promoted_at"));
            }
        }
        _ => {}
    }
}

fn render_test(r: &kiln::verify::gate::TestReport) {
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    println!("test {} ({}) {verdict} in {} ms, instance {}", r.reference, r.digest, r.duration_ms, r.instance);
    if let Some(ms) = r.ready_ms {
        println!("  ready after {ms} ms");
    }
    if let Some(f) = &r.failure {
        println!("  {f}");
    }
    for c in &r.checks {
        println!("  {} {}", if c.passed { "ok  " } else { "FAIL" }, c.name);
        if let Some(d) = c.detail.as_ref().filter(|_| !c.passed) {
            println!("       {d}");
        }
        for l in c.response_head.iter().flat_map(|h| h.lines()) {
            println!("       < {l}");
        }
    }
    for c in &r.commands {
        let code = c.exit_code.map_or("killed".into(), |c| format!("exit {c}"));
        println!("  {} $ {} ({code}, {} ms)", if c.passed { "ok  " } else { "FAIL" }, c.command, c.ms);
        if !c.passed {
            for l in c.output.lines() {
                println!("       | {l}");
            }
        }
    }
    if !r.logs.is_empty() {
        println!("  instance logs (first lines):");
        for l in &r.logs {
            println!("    {l}");
        }
    }
    if let Some(d) = &r.record {
        println!("  recorded: {d}");
    }
}
