//! Front end of the healing commands: `quarantine`, `release-quarantine`,
//! `inspect-instance`, `verify-instances` and `chaos`. Each converts its
//! arguments into one API request (or [`crate::cli::chaos::run`]) and renders
//! the answer; nothing is decided here.

use std::path::Path;

use kiln::serve::{self, api::Request};
use serde_json::Value;

pub fn inspect(home: &Path, instance: String, json: bool) -> anyhow::Result<()> {
    let v = serve::call(home, &Request::Inspect { instance })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
    println!("instance  {}", s("id"));
    println!("service   {} (release {})", s("service"), s("release"));
    println!("image     {} = {}", s("image"), s("digest"));
    println!("revision  {}", s("revision"));
    println!("state     {}, {} s old, port {}", s("state"), v["age_s"], v["port"]);
    let names = |k: &str| -> String {
        let list: Vec<&str> = v[k].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if list.is_empty() {
            "-".into()
        } else {
            list.join(" ")
        }
    };
    println!("env       {}", names("env"));
    println!("secrets   {}", names("secrets"));
    println!("health    {}", v["health"]);
    if let Some(d) = v["drift"].as_array() {
        for x in d {
            println!("drift     {}", x.as_str().unwrap_or(""));
        }
    }
    let q = &v["quarantine"];
    if !q.is_null() {
        println!(
            "quarantined by {}: {}; kept in {}",
            q["actor"].as_str().unwrap_or("?"),
            q["reason"].as_str().unwrap_or("?"),
            q["dir"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// Returns whether any instance drifted.
pub fn verify(home: &Path, service: Option<String>, json: bool) -> anyhow::Result<bool> {
    let v = serve::call(home, &Request::VerifyInstances { service })?;
    let list = v["instances"].as_array().cloned().unwrap_or_default();
    let drifted = list.iter().any(|i| i["drift"].as_array().is_some_and(|d| !d.is_empty()));
    if json {
        println!("{v}");
        return Ok(drifted);
    }
    for i in &list {
        let d: Vec<&str> = i["drift"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let id = i["instance"].as_str().unwrap_or("?");
        if d.is_empty() {
            println!("{id}: as released");
        } else {
            println!("{id}: DRIFT (it will be replaced): {}", d.join("; "));
        }
    }
    if list.is_empty() {
        println!("no running instances to check");
    }
    Ok(drifted)
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
