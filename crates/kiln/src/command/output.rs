//! What a command produced ([`Output`]), for a front end to render, and
//! the rows and views it is made of; `--json` prints its payload.
//!
//! For: the typed answers of [`super::execute`]. Must never: format text
//! for a terminal (the binary's renderers do).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::*;
use crate::bake::BakeReport;
use crate::digest::Digest;
use crate::image::store::{GcReport, TagEvent};
use crate::oci::{ImageConfig, Manifest};
use crate::release::plan::Plan;
use crate::runtime::logs::LogLine;
use crate::runtime::{InstanceRecord, VolumeInfo};
use crate::serve::history::Entry;

/// What a command produced, for a front end to render. On the wire (the
/// answer to `POST /v1/commands`) it is `{"kind": "baked", "output": ...}`;
/// `--json` prints the `output` part alone ([`Output::payload`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", content = "output", rename_all = "snake_case")]
pub enum Output {
    /// The controller's answer to a [`Command::Controller`] request.
    #[serde(skip)]
    Controller {
        #[serde(skip)]
        request: crate::serve::api::Request,
        answer: Box<crate::serve::answer::Answer>,
    },
    Baked(Vec<BakeReport>),
    Bases(Vec<crate::bake::base::BaseStatus>),
    DbUpdated(Box<crate::verify::osvdb::Updated>),
    Hosts(Vec<crate::fleet::HostRow>),
    FleetServices(Vec<crate::fleet::ServiceRow>),
    FleetSecrets(Vec<crate::fleet::secrets::SecretRow>),
    FleetLogs(crate::fleet::peer::FleetLogs),
    FleetPs(Vec<crate::fleet::ps::SlotRow>),
    /// Prometheus text (the API sends it as `text/plain`).
    FleetMetrics(String),
    /// `kiln verify-instances --cluster`: each live host and what it found
    /// (None: it did not answer in time).
    FleetVerified(Vec<(String, Option<crate::fleet::Verified>)>),
    FleetChaos(crate::fleet::chaos::ChaosReport),
    FleetDrill(crate::fleet::drill::DrillReport),
    FleetPlan(Box<crate::fleet::records::FleetPlan>),
    Images(Vec<ImageRow>),
    Inspect(Box<Inspection>),
    Gc(GcReport),
    Instance(Box<InstanceRecord>),
    Instances {
        instances: Vec<InstanceRecord>,
        orphans_removed: Vec<String>,
    },
    Logs(Vec<LogLine>),
    Volumes(Vec<VolumeInfo>),
    Secrets(Vec<String>),
    Plans(Vec<Plan>),
    History {
        entries: Vec<Entry>,
        /// Entries in the verified chain, when asked to verify.
        verified: Option<u64>,
    },
    Done {
        message: String,
    },
    Test(Box<crate::verify::gate::TestReport>),
    Key {
        name: String,
        public_key: PathBuf,
        pem: String,
    },
    Signed(Vec<crate::verify::sign::Signed>),
    Leaks(Box<crate::verify::leaks::LeakGate>),
    Vulns(Box<crate::verify::vulns::VulnReport>),
    Sbom(Box<crate::verify::sbom::SbomReport>),
    Promoted(Box<crate::verify::promote::Promoted>),
    Transfer(Box<crate::image::registry::Transfer>),
    Pipeline(Box<pipeline::PipelineReport>),
    Verified(crate::verify::sign::Verified),
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ImageRow {
    pub tags: Vec<String>,
    pub digest: Digest,
    pub size: u64,
    /// Unix time the newest of its tags was set.
    pub tagged_at: Option<i64>,
    pub revision: Option<String>,
    pub created: Option<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Inspection {
    pub digest: Digest,
    pub tags: Vec<String>,
    pub size: u64,
    pub manifest: Manifest,
    /// None for an artifact (a verification record).
    pub config: Option<ImageConfig>,
    pub tag_history: Vec<TagEvent>,
    /// Verification records about this image, by kind.
    pub records: Vec<crate::verify::Record>,
}

impl Output {
    /// The output alone, as `--json` prints it (pretty, fields in order).
    pub fn payload_json(&self) -> String {
        fn pretty<T: Serialize + ?Sized>(v: &T) -> String {
            serde_json::to_string_pretty(v).unwrap_or_default()
        }
        match self {
            Output::Controller { answer, .. } => pretty(answer),
            Output::Baked(x) => pretty(x),
            Output::Bases(x) => pretty(x),
            Output::DbUpdated(x) => pretty(x),
            Output::Hosts(x) => pretty(x),
            Output::FleetServices(x) => pretty(x),
            Output::FleetSecrets(x) => pretty(x),
            Output::FleetLogs(x) => pretty(x),
            Output::FleetPs(x) => pretty(x),
            Output::FleetMetrics(x) => x.clone(),
            Output::FleetVerified(x) => pretty(x),
            Output::FleetChaos(x) => pretty(x),
            Output::FleetDrill(x) => pretty(x),
            Output::FleetPlan(x) => pretty(x),
            Output::Images(x) => pretty(x),
            Output::Inspect(x) => pretty(x),
            Output::Gc(x) => pretty(x),
            Output::Instance(x) => pretty(x),
            Output::Instances { instances, orphans_removed } => {
                #[derive(Serialize)]
                struct Of<'a> {
                    instances: &'a [InstanceRecord],
                    orphans_removed: &'a [String],
                }
                pretty(&Of { instances, orphans_removed })
            }
            Output::Logs(x) => pretty(x),
            Output::Volumes(x) => pretty(x),
            Output::Secrets(x) => pretty(x),
            Output::Plans(x) => pretty(x),
            Output::History { entries, verified } => {
                #[derive(Serialize)]
                struct Of<'a> {
                    entries: &'a [Entry],
                    verified: &'a Option<u64>,
                }
                pretty(&Of { entries, verified })
            }
            Output::Done { message } => pretty(&serde_json::json!({ "message": message })),
            Output::Test(x) => pretty(x),
            Output::Key { name, public_key, pem } => {
                #[derive(Serialize)]
                struct Of<'a> {
                    name: &'a str,
                    public_key: &'a PathBuf,
                    pem: &'a str,
                }
                pretty(&Of { name, public_key, pem })
            }
            Output::Signed(x) => pretty(x),
            Output::Leaks(x) => pretty(x),
            Output::Vulns(x) => pretty(x),
            Output::Sbom(x) => pretty(x),
            Output::Promoted(x) => pretty(x),
            Output::Transfer(x) => pretty(x),
            Output::Pipeline(x) => pretty(x),
            Output::Verified(x) => pretty(x),
        }
    }
}
