//! What changed between two releases (pure): the digest, the git revision,
//! how the image runs (entrypoint, command, user, working directory, ports,
//! labels), its layers, and the names of its environment variables. Values
//! of variables are compared but never shown: an image's environment may
//! hold things a dashboard should not display.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::oci::RunConfig;

/// One release as the diff sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Side {
    pub release: String,
    pub digest: String,
    pub revision: Option<String>,
    pub tags: Vec<String>,
    /// `None` when the image is no longer in the store.
    pub config: Option<RunConfig>,
    pub layers: Vec<String>,
}

/// A field that differs, both values as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub field: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// The whole difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diff {
    pub from: String,
    pub to: String,
    pub same_digest: bool,
    pub changes: Vec<Change>,
    pub env_added: Vec<String>,
    pub env_removed: Vec<String>,
    /// Names whose value changed.
    pub env_changed: Vec<String>,
    pub layers_added: usize,
    pub layers_removed: usize,
    /// Set when a side's image is gone from the store, so its config could
    /// not be compared.
    pub config_missing: Vec<String>,
}

fn env_map(c: Option<&RunConfig>) -> BTreeMap<String, String> {
    c.and_then(|c| c.env.as_ref())
        .into_iter()
        .flatten()
        .map(|e| {
            let (k, v) = e.split_once('=').unwrap_or((e, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn text(v: &Option<Vec<String>>) -> Option<String> {
    v.as_ref().map(|v| serde_json::to_string(v).expect("strings serialize"))
}

/// Compares release `a` (older) with `b` (newer).
pub fn diff(a: &Side, b: &Side) -> Diff {
    let mut changes = Vec::new();
    let mut field = |name: &str, from: Option<String>, to: Option<String>| {
        if from != to {
            changes.push(Change { field: name.to_owned(), from, to });
        }
    };
    field("digest", Some(a.digest.clone()), Some(b.digest.clone()));
    field("revision", a.revision.clone(), b.revision.clone());
    field("tags", Some(a.tags.join(", ")), Some(b.tags.join(", ")));
    let mut config_missing = Vec::new();
    match (&a.config, &b.config) {
        (Some(x), Some(y)) => {
            field("entrypoint", text(&x.entrypoint), text(&y.entrypoint));
            field("cmd", text(&x.cmd), text(&y.cmd));
            field("user", x.user.clone(), y.user.clone());
            field("working_dir", x.working_dir.clone(), y.working_dir.clone());
            let ports =
                |c: &RunConfig| c.exposed_ports.as_ref().map(|p| p.keys().cloned().collect::<Vec<_>>().join(", "));
            field("exposed_ports", ports(x), ports(y));
            let labels = |c: &RunConfig| c.labels.as_ref().map(|l| serde_json::to_string(l).expect("serializes"));
            field("labels", labels(x), labels(y));
        }
        _ => {
            for s in [a, b].into_iter().filter(|s| s.config.is_none()) {
                config_missing.push(s.release.clone());
            }
        }
    }
    let (ea, eb) = (env_map(a.config.as_ref()), env_map(b.config.as_ref()));
    let env_added = eb.keys().filter(|k| !ea.contains_key(*k)).cloned().collect();
    let env_removed = ea.keys().filter(|k| !eb.contains_key(*k)).cloned().collect();
    let env_changed = ea.iter().filter(|(k, v)| eb.get(*k).is_some_and(|w| w != *v)).map(|(k, _)| k.clone()).collect();
    Diff {
        from: a.release.clone(),
        to: b.release.clone(),
        same_digest: a.digest == b.digest,
        changes,
        env_added,
        env_removed,
        env_changed,
        layers_added: b.layers.iter().filter(|l| !a.layers.contains(l)).count(),
        layers_removed: a.layers.iter().filter(|l| !b.layers.contains(l)).count(),
        config_missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(release: &str, digest: &str, env: &[&str], cmd: &[&str], layers: &[&str]) -> Side {
        Side {
            release: release.into(),
            digest: digest.into(),
            revision: Some(format!("rev-{release}")),
            tags: vec![format!("web:{release}")],
            config: Some(RunConfig {
                env: Some(env.iter().map(|e| e.to_string()).collect()),
                cmd: Some(cmd.iter().map(|e| e.to_string()).collect()),
                ..Default::default()
            }),
            layers: layers.iter().map(|l| l.to_string()).collect(),
        }
    }

    #[test]
    fn names_what_changed_without_showing_values() {
        let a = side("web-1", "sha256:a", &["PATH=/bin", "TOKEN=old", "GONE=1"], &["/app"], &["l1", "l2"]);
        let b = side("web-2", "sha256:b", &["PATH=/bin", "TOKEN=new", "NEW=1"], &["/app", "-v"], &["l1", "l3", "l4"]);
        let d = diff(&a, &b);
        assert!(!d.same_digest);
        let fields: Vec<&str> = d.changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["digest", "revision", "tags", "cmd"]);
        assert_eq!(
            (d.env_added, d.env_removed, d.env_changed),
            (vec!["NEW".into()], vec!["GONE".into()], vec!["TOKEN".into()])
        );
        assert_eq!((d.layers_added, d.layers_removed), (2, 1));
        let shown = serde_json::to_string(&diff(&a, &b)).unwrap();
        assert!(!shown.contains("old") && !shown.contains("new\""), "values stay hidden: {shown}");
    }

    #[test]
    fn the_same_digest_differs_in_nothing_and_a_missing_image_is_named() {
        let a = side("web-1", "sha256:a", &["A=1"], &["/app"], &["l1"]);
        let mut b = a.clone();
        b.release = "web-2".into();
        let d = diff(&a, &b);
        assert!(d.same_digest && d.changes.is_empty() && d.env_changed.is_empty());
        b.config = None;
        assert_eq!(diff(&a, &b).config_missing, ["web-2"]);
    }
}
