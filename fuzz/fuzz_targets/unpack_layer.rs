//! Feeds arbitrary bytes to the safe unpacker as a layer tarball (first as
//! a single layer, then split in two at a byte the input chooses) and checks
//! that nothing is ever written outside the root and nothing panics.
#![no_main]

use std::fs;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;

fn sandbox() -> PathBuf {
    let base = std::env::temp_dir().join(format!("kiln-fuzz-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(base.join("outside")).expect("sandbox");
    base
}

fn check(base: &PathBuf) {
    for e in fs::read_dir(base).expect("sandbox listing") {
        let name = e.expect("entry").file_name();
        assert!(name == "root" || name == "outside", "escaped: {name:?}");
    }
    assert_eq!(fs::read_dir(base.join("outside")).expect("outside").count(), 0, "wrote outside the root");
}

fuzz_target!(|data: &[u8]| {
    let base = sandbox();
    let root = base.join("root");
    let _ = kiln::image::unpack::unpack(&root, [data]);
    check(&base);
    if let Some((&split, rest)) = data.split_first() {
        let at = (usize::from(split) * 512).min(rest.len());
        let _ = fs::remove_dir_all(&root);
        let _ = kiln::image::unpack::unpack(&root, [&rest[..at], &rest[at..]]);
        check(&base);
    }
    let _ = fs::remove_dir_all(&base);
});
