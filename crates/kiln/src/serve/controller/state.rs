//! What the controller records per service (in `state.db`, as JSON):
//! the stable and previous releases, the release in progress, quarantined
//! instances, a service taken down, and a service whose reconcile fails.
//!
//! For: the recorded state every act reads and writes. Must never: act.

use super::*;

/// A release that serves (or served).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRef {
    pub id: String,
    pub digest: Digest,
    pub image_ref: String,
    /// The service settings it runs with
    /// ([`crate::spec::ServiceSpec::release_fields`]); empty in older state.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

/// What the controller records per service (in `state.db`, as JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceState {
    pub stable: Option<ReleaseRef>,
    /// The release replaced last, kept warm until `warm_until_ms`.
    pub previous: Option<(ReleaseRef, u64)>,
    pub rollout: Option<Active>,
    /// The last release that ended: id, outcome, reason.
    pub last: Option<(String, Outcome, String)>,
    /// Replacements under way and the crash count of the stable release.
    #[serde(default)]
    pub heal: HealState,
    /// Frozen instances kept for a post-mortem, by id.
    #[serde(default)]
    pub quarantined: BTreeMap<String, Quarantine>,
    /// Taken down (`kiln down`): its instances drain and go, then its load
    /// balancer; a deploy brings it back.
    #[serde(default)]
    pub down: Option<Down>,
}

/// A service taken down, and whether that is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Down {
    pub actor: String,
    pub at_ms: u64,
    /// Its volumes go too once its instances are gone.
    pub purge: bool,
    /// Its instances and load balancer are gone.
    pub done: bool,
}

/// Why and until when an instance is kept frozen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantine {
    pub release: String,
    pub reason: String,
    pub actor: String,
    pub at_ms: u64,
    pub until_ms: u64,
    /// Where its logs, tmpfs and volume contents were copied.
    pub dir: PathBuf,
}

/// A rollout and the old release's size when it began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Active {
    pub rollout: Rollout,
    pub old_at_start: u32,
    /// New instances that failed by themselves, and the last one's exit.
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub last_failure: Option<String>,
    /// A rollback drill (`kiln chaos --drill canary`) with its analysis
    /// window: the load balancer injects [`DRILL_FAULT`] for this release,
    /// which must fail and roll back; it is never promoted.
    #[serde(default)]
    pub drill: Option<u64>,
}

/// A service whose reconcile fails, retried with backoff while the others
/// go on (kube-rs's `error_policy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failing {
    pub error: String,
    pub since_ms: u64,
    pub attempts: u32,
    pub next_ms: u64,
}
