//! What a fleet command checks before it writes: a deploy's certificate
//! (its files read, checked and its key sealed where the deploy runs), a
//! load balancer port another service holds, and a desired state no host
//! could run. Each refusal names the field; nothing is written first.
//!
//! For: those checks. Must never: write to etcd, but to seal a deploy's
//! certificate key as a fleet secret.

use super::super::*;

/// A deploy's certificate: kiln.toml's files read and checked here, on the
/// deploying machine (the key matches, the chain covers every host name,
/// it is valid now), the chain kept in the clear, the key sealed as fleet
/// secret `tls-SERVICE-HASH` (its own digest: the same key is sealed
/// once). Without the files (a body sent to a controller), the chain and
/// the key's version must be given. A certificate from ACME is the
/// leader's to obtain: only its CA file is read here.
pub(super) fn seal_tls(
    home: &std::path::Path,
    etcd: &crate::fleet::etcd::Etcd,
    service: &str,
    listen: Option<u16>,
    hosts: &[String],
    t: &mut crate::fleet::place::FleetTls,
    write: bool,
) -> Result<(), CommandError> {
    let bad =
        |message: &str| CommandError::BadRequest { field: format!("service.{service}.tls"), message: message.into() };
    if let Some(acme) = &mut t.acme {
        if let Some(ca) = acme.ca_file.take() {
            let bad_ca =
                |message: String| CommandError::BadRequest { field: format!("service.{service}.tls.ca"), message };
            let pem = std::fs::read_to_string(&ca).map_err(|e| bad_ca(format!("{}: {e}", ca.display())))?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(bad_ca(format!("{}: not a PEM certificate", ca.display())));
            }
            acme.ca_pem = Some(pem);
        }
        return Ok(());
    }
    let Some((cert, key)) = t.files.clone() else {
        if t.cert.is_empty() || t.key.name.is_empty() || t.key.version.is_empty() {
            return Err(bad(
                "a fleet's certificate is read and its key sealed where kiln.toml is: deploy with --cluster",
            ));
        }
        return Ok(());
    };
    let io = |path: &std::path::Path, e: std::io::Error| bad(&format!("{}: {e}", path.display()));
    let chain = std::fs::read_to_string(&cert).map_err(|e| io(&cert, e))?;
    let private = std::fs::read(&key).map_err(|e| io(&key, e))?;
    let edge = crate::fleet::place::FleetEdge { hosts: hosts.to_vec(), tls: Some(t.clone()), ..Default::default() };
    let addr = std::net::SocketAddr::from(([0, 0, 0, 0], listen.unwrap_or(443)));
    let spec = crate::spec::fleet_service(
        "kiln deploy --cluster",
        service,
        addr,
        None,
        &edge.site(Some((&cert, &key)), addr.ip()),
    )?;
    crate::serve::dataplane::check_certificate(&spec, crate::time::now_secs())?;
    let name = format!("tls-{service}-{}", &crate::digest::Digest::of(&private).hex()[..12]);
    let have = crate::fleet::secrets::list(etcd)?.into_iter().find(|r| r.name == name);
    let version = match have {
        Some(r) => r.version,
        // A plan seals nothing: the version is the one a deploy makes.
        None if !write => "(sealed by the deploy)".to_owned(),
        None => crate::fleet::secrets::set(etcd, home, &name, &private)?,
    };
    t.cert = chain;
    t.key = crate::fleet::place::FleetSecret { name, env: None, version };
    Ok(())
}

/// Refuses a load balancer port another fleet service has, unless the two
/// share it by host names (the rule of one kiln.toml), naming both.
pub(super) fn check_port(
    source: &str,
    etcd: &crate::fleet::etcd::Etcd,
    service: &str,
    desired: &crate::fleet::place::Desired,
) -> Result<(), CommandError> {
    let Some(port) = desired.listen.filter(|_| desired.replicas > 0) else { return Ok(()) };
    let spec = |name: &str, d: &crate::fleet::place::Desired| {
        let addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
        crate::spec::fleet_service(source, name, addr, d.health.as_deref(), &d.edge.site(None, addr.ip()))
    };
    let mine = spec(service, desired)?;
    for (other, (d, _)) in crate::fleet::services(etcd, &|_| {})? {
        if other == service || d.listen != Some(port) {
            continue;
        }
        crate::spec::fleet_port_shared(&spec(&other, &d)?, &mine)
            .map_err(|message| CommandError::BadRequest { field: "listen".into(), message })?;
    }
    Ok(())
}

/// Refuses a service whose slots could share names with another's
/// (`web` and `web-green`), naming both.
pub(super) fn check_slot_names(etcd: &crate::fleet::etcd::Etcd, service: &str) -> Result<(), CommandError> {
    for (other, _) in crate::fleet::services(etcd, &|_| {})? {
        if crate::fleet::place::slots_clash(service, &other) {
            return Err(CommandError::BadRequest {
                field: "service".into(),
                message: format!(
                    "{service} and {other} are both in the fleet's slot names (NAME-green-I, NAME-canary-I are \
                     another service's NAME-I): name it otherwise"
                ),
            });
        }
    }
    Ok(())
}

/// Refuses, naming the field, a desired state no host could run: a bad
/// service name, an image not named by digest, canary settings out of
/// range, a health path kiln.toml would refuse (`source` names who
/// asked). Nothing is written first.
pub(super) fn check_desired(
    source: &str,
    service: &str,
    desired: &crate::fleet::place::Desired,
) -> Result<(), CommandError> {
    let bad = |field: &str, message: &str| CommandError::BadRequest { field: field.into(), message: message.into() };
    if !crate::spec::valid_image_name(service) {
        return Err(bad("service", "lowercase letters, digits and single . _ - between them"));
    }
    let by_digest = |field: &str, image: &str| -> Result<(), CommandError> {
        let probe = crate::fleet::reconcile::Assignment {
            epoch: 0,
            memory_bytes: None,
            millicpus: None,
            singleton: false,
            health: None,
            channel: None,
            image: image.to_owned(),
            service: service.to_owned(),
            env: vec![],
            secrets: vec![],
            volumes: Vec::new(),
        };
        crate::image::registry::Remote::parse(image).map_err(crate::image::registry::RegistryError::from)?;
        match probe.digest() {
            Some(_) => Ok(()),
            None => {
                Err(bad(field, "name the image by digest (REGISTRY/REPO@sha256:…): every host runs the same bytes"))
            }
        }
    };
    by_digest("image", &desired.image)?;
    for (i, (name, path)) in desired.volumes.iter().enumerate() {
        if let Some(problem) = crate::spec::volume_problem(name, path) {
            return Err(bad(&format!("volumes[{i}]"), &problem));
        }
    }
    if let Some(c) = &desired.canary {
        by_digest("canary", &c.image)?;
        if c.weight > 100 {
            return Err(bad("canary_weight", "a percent, 0 to 100"));
        }
        if c.steps.iter().any(|w| *w == 0 || *w > 100) {
            return Err(bad("canary_steps", "percents, each 1 to 100"));
        }
        if !c.steps.is_empty() && !(1..=60).contains(&c.step_secs) {
            return Err(bad(
                "step_interval",
                "1 s to 60 s: each step is judged on the load balancers' last minute at most",
            ));
        }
        if c.max_error_rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            return Err(bad("max_error_rate", "a rate between 0 and 1 (0.01 is one point)"));
        }
        if c.max_p99_ratio.is_some_and(|r| !(r >= 1.0 && r.is_finite())) {
            return Err(bad("max_p99_ratio", "a ratio of at least 1"));
        }
        if c.progress.is_some() {
            return Err(bad("canary", "a new canary starts from its first step"));
        }
        if desired.listen.is_none() {
            return Err(bad("canary", "a canary's share is set on the load balancers: give listen"));
        }
    }
    // A blue-green release comes as a deploy's plan (kiln.toml's strategy:
    // no image, not begun); the leader moves it on. Nothing else names one.
    if let Some(bg) = &desired.blue_green {
        let plan = bg.image.is_empty() && matches!(bg.phase, crate::fleet::bluegreen::Phase::Next { since: 0, .. });
        if !plan {
            return Err(bad(
                "blue_green",
                "a blue-green release starts from a deploy (strategy = \"blue-green\"), with no image or phase of \
                 its own",
            ));
        }
    }
    // Checked as kiln.toml's would be, before anything is written.
    let addr = std::net::SocketAddr::from(([0, 0, 0, 0], desired.listen.unwrap_or(1)));
    crate::spec::fleet_service(source, service, addr, desired.health.as_deref(), &desired.edge.site(None, addr.ip()))?;
    Ok(())
}
