use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::*;

/// A key file outside `home`, mode 0600, and the KEK read from it.
fn kek_file(dir: &Path, name: &str, home: &Path) -> Kek {
    let p = dir.join(name);
    fs::write(&p, format!("{}\n", hex(&random::<32>().unwrap()))).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    kek::from_file(&p, kek::KEY_FILE_ENV, home).unwrap()
}

fn setup(what: &str) -> (PathBuf, PathBuf, Kek) {
    let dir = kiln_testutil::tempdir(what);
    let home = dir.join("home");
    fs::create_dir_all(&home).unwrap();
    let k = kek_file(&dir, "kek", &home);
    (dir, home, k)
}

#[test]
fn round_trip_with_nothing_in_clear_and_no_key_in_the_home() {
    let (dir, home, k) = setup("secrets");
    let s = Secrets::new(&home).with_kek(Some(k));
    s.set("db_password", b"hunter2-very-secret").unwrap();
    assert_eq!(s.get("db_password").unwrap().expose(), b"hunter2-very-secret");
    assert_eq!(s.list().unwrap(), vec!["db_password"]);
    for e in fs::read_dir(home.join("secrets")).unwrap() {
        let e = e.unwrap();
        let bytes = fs::read(e.path()).unwrap();
        assert!(!bytes.windows(7).any(|w| w == b"hunter2"), "clear text on disk");
        assert_ne!(e.file_name(), "key", "no bare key beside the secrets");
        assert_eq!(e.metadata().unwrap().permissions().mode() & 0o077, 0);
    }
    let dek = fs::read_to_string(home.join("secrets/dek")).unwrap();
    assert!(dek.starts_with("kiln-store 1\npurpose secrets\nkek file\n"), "{dek}");
    assert!(!format!("{:?}", s.get("db_password").unwrap()).contains("hunter2"));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn without_a_kek_nothing_is_written_and_with_another_the_store_does_not_open() {
    let (dir, home, k) = setup("secrets-nokek");
    let none = Secrets::new(&home).with_kek(None);
    let e = none.set("a", b"one").unwrap_err();
    assert!(matches!(e, SecretError::NoKek { .. }), "{e}");
    assert!(e.to_string().contains("KILN_KEY_FILE") && e.to_string().contains("KILN_PASSPHRASE"), "{e}");
    assert!(none.list().unwrap().is_empty());
    assert!(!home.join("secrets/a.enc").exists());
    Secrets::new(&home).with_kek(Some(k)).set("a", b"one").unwrap();
    assert!(matches!(none.get("a"), Err(SecretError::NoKek { .. })));
    let other = kek_file(&dir, "other", &home);
    let e = Secrets::new(&home).with_kek(Some(other)).get("a").unwrap_err();
    assert!(matches!(e, SecretError::WrongKek { .. }), "{e}");
    assert!(e.to_string().contains("sealed with another key-encryption key (a key file)"), "{e}");
    assert!(e.to_string().contains("kiln secret rotate-key --old-key-file"), "{e}");
    // The signing keys' store is another store: the same KEK, other keys.
    let k = kek_file(&dir, "kek2", &home);
    let keys = Secrets::signing_keys(&home).with_kek(Some(k.clone()));
    keys.set("default", b"scalar").unwrap();
    fs::copy(home.join("keys/private/default.enc"), home.join("secrets/default.enc")).unwrap();
    assert!(Secrets::new(&home).with_kek(Some(k)).get("default").is_err());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn renamed_or_tampered_ciphertexts_fail() {
    let (dir, home, k) = setup("secrets-tamper");
    let s = Secrets::new(&home).with_kek(Some(k));
    s.set("a", b"one").unwrap();
    fs::copy(home.join("secrets/a.enc"), home.join("secrets/b.enc")).unwrap();
    assert!(matches!(s.get("b"), Err(SecretError::Undecryptable(_))));
    let mut bytes = fs::read(home.join("secrets/a.enc")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(home.join("secrets/a.enc"), bytes).unwrap();
    assert!(matches!(s.get("a"), Err(SecretError::Undecryptable(_))));
    assert!(matches!(s.get("zz"), Err(SecretError::Missing(_))));
    assert!(matches!(s.set("../x", b"v"), Err(SecretError::BadName(_))));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn rotation_re_seals_under_a_new_kek_and_keeps_values_and_versions() {
    let (dir, home, old) = setup("secrets-rotate");
    let s = Secrets::new(&home).with_kek(Some(old.clone()));
    s.set("a", b"one").unwrap();
    s.set("b", b"two").unwrap();
    let versions = (s.version("a").unwrap(), s.version("b").unwrap());
    let dek_before = fs::read_to_string(home.join("secrets/dek")).unwrap();
    // Same KEK: a new data key, every file re-encrypted.
    let r = s.rotate(None).unwrap();
    assert_eq!(r.count, 2);
    assert_ne!(fs::read_to_string(home.join("secrets/dek")).unwrap(), dek_before);
    assert_eq!(s.get("a").unwrap().expose(), b"one");
    // A new KEK: the old one opens, the new one seals.
    let new = kek_file(&dir, "new", &home);
    let n = Secrets::new(&home).with_kek(Some(new.clone()));
    assert!(matches!(n.rotate(None), Err(SecretError::WrongKek { .. })), "the new key alone cannot open it");
    let r = n.rotate(Some(old.clone())).unwrap();
    assert_eq!((r.count, r.migrated), (2, false));
    assert!(r.sealed_with.contains("new"), "{}", r.sealed_with);
    assert_eq!(n.get("b").unwrap().expose(), b"two");
    assert_eq!((n.version("a").unwrap(), n.version("b").unwrap()), versions, "a re-encryption is no new version");
    assert!(matches!(Secrets::new(&home).with_kek(Some(old)).get("a"), Err(SecretError::WrongKek { .. })));
    // A new value is a new version.
    n.set("a", b"uno").unwrap();
    assert_ne!(n.version("a").unwrap(), versions.0);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_rewrap_seals_the_same_data_key_under_a_new_kek_and_a_previous_kek_still_opens_until_then() {
    let (dir, home, old) = setup("secrets-rewrap");
    let s = Secrets::new(&home).with_kek(Some(old.clone()));
    s.set("a", b"one").unwrap();
    let version = s.version("a").unwrap();
    let sealed = fs::read(home.join("secrets/a.enc")).unwrap();
    let new = kek_file(&dir, "new", &home);
    // Given both keys (a host during a fleet's rotation), the store opens
    // while it is still sealed with the old one; with the new alone, not.
    let both = Secrets::new(&home).with_kek(Some(new.clone())).with_previous_kek(Some(old.clone()));
    assert_eq!(both.get("a").unwrap().expose(), b"one");
    let n = Secrets::new(&home).with_kek(Some(new.clone()));
    assert!(matches!(n.get("a"), Err(SecretError::WrongKek { .. })));
    assert!(matches!(n.rewrap(None), Err(SecretError::WrongKek { .. })), "without the old key, nothing to open it");
    let other = kek_file(&dir, "other", &home);
    assert!(matches!(n.rewrap(Some(other)), Err(SecretError::WrongKek { .. })), "a wrong old key");
    // Re-wrapped: the entries are byte for byte the same, the new key
    // opens them, the old one no longer does; a second time is a no-op.
    assert!(n.rewrap(Some(old.clone())).unwrap());
    assert_eq!(fs::read(home.join("secrets/a.enc")).unwrap(), sealed, "no entry re-encrypted");
    assert_eq!((n.get("a").unwrap().expose(), n.version("a").unwrap()), (b"one".as_slice(), version));
    assert!(matches!(s.get("a"), Err(SecretError::WrongKek { .. })));
    assert!(!n.rewrap(None).unwrap(), "already sealed with the new key");
    // Given both, still opens (the new one first).
    assert_eq!(both.get("a").unwrap().expose(), b"one");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_rotation_cut_short_is_undone_before_its_commit_and_finished_after_it() {
    let (dir, home, k) = setup("secrets-cut");
    let s = Secrets::new(&home).with_kek(Some(k));
    s.set("a", b"one").unwrap();
    let d = home.join("secrets");
    // Before the commit: a new file of another data key, a new dek file.
    let mut stray = fs::read(d.join("a.enc")).unwrap();
    stray[MAGIC.len()] ^= 0xff;
    fs::write(d.join("a.enc.new"), &stray).unwrap();
    fs::write(d.join("dek.new"), "partial").unwrap();
    s.set("b", b"two").unwrap();
    assert!(!d.join("a.enc.new").exists() && !d.join("dek.new").exists());
    assert_eq!(s.get("a").unwrap().expose(), b"one");
    // After the commit: a new file of the committed data key takes its place.
    let (committed_a, _) = (fs::read(d.join("b.enc")).unwrap(), ());
    s.set("b", b"zwei").unwrap();
    fs::write(d.join("b.enc.new"), &committed_a).unwrap();
    s.set("c", b"three").unwrap();
    assert!(!d.join("b.enc.new").exists());
    assert_eq!(s.get("b").unwrap().expose(), b"two", "the committed new file won");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_store_from_before_the_kek_is_read_and_sealed_once_a_kek_is_given() {
    let (dir, home, k) = setup("secrets-legacy");
    // The old layout: a bare key beside nonce || ciphertext(name as aad).
    let d = home.join("secrets");
    fs::create_dir_all(&d).unwrap();
    let key: [u8; 32] = random().unwrap();
    fs::write(d.join("key"), key).unwrap();
    fs::set_permissions(d.join("key"), fs::Permissions::from_mode(0o600)).unwrap();
    let nonce: [u8; 12] = random().unwrap();
    let ct = ChaCha20Poly1305::new(Key::from_slice(&key))
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: b"legacy-value", aad: b"old" })
        .unwrap();
    let file = [nonce.as_slice(), &ct].concat();
    fs::write(d.join("old.enc"), &file).unwrap();
    let before = crate::digest::Digest::of(&file).hex()[..12].to_owned();
    let bare = Secrets::new(&home).with_kek(None);
    assert_eq!(bare.get("old").unwrap().expose(), b"legacy-value", "still read without a KEK");
    assert_eq!(bare.version("old").unwrap(), before);
    assert!(matches!(bare.set("new", b"x"), Err(SecretError::NoKek { .. })), "nothing new under a bare key");
    let sealed = Secrets::new(&home).with_kek(Some(k));
    assert_eq!(sealed.get("old").unwrap().expose(), b"legacy-value");
    assert!(!d.join("key").exists(), "the bare key is gone");
    assert!(d.join("dek").exists());
    assert_eq!(sealed.version("old").unwrap(), before, "sealing changes no version");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_reseal_puts_every_entry_under_a_new_data_key_with_its_version_and_writes_nothing() {
    let (dir, home, k) = setup("secrets-reseal");
    let store = dir.join("store");
    let s = Secrets::fleet(&store, &home).with_kek(Some(k.clone()));
    s.set("a", b"one").unwrap();
    let first = (fs::read(store.join("a.enc")).unwrap(), s.version("a").unwrap());
    s.set("a", b"two").unwrap();
    let second = (fs::read(store.join("a.enc")).unwrap(), s.version("a").unwrap());
    let dek_before = fs::read(store.join("dek")).unwrap();
    // Two versions of one name (as a fleet keeps them), resealed at once.
    let entries = [("a".to_owned(), first.0.clone()), ("a".to_owned(), second.0.clone())];
    let (dek, resealed) = s.reseal(&entries).unwrap();
    assert_eq!(fs::read(store.join("dek")).unwrap(), dek_before, "nothing written");
    assert_ne!(dek, dek_before);
    // Opened in a store of the new key: each value at its version.
    let other = dir.join("other");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("dek"), &dek).unwrap();
    let n = Secrets::fleet(&other, &home).with_kek(Some(k));
    for ((bytes, version), (value, sealed)) in
        [first, second].iter().zip([(b"one", &resealed[0]), (b"two", &resealed[1])])
    {
        assert_ne!(sealed, bytes, "re-encrypted");
        fs::write(other.join("a.enc"), sealed).unwrap();
        assert_eq!((n.get("a").unwrap().expose(), n.version("a").unwrap()), (value.as_slice(), version.clone()));
        // The old key no longer opens it.
        fs::write(store.join("a.enc"), sealed).unwrap();
        assert!(s.get("a").is_err());
    }
    // An entry the store's key does not open is refused, naming it.
    let e = s.reseal(&[("b".to_owned(), b"not sealed at all".to_vec())]).unwrap_err();
    assert!(e.to_string().contains('b'), "{e}");
    fs::remove_dir_all(dir).unwrap();
}
