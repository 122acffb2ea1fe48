//! Editing the `routes:` section of a routes file (no-cluster mode's create/delete route), and
//! its `pods:` section when a sandbox pod comes or goes.
//!
//! Only those sections are rewritten: services and comments outside them stay byte for byte,
//! since the file is also edited by hand. The new text is validated with the agent's own
//! parser before it replaces the file (atomically, by rename), so the agent never sees a file it
//! would reject.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::routes::{
    ClusterState, Pod, SandboxRouteObj, SandboxRouteSpec,
    file::{RoutesFileError, parse_routes},
};

#[derive(Serialize)]
struct FileRoute<'a> {
    name: &'a str,
    namespace: &'a str,
    spec: &'a SandboxRouteSpec,
}

#[derive(Serialize)]
struct Section<'a> {
    routes: Vec<FileRoute<'a>>,
}

/// A line that starts a top-level mapping key (`services:`, `routes:` ...).
fn is_top_level_key(line: &str) -> bool {
    let first = line.chars().next();
    matches!(first, Some(c) if !c.is_whitespace() && c != '#' && c != '-' && c != '.')
        && line.contains(':')
}

fn is_key(line: &str, key: &str) -> bool {
    line.strip_prefix(key)
        .is_some_and(|rest| rest.trim_start().starts_with(':'))
}

#[derive(Serialize)]
struct FilePod<'a> {
    name: &'a str,
    namespace: &'a str,
    ips: &'a [std::net::IpAddr],
    labels: &'a std::collections::BTreeMap<String, String>,
    ports: &'a std::collections::BTreeMap<String, u16>,
}

#[derive(Serialize)]
struct PodSection<'a> {
    pods: Vec<FilePod<'a>>,
}

/// `text` with its `pods:` section replaced by `pods` (appended when it has none).
pub fn replace_pods(text: &str, pods: &[Pod]) -> anyhow::Result<String> {
    let section = PodSection {
        pods: pods
            .iter()
            .map(|p| FilePod {
                name: &p.name,
                namespace: &p.namespace,
                ips: &p.ips,
                labels: &p.labels,
                ports: &p.container_ports,
            })
            .collect(),
    };
    let yaml = if section.pods.is_empty() {
        "pods: []\n".to_string()
    } else {
        serde_saphyr::to_string(&section)?
    };
    Ok(replace_section(text, "pods", yaml))
}

/// `text` with its `routes:` section replaced by `routes` (appended when it has none).
pub fn replace_routes(text: &str, routes: &[SandboxRouteObj]) -> anyhow::Result<String> {
    let section = Section {
        routes: routes
            .iter()
            .map(|r| FileRoute {
                name: &r.name,
                namespace: &r.namespace,
                spec: &r.spec,
            })
            .collect(),
    };
    let yaml = if section.routes.is_empty() {
        "routes: []\n".to_string()
    } else {
        serde_saphyr::to_string(&section)?
    };
    Ok(replace_section(text, "routes", yaml))
}

/// `text` with the top-level section `key` replaced by `yaml` (appended when it has none).
fn replace_section(text: &str, key: &str, mut yaml: String) -> String {
    if !yaml.ends_with('\n') {
        yaml.push('\n');
    }

    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let start = lines.iter().position(|l| is_key(l, key));
    let mut out = String::new();
    match start {
        None => {
            out.push_str(text);
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&yaml);
        }
        Some(start) => {
            let mut end = lines[start + 1..]
                .iter()
                .position(|l| is_top_level_key(l))
                .map_or(lines.len(), |i| start + 1 + i);
            // Comments and blank lines just above the next key belong to that key.
            while end > start + 1 && {
                let l = lines[end - 1].trim_end();
                l.is_empty() || l.starts_with('#')
            } {
                end -= 1;
            }
            out.extend(lines[..start].iter().copied());
            out.push_str(&yaml);
            out.extend(lines[end..].iter().copied());
        }
    }
    out
}

/// Parses `path`, applies `change` to its routes, validates and writes the result. Returns the
/// new state.
pub fn edit_routes(
    path: &Path,
    change: impl FnOnce(&mut Vec<SandboxRouteObj>) -> anyhow::Result<()>,
) -> anyhow::Result<ClusterState> {
    edit_pods_and_routes(path, |_, routes| change(routes))
}

/// Like [`edit_routes`], for the sandbox pods too (`pods:` is rewritten only when they change).
pub fn edit_pods_and_routes(
    path: &Path,
    change: impl FnOnce(&mut Vec<Pod>, &mut Vec<SandboxRouteObj>) -> anyhow::Result<()>,
) -> anyhow::Result<ClusterState> {
    let text = std::fs::read_to_string(path)?;
    let name = path.display().to_string();
    let state = parse_routes(&text, &name)?;
    let mut routes: Vec<SandboxRouteObj> = state
        .routes
        .into_iter()
        .map(std::sync::Arc::unwrap_or_clone)
        .collect();
    let mut pods = state.pods.clone();
    change(&mut pods, &mut routes)?;
    let mut new_text = replace_routes(&text, &routes)?;
    if pods != state.pods {
        new_text = replace_pods(&new_text, &pods)?;
    }
    let new_state = parse_routes(&new_text, &name).map_err(|e| match e {
        RoutesFileError::Invalid { diagnostics, .. } => anyhow::anyhow!(
            "the edited routes file would be invalid: {}",
            diagnostics
                .iter()
                .map(|d| format!("{}: {}", d.path, d.message))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        other => other.into(),
    })?;
    write_atomically(path, &new_text)?;
    Ok(new_state)
}

#[derive(Serialize)]
struct FileSource<'a> {
    cgroup: &'a Path,
    key: &'a str,
    origin: &'a str,
}

#[derive(Serialize)]
struct SourceSection<'a> {
    sources: Vec<FileSource<'a>>,
}

/// Parses `path`, applies `change` to its marked sources (`sources:`), validates and writes the
/// result (the rest of the file byte for byte). For `shunt test` and the mini-cluster's
/// sandbox pods.
pub fn edit_sources(
    path: &Path,
    change: impl FnOnce(&mut Vec<crate::routes::MarkedSource>),
) -> anyhow::Result<ClusterState> {
    let text = std::fs::read_to_string(path)?;
    let name = path.display().to_string();
    let state = parse_routes(&text, &name)?;
    let mut sources = state.sources.clone();
    change(&mut sources);
    if sources == state.sources {
        return Ok(state);
    }
    let section = SourceSection {
        sources: sources
            .iter()
            .map(|s| FileSource {
                cgroup: &s.cgroup,
                key: &s.key,
                origin: &s.origin,
            })
            .collect(),
    };
    let yaml = if section.sources.is_empty() {
        "sources: []\n".to_string()
    } else {
        serde_saphyr::to_string(&section)?
    };
    let new_text = replace_section(&text, "sources", yaml);
    let new_state = parse_routes(&new_text, &name)
        .map_err(|e| anyhow::anyhow!("the edited routes file would be invalid: {e}"))?;
    write_atomically(path, &new_text)?;
    Ok(new_state)
}

/// Writes through a temporary file in the same directory and a rename, so the agent's poller
/// never reads half a file. Keeps the file's permissions.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    // A symlinked file (e.g. a ConfigMap-style link) is replaced at its target.
    let target: PathBuf = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let dir = target.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.shunt-mcp-{}",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if let Ok(meta) = std::fs::metadata(&target) {
            std::fs::set_permissions(&tmp, meta.permissions())?;
        }
        std::fs::rename(&tmp, &target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{Fallback, ForkSpec, ForkTarget};

    const FILE: &str = "# head comment\n\
services:\n  - name: reviews\n    namespace: shop\n    addresses: [10.96.0.7]\n    ports: [{ name: http, port: 9080 }]\n\
routes:\n  - name: old\n    namespace: shop\n    spec: { routingKey: old, forks: [] }\n\
# about pods\n\
pods:\n  - { name: p, namespace: shop, ips: [10.0.0.9], labels: { shunt.dev/sandbox: pr-1 } }\n";

    fn route(name: &str) -> SandboxRouteObj {
        SandboxRouteObj {
            namespace: "shop".into(),
            name: name.into(),
            creation_timestamp: jiff::Timestamp::UNIX_EPOCH,
            generation: 1,
            spec: SandboxRouteSpec {
                routing_key: name.into(),
                forks: vec![ForkSpec {
                    service: "reviews".into(),
                    to: ForkTarget {
                        selector: Some(
                            [("shunt.dev/sandbox".to_string(), name.to_string())].into(),
                        ),
                        service: None,
                    },
                    ports: Some(vec![crate::routes::PortRef::Name("http".into())]),
                }],
                fallback: Fallback::Reject,
                expires_at: Some("2030-01-01T00:00:00Z".parse().expect("ts")),
                inject_key: true,
            },
        }
    }

    #[test]
    fn replaces_only_the_routes_section() {
        let out = replace_routes(FILE, &[route("pr-1")]).expect("edit");
        assert!(out.starts_with("# head comment\nservices:\n"), "{out}");
        assert!(out.contains("# about pods\npods:\n"), "{out}");
        assert!(!out.contains("routingKey: old"), "{out}");
        let state = parse_routes(&out, "f").expect("valid");
        assert_eq!(state.routes.len(), 1);
        assert_eq!(*state.routes[0], route("pr-1"));
        assert_eq!(state.pods.len(), 1);
        assert_eq!(state.services.len(), 1);
    }

    #[test]
    fn appends_a_section_and_removes_every_route() {
        let no_routes = "services: []\npods: []";
        let out = replace_routes(no_routes, &[route("a")]).expect("edit");
        assert!(out.starts_with("services: []\npods: []\nroutes:"), "{out}");
        assert_eq!(parse_routes(&out, "f").expect("valid").routes.len(), 1);
        let emptied = replace_routes(&out, &[]).expect("edit");
        assert!(emptied.ends_with("routes: []\n"), "{emptied}");
        assert!(
            parse_routes(&emptied, "f")
                .expect("valid")
                .routes
                .is_empty()
        );
    }

    #[test]
    fn edit_validates_before_writing() {
        let dir = std::env::temp_dir().join(format!("shunt-mcp-edit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("routes.yaml");
        std::fs::write(&path, FILE).expect("write");
        // Two routes with one key: the file would be rejected, so it is left alone.
        let err = edit_routes(&path, |routes| {
            let mut dup = route("x");
            dup.spec.routing_key = "old".into();
            routes.push(dup);
            Ok(())
        })
        .expect_err("rejected");
        assert!(err.to_string().contains("already used"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), FILE);
        let state = edit_routes(&path, |routes| {
            routes.push(route("pr-1"));
            Ok(())
        })
        .expect("edited");
        assert_eq!(state.routes.len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
