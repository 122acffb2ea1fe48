//! The `sources:` section: marked sources, each a cgroup v2 directory and the key its requests
//! get when they carry none. Checked here: an absolute, normal path (the agent resolves it to a
//! cgroup id when it applies it; a directory that does not exist then is dropped with a log
//! line, since pods and test runners come and go faster than the file is edited), a valid key,
//! and each cgroup listed once.
use std::{
    collections::HashMap,
    path::{Component, Path, PathBuf},
};

use super::{
    convert::Check,
    raw::{RawSource, S},
};
use crate::routes::{MarkedSource, RoutingKey};

pub(super) fn convert(raw: &[S<RawSource>], c: &mut Check) -> Vec<MarkedSource> {
    let mut seen: HashMap<PathBuf, u64> = HashMap::new();
    let mut out = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let p = format!("sources[{i}]");
        let s = &s.value;
        let cgroup = PathBuf::from(&s.cgroup.value);
        let mut valid = true;
        if let Err(why) = check_path(&cgroup) {
            c.at(s.cgroup.referenced, format_args!("{p}.cgroup"), why);
            valid = false;
        } else if let Some(line) = seen.insert(cgroup.clone(), s.cgroup.referenced.line()) {
            c.at(
                s.cgroup.referenced,
                format_args!("{p}.cgroup"),
                format!("{} is already a source at line {line}", cgroup.display()),
            );
            valid = false;
        }
        if let Err(e) = RoutingKey::parse(&s.key.value) {
            c.at(s.key.referenced, format_args!("{p}.key"), e.to_string());
            valid = false;
        }
        if valid {
            out.push(MarkedSource {
                cgroup,
                key: s.key.value.clone(),
                origin: s.origin.clone().unwrap_or_else(|| "file".into()),
            });
        }
    }
    out.sort();
    out
}

fn check_path(path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!(
            "{:?} is not an absolute path (a cgroup v2 directory, e.g. /sys/fs/cgroup/...)",
            path.display().to_string()
        ));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!(
            "{:?}: `.` and `..` are not allowed in a cgroup path",
            path.display().to_string()
        ));
    }
    if path.parent().is_none() {
        return Err("the root cgroup cannot be a marked source".into());
    }
    Ok(())
}
