//! Where a fleet's replicas go: the pure placement decision of the leading
//! controller, from the services' desired replicas, the hosts whose lease
//! is alive, and the current assignments. Replicas spread across hosts (the
//! host with the fewest slots first, then by name); a slot on a host that
//! left is moved to a live one; a changed image is assigned in place (the
//! host's agent replaces the instance start-first); slots beyond the
//! replicas, or of services no longer desired, are removed.
//!
//! For: deciding. Must never: do I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::bluegreen::{BlueGreen, Color};
use super::reconcile::Assignment;

/// A service's desired state (`/kiln/services/NAME`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Desired {
    /// `REGISTRY/REPO@sha256:…`.
    pub image: String,
    pub replicas: u32,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Memory each replica is limited to, and needs free on its host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU each replica is limited to, in thousandths of a core, and
    /// needs unclaimed on its host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub millicpus: Option<u64>,
    /// At most one instance of each slot at any time (see [`decide`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub singleton: bool,
    /// The port every live host's load balancer for this service listens
    /// on (at the host's advertised address), each knowing every host's
    /// instances. None: no load balancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<u16>,
    /// The load balancers' health check: `GET path` must answer 2xx/3xx
    /// (None: the port must accept a connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// A canary: its own slots (`NAME-canary-I`) of another image, given
    /// `weight` percent of every load balancer's requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// Which set of slots is stable (see [`super::bluegreen`]): the
    /// leader's to flip at a blue-green switch, never kiln.toml's.
    #[serde(default, skip_serializing_if = "Color::is_blue")]
    pub color: Color,
    /// A blue-green release: the other set, before or after its switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreen>,
    /// kiln.toml's `channel`: every host runs only digests promoted to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The image this one replaced (a deploy's or a promotion's): where
    /// `kiln rollback --cluster` goes back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// kiln.toml's `secrets`, each at the version the deploy found newest
    /// (`kiln secret set --cluster`): a rotation is a new release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FleetSecret>,
    /// kiln.toml's `volumes` (name, path inside): each host's own, shared
    /// by the service's instances there. Data stays on its host: a slot
    /// moved to another host (host lost, drained) starts with that host's
    /// volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<(String, String)>,
    /// kiln.toml's edge keys for every host's load balancer: the host
    /// names and path prefixes it answers (services of one port share its
    /// listener by them).
    #[serde(default, skip_serializing_if = "FleetEdge::is_empty")]
    pub edge: FleetEdge,
}

/// What a fleet service's load balancers answer, beyond their port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetEdge {
    /// Host names (`*.example.com` for one label); none: every name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Path prefixes; none: every path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// HTTPS with this certificate (every host's load balancer serves it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<FleetTls>,
    /// A plain-HTTP listener on this port of every host that redirects to
    /// HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_http: Option<u16>,
}

/// A fleet service's certificate: the chain in the clear (it is public),
/// its key a fleet secret at one version (sealed in etcd like any other,
/// opened by each host's agent with its KEK).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetTls {
    /// The certificate chain, PEM (empty while an ACME certificate is
    /// still to be obtained).
    pub cert: String,
    /// Its key: `tls-SERVICE-HASH` (the key's own digest), at a version.
    pub key: FleetSecret,
    /// kiln.toml's files on the deploying machine, read, checked and
    /// sealed by the deploy there; never stored or sent.
    #[serde(skip)]
    pub files: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The certificate comes from this ACME CA: the leading controller
    /// obtains and renews it (see [`super::acme`]) and writes `cert` and
    /// `key` here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<FleetAcme>,
}

/// kiln.toml's `tls = { acme = URL, … }` for a fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetAcme {
    /// The CA's directory URL (https).
    pub directory: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The PEM of the CA file that signs the ACME server's own
    /// certificate (kiln.toml's `tls.ca`, read where the deploy runs: a
    /// controller on another machine has no such file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// kiln.toml's `tls.ca` on the deploying machine; never stored.
    #[serde(skip)]
    pub ca_file: Option<std::path::PathBuf>,
    /// A certificate is renewed this long before it expires.
    pub renew_before_secs: i64,
}

impl FleetTls {
    /// Whether `other` asks the same CA for the same names' certificate as
    /// this one (a certificate obtained for one serves the other).
    pub fn same_order(&self, hosts: &[String], other: &FleetTls, other_hosts: &[String]) -> bool {
        let of = |a: &FleetAcme| (a.directory.clone(), a.ca_pem.clone());
        hosts == other_hosts
            && self.acme.as_ref().map(of).is_some()
            && self.acme.as_ref().map(of) == other.acme.as_ref().map(of)
    }
}

impl FleetEdge {
    pub fn is_empty(&self) -> bool {
        *self == FleetEdge::default()
    }

    /// As the one parser takes it, with the certificate's files where a
    /// host has them (for a check anywhere else, any path will do: the
    /// files are checked when they are read).
    /// `ip`: the host's address, where its redirect listener binds.
    pub fn site<'a>(
        &'a self,
        tls: Option<(&'a std::path::Path, &'a std::path::Path)>,
        ip: std::net::IpAddr,
    ) -> crate::spec::FleetSite<'a> {
        const CHECK: (&str, &str) = ("/fleet/tls/cert.pem", "/fleet/tls/key.pem");
        let tls = self.tls.as_ref().map(|_| tls.unwrap_or((CHECK.0.as_ref(), CHECK.1.as_ref())));
        crate::spec::FleetSite {
            hosts: &self.hosts,
            paths: &self.paths,
            tls,
            acme: self.tls.as_ref().and_then(|t| t.acme.as_ref()).map(|a| a.directory.as_str()),
            redirect_http: self.redirect_http.map(|p| std::net::SocketAddr::new(ip, p)),
        }
    }
}

/// A secret a fleet service uses, at one version of it: at
/// `/run/secrets/NAME`, and as `env` when given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSecret {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// The sealed version (empty until a deploy resolves it).
    #[serde(default)]
    pub version: String,
}

/// A fleet canary: `replicas` instances of `image` given `weight` percent
/// of the service's requests, on every host's load balancer alike, so the
/// fleet-wide share is exact (each load balancer's schedule is).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// `REGISTRY/REPO@sha256:…`.
    pub image: String,
    pub replicas: u32,
    /// Percent of requests, 0 to 100: the current step's when analysed.
    pub weight: u32,
    /// Analysed steps (weights, percent): the leading controller moves
    /// through them, judging the whole fleet's counts at the end of each
    /// (see [`super::canary`]), and promotes after the last. Empty: the
    /// weight stays until the next `kiln place`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<u32>,
    /// How long each step lasts (and the window it is judged on).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub step_secs: u64,
    /// Pauses after steps, by the step's index, in seconds (0: until
    /// `kiln promote --cluster`): kiln.toml's `"pause"` and
    /// `{ pause = "1m" }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pauses: BTreeMap<usize, u64>,
    /// Where the leader is in the steps (None: not started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<super::canary::Progress>,
    /// The analysis's limits, where not kiln.toml's defaults: how far the
    /// canary's error rate may exceed stable's (0.01: one point), and its
    /// p99 latency (a ratio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ratio: Option<f64>,
    /// A rollback drill (`kiln chaos --drill canary --cluster`): every
    /// load balancer counts each request the canary is chosen for against
    /// it with this status and sends it on to stable (no backend saw it,
    /// no client sees it). Analysis must abort it; it is never promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<u16>,
}

impl Canary {
    /// The analysis its steps are judged with.
    pub fn analysis(&self) -> crate::spec::AnalysisSpec {
        let d = crate::spec::AnalysisSpec::default();
        crate::spec::AnalysisSpec {
            max_error_rate: self.max_error_rate.unwrap_or(d.max_error_rate),
            max_p99_ratio: self.max_p99_ratio.unwrap_or(d.max_p99_ratio),
            ..d
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Desired {
    /// What each slot of service `name` running `image` is assigned.
    pub fn assignment(&self, name: &str, image: &str) -> Assignment {
        Assignment {
            image: image.to_owned(),
            service: name.to_owned(),
            env: self.env.clone(),
            memory_bytes: self.memory_bytes,
            millicpus: self.millicpus,
            singleton: self.singleton,
            health: self.health.clone(),
            channel: self.channel.clone(),
            secrets: self.secrets.clone(),
            volumes: self.volumes.clone(),
            epoch: 0,
        }
    }

    /// The slots this service wants, with their image: its replicas in
    /// the stable set (`NAME-I`, or `NAME-green-I`), then a canary's
    /// (`NAME-canary-I`), then a blue-green release's other set.
    pub fn slots(&self, name: &str) -> Vec<(String, &str)> {
        let mut out: Vec<(String, &str)> =
            (0..self.replicas).map(|i| (self.color.slot(name, i), self.image.as_str())).collect();
        if let Some(c) = &self.canary {
            out.extend((0..c.replicas).map(|i| (format!("{name}-canary-{i}"), c.image.as_str())));
        }
        if let Some(bg) = self.blue_green.as_ref().filter(|bg| bg.holds_slots()) {
            out.extend((0..self.replicas).map(|i| (self.color.other().slot(name, i), bg.image.as_str())));
        }
        out
    }
}

/// Whether services `a` and `b` could want a slot of the same name: one's
/// green set or canary (`web-green-0`, `web-canary-0`) is the other's blue
/// set (service `web-green`, `web-canary`). Slots are keyed by name on
/// each host, so two such services cannot both be in a fleet.
pub fn slots_clash(a: &str, b: &str) -> bool {
    let under = |x: &str, y: &str| ["-green", "-canary"].iter().any(|s| x.strip_suffix(s) == Some(y));
    a != b && (under(a, b) || under(b, a))
}

/// How many slots of a service may be changing image at once.
const MAX_IN_FLUX: usize = 1;

/// A live host as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostInfo {
    pub memory_bytes: u64,
    /// Its CPUs, in thousandths of a core.
    pub millicpus: u64,
    /// `kiln drain-host`: its slots move away, surge-first.
    pub draining: bool,
    /// Slots its agent reports it cannot start (a pull or a start that
    /// failed twice running): they are placed elsewhere, as a draining
    /// host's are.
    pub failing: BTreeSet<String>,
    /// The slots its agent reports running (and ready), with the release
    /// each runs ([`Assignment::release`]).
    pub running: BTreeMap<String, String>,
}

/// A change to the assignments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Assign { host: String, slot: String, assignment: Box<Assignment> },
    Unassign { host: String, slot: String },
}

/// The changes that bring `current` ((host, slot) → assignment) to
/// `services` on the live `hosts`, and notes on what could not be placed.
/// A new slot goes to the host, not draining, with room for its memory,
/// that has the fewest slots (then by name). A slot on a draining host is
/// first assigned to another host as well, and leaves the draining one only
/// once that host reports it running (surge-first). With no eligible
/// host, a slot waits (and is named in the notes). A singleton's slot on
/// a host in `fencing` (its lease gone, but not for long enough that its
/// agent must have stopped it) stays assigned there and is not placed
/// elsewhere until the fence has passed: never two at once.
pub fn decide(
    services: &BTreeMap<String, Desired>,
    hosts: &BTreeMap<String, HostInfo>,
    current: &BTreeMap<(String, String), Assignment>,
    fencing: &BTreeSet<String>,
) -> (Vec<Change>, Vec<String>) {
    let mut changes = Vec::new();
    let mut notes = Vec::new();
    let live = |h: &String| hosts.contains_key(h);
    // Slots, memory and CPU claimed per live host, as they will be.
    let mut load: BTreeMap<&str, (usize, u64, u64)> = hosts.keys().map(|h| (h.as_str(), (0, 0, 0))).collect();
    for ((host, _), a) in current.iter().filter(|((h, _), _)| live(h)) {
        let e = load.entry(host.as_str()).or_default();
        e.0 += 1;
        e.1 += a.memory_bytes.unwrap_or(0);
        e.2 += a.millicpus.unwrap_or(0);
    }
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    for (name, d) in services {
        // Slots assigned but not yet running what they are assigned.
        let mut in_flux = current
            .iter()
            .filter(|((h, s), a)| {
                hosts.get(h).is_some_and(|info| {
                    d.slots(name).iter().any(|(slot, _)| slot == s) && info.running.get(s) != Some(&a.release())
                })
            })
            .count();
        for (slot, image) in d.slots(name) {
            let assignment = d.assignment(name, image);
            if d.singleton {
                if let Some((host, _)) = current.keys().find(|(h, s)| *s == slot && fencing.contains(h)) {
                    notes.push(format!("{slot}: singleton on {host}, lost; moved once its agent must have stopped it"));
                    wanted.insert((host.clone(), slot.clone()));
                    continue;
                }
            }
            let on: Vec<&String> = current.keys().filter(|(h, s)| *s == slot && live(h)).map(|(h, _)| h).collect();
            // A host leaving (drained) or failing this slot keeps its copy
            // until a settled one runs elsewhere.
            let leaving = |h: &String| hosts[h].draining || hosts[h].failing.contains(&slot);
            let settled: Vec<&String> = on.iter().copied().filter(|h| !leaving(h)).collect();
            for host in &settled {
                wanted.insert(((*host).clone(), slot.clone()));
                let had = current.get(&((*host).clone(), slot.clone())).map(Assignment::unstamped);
                let had = had.as_ref();
                // Rolling: one slot of a service is replaced at a time; the
                // next once its host runs the new one.
                if had.is_some_and(|a| *a != assignment) {
                    if in_flux >= MAX_IN_FLUX {
                        continue;
                    }
                    in_flux += 1;
                }
                if had != Some(&assignment) {
                    changes.push(Change::Assign {
                        host: (*host).clone(),
                        slot: slot.clone(),
                        assignment: Box::new(assignment.clone()),
                    });
                }
            }
            // Draining copies stay until a settled copy runs.
            let ready = settled.iter().any(|h| hosts[*h].running.contains_key(&slot));
            for host in on.iter().filter(|h| leaving(h)) {
                if !ready {
                    wanted.insert(((*host).clone(), slot.clone()));
                }
            }
            if settled.is_empty() {
                let need = d.memory_bytes.unwrap_or(0);
                let cpu = d.millicpus.unwrap_or(0);
                let pick = load
                    .iter()
                    .filter(|(h, (_, used, cpu_used))| {
                        let info = &hosts[**h];
                        !info.draining
                            && !info.failing.contains(&slot)
                            && info.memory_bytes.saturating_sub(*used) >= need
                            && info.millicpus.saturating_sub(*cpu_used) >= cpu
                    })
                    .min_by_key(|(h, (n, _, _))| (*n, **h))
                    .map(|(h, _)| h.to_string());
                match pick {
                    Some(host) => {
                        let e = load.entry(hosts.get_key_value(&host).map_or("", |(k, _)| k.as_str())).or_default();
                        e.0 += 1;
                        e.1 += need;
                        e.2 += cpu;
                        wanted.insert((host.clone(), slot.clone()));
                        changes.push(Change::Assign { host, slot, assignment: Box::new(assignment) });
                    }
                    None => notes.push(format!(
                        "{slot}: no live host, not draining, has {need} bytes and {cpu} millicpus unclaimed"
                    )),
                }
            }
        }
    }
    for (host, slot) in current.keys() {
        if !wanted.contains(&(host.clone(), slot.clone())) {
            changes.push(Change::Unassign { host: host.clone(), slot: slot.clone() });
        }
    }
    (changes, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(c: char) -> String {
        format!("r:5000/web@sha256:{}", c.to_string().repeat(64))
    }

    fn hosts(names: &[&str]) -> BTreeMap<String, HostInfo> {
        names
            .iter()
            .map(|n| (n.to_string(), HostInfo { memory_bytes: 8 << 30, millicpus: 2000, ..HostInfo::default() }))
            .collect()
    }

    #[test]
    fn services_whose_slots_could_share_names_clash() {
        assert!(slots_clash("web", "web-green") && slots_clash("web-canary", "web"));
        for (a, b) in [("web", "web"), ("web", "api"), ("web", "webgreen"), ("web", "web-green-1"), ("web", "web-blue")]
        {
            assert!(!slots_clash(a, b), "{a} {b}");
        }
        // What it guards: the names really meet.
        let green = Desired { color: Color::Green, ..plain() };
        let slots = |name: &str, d: &Desired| d.slots(name).into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(slots("web", &green), slots("web-green", &plain()));
    }

    fn plain() -> Desired {
        Desired { replicas: 1, listen: None, ..crate::fleet::fixtures::desired(&img('a')) }
    }

    fn apply(current: &mut BTreeMap<(String, String), Assignment>, changes: &[Change]) {
        for c in changes {
            match c {
                Change::Assign { host, slot, assignment } => {
                    current.insert((host.clone(), slot.clone()), (**assignment).clone());
                }
                Change::Unassign { host, slot } => {
                    current.remove(&(host.clone(), slot.clone()));
                }
            }
        }
    }

    #[test]
    fn replicas_spread_move_off_a_lost_host_and_follow_the_image() {
        let d = |c: char, replicas: u32| Desired {
            image: img(c),
            replicas,
            env: vec![],
            memory_bytes: None,
            singleton: false,
            ..plain()
        };
        let services = BTreeMap::from([("web".to_owned(), d('a', 3))]);
        let mut hosts = hosts(&["h1", "h2", "h3"]);
        let mut current = BTreeMap::new();
        let (c, _) = decide(&services, &hosts, &current, &BTreeSet::new());
        apply(&mut current, &c);
        let used: BTreeSet<&String> = current.keys().map(|(h, _)| h).collect();
        assert_eq!(used.len(), 3, "one replica per host: {current:?}");
        assert!(decide(&services, &hosts, &current, &BTreeSet::new()).0.is_empty(), "stable once placed");
        // h2 is lost: its slot moves to a live host, and leaves h2.
        hosts.remove("h2");
        let (c, _) = decide(&services, &hosts, &current, &BTreeSet::new());
        assert!(c.iter().any(|x| matches!(x, Change::Unassign { host, .. } if host == "h2")), "{c:?}");
        apply(&mut current, &c);
        assert_eq!(current.len(), 3);
        assert!(current.keys().all(|(h, _)| h != "h2"));
        // A new image: assigned in place, no slot moves, one slot at a
        // time: the next once its host runs the new one.
        let before: BTreeSet<(String, String)> = current.keys().cloned().collect();
        let services = BTreeMap::from([("web".to_owned(), d('b', 3))]);
        let run_all = |hosts: &mut BTreeMap<String, HostInfo>, current: &BTreeMap<(String, String), Assignment>| {
            for ((h, s), a) in current {
                hosts.get_mut(h).unwrap().running.insert(s.clone(), a.release());
            }
        };
        run_all(&mut hosts, &current);
        for round in 0..3 {
            let (c, _) = decide(&services, &hosts, &current, &BTreeSet::new());
            assert_eq!(c.len(), 1, "round {round}: one slot at a time: {c:?}");
            apply(&mut current, &c);
            assert!(decide(&services, &hosts, &current, &BTreeSet::new()).0.is_empty(), "waits for it to run");
            run_all(&mut hosts, &current);
        }
        assert!(current.values().all(|a| a.image == img('b')));
        assert_eq!(current.keys().cloned().collect::<BTreeSet<_>>(), before);
        // Scaled to one: two slots go.
        let one = BTreeMap::from([("web".to_owned(), d('b', 1))]);
        let (c, _) = decide(&one, &hosts, &current, &BTreeSet::new());
        assert_eq!(c.iter().filter(|x| matches!(x, Change::Unassign { .. })).count(), 2);
        // No live host: nothing placed, and said so.
        let (c, notes) = decide(&one, &BTreeMap::new(), &BTreeMap::new(), &BTreeSet::new());
        assert!(c.is_empty() && notes[0].contains("web-0"), "{notes:?}");
    }

    #[test]
    fn memory_is_respected_and_a_drained_host_is_left_surge_first() {
        let mut hosts = hosts(&["h1", "h2"]);
        hosts.get_mut("h1").unwrap().memory_bytes = 1 << 30;
        let big = Desired {
            image: img('a'),
            replicas: 2,
            env: vec![],
            memory_bytes: Some(3 << 30),
            singleton: false,
            ..plain()
        };
        let services = BTreeMap::from([("db".to_owned(), big)]);
        let mut current = BTreeMap::new();
        let (c, notes) = decide(&services, &hosts, &current, &BTreeSet::new());
        apply(&mut current, &c);
        // Only h2 has room, for two replicas of 3 GiB in 8 GiB.
        assert!(current.keys().all(|(h, _)| h == "h2"), "{current:?}");
        assert_eq!(current.len(), 2);
        assert!(notes.is_empty());
        // Three replicas: the third fits nowhere, and waits.
        let three = BTreeMap::from([(
            "db".to_owned(),
            Desired {
                image: img('a'),
                replicas: 3,
                env: vec![],
                memory_bytes: Some(3 << 30),
                singleton: false,
                ..plain()
            },
        )]);
        let (c, notes) = decide(&three, &hosts, &current, &BTreeSet::new());
        assert!(c.is_empty() && notes[0].starts_with("db-2"), "{c:?} {notes:?}");

        // Draining h1 with one small slot: first a copy on h2; h1 keeps its
        // slot until h2 reports it running; then h1's goes.
        let mut hosts = self::hosts(&["h1", "h2"]);
        let web = BTreeMap::from([(
            "web".to_owned(),
            Desired { image: img('a'), replicas: 1, env: vec![], memory_bytes: None, singleton: false, ..plain() },
        )]);
        let mut current = BTreeMap::new();
        let (c, _) = decide(&web, &hosts, &current, &BTreeSet::new());
        apply(&mut current, &c);
        let first = current.keys().next().unwrap().0.clone();
        let other = if first == "h1" { "h2" } else { "h1" };
        hosts.get_mut(&first).unwrap().draining = true;
        let (c, _) = decide(&web, &hosts, &current, &BTreeSet::new());
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(matches!(&c[0], Change::Assign { host, .. } if host == other));
        apply(&mut current, &c);
        assert_eq!(current.len(), 2, "surge: both hold the slot");
        assert!(decide(&web, &hosts, &current, &BTreeSet::new()).0.is_empty(), "waits for the new copy to run");
        hosts.get_mut(other).unwrap().running.insert("web-0".into(), "whatever it runs".into());
        let (c, _) = decide(&web, &hosts, &current, &BTreeSet::new());
        assert_eq!(c, vec![Change::Unassign { host: first.clone(), slot: "web-0".into() }]);
    }

    #[test]
    fn a_slot_its_host_cannot_start_goes_elsewhere() {
        let mut hosts = hosts(&["h1", "h2"]);
        let services = BTreeMap::from([("web".to_owned(), Desired { replicas: 1, ..plain() })]);
        let mut current = BTreeMap::new();
        let (c, _) = decide(&services, &hosts, &current, &BTreeSet::new());
        apply(&mut current, &c);
        assert!(current.contains_key(&("h1".to_owned(), "web-0".to_owned())));
        // h1 cannot pull it: a copy goes to h2, and h1's leaves once h2 runs it.
        hosts.get_mut("h1").unwrap().failing.insert("web-0".into());
        let (c, _) = decide(&services, &hosts, &current, &BTreeSet::new());
        assert_eq!(c.len(), 1);
        assert!(matches!(&c[0], Change::Assign { host, .. } if host == "h2"), "{c:?}");
        apply(&mut current, &c);
        hosts.get_mut("h2").unwrap().running.insert("web-0".into(), "whatever it runs".into());
        let (c, _) = decide(&services, &hosts, &current, &BTreeSet::new());
        assert_eq!(c, vec![Change::Unassign { host: "h1".into(), slot: "web-0".into() }]);
        // Both fail it: it stays where it is, and the note says so.
        let mut hosts = self::hosts(&["h1", "h2"]);
        for h in ["h1", "h2"] {
            hosts.get_mut(h).unwrap().failing.insert("web-0".into());
        }
        let current =
            BTreeMap::from([(("h1".to_owned(), "web-0".to_owned()), current.values().next().unwrap().clone())]);
        let (c, notes) = decide(&services, &hosts, &current, &BTreeSet::new());
        assert!(c.is_empty(), "{c:?}");
        assert!(notes[0].starts_with("web-0"), "{notes:?}");
    }

    #[test]
    fn cpus_are_claimed_like_memory() {
        // Two hosts of 2 cores; replicas of 1.5 cores: one per host, the
        // third waits.
        let hosts = hosts(&["h1", "h2"]);
        let d = Desired { replicas: 3, millicpus: Some(1500), ..plain() };
        let (c, notes) = decide(&BTreeMap::from([("cpu".to_owned(), d)]), &hosts, &BTreeMap::new(), &BTreeSet::new());
        let on: BTreeSet<String> = c
            .iter()
            .filter_map(|x| if let Change::Assign { host, .. } = x { Some(host.clone()) } else { None })
            .collect();
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(on.len(), 2, "one per host");
        assert!(notes[0].contains("1500 millicpus"), "{notes:?}");
    }

    #[test]
    fn a_lost_singleton_moves_only_after_the_fence() {
        let mut hosts = hosts(&["h1", "h2"]);
        let one = Desired { image: img('a'), replicas: 1, env: vec![], memory_bytes: None, singleton: true, ..plain() };
        let services = BTreeMap::from([("db".to_owned(), one)]);
        let mut current = BTreeMap::new();
        let (c, _) = decide(&services, &hosts, &current, &BTreeSet::new());
        apply(&mut current, &c);
        let (host, _) = current.keys().next().unwrap().clone();
        hosts.remove(&host);
        // Lost, but maybe still running there: kept, placed nowhere else.
        let fencing = BTreeSet::from([host.clone()]);
        let (c, notes) = decide(&services, &hosts, &current, &fencing);
        assert!(c.is_empty(), "{c:?}");
        assert!(notes[0].contains("singleton"), "{notes:?}");
        // The fence passed: moved.
        let (c, _) = decide(&services, &hosts, &current, &BTreeSet::new());
        assert_eq!(c.len(), 2, "assigned elsewhere and removed from the lost host: {c:?}");
    }
}
