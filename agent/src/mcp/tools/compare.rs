//! compare_with_baseline: the same request with the key and without, and what differs: the
//! response (see [`super::diff`]) and the hops (which services and pods each version reached).
use crate::mcp::{
    backend::Backend,
    error::{ToolError, ToolResult},
    request::ClientPlacement,
    sandbox_types::*,
    types::SendRequestParams,
};

use super::diff::{VOLATILE_FIELDS, VOLATILE_HEADERS, diff_responses};

impl Backend {
    pub async fn compare_with_baseline(
        &self,
        p: CompareParams,
        placement: &ClientPlacement,
    ) -> ToolResult<CompareResult> {
        if p.request.key.is_none() {
            return Err(ToolError::invalid(
                "compare_with_baseline needs `key`: it sends the request with it and without it",
                "give the routing key of your sandbox",
            ));
        }
        let unkeyed = SendRequestParams {
            url: p.request.url.clone(),
            key: None,
            method: p.request.method.clone(),
            headers: p.request.headers.clone(),
            body: p.request.body.clone(),
            timeout_seconds: p.request.timeout_seconds,
        };
        let keyed = self.send_test_request(p.request, placement).await?;
        let baseline = self.send_test_request(unkeyed, placement).await?;
        let differences = diff_responses(
            (
                keyed.response.status,
                &keyed.response.headers,
                &keyed.response.body,
                keyed.response.body_json.as_ref(),
            ),
            (
                baseline.response.status,
                &baseline.response.headers,
                &baseline.response.body,
                baseline.response.body_json.as_ref(),
            ),
            &p.ignore,
        );
        let keyed_hops: Vec<HopSummary> = keyed.hops.iter().map(HopSummary::from).collect();
        let baseline_hops: Vec<HopSummary> = baseline.hops.iter().map(HopSummary::from).collect();
        let show = |h: Option<&HopSummary>| {
            h.map_or("(no call)".to_string(), |h| {
                format!(
                    "{} ({})",
                    h.served_by.as_deref().unwrap_or("-"),
                    h.status.map_or("-".into(), |s| s.to_string())
                )
            })
        };
        let mut hop_differences = Vec::new();
        for i in 0..keyed_hops.len().max(baseline_hops.len()) {
            let (k, b) = (keyed_hops.get(i), baseline_hops.get(i));
            let same = matches!((k, b), (Some(k), Some(b))
                if k.service == b.service && k.served_by == b.served_by && k.status == b.status);
            if !same {
                let svc = k
                    .or(b)
                    .and_then(|h| h.service.clone())
                    .unwrap_or_else(|| "-".into());
                hop_differences.push(format!(
                    "hop {}: {svc}: keyed {} vs baseline {}",
                    i + 1,
                    show(k),
                    show(b)
                ));
            }
        }
        let identical = differences.is_empty();
        let same_hops = hop_differences.is_empty();
        let summary = if identical && same_hops {
            format!(
                "identical: status {}, headers and body (volatile fields ignored), and the same \
                 hops",
                keyed.response.status
            )
        } else if identical {
            format!(
                "identical responses (status {}) through different hops: {}",
                keyed.response.status,
                hop_differences.join("; ")
            )
        } else {
            format!(
                "{} difference(s): {}",
                differences.len(),
                differences
                    .iter()
                    .map(|d| d.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut ignored_by_default: Vec<String> = VOLATILE_HEADERS
            .iter()
            .map(|h| format!("header {h}"))
            .collect();
        ignored_by_default.extend(VOLATILE_FIELDS.iter().map(|f| format!("body field {f}")));
        Ok(CompareResult {
            identical,
            summary,
            differences,
            keyed_hops,
            baseline_hops,
            hop_differences,
            ignored_by_default,
            keyed: (!identical || !same_hops).then_some(keyed),
            baseline: (!identical || !same_hops).then_some(baseline),
        })
    }
}
