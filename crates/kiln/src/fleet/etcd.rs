//! A small etcd v3 client over etcd's JSON gateway (`/v3/...`), through
//! kiln's own HTTP client: one request per connection, each endpoint of
//! the cluster tried in turn, the last one that answered first. Chosen over
//! the `etcd-client` crate because kiln already speaks HTTP/1.1 and JSON:
//! no gRPC stack, no protobuf compiler at build time, and nothing to
//! reconnect after an etcd member restarts (every call connects anew).
//! The lease keepalive loop is the caller's (the agent's).
//!
//! For: the handful of etcd calls a fleet needs (lease grant, keepalive,
//! time to live, put, range by prefix, delete). Must never: cache what etcd
//! says (the lease is the truth), or retry a write on another member after
//! it may have been applied (only a connection that never reached a
//! member moves on to the next).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::net::http;

/// Why an etcd call failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint could be reached.
    #[error("etcd: no endpoint answered ({endpoints}): {last}")]
    Unreachable { endpoints: String, last: std::io::Error },
    /// An endpoint answered with an error status.
    #[error("etcd {endpoint}: {path} answered {status}: {body}")]
    Status { endpoint: String, path: String, status: u16, body: String },
    /// An answer kiln cannot read.
    #[error("etcd {endpoint}: {path}: {why}")]
    Invalid { endpoint: String, path: String, why: String },
    /// A value kiln wrote that no longer reads as what it was.
    #[error("etcd key {key}: {message}")]
    Malformed { key: String, message: String },
}

/// A cluster's client endpoints (`http://HOST:PORT`).
#[derive(Debug)]
pub struct Etcd {
    endpoints: Vec<String>,
    /// The endpoint that answered last: tried first.
    preferred: AtomicUsize,
    /// For the `https://` members.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The longest a call may take over every member tried (each member
    /// its share); None: each member up to 6 s, as etcd holds a request up
    /// to about 5 s while it elects a leader.
    timeout: Option<Duration>,
}

/// What a transaction requires of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// Its create revision is `revision` (0: the key does not exist).
    Created { key: String, revision: i64 },
    /// It was last modified at `revision`.
    Modified { key: String, revision: i64 },
}

/// One key and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision it was created at, and last modified at.
    pub create_revision: i64,
    pub mod_revision: i64,
    /// How many times it was written since it was created (1: once).
    pub version: i64,
    pub lease: i64,
}

/// etcd's JSON encodes 64-bit integers as strings.
fn int(v: &serde_json::Value) -> i64 {
    v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_i64()).unwrap_or(0)
}

/// Where a fleet's etcd is, and how to reach it: what `--cluster`,
/// `--etcd-ca`, `--etcd-cert` and `--etcd-key` say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// `http://HOST:PORT` or `https://HOST:PORT` of each member.
    pub urls: Vec<String>,
    /// A CA for the members' certificates, besides the system's.
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
    /// A client certificate and its key, for etcd's `--client-cert-auth`.
    #[serde(default)]
    pub cert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub key: Option<std::path::PathBuf>,
}

/// The longest a TCP handshake with a member may take.
const HANDSHAKE: Duration = Duration::from_secs(2);

impl Etcd {
    /// The members of `cluster`, comma-separated or not; TLS to the
    /// `https://` ones, with its CA and client certificate.
    pub fn new(cluster: &Cluster) -> Result<Etcd, EtcdError> {
        let endpoints: Vec<String> = cluster
            .urls
            .iter()
            .flat_map(|u| u.split(','))
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        let authority =
            |u: &String| u.strip_prefix("http://").or_else(|| u.strip_prefix("https://")).map(str::to_owned);
        let bad = endpoints.iter().find(|u| authority(u).is_none_or(|a| !a.contains(':') || a.contains('/')));
        if endpoints.is_empty() || bad.is_some() {
            return Err(EtcdError::Invalid {
                endpoint: bad.cloned().unwrap_or_default(),
                path: "--cluster".into(),
                why: "name each member as http://HOST:PORT or https://HOST:PORT".into(),
            });
        }
        let tls = if endpoints.iter().any(|u| u.starts_with("https://")) {
            let identity = cluster.cert.as_deref().zip(cluster.key.as_deref());
            let config = crate::net::tls::client_config_with(cluster.ca.as_deref(), identity).map_err(|e| {
                EtcdError::Invalid {
                    endpoint: e.path.display().to_string(),
                    path: "--etcd-ca/--etcd-cert/--etcd-key".into(),
                    why: e.detail,
                }
            })?;
            Some(config)
        } else if cluster.ca.is_some() || cluster.cert.is_some() {
            return Err(EtcdError::Invalid {
                endpoint: endpoints.join(","),
                path: "--cluster".into(),
                why: "--etcd-ca and --etcd-cert need https:// members".into(),
            });
        } else {
            None
        };
        Ok(Etcd { endpoints, preferred: AtomicUsize::new(0), tls, timeout: None })
    }

    /// The same members, each call bounded by `timeout` over every member
    /// tried: an agent's calls must end well within its lease, so that a
    /// host cut off (packets dropped, not refused) still fences in time.
    pub fn with_timeout(self, timeout: Duration) -> Etcd {
        Etcd { timeout: Some(timeout), ..self }
    }

    /// POSTs `body` to `path` on the first member that can be reached.
    fn call(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value, EtcdError> {
        let bytes = body.to_string();
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut last = std::io::Error::other("no endpoint");
        let share = self.timeout.map(|t| t / n as u32);
        for k in 0..n {
            let left = share.unwrap_or(Duration::from_secs(6));
            let i = (first + k) % n;
            let endpoint = &self.endpoints[i];
            let (authority, tls) = match endpoint.strip_prefix("https://") {
                Some(a) => (a, self.tls.as_ref()),
                None => (endpoint.trim_start_matches("http://"), None),
            };
            // A member that does not complete a TCP handshake in 2 s (one
            // SYN retransmission) drops packets: the next is asked, rather
            // than waiting out the 6 s an election may hold a request.
            let stream = match crate::net::tls::connect_within(authority, tls, HANDSHAKE, left) {
                Ok(s) => s,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let req = http::Outgoing {
                method: "POST",
                target: path,
                host: authority,
                headers: &[("Content-Type", "application/json")],
                body: http::Body::Bytes(bytes.as_bytes()),
            };
            // Once a request is sent it may have been applied: no retry
            // elsewhere from here.
            let invalid = |why: String| EtcdError::Invalid { endpoint: endpoint.clone(), path: path.into(), why };
            let r = http::send(stream, req).map_err(|e| invalid(e.to_string()))?;
            let status = r.status;
            let text = r.bytes(16 << 20).map_err(|e| invalid(e.to_string()))?;
            // A read changes nothing: one a member could not answer (503
            // "leader changed" during an election) is asked of the next.
            let read = matches!(path, "/v3/kv/range" | "/v3/lease/timetolive");
            if status == 503 && read && k + 1 < n {
                last = std::io::Error::other(String::from_utf8_lossy(&text).chars().take(200).collect::<String>());
                continue;
            }
            if status != 200 {
                return Err(EtcdError::Status {
                    endpoint: endpoint.clone(),
                    path: path.into(),
                    status,
                    body: String::from_utf8_lossy(&text).chars().take(300).collect(),
                });
            }
            self.preferred.store(i, Ordering::Relaxed);
            return serde_json::from_slice(&text).map_err(|e| invalid(format!("not JSON: {e}")));
        }
        Err(EtcdError::Unreachable { endpoints: self.endpoints.join(","), last })
    }

    /// A new lease of `ttl` seconds: its id.
    pub fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/grant", json!({ "TTL": ttl }))?;
        Ok(int(&v["ID"]))
    }

    /// Renews lease `id`: its TTL, or None when it has expired.
    pub fn keepalive(&self, id: i64) -> Result<Option<i64>, EtcdError> {
        let v = self.call("/v3/lease/keepalive", json!({ "ID": id.to_string() }))?;
        let ttl = int(&v["result"]["TTL"]);
        Ok((ttl > 0).then_some(ttl))
    }

    /// Seconds left on lease `id` (None: expired or unknown) and the TTL it
    /// was granted.
    pub fn time_to_live(&self, id: i64) -> Result<(Option<i64>, i64), EtcdError> {
        let v = self.call("/v3/lease/timetolive", json!({ "ID": id.to_string() }))?;
        let ttl = int(&v["TTL"]);
        Ok(((ttl >= 0).then_some(ttl), int(&v["grantedTTL"])))
    }

    /// Sets `key` to `value`, bound to `lease` (0: none).
    pub fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let mut body = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        let v = self.call("/v3/kv/put", body)?;
        Ok(int(&v["header"]["revision"]))
    }

    /// Every key under `prefix`.
    pub fn range_prefix(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        self.range_from(prefix, prefix)
    }

    /// The keys under `prefix` from `start` on (in key order).
    pub fn range_from(&self, start: &str, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let v = self.call("/v3/kv/range", json!({ "key": b64(start.as_bytes()), "range_end": b64(&end) }))?;
        #[derive(Deserialize)]
        struct RawKv {
            key: String,
            #[serde(default)]
            value: String,
            #[serde(default)]
            create_revision: serde_json::Value,
            #[serde(default)]
            mod_revision: serde_json::Value,
            #[serde(default)]
            version: serde_json::Value,
            #[serde(default)]
            lease: serde_json::Value,
        }
        let raw: Vec<RawKv> = serde_json::from_value(v["kvs"].clone()).unwrap_or_default();
        let bad =
            |why: &str| EtcdError::Invalid { endpoint: String::new(), path: "/v3/kv/range".into(), why: why.into() };
        raw.into_iter()
            .map(|k| {
                Ok(Kv {
                    key: String::from_utf8(unb64(&k.key).ok_or_else(|| bad("a key is not base64"))?)
                        .map_err(|_| bad("a key is not UTF-8"))?,
                    value: unb64(&k.value).ok_or_else(|| bad("a value is not base64"))?,
                    create_revision: int(&k.create_revision),
                    mod_revision: int(&k.mod_revision),
                    version: int(&k.version),
                    lease: int(&k.lease),
                })
            })
            .collect()
    }

    /// A transaction: when `key`'s create revision is `create_revision` (0:
    /// the key does not exist), apply `puts` (key, value, lease) and
    /// `deletes`; returns whether it did.
    pub fn txn_if_created_at(
        &self,
        key: &str,
        create_revision: i64,
        puts: &[(String, Vec<u8>, i64)],
        deletes: &[String],
    ) -> Result<bool, EtcdError> {
        self.txn(&[Compare::Created { key: key.to_owned(), revision: create_revision }], puts, deletes)
    }

    /// A transaction: when every compare holds, apply `puts` (key, value,
    /// lease) and `deletes`; returns whether it did.
    pub fn txn(
        &self,
        compares: &[Compare],
        puts: &[(String, Vec<u8>, i64)],
        deletes: &[String],
    ) -> Result<bool, EtcdError> {
        let mut ops: Vec<serde_json::Value> = puts
            .iter()
            .map(|(k, v, lease)| {
                let mut put = json!({ "key": b64(k.as_bytes()), "value": b64(v) });
                if *lease != 0 {
                    put["lease"] = json!(lease.to_string());
                }
                json!({ "requestPut": put })
            })
            .collect();
        ops.extend(deletes.iter().map(|k| json!({ "requestDeleteRange": { "key": b64(k.as_bytes()) } })));
        let compare: Vec<serde_json::Value> = compares
            .iter()
            .map(|c| match c {
                Compare::Created { key, revision } => json!({
                    "key": b64(key.as_bytes()),
                    "result": "EQUAL",
                    "target": "CREATE",
                    "create_revision": revision.to_string(),
                }),
                Compare::Modified { key, revision } => json!({
                    "key": b64(key.as_bytes()),
                    "result": "EQUAL",
                    "target": "MOD",
                    "mod_revision": revision.to_string(),
                }),
            })
            .collect();
        let v = self.call("/v3/kv/txn", json!({ "compare": compare, "success": ops }))?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    /// The create revision of `key` (0: absent) and its value.
    pub fn get(&self, key: &str) -> Result<Option<(i64, Vec<u8>)>, EtcdError> {
        let v = self.call("/v3/kv/range", json!({ "key": b64(key.as_bytes()) }))?;
        let Some(kv) = v["kvs"].as_array().and_then(|a| a.first()) else { return Ok(None) };
        let value = kv["value"].as_str().and_then(unb64).unwrap_or_default();
        Ok(Some((int(&kv["create_revision"]), value)))
    }

    /// Removes `key`.
    pub fn delete(&self, key: &str) -> Result<(), EtcdError> {
        self.call("/v3/kv/deleterange", json!({ "key": b64(key.as_bytes()) }))?;
        Ok(())
    }

    /// Revokes lease `id` (its keys go with it).
    pub fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", json!({ "ID": id.to_string() }))?;
        Ok(())
    }
}

fn b64(bytes: &[u8]) -> String {
    crate::base64::encode(bytes)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    crate::base64::decode(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_http_host_and_port() {
        let c = |urls: &[&str]| Cluster { urls: urls.iter().map(|u| u.to_string()).collect(), ..Cluster::default() };
        let e = Etcd::new(&c(&["http://127.0.0.1:2379,http://127.0.0.1:2381/"])).unwrap();
        assert_eq!(e.endpoints, ["http://127.0.0.1:2379", "http://127.0.0.1:2381"]);
        assert!(Etcd::new(&c(&["127.0.0.1:2379"])).unwrap_err().to_string().contains("http://HOST:PORT"));
        assert!(Etcd::new(&c(&[])).is_err());
        // A CA for plain HTTP members is a mistake, said so.
        let ca = Cluster { ca: Some("ca.pem".into()), ..c(&["http://127.0.0.1:2379"]) };
        assert!(Etcd::new(&ca).unwrap_err().to_string().contains("https://"));
        assert_eq!(int(&json!("7587889733483373828")), 7_587_889_733_483_373_828);
        assert_eq!(int(&json!(3)), 3);
    }
}
