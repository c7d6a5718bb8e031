//! Writing a file whole or not at all: into `<path>.tmp`, fsynced, then
//! renamed over `path`, so a crash leaves the old contents or the new,
//! never half. For the small state files kiln rewrites (cursors, queues,
//! tables, addresses); the store has its own (`Store::write_atomic`).

use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `bytes`, durably.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_mode(path, bytes, 0o644)
}

/// [`write`] with the file's mode (set when it is created, so a key is
/// never readable by others, even for a moment).
pub fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = kiln_testutil::tempdir("atomic");
        let p = dir.join("state.json");
        super::write(&p, b"one").unwrap();
        super::write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!dir.join("state.tmp").exists());
    }
}
