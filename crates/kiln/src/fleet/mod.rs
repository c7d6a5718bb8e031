//! A host's place in a fleet, on etcd: `kiln agent` registers the host
//! under `/kiln/hosts/NAME`, bound to a lease it keeps alive, with its
//! capacity and how many instances it runs; `kiln hosts` lists the hosts
//! whose lease is alive. A host whose agent dies (or is cut off) vanishes
//! when its lease expires: that is how its loss is detected.
//!
//! This is the first slice of issue #24: placement, the fleet-wide
//! canary, leader election and fencing are not built yet.
//!
//! For: registration and the host list. Must never: keep a host's liveness
//! anywhere but in its etcd lease.

pub mod etcd;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use etcd::{Etcd, EtcdError};

/// Where hosts register.
pub const HOSTS: &str = "/kiln/hosts/";

/// What an agent says of its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    pub memory_bytes: u64,
    pub cpus: u32,
    pub instances: u32,
    /// Unix seconds the agent started.
    pub started_at: i64,
    pub version: String,
}

/// One row of `kiln hosts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostRow {
    #[serde(flatten)]
    pub host: HostRecord,
    /// Seconds left on the host's lease, and the TTL it was granted.
    pub lease_left_secs: Option<i64>,
    pub lease_ttl_secs: i64,
}

/// The hosts whose lease is alive.
pub fn hosts(cluster: &Etcd) -> Result<Vec<HostRow>, EtcdError> {
    let mut rows = Vec::new();
    for kv in cluster.range_prefix(HOSTS)? {
        let Ok(host) = serde_json::from_slice::<HostRecord>(&kv.value) else { continue };
        let (left, ttl) = if kv.lease != 0 { cluster.time_to_live(kv.lease)? } else { (None, 0) };
        rows.push(HostRow { host, lease_left_secs: left, lease_ttl_secs: ttl });
    }
    rows.sort_by(|a, b| a.host.name.cmp(&b.host.name));
    Ok(rows)
}

/// This machine's memory (from /proc/meminfo) and CPUs.
pub fn capacity() -> (u64, u32) {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    (mem, cpus)
}

/// `kiln agent`: registers `record()` under a lease of `ttl` seconds and
/// keeps it alive (every third of the TTL, the record refreshed) until
/// `stop`; a lease that expired (etcd unreachable for longer than the TTL)
/// is replaced by a new one. Returns when `stop` is set, revoking the
/// lease so the host leaves at once.
pub fn run_agent(
    cluster: &Etcd,
    name: &str,
    ttl: i64,
    stop: &AtomicBool,
    record: &mut dyn FnMut() -> HostRecord,
    log: &mut dyn FnMut(&str),
) -> Result<(), EtcdError> {
    let key = format!("{HOSTS}{name}");
    let period = Duration::from_millis((ttl.max(1) as u64 * 1000) / 3);
    let mut lease: Option<i64> = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let step = (|| -> Result<(), EtcdError> {
            let id = match lease {
                Some(id) if cluster.keepalive(id)?.is_some() => id,
                old => {
                    if old.is_some() {
                        log("the lease expired: registering again");
                    }
                    let id = cluster.grant(ttl)?;
                    lease = Some(id);
                    id
                }
            };
            let value = serde_json::to_vec(&record()).unwrap_or_default();
            cluster.put(&key, &value, id)?;
            Ok(())
        })();
        if let Err(e) = step {
            // Kept trying: the lease outlives a short outage.
            log(&format!("{e}"));
        }
        while started.elapsed() < period && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(id) = lease {
        let _ = cluster.revoke(id);
    }
    Ok(())
}
