//! What the source repository says about a build: revision, commit time,
//! whether the tree is dirty, and a remote safe to publish.
//!
//! Behind the [`Git`] trait so that bake logic is tested without a
//! repository; [`GitCli`] runs the `git` program. Nothing here may put a
//! local path or credentials into an image: [`public_remote`] filters them.

use std::path::Path;
use std::process::{Command, Stdio};

/// Facts about the git work tree containing a kiln.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitInfo {
    /// Full commit id of HEAD.
    pub revision: String,
    /// Committer time of HEAD, Unix seconds.
    pub commit_time: i64,
    /// Tracked files differ from HEAD.
    pub dirty: bool,
    /// `origin`'s URL, when it is a network URL (credentials removed).
    pub remote: Option<String>,
}

impl GitInfo {
    /// The `git-<shortsha>[-dirty]` tag suffix.
    pub fn tag(&self) -> String {
        let short = &self.revision[..self.revision.len().min(12)];
        format!("git-{short}{}", if self.dirty { "-dirty" } else { "" })
    }
}

/// Source of [`GitInfo`].
pub trait Git {
    /// `None` when `dir` is not in a git work tree with at least one commit.
    fn info(&self, dir: &Path) -> Option<GitInfo>;
}

/// Asks the `git` program.
#[derive(Debug, Default)]
pub struct GitCli;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out =
        Command::new("git").arg("-C").arg(dir).args(args).stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Git for GitCli {
    fn info(&self, dir: &Path) -> Option<GitInfo> {
        let head = git(dir, &["log", "-1", "--format=%H %ct"])?;
        let (revision, time) = head.split_once(' ')?;
        let dirty = !git(dir, &["status", "--porcelain", "--untracked-files=no"])?.is_empty();
        let remote = git(dir, &["remote", "get-url", "origin"]).and_then(|r| public_remote(&r));
        Some(GitInfo { revision: revision.to_owned(), commit_time: time.parse().ok()?, dirty, remote })
    }
}

/// A remote URL fit to publish in an image: network URLs only, without
/// user names or passwords. Local paths (absolute or relative, `file:`) give
/// `None`, since a host's paths must never enter an image.
pub fn public_remote(url: &str) -> Option<String> {
    let url = url.trim();
    if url.is_empty()
        || url.starts_with('/')
        || url.starts_with('.')
        || url.starts_with("file:")
        || url.starts_with('~')
    {
        return None;
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if host.is_empty() {
            return None;
        }
        return Some(format!("{scheme}://{host}/{path}"));
    }
    // scp-like `user@host:path`; a bare path without ':' is local.
    let (userhost, path) = url.split_once(':')?;
    let host = userhost.rsplit_once('@').map_or(userhost, |(_, h)| h);
    (!host.is_empty() && !host.contains('/')).then(|| format!("{host}:{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_lose_credentials_and_local_paths() {
        assert_eq!(
            public_remote("https://user:tok@example.org/a/b.git").as_deref(),
            Some("https://example.org/a/b.git")
        );
        assert_eq!(public_remote("git@example.org:a/b.git").as_deref(), Some("example.org:a/b.git"));
        assert_eq!(public_remote("/home/me/repo"), None);
        assert_eq!(public_remote("../repo"), None);
        assert_eq!(public_remote("file:///srv/repo"), None);
        assert_eq!(public_remote("repo"), None);
    }

    #[test]
    fn tag_uses_a_short_sha_and_marks_dirt() {
        let mut g = GitInfo { revision: "0123456789abcdef0123".into(), commit_time: 0, dirty: false, remote: None };
        assert_eq!(g.tag(), "git-0123456789ab");
        g.dirty = true;
        assert_eq!(g.tag(), "git-0123456789ab-dirty");
    }
}
