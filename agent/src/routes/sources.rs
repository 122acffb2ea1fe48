//! Marked sources as applied: what route sync wrote to `MARKED`, by cgroup id, for the proxy (a
//! connection's source id → its key and who it is) and the debug API (`/routes/sources`, which
//! `shunt test` polls until its entry is there).
use std::{collections::HashMap, path::PathBuf, sync::Arc};

use serde::Serialize;

use super::RoutingKey;

/// One marked source the kernel holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedSource {
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub key: RoutingKey,
    /// Who is marked: `pod NS/NAME`, or `file`.
    pub origin: String,
}

/// Every applied source, by cgroup id. Replaced whole after each apply.
#[derive(Clone, Debug, Default)]
pub struct AppliedSources {
    by_id: HashMap<u64, Arc<AppliedSource>>,
}

impl AppliedSources {
    pub fn new(sources: impl IntoIterator<Item = AppliedSource>) -> Self {
        Self {
            by_id: sources
                .into_iter()
                .map(|s| (s.cgroup_id, Arc::new(s)))
                .collect(),
        }
    }

    pub fn get(&self, cgroup_id: u64) -> Option<&Arc<AppliedSource>> {
        self.by_id.get(&cgroup_id)
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every source, sorted by cgroup path.
    pub fn list(&self) -> Vec<&AppliedSource> {
        let mut v: Vec<&AppliedSource> = self.by_id.values().map(|s| &**s).collect();
        v.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
        v
    }
}
