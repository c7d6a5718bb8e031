//! Front end of the healing commands: `quarantine`, `release-quarantine`,
//! `inspect-instance`, `verify-instances` and `chaos`. Each converts its
//! arguments into one API request (or [`crate::cli::chaos::run`]) and renders
//! the answer; nothing is decided here.

use std::path::Path;

use kiln::serve::answer::{Drifts, InstanceView};

/// `kiln inspect-instance`'s answer as text.
pub fn render_inspect(v: &InstanceView) {
    let or_dash = |s: Option<&str>| s.unwrap_or("-").to_owned();
    println!("instance  {}", v.id);
    println!("service   {} (release {})", v.service, or_dash(v.release.as_deref()));
    println!("image     {} = {}", v.image, v.digest);
    println!("revision  {}", or_dash(v.revision.as_deref()));
    println!("state     {}, {} s old, port {}", v.state, v.age_s, v.port);
    let names = |list: &[String]| if list.is_empty() { "-".into() } else { list.join(" ") };
    println!("env       {}", names(&v.env));
    println!("secrets   {}", names(&v.secrets));
    println!("health    {}", serde_json::to_string(&v.health).expect("health serializes"));
    for x in v.drift.iter().flatten() {
        println!("drift     {x}");
    }
    if let Some(q) = &v.quarantine {
        println!("quarantined by {}: {}; kept in {}", q.actor, q.reason, q.dir.display());
    }
}

/// `kiln verify-instances`'s answer as text.
pub fn render_drifts(v: &Drifts) {
    for i in &v.instances {
        if i.drift.is_empty() {
            println!("{}: as released", i.instance);
        } else {
            println!("{}: DRIFT (it will be replaced): {}", i.instance, i.drift.join("; "));
        }
    }
    if v.instances.is_empty() {
        println!("no running instances to check");
    }
}

pub fn chaos(home: &Path, o: &crate::cli::chaos::Options, json: bool) -> anyhow::Result<()> {
    let r = crate::cli::chaos::run(home, o)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} ms"));
    println!("chaos on {}: {} kills ({} refused: too many down at once)", r.service, r.kills, r.refused);
    println!(
        "  replaced {} of {}: kill to serving replacement median {}, p99 {}, max {}",
        r.replaced,
        r.kills,
        ms(r.replace_median_ms),
        ms(r.replace_p99_ms),
        ms(r.replace_max_ms)
    );
    if !r.unreplaced.is_empty() {
        println!("  not replaced yet: {}", r.unreplaced.join(", "));
    }
    println!(
        "  load balancer: {} requests, {} failed (5xx), {} retried on another instance",
        r.requests, r.failed_requests, r.retries
    );
    Ok(())
}

/// `kiln chaos --drill canary`: exit 0 when the drill proved the rollback
/// (caught, stable untouched, no failed request), 2 when it did not.
pub fn drill(home: &Path, service: &str, window: Option<std::time::Duration>, json: bool) -> anyhow::Result<i32> {
    let r = crate::cli::chaos::drill(home, service, window, &crate::cli::actor())?;
    let code = if r.passed() { 0 } else { 2 };
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(code);
    }
    let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} ms"));
    println!(
        "drill {} on {}: a {}% canary of {}'s digest, failed at the load balancer, judged over {} ms",
        r.release, r.service, r.canary_percent, r.stable, r.window_ms
    );
    println!("  {}: {}", r.outcome, r.reason);
    println!(
        "  caught after {} of traffic; traffic back on {} at {}; canary gone at {}",
        ms(r.detect_ms),
        r.stable,
        ms(r.rollback_ms),
        ms(r.cleaned_ms)
    );
    println!(
        "  stable {}; load balancer: {} requests, {} failed (the {} faulted canary requests went to stable)",
        if r.stable_untouched { "untouched" } else { "CHANGED" },
        r.requests,
        r.failed_requests,
        r.canary_requests
    );
    println!("  {}", if r.passed() { "rollback proven" } else { "the drill did NOT prove the rollback" });
    Ok(code)
}
