//! The sandbox of an instance, measured: the project's own probe (a static
//! C binary, `fixtures/sandbox-probe.c`) tries each primitive an escape or
//! a kernel exploit starts from, under kiln and under Debian's docker with
//! its default profile, in the same test. What kiln lets through must be a
//! subset of what docker does, and the primitives behind most published
//! container escapes must be refused. Also: a service's own `capabilities`
//! and `seccomp` keys, and bad ones refused naming file and key.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The probe, compiled once per test process (`cc -static`).
fn probe_binary(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sandbox-probe.c");
    let out = dir.join("probe");
    let o = Command::new("cc").args(["-static", "-O1", "-o"]).arg(&out).arg(&src).output().expect("cc");
    assert!(o.status.success(), "cc -static sandbox-probe.c: {}", String::from_utf8_lossy(&o.stderr));
    out
}

/// `probe NAME ok|refused ...` lines → NAME → whether it succeeded.
fn results(lines: &[String]) -> BTreeMap<String, bool> {
    lines
        .iter()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("probe")).then_some(())?;
            let name = w.next()?;
            let how = w.next()?;
            (name != "done").then(|| (name.to_owned(), how == "ok"))
        })
        .collect()
}

/// Inside, outside, count: the first line of a uid map.
type UidMap = (u64, u64, u64);

/// The `uidmap INSIDE OUTSIDE COUNT` line: where the probe's root is on the host.
fn uid_map(lines: &[String]) -> Option<UidMap> {
    lines.iter().find_map(|l| {
        let v: Vec<u64> = l.strip_prefix("uidmap ")?.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        (v.len() == 3).then(|| (v[0], v[1], v[2]))
    })
}

/// The probe's lines under kiln.
fn probe_lines_under_kiln(home: &Path, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["run", "--json", "probe:1", "--volume", "data:/data"];
    args.extend_from_slice(extra);
    let v = json(&kiln_ok(home, dir, &args));
    let id = v["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines: Vec<String> = kiln_ok(home, dir, &["logs", "--instance", &id, "--json"])
            .lines()
            .map(|l| json(l)["line"].as_str().unwrap_or_default().to_owned())
            .collect();
        if lines.iter().any(|l| l == "probe done") {
            kiln(home, dir, &["rm", "--force", &id]);
            return lines;
        }
        assert!(Instant::now() < deadline, "the probe did not finish under kiln: {lines:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A docker daemon of this test's own: its own socket, data and exec
/// roots, no bridge and no iptables (containers run with `--network none`).
struct Docker {
    child: Child,
    sock: PathBuf,
    root: PathBuf,
}

impl Docker {
    fn start(dir: &Path) -> Docker {
        let root = dir.join("docker");
        fs::create_dir_all(&root).unwrap();
        let sock = root.join("docker.sock");
        let log = fs::File::create(root.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--host")
            .arg(format!("unix://{}", sock.display()))
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("dockerd.pid"))
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false", "--storage-driver=vfs"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd (apt-get install docker.io)");
        let d = Docker { child, sock, root };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.docker(&["info"]).status.success() {
            let log = fs::read_to_string(d.root.join("dockerd.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "dockerd did not start: {log}");
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        // Debian's client, beside its daemon (another client earlier in
        // PATH may speak a newer API than Debian's dockerd).
        let cli = if Path::new("/usr/bin/docker").exists() { "/usr/bin/docker" } else { "docker" };
        Command::new(cli).arg("--host").arg(format!("unix://{}", self.sock.display())).args(args).output().unwrap()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        // SAFETY: a signal to the dockerd this test started, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn probe_under_docker(dir: &Path, probe: &Path) -> BTreeMap<String, bool> {
    let d = Docker::start(dir);
    let ctx = dir.join("docker-image");
    fs::create_dir_all(&ctx).unwrap();
    fs::copy(probe, ctx.join("probe")).unwrap();
    let tar = dir.join("probe.tar");
    assert!(Command::new("tar").arg("-C").arg(&ctx).arg("-cf").arg(&tar).arg("probe").status().unwrap().success());
    let import = d.docker(&["import", tar.to_str().unwrap(), "kiln-probe:test"]);
    assert!(import.status.success(), "docker import: {}", String::from_utf8_lossy(&import.stderr));
    let data = dir.join("docker-data");
    fs::create_dir_all(&data).unwrap();
    let vol = format!("{}:/data", data.display());
    let out = d.docker(&["run", "--rm", "--network", "none", "-v", &vol, "kiln-probe:test", "/probe", "/data"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("probe done"), "the probe under docker: {text} {}", String::from_utf8_lossy(&out.stderr));
    results(&text.lines().map(str::to_owned).collect::<Vec<_>>())
}

fn show(m: &BTreeMap<String, bool>) -> String {
    let ok: Vec<&str> = m.iter().filter(|(_, ok)| **ok).map(|(n, _)| n.as_str()).collect();
    if ok.is_empty() {
        "nothing".into()
    } else {
        ok.join(", ")
    }
}

#[test]
fn the_probe_gets_no_further_under_kiln_than_under_docker() {
    let _room = common::room("sandbox");
    let dir = tempdir("sandbox");
    let home = tempdir("sandbox-home");
    probe_binary(&dir);
    fs::write(
        dir.join("kiln.toml"),
        "[image.probe]\nfrom = \"scratch\"\nversion = \"1\"\ncopy = [{ src = \"probe\", dest = \"/probe\" }]\nentrypoint = [\"/probe\", \"/data\"]\n",
    )
    .unwrap();
    kiln_ok(&home, &dir, &["bake"]);
    let lines = probe_lines_under_kiln(&home, &dir, &[]);
    let (kiln_side, map) = (results(&lines), uid_map(&lines));
    // A seccomp filter, loaded by kiln's helper (compiled once by kiln, not
    // by runc at each start), with the probe's own program exec'd after it.
    for want in ["seccomp 2", "helper mounted"] {
        assert!(lines.iter().any(|l| l == want), "{want:?} in {lines:?}");
    }
    // Its root is an unprivileged host uid: the service's range, recorded.
    let ranges = json(&fs::read_to_string(home.join("userns.json")).unwrap());
    let base = ranges["ranges"]["probe"].as_u64().expect("the probe service's range is recorded");
    assert_eq!(map, Some((0, base, 65536)), "uid 0 inside is host uid {base}");
    assert!(base >= 1 << 30);
    // What it wrote to its volume is owned by that uid on the host.
    use std::os::unix::fs::MetadataExt;
    let left = fs::metadata(home.join("volumes/probe/data/kiln-probe-left")).unwrap();
    assert_eq!((u64::from(left.uid()), u64::from(left.gid())), (base, base));
    let docker_side = probe_under_docker(&dir, &dir.join("probe"));
    println!("succeeded under kiln:   {}", show(&kiln_side));
    println!("succeeded under docker: {}", show(&docker_side));
    let names: Vec<&str> = vec![
        "mount",
        "unshare-user",
        "unshare-mount",
        "keyctl",
        "bpf",
        "userfaultfd",
        "io_uring_setup",
        "perf_event_open",
        "kexec_load",
        "open_by_handle_at",
        "ptrace",
        "write-proc-sys",
        "read-kcore",
        "raw-socket",
        "mknod",
        "chown-volume",
    ];
    for n in &names {
        assert!(kiln_side.contains_key(*n) && docker_side.contains_key(*n), "{n} probed on both sides");
    }
    for (n, ok) in &kiln_side {
        assert!(!ok || docker_side[n], "{n} succeeds under kiln but not under docker");
    }
    for n in ["unshare-user", "keyctl", "bpf", "userfaultfd", "io_uring_setup", "perf_event_open", "ptrace", "mount"] {
        assert!(!kiln_side[n], "{n} is refused under kiln");
    }
    // The probe is no fake: with no filter, no user namespace and the
    // capabilities docker grants, the same binary gets further (so a
    // refusal above is kiln's).
    fs::write(
        dir.join("kiln.toml"),
        format!(
            "{}\n[service.loose]\nimage = \"probe\"\nseccomp = \"unconfined\"\nuserns = false\ncapabilities = [\"CHOWN\", \"MKNOD\", \"NET_RAW\"]\n",
            fs::read_to_string(dir.join("kiln.toml")).unwrap()
        ),
    )
    .unwrap();
    let loose_lines = probe_lines_under_kiln(&home, &dir, &["--service", "loose"]);
    let loose = results(&loose_lines);
    for want in ["seccomp 0", "helper absent"] {
        assert!(loose_lines.iter().any(|l| l == want), "{want:?} in {loose_lines:?}");
    }
    println!("succeeded under kiln, unconfined, userns = false, CHOWN, MKNOD, NET_RAW: {}", show(&loose));
    for n in ["chown-volume", "mknod", "raw-socket", "keyctl"] {
        assert!(loose[n], "{n} succeeds once the service asks for it: {loose:?}");
    }
    fs::remove_dir_all(&dir).unwrap();
    fs::remove_dir_all(&home).unwrap();
}

#[test]
fn bad_sandbox_keys_are_refused_naming_file_and_key() {
    let _room = common::room("no-runc");
    let dir = tempdir("sandbox-keys");
    let home = tempdir("sandbox-keys-home");
    fs::write(dir.join("f"), "not run").unwrap();
    let image = "[image.tiny]\nfrom = \"scratch\"\nversion = \"1\"\ncopy = [{ src = \"f\", dest = \"/f\" }]\nentrypoint = [\"/f\"]\n";
    fs::write(dir.join("kiln.toml"), image).unwrap();
    kiln_ok(&home, &dir, &["bake"]);
    let base = format!("{image}[service.web]\nimage = \"tiny\"\n");
    let cases: &[(&str, &str)] = &[
        ("capabilities = [\"SYS_ADMIN\"]\n", "service.web.capabilities[0]"),
        ("capabilities = [\"NET_BIND_SERVICE\", \"FLY\"]\n", "service.web.capabilities[1]"),
        ("seccomp = \"\"\n", "service.web.seccomp"),
        ("privileged = \"yes\"\n", "service.web.privileged"),
    ];
    for (extra, key) in cases {
        fs::write(dir.join("kiln.toml"), format!("{base}{extra}")).unwrap();
        let err = kiln_err(&home, &dir, &["plan"]);
        assert!(err.contains("kiln.toml") && err.contains(key), "{extra}: {err}");
    }
    // A profile file: missing, then a bad key inside it.
    fs::write(dir.join("kiln.toml"), format!("{base}seccomp = \"profiles/web.json\"\n")).unwrap();
    let err = kiln_err(&home, &dir, &["plan"]);
    assert!(err.contains("profiles/web.json"), "{err}");
    fs::create_dir_all(dir.join("profiles")).unwrap();
    fs::write(
        dir.join("profiles/web.json"),
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "YES"}]}"#,
    )
    .unwrap();
    let err = kiln_err(&home, &dir, &["plan"]);
    assert!(err.contains("profiles/web.json") && err.contains("syscalls[0].action"), "{err}");
    // privileged allows a dangerous capability, and plan says so.
    fs::write(dir.join("kiln.toml"), format!("{base}privileged = true\ncapabilities = [\"SYS_PTRACE\"]\n")).unwrap();
    let out = kiln(&home, &dir, &["plan"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("privileged") && text.contains("CAP_SYS_PTRACE"), "{text}");
    fs::write(dir.join("kiln.toml"), format!("{base}userns = false\nseccomp = \"unconfined\"\n")).unwrap();
    let text = kiln_ok(&home, &dir, &["plan"]);
    assert!(text.contains("WARNING: userns = false") && text.contains("WARNING: seccomp = \"unconfined\""), "{text}");
    fs::remove_dir_all(&dir).unwrap();
    fs::remove_dir_all(&home).unwrap();
}

/// kiln's helper execs the program only once the instance runs, so kiln
/// looks it up in the image first and refuses as runc would have: a file
/// that is not executable, and a name not in the image's PATH.
#[test]
fn a_program_the_image_cannot_run_is_refused_before_the_start() {
    let _room = common::room("sandbox");
    let dir = tempdir("sandbox-noprog");
    let home = tempdir("sandbox-noprog-home");
    fs::write(dir.join("f"), "not a program").unwrap();
    let image = |entry: &str, version: usize| {
        format!("[image.tiny]\nfrom = \"scratch\"\nversion = \"{version}\"\ncopy = [{{ src = \"f\", dest = \"/f\" }}]\nentrypoint = [\"{entry}\"]\nenv = {{ PATH = \"/bin:/usr/bin\" }}\n")
    };
    for (version, (entry, named)) in [("/f", "\"/f\""), ("nope", "PATH=/bin:/usr/bin")].into_iter().enumerate() {
        fs::write(dir.join("kiln.toml"), image(entry, version)).unwrap();
        kiln_ok(&home, &dir, &["bake"]);
        let err = kiln_err(&home, &dir, &["run", &format!("tiny:{version}")]);
        assert!(err.contains("not an executable file") && err.contains(named), "{entry}: {err}");
        // Nothing was left behind.
        let ps = json(&kiln_ok(&home, &dir, &["ps", "--all", "--json"]));
        assert_eq!(ps["instances"].as_array().map(Vec::len), Some(0), "{ps}");
    }
    fs::remove_dir_all(&dir).unwrap();
    fs::remove_dir_all(&home).unwrap();
}

/// A tree kiln did not make: Debian 12 (debootstrap) under the user
/// namespace. Its root-owned files are root's inside (setuid bits kept), a
/// file written to a volume is the service's host uid outside, and the
/// host keeps no mount of it.
#[test]
fn a_debian_tree_runs_as_its_own_root_inside_and_an_unprivileged_uid_outside() {
    let _room = common::room("sandbox");
    let dir = tempdir("sandbox-debian");
    let home = tempdir("sandbox-debian-home");
    fs::copy(crate::scan::debootstrap_rootfs(), dir.join("rootfs.tar")).unwrap();
    let script = "echo user=$(id -un) uid=$(id -u); stat -c 'stat %U:%G %a %n' /etc/shadow /usr/bin/passwd; \
                  echo hi > /var/lib/app/x && echo wrote; exec sleep 60";
    fs::write(
        dir.join("kiln.toml"),
        format!(
            "[image.deb]\nfrom = \"rootfs:rootfs.tar\"\nversion = \"1\"\nentrypoint = [\"/bin/sh\", \"-c\", {script:?}]\n\n\
             [service.deb]\nimage = \"deb\"\nvolumes = {{ app = \"/var/lib/app\" }}\n"
        ),
    )
    .unwrap();
    kiln_ok(&home, &dir, &["bake"]);
    let v = json(&kiln_ok(&home, &dir, &["run", "--service", "deb", "--json"]));
    let id = v["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let lines: Vec<String> = kiln_ok(&home, &dir, &["logs", "--instance", &id, "--json"])
            .lines()
            .map(|l| json(l)["line"].as_str().unwrap_or_default().to_owned())
            .collect();
        if lines.iter().any(|l| l == "wrote") {
            break lines;
        }
        assert!(Instant::now() < deadline, "the Debian instance did not write its volume: {lines:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(lines.contains(&"user=root uid=0".to_owned()), "{lines:?}");
    assert!(lines.contains(&"stat root:shadow 640 /etc/shadow".to_owned()), "{lines:?}");
    assert!(lines.contains(&"stat root:root 4755 /usr/bin/passwd".to_owned()), "{lines:?}");
    let base = json(&fs::read_to_string(home.join("userns.json")).unwrap())["ranges"]["deb"].as_u64().unwrap();
    use std::os::unix::fs::MetadataExt;
    let x = fs::metadata(home.join("volumes/deb/app/x")).unwrap();
    assert_eq!(u64::from(x.uid()), base, "root inside is host uid {base}");
    // The idmapped root lives only in the instance's mount namespace: the
    // shim detaches the host's copy once the container holds it.
    let on_host = fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(&id)).count();
    assert_eq!(on_host, 0, "no mount of the instance is left on the host");
    kiln_ok(&home, &dir, &["rm", "--force", &id]);
    fs::remove_dir_all(&dir).unwrap();
    fs::remove_dir_all(&home).unwrap();
}
