//! get_logs, and the log lines each hop's serving pod wrote while a test request was in flight.
//!
//! Cluster mode reads `pods/log` (see `logs_cluster`). No-cluster mode reads the mini-cluster's
//! pod logs (`DIR/NAME.log`). A hop's lines are those
//! its pod appended between just before the request was sent and the end of the request (the
//! log's size is noted before, so no timestamp format is assumed), bounded in lines and bytes.
use std::{collections::BTreeMap, net::IpAddr, net::SocketAddr, path::Path};

use serde_json::json;

use crate::{
    mcp::{
        backend::Backend,
        error::{ToolError, ToolErrorKind, ToolResult},
        sandbox_types::*,
        types::Hop,
    },
    sandbox::local::{PodRecord, read_lines},
};

/// Lines and bytes kept per hop.
const HOP_LINES: usize = 20;
const HOP_BYTES: usize = 4096;
/// Bytes returned per pod by get_logs.
const LOG_BYTES: usize = 64 * 1024;

/// Each pod's log size before a request: (pod, its IPs, log path, size).
pub struct LogMarks(Vec<(String, Vec<IpAddr>, std::path::PathBuf, u64)>);

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// The lines of `text` dated at or after `since` (unix ms) by a leading RFC 3339 timestamp;
/// undated lines take the date of the line before them (and are kept when nothing is dated yet
/// only if no line is dated at all).
fn since_filter(lines: Vec<String>, since: u64) -> Vec<String> {
    let mut keep = false;
    let mut any_dated = false;
    let mut out = Vec::new();
    for l in lines {
        let first = l.split_whitespace().next().unwrap_or("");
        if let Ok(t) = first.parse::<jiff::Timestamp>() {
            any_dated = true;
            keep = t.as_millisecond() >= since as i64;
        }
        if keep {
            out.push(l);
        }
    }
    if any_dated { out } else { Vec::new() }
}

impl Backend {
    /// Notes every mini-cluster pod's log size (no-cluster mode with --cluster-dir).
    pub fn log_marks(&self) -> Option<LogMarks> {
        let (_, mini) = self.mini().ok()?;
        Some(LogMarks(
            PodRecord::all(&mini.dir)
                .into_iter()
                .map(|p| {
                    let log = PodRecord::log_path(&mini.dir, &p.name);
                    let s = size(&log);
                    (p.name, p.ips, log, s)
                })
                .collect(),
        ))
    }

    /// Attaches to each hop what its serving pod logged since `marks`.
    pub fn attach_hop_logs(&self, hops: &mut [Hop], marks: &LogMarks) {
        for hop in hops {
            let Some(ip) = hop
                .upstream
                .as_deref()
                .and_then(|u| u.parse::<SocketAddr>().ok())
                .map(|a| a.ip().to_canonical())
            else {
                continue;
            };
            if let Some((pod, _, log, from)) = marks.0.iter().find(|(_, ips, ..)| ips.contains(&ip))
            {
                let (lines, truncated) = read_lines(log, *from, None, None, HOP_LINES, HOP_BYTES);
                hop.logs = Some(PodLogs {
                    pod: pod.clone(),
                    lines,
                    truncated,
                });
            }
        }
    }

    pub async fn get_logs(&self, p: GetLogsParams) -> ToolResult<GetLogsResult> {
        if let Backend::Cluster(c) = self {
            return self.cluster_logs(c, p).await;
        }
        let (_, mini) = self.mini()?;
        let all = PodRecord::all(&mini.dir);
        let target = p.target.rsplit('/').next().unwrap_or(&p.target).to_string();
        let mut pods: Vec<&PodRecord> = all.iter().filter(|r| r.name == target).collect();
        if pods.is_empty() {
            // A service: its baseline pods.
            pods = all
                .iter()
                .filter(|r| r.sandbox.is_none() && r.service.as_deref() == Some(&target))
                .collect();
        }
        if pods.is_empty() {
            let names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
            let services: BTreeMap<&str, ()> = all
                .iter()
                .filter_map(|r| r.service.as_deref().map(|s| (s, ())))
                .collect();
            return Err(ToolError::new(
                ToolErrorKind::SandboxNotFound,
                format!(
                    "no sandbox, pod or service {:?} in the mini-cluster",
                    p.target
                ),
                "give a sandbox's name (list_sandboxes), a pod's name or a service's name",
            )
            .with_details(
                json!({ "pods": names, "services": services.keys().collect::<Vec<_>>() }),
            ));
        }
        let tail = p.tail.unwrap_or(100).clamp(1, 5000);
        let out = pods
            .into_iter()
            .map(|r| {
                let log = PodRecord::log_path(&mini.dir, &r.name);
                let (lines, truncated) = match p.since_unix_ms {
                    None => read_lines(&log, 0, None, p.grep.as_deref(), tail, LOG_BYTES),
                    Some(since) => {
                        let (all, _) =
                            read_lines(&log, 0, None, p.grep.as_deref(), usize::MAX, usize::MAX);
                        let kept = since_filter(all, since);
                        let skip = kept.len().saturating_sub(tail);
                        (kept[skip..].to_vec(), skip > 0)
                    }
                };
                PodLogs {
                    pod: r.name.clone(),
                    lines,
                    truncated,
                }
            })
            .collect();
        Ok(GetLogsResult {
            target: p.target,
            pods: out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::since_filter;

    #[test]
    fn since_keeps_dated_lines_and_their_continuations() {
        let lines = vec![
            "2026-12-07T04:00:00Z old".to_string(),
            "  continued old".into(),
            "2026-12-07T04:00:02Z new".into(),
            "  continued new".into(),
        ];
        let since = jiff::Timestamp::from_second(1_796_616_001).unwrap();
        let since_ms = since.as_millisecond() as u64;
        let t0 = "2026-12-07T04:00:00Z".parse::<jiff::Timestamp>().unwrap();
        assert!(t0 < since, "fixture: the first line is older");
        let kept = since_filter(lines, since_ms);
        assert_eq!(kept, ["2026-12-07T04:00:02Z new", "  continued new"]);
    }
}
