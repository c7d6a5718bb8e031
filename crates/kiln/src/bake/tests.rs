//! Unit tests of the bake logic with a recording sandbox and a fake git.

use std::fs;
use std::path::Path;

use super::sandbox::RecordingSandbox;
use super::*;
use crate::spec;

struct FakeGit(Option<GitInfo>);
impl Git for FakeGit {
    fn info(&self, _: &Path) -> Option<GitInfo> {
        self.0.clone()
    }
}

#[derive(Default)]
struct Quiet(Vec<String>);
impl Progress for Quiet {
    fn step_started(&mut self, _: usize, _: usize, _: &str) {}
    fn step_output(&mut self, line: &str) {
        self.0.push(line.to_owned());
    }
    fn step_finished(&mut self, _: &StepReport) {}
}

fn setup(toml: &str) -> (Store, SpecFile, std::path::PathBuf) {
    let d = kiln_testutil::tempdir("bake");
    fs::write(d.join("app.bin"), vec![7u8; 10_000]).unwrap();
    fs::write(d.join("app.conf"), "port = 80\n").unwrap();
    // A rootfs whose /bin/sh exists (the fake sandbox never executes it).
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [("bin/sh", &b"#!fake"[..]), ("etc/old", b"old")] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, path, data).unwrap();
    }
    fs::write(d.join("root.tar"), b.into_inner().unwrap()).unwrap();
    let kiln_toml = d.join("kiln.toml");
    fs::write(&kiln_toml, toml).unwrap();
    let store = Store::open(&d.join("home")).unwrap();
    let file = spec::load(&kiln_toml).unwrap();
    (store, file, d)
}

fn effect(root: &Path, cmd: &str) -> Result<(), SandboxError> {
    if cmd.contains("touch") {
        fs::write(root.join("made"), cmd).map_err(SandboxError::Io)?;
        fs::remove_file(root.join("etc/old")).map_err(SandboxError::Io)?;
    }
    Ok(())
}

const TOML: &str = r#"
[image.app]
from = "rootfs:root.tar"
version = "1.0"
copy = [{ src = "app.bin", dest = "/app/bin" }, { src = "app.conf", dest = "/etc/app.conf" }]
run = ["touch made"]
entrypoint = ["/app/bin"]
"#;

fn bake_once(
    store: &Store,
    file: &SpecFile,
    sb: &RecordingSandbox,
    git: Option<GitInfo>,
    opts: &BakeOptions,
) -> Result<BakeReport, BakeError> {
    let g = FakeGit(git);
    bake(store, file, "app", opts, &Tools { sandbox: sb, git: &g }, &mut Quiet::default())
}

#[test]
fn rebuild_is_cached_and_identical() {
    let (store, file, d) = setup(TOML);
    let sb = RecordingSandbox::new(effect);
    let a = bake_once(&store, &file, &sb, None, &BakeOptions::default()).unwrap();
    assert!(a.steps.iter().all(|s| s.outcome == Outcome::Built), "{:?}", a.steps);
    assert_eq!(sb.calls(), vec!["touch made"]);
    let b = bake_once(&store, &file, &sb, None, &BakeOptions::default()).unwrap();
    assert_eq!(a.digest, b.digest);
    assert!(b.steps.iter().all(|s| s.outcome == Outcome::Cached), "{:?}", b.steps);
    assert_eq!(sb.calls().len(), 1, "a cached run step does not run");
    assert_eq!(a.tags, vec!["app:b1", "app:1.0"]);
    assert_eq!(b.tags, vec!["app:b2", "app:1.0"]);
    let c = bake_once(&store, &file, &sb, None, &BakeOptions { no_cache: true, ..Default::default() }).unwrap();
    assert_eq!(c.digest, a.digest, "compression is deterministic");
    assert_eq!(sb.calls().len(), 2);
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn run_step_layer_holds_additions_and_whiteouts() {
    let (store, file, d) = setup(TOML);
    let sb = RecordingSandbox::new(effect);
    let r = bake_once(&store, &file, &sb, None, &BakeOptions::default()).unwrap();
    let m: Manifest = store.read_json(&r.digest).unwrap();
    assert_eq!(m.layers.len(), 4);
    let blob = store.read_blob(&m.layers[3].digest).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&blob[..]));
    let names: Vec<String> =
        ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["etc/.wh.old", "made"]);
    let config: ImageConfig = store.read_json(&m.config.digest).unwrap();
    assert_eq!(config.rootfs.diff_ids.len(), 4);
    assert_eq!(config.config.entrypoint, Some(vec!["/app/bin".to_owned()]));
    assert_eq!(config.created.as_deref(), Some("1970-01-01T00:00:00Z"));
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn changed_input_rebuilds_only_from_there_and_version_tag_is_guarded() {
    let (store, file, d) = setup(TOML);
    let sb = RecordingSandbox::new(effect);
    let a = bake_once(&store, &file, &sb, None, &BakeOptions::default()).unwrap();
    fs::write(d.join("app.conf"), "port = 81\n").unwrap();
    let b = bake_once(&store, &file, &sb, None, &BakeOptions { force: true, ..Default::default() }).unwrap();
    assert_ne!(a.digest, b.digest);
    let outcomes: Vec<_> = b.steps.iter().map(|s| s.outcome).collect();
    assert_eq!(outcomes, vec![Outcome::Cached, Outcome::Cached, Outcome::Built, Outcome::Built]);
    fs::write(d.join("app.conf"), "port = 82\n").unwrap();
    let e = bake_once(&store, &file, &sb, None, &BakeOptions::default()).unwrap_err().to_string();
    assert!(e.contains("tag app:1.0 already points to"), "{e}");
    assert!(store.resolve("app:b3").is_err(), "a refused bake tags nothing");
    assert_eq!(store.resolve("app:1.0").unwrap().0.digest, b.digest);
    let moved = b.tag_changes.iter().find(|t| t.tag == "app:1.0").unwrap();
    assert_eq!(moved.from.as_ref(), Some(&a.digest));
    assert!(store.tag_log().unwrap().iter().any(|t| t.tag == "app:1.0" && t.forced));
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn created_and_annotations_come_from_git_or_source_date_epoch() {
    let (store, file, d) = setup(TOML);
    let sb = RecordingSandbox::new(effect);
    let git = GitInfo {
        revision: "abcdef0123456789".into(),
        commit_time: 1_700_000_000,
        dirty: false,
        remote: Some("https://example.org/r.git".into()),
    };
    let r = bake_once(&store, &file, &sb, Some(git.clone()), &BakeOptions::default()).unwrap();
    assert!(r.tags.contains(&"app:git-abcdef012345".to_owned()), "{:?}", r.tags);
    let m: Manifest = store.read_json(&r.digest).unwrap();
    assert_eq!(m.annotation(oci::ANNOTATION_CREATED), Some("2023-11-14T22:13:20Z"));
    assert_eq!(m.annotation(oci::ANNOTATION_REVISION), Some("abcdef0123456789"));
    assert_eq!(m.annotation(oci::ANNOTATION_SOURCE), Some("https://example.org/r.git"));
    assert_eq!(m.annotation(oci::ANNOTATION_VERSION), Some("1.0"));
    assert_eq!(m.annotation(oci::ANNOTATION_COMPRESSOR), Some(COMPRESSOR));
    let opts = BakeOptions { source_date_epoch: Some(86_400), force: true, ..Default::default() };
    let r2 = bake_once(&store, &file, &sb, Some(git), &opts).unwrap();
    let m2: Manifest = store.read_json(&r2.digest).unwrap();
    assert_eq!(m2.annotation(oci::ANNOTATION_CREATED), Some("1970-01-02T00:00:00Z"));
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn missing_copy_source_names_file_line_and_path() {
    let (store, file, d) =
        setup("[image.app]\nfrom = \"scratch\"\ncopy = [\n  { src = \"nope\", dest = \"/x\" },\n]\n");
    let sb = RecordingSandbox::new(effect);
    let e = bake_once(&store, &file, &sb, None, &BakeOptions::default()).unwrap_err().to_string();
    assert!(e.contains("kiln.toml:4: image.app.copy[0]"), "{e}");
    assert!(e.contains(&d.join("nope").display().to_string()), "{e}");
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn run_without_a_shell_is_a_clear_error() {
    let (store, file, d) = setup("[image.app]\nfrom = \"scratch\"\nrun = [\"true\"]\n");
    let sb = RecordingSandbox::new(effect);
    let e = bake_once(&store, &file, &sb, None, &BakeOptions::default()).unwrap_err().to_string();
    assert!(e.contains("image.app.run[0]") && e.contains("/bin/sh"), "{e}");
    assert!(sb.calls().is_empty());
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn env_merges_over_the_base() {
    let base = RunConfig { env: Some(vec!["PATH=/bin".into(), "A=base".into()]), ..Default::default() };
    let (_, file, d) = setup("[image.app]\nfrom = \"scratch\"\nenv = { A = \"spec\", B = \"new\" }\n");
    let spec = &file.images["app"];
    assert_eq!(merged_env(&base, spec), vec!["PATH=/bin", "A=spec", "B=new"]);
    fs::remove_dir_all(d).unwrap();
}
