//! The unit tests of `remote`.

use super::*;

#[test]
fn a_job_round_trips_and_names_what_is_wrong() {
    let job = Job {
        command: Command::Bake {
            file: "/src/kiln.toml".into(),
            image: None,
            no_cache: false,
            force: true,
            update_base: false,
        },
        source_date_epoch: Some(1),
    };
    let text = serde_json::to_string(&job).unwrap();
    assert_eq!(serde_json::from_str::<Job>(&text).unwrap(), job);
    // Optional fields may be left out.
    let short: Job = serde_json::from_str(r#"{"command": {"images": {}}}"#).unwrap();
    assert_eq!(short.command, Command::Images {});
    let bad = serde_json::from_str::<Job>(r#"{"command": {"bake": {"file": "/k", "colour": 1}}}"#).unwrap_err();
    assert!(bad.to_string().contains("colour"), "{bad}");
    assert!(serde_json::from_str::<Job>(r#"{"command": {"proxy": {}}}"#).is_err(), "kiln proxy is not a body");
    let rel = Job { command: Command::Plan { file: "kiln.toml".into(), service: None }, source_date_epoch: None };
    match rel.check() {
        Err(CommandError::BadRequest { field, .. }) => assert_eq!(field, "plan.file"),
        other => panic!("{other:?}"),
    }
    let abs = rel.absolute().unwrap();
    assert!(matches!(&abs.command, Command::Plan { file, .. } if file.is_absolute()));
    // A file to read must be there (404 by variant), one to consult
    // (an allowlist) may be absent.
    let gone = Job { command: Command::Plan { file: "/no/such/kiln.toml".into(), service: None }, ..abs };
    assert!(matches!(gone.check(), Err(CommandError::NoFile { ref field, .. }) if field == "plan.file"));
    assert_eq!(status(&gone.check().unwrap_err()), 404);
    let dir = Job { command: Command::Plan { file: "/".into(), service: None }, source_date_epoch: None };
    assert!(matches!(dir.check(), Err(CommandError::NoFile { .. })), "a directory is not a kiln.toml");
    let optional = Command::ScanSecrets { file: "/no/such/kiln.toml".into(), reference: "x".into() };
    assert!(Job { command: optional, source_date_epoch: None }.check().is_ok());
}

/// The name of a command in a body; exhaustive, so a new command cannot
/// be added without deciding its wire name (and documenting it).
fn wire_name(c: &Command) -> Option<&'static str> {
    Some(match c {
        Command::Controller(_)
        | Command::Proxy(_)
        | Command::RotateKey { .. }
        | Command::DbUpdate { .. }
        | Command::Agent { .. }
        | Command::Assign { .. }
        | Command::FleetController { .. }
        | Command::Place { .. }
        | Command::FleetChange { .. }
        | Command::FleetRemote { .. }
        | Command::DrainHost { .. }
        | Command::Hosts { .. }
        | Command::FleetHistory { .. }
        | Command::FleetSecret { .. }
        | Command::FleetLogs { .. }
        | Command::FleetPs { .. }
        | Command::FleetMetrics { .. }
        | Command::FleetVerify { .. }
        | Command::FleetChaos { .. }
        | Command::FleetKill { .. }
        | Command::FleetDrill { .. }
        | Command::FleetQuarantine { .. }
        | Command::FleetServices { .. }
        | Command::Login { .. }
        | Command::Logout { .. } => return None,
        Command::Bake { .. } => "bake",
        Command::BasesOutdated { .. } => "bases_outdated",
        Command::Images {} => "images",
        Command::Inspect { .. } => "inspect",
        Command::Gc { .. } => "gc",
        Command::Run { .. } => "run",
        Command::Ps { .. } => "ps",
        Command::Stop { .. } => "stop",
        Command::Rm { .. } => "rm",
        Command::Pause { .. } => "pause",
        Command::Resume { .. } => "resume",
        Command::Logs(_) => "logs",
        Command::Volumes {} => "volumes",
        Command::SecretSet { .. } => "secret_set",
        Command::SecretList {} => "secret_list",
        Command::SecretRemove { .. } => "secret_remove",
        Command::Plan { .. } => "plan",
        Command::History { .. } => "history",
        Command::Test { .. } => "test",
        Command::ScanSecrets { .. } => "scan_secrets",
        Command::Scan { .. } => "scan",
        Command::PromoteImage { .. } => "promote_image",
        Command::Release(_) => "release",
        Command::Push { .. } => "push",
        Command::Pull { .. } => "pull",
        Command::Sbom { .. } => "sbom",
        Command::KeyGenerate { .. } => "key_generate",
        Command::Sign { .. } => "sign",
        Command::VerifySignature { .. } => "verify_signature",
    })
}

/// A value of a schema's type (the first non-null one).
fn sample(schema: &Value) -> Value {
    let ty = match &schema["type"] {
        Value::Array(t) => t.iter().find(|t| *t != "null").cloned().unwrap_or(Value::Null),
        t => t.clone(),
    };
    match ty.as_str() {
        Some("string") => json!("/x"),
        Some("boolean") => json!(true),
        Some("integer") => json!(1),
        Some("number") => json!(0.5),
        Some("array") => match schema["items"]["type"].as_str() {
            Some("string") => json!(["a", "/b"]),
            _ if schema["items"]["type"] == "integer" => json!([1, 2]),
            _ => json!([sample(&schema["items"])]),
        },
        Some("object") => {
            let mut o = serde_json::Map::new();
            for (k, v) in schema["properties"].as_object().into_iter().flatten() {
                o.insert(k.clone(), sample(v));
            }
            Value::Object(o)
        }
        _ => Value::Null,
    }
}

#[test]
fn the_openapi_document_describes_every_command_body() {
    let doc: Value = serde_json::from_str(crate::serve::OPENAPI).unwrap();
    let variants = doc["components"]["schemas"]["Command"]["oneOf"].as_array().unwrap();
    let mut documented = std::collections::BTreeSet::new();
    for v in variants {
        let (name, schema) = v["properties"].as_object().unwrap().iter().next().unwrap();
        assert_eq!(schema["additionalProperties"], false, "{name}: unknown fields are refused");
        // Every documented field, filled in, is taken by the parser...
        let full = json!({ "command": { name.as_str(): sample(schema) } });
        let job: Job = serde_json::from_value(full.clone()).unwrap_or_else(|e| panic!("{name}: {full}: {e}"));
        documented.insert(wire_name(&job.command).unwrap());
        // ...the required ones are enough...
        let mut min = serde_json::Map::new();
        for r in schema["required"].as_array().into_iter().flatten() {
            let r = r.as_str().unwrap();
            min.insert(r.into(), sample(&schema["properties"][r]));
        }
        let body = json!({ "command": { name.as_str(): min } });
        serde_json::from_value::<Job>(body.clone()).unwrap_or_else(|e| panic!("{name}: {body}: {e}"));
        // ...and one of them left out is refused.
        if let Some(first) = schema["required"].as_array().and_then(|r| r.first()) {
            let mut less = min.clone();
            less.remove(first.as_str().unwrap());
            let body = json!({ "command": { name.as_str(): less } });
            assert!(serde_json::from_value::<Job>(body.clone()).is_err(), "{name}: {body} lacks {first}");
        }
    }
    // Every command a front end can build is documented, once.
    let all = [
        Command::Bake { file: "/k".into(), image: None, no_cache: false, force: false, update_base: false },
        Command::BasesOutdated { file: "/k".into() },
        Command::Images {},
        Command::Inspect { reference: "r".into() },
        Command::Gc { dry_run: true },
        Command::Run { request: Default::default(), service_file: None },
        Command::Ps { all: true },
        Command::Stop { instance: "i".into(), grace_secs: None },
        Command::Rm { instance: "i".into(), force: false },
        Command::Pause { instance: "i".into() },
        Command::Resume { instance: "i".into() },
        Command::Logs(Default::default()),
        Command::Volumes {},
        Command::SecretSet { name: "n".into(), value: vec![1] },
        Command::SecretList {},
        Command::SecretRemove { name: "n".into() },
        Command::Plan { file: "/k".into(), service: None },
        Command::History { service: None, verify: false },
        Command::Test { file: "/k".into(), reference: "r".into() },
        Command::ScanSecrets { file: "/k".into(), reference: "r".into() },
        Command::Scan { file: "/k".into(), reference: "r".into(), db: None, force: false },
        Command::PromoteImage { file: "/k".into(), reference: "r".into(), to: "prod".into(), actor: "a".into() },
        Command::Release(super::super::pipeline::ReleaseRun {
            file: "/k".into(),
            service: None,
            db: None,
            force_db: false,
            to: None,
            actor: "a".into(),
        }),
        Command::Push {
            reference: "r".into(),
            remote: "127.0.0.1:5000/r".into(),
            registry: Default::default(),
            sign: None,
        },
        Command::Pull { remote: "127.0.0.1:5000/r:1".into(), name: None, registry: Default::default() },
        Command::Sbom { reference: "r".into() },
        Command::KeyGenerate { name: "k".into() },
        Command::Sign { reference: "r".into(), key: "k".into() },
        Command::VerifySignature { reference: "r".into(), key: None },
    ];
    for c in &all {
        let name = wire_name(c).unwrap();
        assert!(documented.contains(name), "{name} is not in openapi.json");
        // What a client sends is what the server reads back.
        let job = Job { command: c.clone(), source_date_epoch: None };
        let back: Job = serde_json::from_str(&serde_json::to_string(&job).unwrap()).unwrap();
        assert_eq!(back, job, "{name}");
    }
    assert_eq!(documented.len(), all.len(), "a documented command that is not one: {documented:?}");
}

#[test]
fn whole_numbers_are_integers() {
    let mut v = json!({"a": 697.0, "b": [1.5, -2.0], "c": 1e300, "d": 3});
    whole_numbers(&mut v);
    assert_eq!(v, json!({"a": 697, "b": [1.5, -2], "c": 1e300, "d": 3}));
    let job: Job = {
        let mut v = json!({"command": {"stop": {"instance": "i", "grace_secs": 5.0}}, "source_date_epoch": 0.0});
        whole_numbers(&mut v);
        Job::deserialize(v).unwrap()
    };
    assert_eq!(job.command, Command::Stop { instance: "i".into(), grace_secs: Some(5) });
    let neg = Job { source_date_epoch: Some(-1), ..job };
    assert!(matches!(neg.check(), Err(CommandError::BadRequest { ref field, .. }) if field == "source_date_epoch"));
}

#[test]
fn statuses_come_from_variants() {
    use crate::image::store::StoreError;
    assert_eq!(status(&StoreError::NotFound("x".into()).into()), 404);
    assert_eq!(status(&CommandError::BadRequest { field: "f".into(), message: "m".into() }), 400);
    let reg = crate::image::registry::RegistryError::Io {
        host: "127.0.0.1:1".into(),
        source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
    };
    assert_eq!(status(&reg.into()), 404, "no registry there");
    let reg = crate::image::registry::RegistryError::Status {
        host: "127.0.0.1:1".into(),
        method: "GET".into(),
        path: "/v2/".into(),
        status: 500,
        body: String::new(),
    };
    assert_eq!(status(&reg.into()), 502, "the registry failed");
    let (s, body) = failure(&CommandError::Remote { status: 403, exit: 7, message: "refused".into() });
    assert_eq!((s, body["exit"].as_i64()), (403, Some(7)));
}
