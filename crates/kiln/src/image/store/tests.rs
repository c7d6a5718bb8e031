//! Unit tests of [`super`].

use super::*;

fn store() -> Store {
    Store::open(&kiln_testutil::tempdir("store")).unwrap()
}

#[test]
fn blobs_round_trip_and_corruption_is_named() {
    let s = store();
    let d = s.put_blob(b"hello").unwrap();
    assert_eq!(s.read_blob(&d).unwrap(), b"hello");
    fs::write(s.blob_path(&d), b"jello").unwrap();
    let e = s.read_blob(&d).unwrap_err().to_string();
    assert!(e.contains(d.as_str()) && e.contains("corrupted"), "{e}");
    let mut r = s.open_blob(&d).unwrap();
    let e = io::copy(&mut r, &mut io::sink()).unwrap_err().to_string();
    assert!(e.contains(d.as_str()), "{e}");
    let missing = Digest::of(b"nope");
    assert!(matches!(s.read_blob(&missing), Err(StoreError::Missing { .. })));
}

#[test]
fn blob_writer_commits_under_its_digest_and_cleans_up_on_drop() {
    let s = store();
    let mut w = s.blob_writer().unwrap();
    w.write_all(b"streamed").unwrap();
    let (d, n) = w.commit().unwrap();
    assert_eq!((d.clone(), n), (Digest::of(b"streamed"), 8));
    assert!(s.has_blob(&d));
    let mut w = s.blob_writer().unwrap();
    w.write_all(b"abandoned").unwrap();
    drop(w);
    assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
}

#[test]
fn tags_never_move_silently() {
    let s = store();
    let a = Descriptor::new(oci::MEDIA_MANIFEST, s.put_blob(b"a").unwrap(), 1);
    let b = Descriptor::new(oci::MEDIA_MANIFEST, s.put_blob(b"b").unwrap(), 1);
    let ev = s.set_tags(&["x:1".into(), "x:b1".into()], &a, false, 10).unwrap();
    assert_eq!(ev.len(), 2);
    assert!(s.set_tags(&["x:1".into()], &a, false, 11).unwrap().is_empty(), "same digest is not a change");
    let e = s.set_tags(&["x:b2".into(), "x:1".into()], &b, false, 12).unwrap_err();
    assert!(matches!(e, StoreError::TagConflict { .. }), "{e}");
    assert!(s.resolve("x:b2").is_err(), "a refused tagging changes nothing");
    let ev = s.set_tags(&["x:1".into()], &b, true, 13).unwrap();
    assert_eq!(ev[0].from.as_ref(), Some(&a.digest));
    assert!(ev[0].forced);
    assert_eq!(s.resolve("x:1").unwrap().0.digest, b.digest);
    let log = s.tag_log().unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(log[2].to, b.digest);
}

#[test]
fn build_numbers_are_monotonic_per_name() {
    let s = store();
    assert_eq!(s.next_build_number("a").unwrap(), 1);
    assert_eq!(s.next_build_number("a").unwrap(), 2);
    assert_eq!(s.next_build_number("b").unwrap(), 1);
}
