//! The tests' own PKI: a CA made by openssl and the ECDSA P-256
//! certificates it signs, for HTTPS at load balancers, registries, etcd
//! and ACME servers.

use std::fs;
use std::path::{Path, PathBuf};

/// A test CA and the certificates the tests serve, all ECDSA P-256.
pub(crate) struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub(crate) fn new(dir: &Path) -> Pki {
        let dir = dir.join("certs");
        fs::create_dir_all(dir.join("db")).unwrap();
        let ossl = |args: &[&str]| {
            let out = std::process::Command::new("openssl").args(args).current_dir(&dir).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ossl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"]);
        ossl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=kiln edge test CA",
            "-days",
            "3650",
            "-out",
            "ca.pem",
        ]);
        fs::write(dir.join("db/index"), "").unwrap();
        fs::write(dir.join("db/serial"), "1000\n").unwrap();
        fs::write(
            dir.join("ca.cnf"),
            "[ca]\ndefault_ca = d\n[d]\ndatabase = db/index\nserial = db/serial\nnew_certs_dir = db\n\
             default_md = sha256\npolicy = p\ncopy_extensions = copy\nunique_subject = no\n[p]\ncommonName = supplied\n",
        )
        .unwrap();
        Pki { dir }
    }

    /// A key `name.key` and its certificate `name.pem` for `names`, valid
    /// from `start` to `end` (`YYYYMMDDHHMMSSZ`).
    pub(crate) fn issue(&self, name: &str, names: &[&str], start: &str, end: &str) {
        let ossl = |args: &[&str]| {
            let out = std::process::Command::new("openssl").args(args).current_dir(&self.dir).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let key = format!("{name}.key");
        ossl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &key]);
        let san = names.iter().map(|n| format!("DNS:{n}")).collect::<Vec<_>>().join(",");
        let csr = format!("{name}.csr");
        let subj = format!("/CN={}", names[0]);
        ossl(&["req", "-new", "-key", &key, "-subj", &subj, "-addext", &format!("subjectAltName={san}"), "-out", &csr]);
        let pem = format!("{name}.pem");
        ossl(&[
            "ca",
            "-batch",
            "-notext",
            "-config",
            "ca.cnf",
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca.key",
            "-startdate",
            start,
            "-enddate",
            end,
            "-in",
            &csr,
            "-out",
            &pem,
        ]);
    }

    pub(crate) fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }
}

pub(crate) const VALID_FROM: &str = "20200101000000Z";
pub(crate) const VALID_TO: &str = "20491231000000Z";
