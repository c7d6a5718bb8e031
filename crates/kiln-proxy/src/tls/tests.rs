use super::*;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tls/testdata").join(name)
}

fn files(cert: &str, key: &str) -> TlsFiles {
    TlsFiles { cert: data(cert), key: data(key) }
}

/// 2030-03-17, a day all the fixtures but `expired.pem` are valid.
const NOW: i64 = 1_900_000_000;

fn spec(files: TlsFiles, h: &[&str]) -> CertSpec {
    CertSpec { service: "shop".into(), files, hosts: hosts(h), pending_ok: false }
}

fn hosts(h: &[&str]) -> Vec<String> {
    h.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_good_pair_loads_with_its_dates() {
    let l = load(&files("shop.pem", "shop.key"), &hosts(&["shop.test", "www.shop.test", "*.apps.test"]), NOW).unwrap();
    assert!(l.not_before <= NOW && l.not_after > NOW + 50 * 365 * 86_400, "{l:?}");
    assert_eq!(l.key.cert.len(), 1);
}

#[test]
fn each_bad_pair_is_refused_naming_the_file_at_fault() {
    let e = load(&files("shop.pem", "other.key"), &[], NOW).unwrap_err();
    assert!(matches!(&e, TlsError::KeyMismatch { key, .. } if key.ends_with("other.key")), "{e}");
    assert!(e.is_key());
    let e = load(&files("expired.pem", "shop.key"), &[], NOW).unwrap_err();
    assert!(matches!(&e, TlsError::Expired { not_after, .. } if not_after == "2020-02-01T00:00:00Z"), "{e}");
    let e = load(&files("shop.pem", "shop.key"), &hosts(&["shop.test", "evil.test"]), NOW).unwrap_err();
    assert!(matches!(&e, TlsError::NotCovering { host, .. } if host == "evil.test"), "{e}");
    let e = load(&files("shop.pem", "shop.key"), &hosts(&["*.shop.test"]), NOW).unwrap_err();
    assert!(matches!(&e, TlsError::NotCovering { .. }), "a wildcard host needs a wildcard name: {e}");
    let e = load(&files("shop.pem", "shop.key"), &[], 0).unwrap_err();
    assert!(matches!(&e, TlsError::NotYetValid { .. }), "{e}");
    let e = load(&files("shop.key", "shop.key"), &[], NOW).unwrap_err();
    assert!(matches!(&e, TlsError::NoCertificate { .. }), "{e}");
    let e = load(&files("shop.pem", "shop.pem"), &[], NOW).unwrap_err();
    assert!(matches!(&e, TlsError::NoKey { .. }) && e.is_key(), "{e}");
    let e = load(&files("missing.pem", "shop.key"), &[], NOW).unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");
}

#[test]
fn wildcards_match_one_label() {
    assert!(host_matches("*.apps.test", "a.apps.test"));
    assert!(host_matches("*.apps.test", "A.APPS.TEST"));
    assert!(!host_matches("*.apps.test", "apps.test"));
    assert!(!host_matches("*.apps.test", "a.b.apps.test"));
    assert!(!host_matches("*.apps.test", ".apps.test"));
    assert!(host_matches("shop.test", "SHOP.test"));
    assert!(!host_matches("shop.test", "www.shop.test"));
}

#[test]
fn sni_picks_the_certificate_and_an_unknown_name_gets_none() {
    let certs = Certs::load(&[spec(files("shop.pem", "shop.key"), &["shop.test", "*.apps.test"])], NOW).unwrap();
    assert!(certs.pick(Some("shop.test")).is_some());
    assert!(certs.pick(Some("x.apps.test")).is_some());
    assert!(certs.pick(None).is_some(), "no server name: the default");
    assert!(certs.pick(Some("other.test")).is_none());
    assert_eq!(certs.unknown_names.load(Ordering::Relaxed), 1);
    let any = Certs::load(&[spec(files("shop.pem", "shop.key"), &[])], NOW).unwrap();
    assert!(any.pick(Some("other.test")).is_some(), "a certificate with no hosts answers every name");
}

#[test]
fn a_rotation_is_picked_up_and_a_bad_one_keeps_the_old_pair() {
    let dir = kiln_testutil::tempdir("tls-reload");
    let f = TlsFiles { cert: dir.join("c.pem"), key: dir.join("c.key") };
    std::fs::copy(data("shop.pem"), &f.cert).unwrap();
    std::fs::copy(data("shop.key"), &f.key).unwrap();
    let certs = Certs::load(&[spec(f.clone(), &["shop.test"])], NOW).unwrap();
    assert!(certs.reload(NOW).is_empty(), "nothing changed");
    let before = certs.pick(Some("shop.test")).unwrap();
    // Half a rotation: a key that does not match. The old pair stays.
    std::fs::copy(data("other.key"), dir.join("tmp")).unwrap();
    std::fs::rename(dir.join("tmp"), &f.key).unwrap();
    let r = certs.reload(NOW);
    assert!(matches!(r.as_slice(), [Reload::Kept(TlsError::KeyMismatch { .. })]), "{r:?}");
    assert!(Arc::ptr_eq(&before, &certs.pick(Some("shop.test")).unwrap()));
    // Finished: the new pair is served.
    std::fs::copy(data("shop.key"), dir.join("tmp")).unwrap();
    std::fs::rename(dir.join("tmp"), &f.key).unwrap();
    let r = certs.reload(NOW);
    assert!(matches!(r.as_slice(), [Reload::Loaded { .. }]), "{r:?}");
    assert!(!Arc::ptr_eq(&before, &certs.pick(Some("shop.test")).unwrap()));
    assert_eq!(certs.reloads.load(Ordering::Relaxed), 1);
    assert_eq!(certs.reload_failures.load(Ordering::Relaxed), 1);
}

#[test]
fn validity_is_read_from_a_real_certificate() {
    let pem = std::fs::read(data("expired.pem")).unwrap();
    let der = CertificateDer::from_pem_slice(&pem).unwrap();
    assert_eq!(der::validity(&der), Ok((1_577_836_800, 1_580_515_200)));
    let mut cut = der.to_vec();
    cut.truncate(40);
    assert!(der::validity(&cut).is_err());
}

#[test]
fn a_pending_certificate_is_refused_until_its_files_appear() {
    let dir = kiln_testutil::tempdir("tls-pending");
    let f = TlsFiles { cert: dir.join("live/cert.pem"), key: dir.join("live/key.pem") };
    assert!(
        Certs::load(&[spec(f.clone(), &["shop.test"])], NOW).is_err(),
        "missing files are an error when not pending"
    );
    let pending = CertSpec { pending_ok: true, ..spec(f.clone(), &["shop.test"]) };
    let certs = Certs::load(&[pending], NOW).unwrap();
    assert!(certs.pick(Some("shop.test")).is_none() && certs.pick(None).is_none());
    assert!(certs.expiries().is_empty());
    std::fs::create_dir_all(dir.join("live")).unwrap();
    std::fs::copy(data("shop.key"), &f.key).unwrap();
    assert!(certs.reload(NOW).is_empty(), "the key alone: still pending, no failure counted");
    std::fs::copy(data("shop.pem"), &f.cert).unwrap();
    assert!(matches!(certs.reload(NOW).as_slice(), [Reload::Loaded { .. }]));
    assert!(certs.pick(Some("shop.test")).is_some());
    assert_eq!(certs.expiries().len(), 1);
}
