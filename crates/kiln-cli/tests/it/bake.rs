//! `kiln bake` end to end: the real binary, runc for `run` steps, and
//! skopeo/umoci reading (and writing) what kiln reads and writes.

use crate::common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;

fn sha256_hex(bytes: &[u8]) -> String {
    kiln::digest::Digest::of(bytes).hex().to_owned()
}

const PROJECT: &str = r#"
[image.app]
from = "rootfs:rootfs.tar"
version = "1.0"
copy = [
  { src = "bin/tool", dest = "/usr/local/bin/" },
  { src = "conf", dest = "/etc/app/" },
  { src = "data/*.txt", dest = "/srv/", owner = "1000:1000" },
]
run = ["mkdir -p /var/lib/app && echo baked > /var/lib/app/state && rm /etc/motd && ln -s state /var/lib/app/link"]
env = { MODE = "prod" }
entrypoint = ["/usr/local/bin/tool"]
workdir = "/srv"
expose = [8080]
"#;

/// Writes the project's files into `dir`: in `order`, with `mtime`, and with
/// group/other permission bits as a `umask` would leave them.
fn write_project(dir: &Path, reverse: bool, mtime: SystemTime, umask: u32) {
    let mut files: Vec<(&str, &[u8], bool)> = vec![
        ("kiln.toml", PROJECT.as_bytes(), false),
        ("bin/tool", b"#!/bin/sh\necho tool\n", true),
        ("conf/app.toml", b"level = 3\n", false),
        ("conf/nested/extra.conf", b"x = 1\n", false),
        ("data/a.txt", b"alpha\n", false),
        ("data/b.txt", b"beta\n", false),
        ("data/ignored.bin", b"not copied\n", false),
    ];
    if reverse {
        files.reverse();
    }
    for (path, content, exec) in files {
        let p = dir.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        let mode = if exec { 0o777 } else { 0o666 } & !umask;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        fs::File::options().write(true).open(&p).unwrap().set_modified(mtime).unwrap();
    }
    busybox_rootfs(&dir.join("rootfs.tar"));
}

#[test]
fn same_inputs_give_the_same_digest_anywhere() {
    let _room = common::room("bake");
    let (a, b) = (tempdir("repro-a"), tempdir("repro-b-longer-name"));
    write_project(&a, false, SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000), 0o022);
    write_project(&b, true, SystemTime::now(), 0o077);
    let (home_a, home_b) = (tempdir("home-a"), tempdir("home-b"));
    let da = bake_digests(&home_a, &a, &[]);
    let db = bake_digests(&home_b, &b, &[]);
    assert_eq!(da, db, "two directories, mtimes, umasks and orders must give one digest");
    // A rebuild with the cache off recompresses everything: still identical.
    let dc = bake_digests(&home_a, &a, &["--no-cache"]);
    assert_eq!(da, dc);
    // And the cached rebuild reports every step cached.
    let out = kiln_ok(&home_a, &a, &["bake", "--json"]);
    let steps = json(&out)[0]["steps"].as_array().unwrap().clone();
    assert!(steps.iter().all(|s| s["outcome"] == "cached"), "{steps:?}");
    // Changing one input changes the digest.
    fs::write(a.join("data/a.txt"), "ALPHA\n").unwrap();
    let dd = bake_digests(&home_a, &a, &["--force"]);
    assert_ne!(da, dd);
    for d in [a, b, home_a, home_b] {
        fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn run_step_in_busybox_adds_and_deletes_files_and_umoci_agrees() {
    let _room = common::room("bake");
    let dir = tempdir("run");
    write_project(&dir, false, SystemTime::now(), 0o022);
    let home = tempdir("run-home");
    let digest = bake_digests(&home, &dir, &[]).remove(0);
    let store = home.join("store");

    // The run step's layer: its additions and a whiteout for /etc/motd.
    let manifest = json(&fs::read_to_string(store.join("blobs/sha256").join(&digest[7..])).unwrap());
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 5, "rootfs + 3 copies + 1 run");
    let run_layer = store.join("blobs/sha256").join(&layers[4]["digest"].as_str().unwrap()[7..]);
    let paths = layer_paths(&run_layer);
    assert!(paths.contains(&"etc/.wh.motd".to_owned()), "{paths:?}");
    assert!(paths.contains(&"var/lib/app/state".to_owned()), "{paths:?}");
    assert!(!paths.iter().any(|p| p.starts_with("proc") || p.starts_with("dev") || p.starts_with("sys")), "{paths:?}");

    // umoci unpacks what kiln wrote, whiteouts applied.
    let bundle = dir.join("bundle");
    run("umoci", &["unpack", "--image", &format!("{}:app:1.0", store.display()), bundle.to_str().unwrap()]);
    let rootfs = bundle.join("rootfs");
    assert_eq!(fs::read_to_string(rootfs.join("var/lib/app/state")).unwrap(), "baked\n");
    assert!(!rootfs.join("etc/motd").exists(), "whiteout removed /etc/motd");
    assert_eq!(fs::read_link(rootfs.join("var/lib/app/link")).unwrap(), Path::new("state"));
    assert_eq!(fs::read_to_string(rootfs.join("etc/app/nested/extra.conf")).unwrap(), "x = 1\n");
    assert_eq!(fs::read_to_string(rootfs.join("srv/a.txt")).unwrap(), "alpha\n");
    assert!(!rootfs.join("srv/ignored.bin").exists());
    use std::os::unix::fs::MetadataExt;
    let tool = fs::metadata(rootfs.join("usr/local/bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o755);
    assert_eq!(fs::metadata(rootfs.join("srv/b.txt")).unwrap().uid(), 1000);

    // skopeo reads the image config kiln wrote.
    let out = run("skopeo", &["inspect", &format!("oci:{}:app:1.0", store.display())]);
    let info = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(info["Digest"], digest.as_str());
    assert_eq!(info["Layers"].as_array().unwrap().len(), 5);
    assert!(info["Env"].as_array().unwrap().iter().any(|e| e == "MODE=prod"));
    for d in [dir, home] {
        fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn bakes_from_layouts_written_by_skopeo_and_umoci() {
    let _room = common::room("bake");
    let dir = tempdir("interop");
    let home = tempdir("interop-home");
    write_project(&dir, false, SystemTime::now(), 0o022);
    let base_digest = bake_digests(&home, &dir, &[]).remove(0);
    let store = home.join("store");

    // skopeo copies kiln's image into a layout of its own; kiln bakes on it.
    let sk = dir.join("skopeo-layout");
    run("skopeo", &["copy", &format!("oci:{}:app:1.0", store.display()), &format!("oci:{}:base", sk.display())]);
    // umoci makes an image from scratch with one file; kiln bakes on it too.
    let um = dir.join("umoci-layout");
    let um_s = um.to_str().unwrap();
    run("umoci", &["init", "--layout", um_s]);
    run("umoci", &["new", "--image", &format!("{um_s}:base")]);
    let ub = dir.join("umoci-bundle");
    run("umoci", &["unpack", "--image", &format!("{um_s}:base"), ub.to_str().unwrap()]);
    fs::write(ub.join("rootfs/from-umoci"), "hi\n").unwrap();
    run("umoci", &["repack", "--image", &format!("{um_s}:base"), ub.to_str().unwrap()]);

    fs::write(dir.join("extra"), "extra\n").unwrap();
    fs::write(
        dir.join("derived.toml"),
        "[image.on-skopeo]\nfrom = \"oci:skopeo-layout:base\"\ncopy = [{ src = \"extra\", dest = \"/extra\" }]\n\n\
         [image.on-umoci]\nfrom = \"oci:umoci-layout:base\"\ncopy = [{ src = \"extra\", dest = \"/extra\" }]\n",
    )
    .unwrap();
    let digests = bake_digests(&home, &dir, &["-f", "derived.toml"]);
    assert_eq!(digests.len(), 2);

    // The derived image keeps the base's layers byte for byte.
    let blob = |d: &str| json(&fs::read_to_string(store.join("blobs/sha256").join(&d[7..])).unwrap());
    let base_layers = blob(&base_digest)["layers"].as_array().unwrap().clone();
    let derived = blob(&digests[0]);
    let derived_layers = derived["layers"].as_array().unwrap();
    assert_eq!(derived_layers.len(), base_layers.len() + 1);
    for (a, b) in base_layers.iter().zip(derived_layers) {
        assert_eq!(a["digest"], b["digest"]);
    }
    // The base config (entrypoint, env) is inherited.
    let config = blob(derived["config"]["digest"].as_str().unwrap());
    assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/tool");

    // umoci's file and kiln's file are both there when umoci unpacks the result.
    let out = dir.join("out");
    run("umoci", &["unpack", "--image", &format!("{}:on-umoci:b1", store.display()), out.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(out.join("rootfs/from-umoci")).unwrap(), "hi\n");
    assert_eq!(fs::read_to_string(out.join("rootfs/extra")).unwrap(), "extra\n");
    for d in [dir, home] {
        fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn bad_specs_name_file_line_and_key() {
    let _room = common::room("bake");
    let dir = tempdir("bad");
    let home = tempdir("bad-home");
    let cases: &[(&str, &[&str])] = &[
        ("[image.a]\nfrom = \"scratch\"\nentrypiont = [\"/x\"]\n", &["kiln.toml:3", "entrypiont"]),
        ("[image.a]\nfrom = \"scratch\"\nversion = \"latest\"\n", &["kiln.toml:3: image.a.version", "latest"]),
        (
            "[image.a]\nfrom = \"scratch\"\n\ncopy = [{ src = \"missing.bin\", dest = \"/m\" }]\n",
            &["kiln.toml:4: image.a.copy[0]", "missing.bin"],
        ),
        ("[image.a]\nfrom = \"oci:nowhere\"\n", &["kiln.toml:1: image.a.from", "nowhere/index.json"]),
        ("[image.a]\nfrom = \"scratch\"\nexpose = [\"http\"]\n", &["kiln.toml:3: image.a.expose[0]"]),
        ("[image.a\nfrom = 1\n", &["kiln.toml:1"]),
    ];
    for (toml, needles) in cases {
        fs::write(dir.join("kiln.toml"), toml).unwrap();
        let err = kiln_err(&home, &dir, &["bake"]);
        for n in *needles {
            assert!(err.contains(n), "for {toml:?} expected {n:?} in: {err}");
        }
    }
    let err = kiln_err(&home, &dir, &["bake", "-f", "absent.toml"]);
    assert!(err.contains("absent.toml") && err.contains("cannot read"), "{err}");
    for d in [dir, home] {
        fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn tags_are_guarded_recorded_and_gc_keeps_what_they_reach() {
    let _room = common::room("bake");
    let dir = tempdir("tags");
    let home = tempdir("tags-home");
    fs::write(dir.join("f"), "one\n").unwrap();
    fs::write(
        dir.join("kiln.toml"),
        "[image.t]\nfrom = \"scratch\"\nversion = \"2.0\"\ncopy = [{ src = \"f\", dest = \"/f\" }]\n",
    )
    .unwrap();
    let first = bake_digests(&home, &dir, &[]).remove(0);
    fs::write(dir.join("f"), "two\n").unwrap();
    let err = kiln_err(&home, &dir, &["bake"]);
    assert!(err.contains("tag t:2.0 already points to") && err.contains("--force"), "{err}");

    // The refused bake left blobs no tag reaches: gc finds exactly those.
    let dry = json(&kiln_ok(&home, &dir, &["gc", "--dry-run", "--json"]));
    assert_eq!(dry["removed"].as_array().unwrap().len(), 3, "layer, config, manifest: {dry}");
    let blobs = || fs::read_dir(home.join("store/blobs/sha256")).unwrap().count();
    let before = blobs();
    kiln_ok(&home, &dir, &["gc"]);
    assert_eq!(blobs(), before - 3);
    let inspect = json(&kiln_ok(&home, &dir, &["inspect", "t:2.0", "--json"]));
    assert_eq!(inspect["digest"], first.as_str());

    // Forced, the tag moves and the move is in its history.
    let second = bake_digests(&home, &dir, &["--force"]).remove(0);
    let inspect = json(&kiln_ok(&home, &dir, &["inspect", "t:2.0", "--json"]));
    assert_eq!(inspect["digest"], second.as_str());
    let history = inspect["tag_history"].as_array().unwrap();
    assert!(
        history.iter().any(|e| e["tag"] == "t:2.0" && e["from"] == first.as_str() && e["forced"] == true),
        "{history:?}"
    );
    // The first image is still reachable through its build tag.
    assert_eq!(json(&kiln_ok(&home, &dir, &["inspect", "t:b1", "--json"]))["digest"], first.as_str());
    let images = kiln_ok(&home, &dir, &["images"]);
    assert!(images.contains("t:b1") && images.contains("t:b2"), "a refused bake spends no build number: {images}");
    assert!(!images.contains("t:b3"), "{images}");
    for d in [dir, home] {
        fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn corrupted_blobs_are_named_and_never_used() {
    let _room = common::room("bake");
    let dir = tempdir("corrupt");
    let home = tempdir("corrupt-home");
    write_project(&dir, false, SystemTime::now(), 0o022);
    let digest = bake_digests(&home, &dir, &[]).remove(0);
    let store = home.join("store/blobs/sha256");
    let manifest = json(&fs::read_to_string(store.join(&digest[7..])).unwrap());
    let config = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let mut bytes = fs::read(store.join(&config[7..])).unwrap();
    bytes[10] ^= 1;
    fs::write(store.join(&config[7..]), bytes).unwrap();
    let err = kiln_err(&home, &dir, &["inspect", "app:1.0"]);
    assert!(err.contains(&config) && err.contains("corrupted"), "{err}");

    // A corrupted cached layer is reported by name and rebuilt, never reused.
    let layer = manifest["layers"][1]["digest"].as_str().unwrap().to_owned();
    let mut bytes = fs::read(store.join(&layer[7..])).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    fs::write(store.join(&layer[7..]), bytes).unwrap();
    let out = kiln(&home, &dir, &["bake", "--force"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&layer) && stderr.contains("corrupted"), "{stderr}");
    let healed = fs::read(store.join(&layer[7..])).unwrap();
    assert_eq!(format!("sha256:{}", sha256_hex(&healed)), layer, "the rebuilt blob is the original again");
    for d in [dir, home] {
        fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn git_revision_tags_and_created_time() {
    let _room = common::room("bake");
    let dir = tempdir("git");
    let home = tempdir("git-home");
    fs::write(dir.join("f"), "x\n").unwrap();
    fs::write(dir.join("kiln.toml"), "[image.g]\nfrom = \"scratch\"\ncopy = [{ src = \"f\", dest = \"/f\" }]\n")
        .unwrap();
    let git = |args: &[&str]| {
        let mut full = vec!["-C", dir.to_str().unwrap(), "-c", "user.name=t", "-c", "user.email=t@example.org"];
        full.extend_from_slice(args);
        run("git", &full)
    };
    git(&["init", "-q"]);
    git(&["remote", "add", "origin", "https://token@example.org/team/g.git"]);
    git(&["add", "."]);
    std::process::Command::new("git")
        .args([
            "-C",
            dir.to_str().unwrap(),
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.org",
            "commit",
            "-qm",
            "c",
        ])
        .env("GIT_COMMITTER_DATE", "@1700000000 +0000")
        .status()
        .unwrap();
    let sha = String::from_utf8(git(&["rev-parse", "HEAD"]).stdout).unwrap().trim().to_owned();
    let out = json(&kiln_ok(&home, &dir, &["bake", "--json"]));
    let tags: Vec<&str> = out[0]["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tags, vec!["g:b1".to_owned(), format!("g:git-{}", &sha[..12])]);
    let inspect = json(&kiln_ok(&home, &dir, &["inspect", "g:b1", "--json"]));
    let ann = &inspect["manifest"]["annotations"];
    assert_eq!(ann["org.opencontainers.image.revision"], sha.as_str());
    assert_eq!(ann["org.opencontainers.image.source"], "https://example.org/team/g.git");
    assert_eq!(ann["org.opencontainers.image.created"], "2023-11-14T22:13:20Z");
    // Nothing host-specific in the image's metadata.
    let text = inspect.to_string();
    assert!(!text.contains(dir.to_str().unwrap()) && !text.contains("token"), "{text}");

    // A tracked change makes the tree dirty.
    fs::write(dir.join("f"), "y\n").unwrap();
    let out = json(&kiln_ok(&home, &dir, &["bake", "--json"]));
    assert!(out[0]["tags"].as_array().unwrap().iter().any(|t| t == format!("g:git-{}-dirty", &sha[..12]).as_str()));
    for d in [dir, home] {
        fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn the_hello_example_bakes_and_standard_tools_read_it() {
    let _room = common::room("bake");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let example = root.join("examples/hello");
    assert!(
        example.join("bin/demo-app").exists(),
        "examples/hello/bin/demo-app is missing: run scripts/build-demo.sh (scripts/test.sh does)"
    );
    let home = tempdir("hello-home");
    let out = json(&kiln_ok(&home, &example, &["bake", "--json"]));
    let digest = out[0]["digest"].as_str().unwrap();
    assert!(out[0]["tags"].as_array().unwrap().iter().any(|t| t == "hello:0.1.0"));
    let info = run("skopeo", &["inspect", &format!("oci:{}:hello:0.1.0", home.join("store").display())]);
    assert_eq!(json(&String::from_utf8_lossy(&info.stdout))["Digest"], digest);
    let bundle = home.join("bundle");
    run(
        "umoci",
        &["unpack", "--image", &format!("{}:hello:0.1.0", home.join("store").display()), bundle.to_str().unwrap()],
    );
    assert!(bundle.join("rootfs/demo-app").is_file());
    let config = json(&fs::read_to_string(bundle.join("config.json")).unwrap());
    assert_eq!(config["process"]["args"][0], "/demo-app");
    fs::remove_dir_all(home).unwrap();
}

#[test]
fn a_rootfs_made_with_tar_c_dot_bakes_with_one_name_per_path_and_dev_nodes_left_out() {
    let _room = common::room("bake");
    let dir = tempdir("tar-dot");
    let root = dir.join("root");
    for d in ["bin", "etc", "dev", "usr/lib"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    fs::write(root.join("etc/motd"), "hello\n").unwrap();
    fs::hard_link(root.join("etc/motd"), root.join("usr/lib/motd.copy")).unwrap();
    // What debootstrap leaves in /dev (as root, in CI), and a fifo.
    run("mknod", &[root.join("dev/null").to_str().unwrap(), "c", "1", "3"]);
    run("mkfifo", &[root.join("dev/initctl").to_str().unwrap()]);
    run("tar", &["-C", root.to_str().unwrap(), "-cf", dir.join("rootfs.tar").to_str().unwrap(), "."]);
    let listed = String::from_utf8(run("tar", &["-tf", dir.join("rootfs.tar").to_str().unwrap()]).stdout).unwrap();
    assert!(listed.lines().any(|l| l == "./etc/motd"), "tar -C dir . names entries ./x: {listed}");
    fs::write(
        dir.join("kiln.toml"),
        "[image.deb]\nfrom = \"rootfs:rootfs.tar\"\nversion = \"12.0.1\"\nentrypoint = [\"/bin/sh\"]\n",
    )
    .unwrap();
    let home = tempdir("tar-dot-home");
    let out = kiln(&home, &dir, &["bake"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2 device node(s), fifo(s) or socket(s) under /dev left out"), "{text}");
    let digest =
        json(&kiln_ok(&home, &dir, &["inspect", "deb:12.0.1", "--json"]))["digest"].as_str().unwrap().to_owned();
    let store = home.join("store");
    let manifest = json(&fs::read_to_string(store.join("blobs/sha256").join(&digest[7..])).unwrap());
    let layer = store.join("blobs/sha256").join(&manifest["layers"][0]["digest"].as_str().unwrap()[7..]);
    let paths = layer_paths(&layer);
    assert!(paths.contains(&"etc/motd".to_owned()) && paths.contains(&"dev/".to_owned()), "{paths:?}");
    assert!(paths.iter().all(|p| !p.starts_with("./") && !p.starts_with('/')), "one name per path: {paths:?}");
    assert!(!paths.iter().any(|p| p == "dev/null" || p == "dev/initctl"), "{paths:?}");
    // umoci unpacks it, hardlink and symlink as they were.
    let bundle = dir.join("bundle");
    run("umoci", &["unpack", "--image", &format!("{}:deb:12.0.1", store.display()), bundle.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(bundle.join("rootfs/usr/lib/motd.copy")).unwrap(), "hello\n");
    assert_eq!(fs::read_link(bundle.join("rootfs/bin/sh")).unwrap(), Path::new("busybox"));
    // kiln's own store as a base, by the reference skopeo reads
    // (`oci:STORE:NAME:TAG`, the tag holding a colon).
    let child = dir.join("child");
    fs::create_dir_all(&child).unwrap();
    fs::write(
        child.join("kiln.toml"),
        format!("[image.app]\nfrom = \"oci:{}:deb:12.0.1\"\nversion = \"1.0.0\"\n", store.display()),
    )
    .unwrap();
    kiln_ok(&home, &child, &["bake"]);
    run("skopeo", &["inspect", &format!("oci:{}:deb:12.0.1", store.display())]);

    // A device node anywhere else is refused, naming the entry.
    run("mknod", &[root.join("etc/console").to_str().unwrap(), "c", "5", "1"]);
    run("tar", &["-C", root.to_str().unwrap(), "-cf", dir.join("rootfs.tar").to_str().unwrap(), "."]);
    let e = kiln_err(&home, &dir, &["bake"]);
    assert!(e.contains("rootfs.tar: entry \"./etc/console\" refused: device node"), "{e}");
    for d in [dir, home] {
        fs::remove_dir_all(d).unwrap();
    }
}
