//! What `kiln agent` does for the fleet's heal commands, each round: its
//! quarantines (an instance out of the host record, frozen and kept, then
//! destroyed when released) and the state of its drift checks. The asks
//! come through etcd (`fleet::quarantine`, `/kiln/ask/`); the agent's
//! loop is `super::agent`.
//!
//! For: acting on this host's asks. Must never: decide placement, or
//! touch another host's instances.

/// What one round's quarantine work needs.
pub(super) struct QuarantineRound<'a> {
    pub(super) etcd: &'a crate::fleet::etcd::Etcd,
    pub(super) rt: &'a crate::runtime::Runtime<'a>,
    pub(super) name: &'a str,
    pub(super) asks: &'a [crate::fleet::etcd::Kv],
    pub(super) records: &'a [crate::runtime::InstanceRecord],
    pub(super) seen: &'a std::sync::Mutex<std::collections::BTreeMap<String, std::time::Instant>>,
    pub(super) dir: &'a dyn Fn(&str) -> std::path::PathBuf,
    pub(super) drain: std::time::Duration,
}

/// This host's quarantines, one round: the asks read (an expired one
/// released, with its entry); each newly asked instance, once out of
/// every table, frozen and what it changed kept; each released one (its
/// ask gone, its kept directory still there) destroyed with what was kept.
pub(super) fn quarantine_round(q: &QuarantineRound<'_>) {
    use crate::fleet::quarantine::{Ask, ASKS, TTL_MS};
    let prefix = format!("{ASKS}{}/", q.name);
    let now_ms = crate::time::now_ms();
    let mut asked = std::collections::BTreeMap::new();
    for kv in q.asks.iter().filter(|kv| kv.key.starts_with(&prefix)) {
        let instance = kv.key[prefix.len()..].to_owned();
        let Ok(ask) = serde_json::from_slice::<Ask>(&kv.value) else { continue };
        if now_ms.saturating_sub(ask.at_ms) >= TTL_MS {
            let r = q.records.iter().find(|r| r.id.as_str() == instance);
            let (service, image) =
                r.map_or((String::new(), String::new()), |r| (r.service.clone(), format!("{}@{}", r.service, r.image)));
            let entry = crate::fleet::history::Record {
                service,
                release: crate::fleet::history::release_of(&image),
                event: crate::serve::history::Event::Unquarantined {
                    instance: instance.clone(),
                    actor: "quarantine ttl".into(),
                },
            };
            let _ = crate::fleet::history::record(q.etcd, &[entry], &[], std::slice::from_ref(&kv.key));
            continue;
        }
        asked.insert(instance, ask);
    }
    let Ok(mut seen) = q.seen.lock() else { return };
    seen.retain(|id, _| asked.contains_key(id));
    for (id, ask) in &asked {
        let first = *seen.entry(id.clone()).or_insert_with(std::time::Instant::now);
        let dir = (q.dir)(id);
        let Some(r) = q.records.iter().find(|r| r.id.as_str() == id.as_str()) else { continue };
        if dir.join("quarantine.json").exists() || first.elapsed() < q.drain {
            continue;
        }
        // Frozen (it may have exited meanwhile: its record and logs are
        // kept all the same), then what it changed copied.
        let _ = q.rt.pause(id);
        let kept = q.rt.keep_for_postmortem(r, &dir);
        let meta = serde_json::json!({
            "quarantine": ask,
            "kept": kept.as_ref().ok(),
            "error": kept.as_ref().err().map(|e| e.to_string()),
            "frozen_at_ms": now_ms,
        });
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("quarantine.json"), serde_json::to_vec_pretty(&meta).unwrap_or_default());
        eprintln!("kiln agent {}: {id} quarantined: frozen, kept in {}", q.name, dir.display());
    }
    // Released: destroyed, with what was kept.
    for r in q.records {
        let id = r.id.as_str();
        let dir = (q.dir)(id);
        if !asked.contains_key(id) && dir.exists() {
            match q.rt.remove(id, true) {
                Ok(_) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    eprintln!("kiln agent {}: {id} released from quarantine: removed", q.name);
                }
                Err(e) => eprintln!("kiln agent {}: releasing {id}: {e}", q.name),
            }
        }
    }
}

/// The agent's drift checks: when it last checked, the request it last
/// answered, what it found, and the instances it is replacing for it.
#[derive(Debug, Default)]
pub(super) struct DriftChecks {
    pub(super) at: Option<std::time::Instant>,
    pub(super) asked: i64,
    pub(super) last: Option<crate::fleet::Verified>,
    pub(super) drifted: std::collections::BTreeSet<String>,
}
