//! Alerts: the webhooks of `[[notify]]` get a signed JSON POST for every
//! failure path the controller records (see [`alert_of`], pure). Each
//! delivery is written to `$KILN_HOME/notify/pending/` before it is sent,
//! so a restart loses none; a worker thread sends them, retrying with
//! doubling backoff (1 s up to 60 s, 20 attempts), and appends every attempt
//! to `notify/deliveries.jsonl`. The body is signed with HMAC-SHA256 keyed
//! by a kiln secret: `X-Kiln-Signature: sha256=<hex>`, as GitHub does.
//! Delivery is at least once: a crash between a 2xx and the removal of the
//! pending file sends it again, with the same `X-Kiln-Delivery` id.
//!
//! This module sends and records; it must never decide what failed.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::heal::Cause;
use crate::release::analysis;
use crate::serve::history::{Event, Outcome};
pub use crate::spec::notify::{Alert, NotifySpec};

/// Attempts before a delivery is given up (recorded as such).
pub const MAX_ATTEMPTS: u32 = 20;

/// The alert a history event raises, if any.
pub fn alert_of(event: &Event) -> Option<Alert> {
    match event {
        Event::Finished { outcome: Outcome::RolledBack, .. } => Some(Alert::RolledBack),
        Event::Finished { outcome: Outcome::Failed, deadline: true, .. } => Some(Alert::Deadline),
        Event::Finished { outcome: Outcome::Failed, .. } => Some(Alert::ReleaseFailed),
        // Inconclusive and waiting for a person; an inconclusive step that
        // is only waited out one more interval is no failure yet.
        Event::Verdict { verdict, paused: true, .. } if verdict.outcome == analysis::Outcome::Inconclusive => {
            Some(Alert::Inconclusive)
        }
        Event::CrashLoop { .. } => Some(Alert::CrashLoop),
        Event::Replacing { cause: Cause::Drift, .. } => Some(Alert::Drift),
        Event::Quarantined { .. } => Some(Alert::Quarantine),
        Event::Failing { .. } => Some(Alert::Failing),
        Event::CertExpiring { .. } => Some(Alert::CertExpiring),
        Event::HostLost { .. } => Some(Alert::HostLost),
        _ => None,
    }
}

/// One delivery, as kept on disk until it is done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub alert: Alert,
    pub hook: NotifySpec,
    /// The JSON body, exactly as signed and sent.
    pub body: String,
    pub attempts: u32,
    pub next_at_ms: u64,
}

/// One line of `deliveries.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub id: String,
    pub url: String,
    pub alert: Alert,
    pub attempt: u32,
    pub at_ms: u64,
    /// The HTTP status, or none when the connection failed.
    pub status: Option<u16>,
    pub error: Option<String>,
    /// `delivered`, `retrying` or `given-up`.
    pub state: String,
}

/// Queues and sends deliveries.
#[derive(Debug)]
pub struct Notifier {
    dir: PathBuf,
    wake: mpsc::Sender<()>,
}

fn pending_dir(home: &Path) -> PathBuf {
    home.join("notify").join("pending")
}

/// The backoff before attempt `n + 1` (1 s, 2 s, 4 s, ... up to 60 s).
pub fn backoff_ms(attempts: u32) -> u64 {
    (1000u64 << (attempts.clamp(1, 7) - 1)).min(60_000)
}

impl Notifier {
    /// Starts the worker; deliveries pending from before are sent too.
    pub fn start(home: &Path) -> io::Result<Notifier> {
        let dir = pending_dir(home);
        std::fs::create_dir_all(&dir)?;
        let (wake, rx) = mpsc::channel();
        let home = home.to_owned();
        std::thread::Builder::new().name("kiln-notify".into()).spawn(move || worker(&home, rx))?;
        Ok(Notifier { dir, wake })
    }

    /// Queues `event` (of `release` in `service`) for every hook that
    /// wants its alert. Written to disk before it returns.
    pub fn alert(
        &self,
        hooks: &[NotifySpec],
        service: &str,
        release: &str,
        at_ms: u64,
        event: &Event,
    ) -> io::Result<()> {
        let Some(alert) = alert_of(event) else { return Ok(()) };
        for (i, hook) in hooks.iter().enumerate().filter(|(_, h)| h.events.contains(&alert)) {
            let id = format!("{at_ms}-{service}-{release}-{}-{i}", alert.name());
            let body = serde_json::json!({
                "id": id,
                "alert": alert,
                "service": service,
                "release": release,
                "at": crate::time::rfc3339_millis(at_ms as i64),
                "event": event,
            })
            .to_string();
            let d = Delivery { id: id.clone(), alert, hook: hook.clone(), body, attempts: 0, next_at_ms: at_ms };
            write_atomic(&self.dir.join(format!("{id}.json")), &serde_json::to_vec(&d).expect("serializes"))?;
        }
        let _ = self.wake.send(());
        Ok(())
    }
}

use crate::sys::atomic::write as write_atomic;

/// Sends one delivery: (status, error).
fn send(home: &Path, d: &Delivery) -> (Option<u16>, Option<String>) {
    let signature = match &d.hook.secret {
        Some(name) => match crate::secrets::Secrets::new(home).get(name) {
            Ok(v) => Some(format!(
                "sha256={}",
                crate::digest::hex(&crate::digest::hmac_sha256(v.expose(), d.body.as_bytes()))
            )),
            Err(e) => return (None, Some(format!("secret {name}: {e}"))),
        },
        None => None,
    };
    let stream = match d
        .hook
        .authority
        .parse::<std::net::SocketAddr>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            d.hook.authority.to_socket_addrs()?.next().ok_or_else(|| io::ErrorKind::NotFound.into())
        })
        .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(5)))
    {
        Ok(s) => s,
        Err(e) => return (None, Some(e.to_string())),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut headers = vec![("X-Kiln-Event", d.alert.name()), ("X-Kiln-Delivery", d.id.as_str())];
    if let Some(s) = &signature {
        headers.push(("X-Kiln-Signature", s.as_str()));
    }
    match crate::net::http::exchange_with(stream, "POST", &d.hook.path, &headers, d.body.as_bytes()) {
        Ok(r) => (Some(r.status), None),
        Err(e) => (None, Some(e.to_string())),
    }
}

use crate::time::now_ms;

fn log(home: &Path, a: &Attempt) {
    let path = home.join("notify").join("deliveries.jsonl");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        let _ = writeln!(f, "{}", serde_json::to_string(a).expect("serializes"));
    }
}

/// Sends what is due, oldest first; sleeps until the next is due or a new
/// one is queued.
fn worker(home: &Path, wake: mpsc::Receiver<()>) {
    let dir = pending_dir(home);
    loop {
        let mut next = u64::MAX;
        let mut due: Vec<(PathBuf, Delivery)> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| Some((p.clone(), serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?)))
            .collect();
        due.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        for (path, mut d) in due {
            let now = now_ms();
            if d.next_at_ms > now {
                next = next.min(d.next_at_ms);
                continue;
            }
            // The attempt is counted on disk before it is made, so a crash
            // in between neither loses nor renumbers it.
            d.attempts += 1;
            d.next_at_ms = now + backoff_ms(d.attempts);
            let _ = write_atomic(&path, &serde_json::to_vec(&d).expect("serializes"));
            let (status, error) = send(home, &d);
            let ok = status.is_some_and(|s| (200..300).contains(&s));
            let state = if ok {
                "delivered"
            } else if d.attempts >= MAX_ATTEMPTS {
                "given-up"
            } else {
                "retrying"
            };
            log(
                home,
                &Attempt {
                    id: d.id.clone(),
                    url: d.hook.url.clone(),
                    alert: d.alert,
                    attempt: d.attempts,
                    at_ms: now,
                    status,
                    error,
                    state: state.into(),
                },
            );
            if state == "retrying" {
                next = next.min(d.next_at_ms);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
        let wait = if next == u64::MAX {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(next.saturating_sub(now_ms()).max(10))
        };
        match wake.recv_timeout(wait) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_raise_alerts_and_successes_do_not() {
        let finished = |outcome, deadline| Event::Finished { outcome, reason: "r".into(), deadline };
        assert_eq!(alert_of(&finished(Outcome::RolledBack, false)), Some(Alert::RolledBack));
        assert_eq!(alert_of(&finished(Outcome::Failed, false)), Some(Alert::ReleaseFailed));
        assert_eq!(alert_of(&finished(Outcome::Failed, true)), Some(Alert::Deadline));
        assert_eq!(alert_of(&finished(Outcome::Succeeded, false)), None);
        assert_eq!(alert_of(&Event::CrashLoop { failures: 3, backoff_ms: 1000 }), Some(Alert::CrashLoop));
        let replacing = |cause| Event::Replacing { instance: "i".into(), cause, detail: String::new() };
        assert_eq!(alert_of(&replacing(Cause::Drift)), Some(Alert::Drift));
        assert_eq!(alert_of(&replacing(Cause::Chaos)), None);
        let q = Event::Quarantined { instance: "i".into(), reason: "r".into(), actor: "a".into() };
        assert_eq!(alert_of(&q), Some(Alert::Quarantine));
        let verdict = |outcome, paused| Event::Verdict {
            step: 0,
            verdict: analysis::Verdict {
                outcome,
                canary_requests: 3,
                stable_requests: 0,
                min_requests: 50,
                confidence: 0.95,
                metrics: Vec::new(),
            },
            paused,
        };
        let inconclusive = analysis::Outcome::Inconclusive;
        assert_eq!(alert_of(&verdict(inconclusive, true)), Some(Alert::Inconclusive), "waits for a person");
        assert_eq!(alert_of(&verdict(inconclusive, false)), None, "waited out one more interval");
        assert_eq!(alert_of(&verdict(analysis::Outcome::Fail, false)), None, "the rollback alerts, not the verdict");
        assert_eq!(backoff_ms(1), 1000);
        assert_eq!(backoff_ms(2), 2000);
        assert_eq!(backoff_ms(6), 32_000);
        assert_eq!(backoff_ms(20), 60_000);
    }
}
