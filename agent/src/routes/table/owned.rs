//! A namespace steers only what it owns.
//!
//! `STEERED` is node-wide: an address in it captures every connection of every pod on the node.
//! So a Service may bring into it only its own virtual addresses and the endpoint addresses that
//! are Pods of its namespace. Whoever may write an EndpointSlice in a namespace can list any
//! address in it (another team's pod, a node address, the API server), so an endpoint address
//! counts as the Service's own only when:
//! - its `targetRef` is a Pod in the Service's namespace (with [`EndpointTrust::Operator`], an
//!   address without a `targetRef` passes this step: the operator wrote it);
//! - the Pod objects the agent knows for that IP (this node's pods, the sandbox pods), if any,
//!   include that very Pod;
//! - no Service of another namespace claims the IP too, unless a known Pod object settles whose
//!   it is: an address two namespaces claim belongs to the namespace of its Pod, and to nobody
//!   while that Pod is not known here.
//!
//! Other addresses are removed from their Service before anything is computed: never steered,
//! never a baseline or sandbox endpoint. What was removed is kept, so the route that forks such
//! a Service (or targets it) can name each address and why.
use std::{
    collections::{BTreeSet, HashMap},
    fmt::Write as _,
    net::IpAddr,
    sync::Arc,
};

use crate::routes::{ClusterState, EndpointAddr, EndpointTrust, Pod, Service};

/// An endpoint address a Service may not use, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) ip: IpAddr,
    pub(super) why: String,
}

/// Pod objects the agent knows, by IP: (namespace, name) of each.
#[derive(Default)]
pub(super) struct KnownPods<'a> {
    by_ip: HashMap<IpAddr, BTreeSet<(&'a str, &'a str)>>,
}

impl<'a> KnownPods<'a> {
    pub(super) fn new(state: &'a ClusterState) -> Self {
        let mut by_ip: HashMap<IpAddr, BTreeSet<(&str, &str)>> = HashMap::new();
        let node_pods = state
            .node_pods
            .iter()
            .map(|p| (p.namespace.as_str(), p.name.as_str(), &p.ips));
        let sandbox_pods = state
            .pods
            .iter()
            .map(|p: &Pod| (p.namespace.as_str(), p.name.as_str(), &p.ips));
        for (ns, name, ips) in node_pods.chain(sandbox_pods) {
            for ip in ips {
                by_ip
                    .entry(ip.to_canonical())
                    .or_default()
                    .insert((ns, name));
            }
        }
        Self { by_ip }
    }

    /// The known Pods with this IP (several for host-network pods).
    pub(super) fn at(&self, ip: IpAddr) -> Option<&BTreeSet<(&'a str, &'a str)>> {
        self.by_ip.get(&ip.to_canonical())
    }

    /// Whether the known Pod `namespace/name` has this IP.
    pub(super) fn has(&self, ip: IpAddr, namespace: &str, name: &str) -> bool {
        self.at(ip).is_some_and(|s| s.contains(&(namespace, name)))
    }
}

/// The Services with only the endpoint addresses they own, and what each lost.
pub(super) struct Owned {
    /// `state.services`, same order, each with only its own endpoint addresses.
    pub(super) services: Vec<Service>,
    /// (namespace, name) of a Service → the addresses removed from it.
    pub(super) refused: HashMap<(String, String), Vec<Refusal>>,
}

/// Why `ep`, listed by a Service of `namespace`, is not that Service's own by its `targetRef`
/// and the known Pods alone; `None` when it may be (see [`owned_endpoints`] for contests).
fn refusal(
    trust: EndpointTrust,
    known: &KnownPods<'_>,
    namespace: &str,
    ep: &EndpointAddr,
) -> Option<String> {
    let Some(t) = &ep.target_ref else {
        return match trust {
            EndpointTrust::Operator => None,
            EndpointTrust::OwnPodsOnly => Some(format!(
                "has no targetRef, so it is not a Pod of namespace {namespace:?}"
            )),
        };
    };
    if t.kind != "Pod" {
        return Some(format!(
            "is a {} ({}/{}), not a Pod",
            t.kind, t.namespace, t.name
        ));
    }
    if t.namespace != namespace {
        return Some(format!(
            "is Pod {}/{}, not in namespace {namespace:?}",
            t.namespace, t.name
        ));
    }
    match known.at(ep.ip) {
        Some(pods) if !pods.contains(&(t.namespace.as_str(), t.name.as_str())) => {
            let mut others = String::new();
            for (i, (ns, name)) in pods.iter().enumerate() {
                let _ = write!(others, "{}{ns}/{name}", if i > 0 { ", " } else { "" });
            }
            Some(format!(
                "is the address of Pod {others}, not of {}/{} as its targetRef says",
                t.namespace, t.name
            ))
        }
        _ => None,
    }
}

/// Splits every Service's endpoint addresses into its own and the refused ones.
pub(super) fn owned_endpoints(state: &ClusterState, known: &KnownPods<'_>) -> Owned {
    let trust = state.endpoint_trust;
    // First pass: what each endpoint's targetRef and the known Pods say.
    let verdicts: Vec<Vec<Option<String>>> = state
        .services
        .iter()
        .map(|svc| {
            svc.endpoints
                .iter()
                .map(|ep| refusal(trust, known, &svc.namespace, ep))
                .collect()
        })
        .collect();
    // Contests: the namespaces whose Services still claim each IP.
    let mut claims: HashMap<IpAddr, BTreeSet<&str>> = HashMap::new();
    for (svc, verdict) in state.services.iter().zip(&verdicts) {
        for (ep, v) in svc.endpoints.iter().zip(verdict) {
            if v.is_none() {
                claims
                    .entry(ep.ip.to_canonical())
                    .or_default()
                    .insert(svc.namespace.as_str());
            }
        }
    }
    let mut services = Vec::with_capacity(state.services.len());
    let mut refused: HashMap<(String, String), Vec<Refusal>> = HashMap::new();
    for (svc, verdict) in state.services.iter().zip(verdicts) {
        let mut kept = svc.clone();
        kept.endpoints.clear();
        for (ep, v) in svc.endpoints.iter().zip(verdict) {
            let why = v.or_else(|| {
                let ip = ep.ip.to_canonical();
                let claimants = claims.get(&ip)?;
                // A known Pod agreeing with the targetRef settled it (the other claims were
                // refused above); with no Pod known, a contested address is nobody's.
                if claimants.len() < 2 || known.at(ip).is_some() {
                    return None;
                }
                let others: Vec<&str> = claimants
                    .iter()
                    .copied()
                    .filter(|ns| *ns != svc.namespace)
                    .collect();
                Some(format!(
                    "is also claimed by namespace(s) {}, and no Pod object for it is known on this node",
                    others.join(", ")
                ))
            });
            match why {
                None => kept.endpoints.push(ep.clone()),
                Some(why) => refused
                    .entry((svc.namespace.clone(), svc.name.clone()))
                    .or_default()
                    .push(Refusal { ip: ep.ip, why }),
            }
        }
        services.push(kept);
    }
    Owned { services, refused }
}

/// Who each IP address is, for the service graph: a sandbox pod (`ns/pod`), else the Service
/// it is an (owned) endpoint of (`ns/service`).
pub(super) fn address_owners(owned: &Owned, state: &ClusterState) -> HashMap<IpAddr, String> {
    let mut owners = HashMap::new();
    for svc in &owned.services {
        for ep in &svc.endpoints {
            owners
                .entry(ep.ip.to_canonical())
                .or_insert_with(|| format!("{}/{}", svc.namespace, svc.name));
        }
    }
    // Pods are more specific than the Service they back: they win.
    for pod in &state.pods {
        for ip in &pod.ips {
            owners.insert(ip.to_canonical(), format!("{}/{}", pod.namespace, pod.name));
        }
    }
    owners
}

/// This node's pod IPs → the namespaces of the pods with that IP.
pub(super) fn node_pod_namespaces(state: &ClusterState) -> HashMap<IpAddr, Vec<Arc<str>>> {
    let mut out: HashMap<IpAddr, Vec<Arc<str>>> = HashMap::new();
    for pod in &state.node_pods {
        for ip in &pod.ips {
            let namespaces = out.entry(ip.to_canonical()).or_default();
            if !namespaces.iter().any(|n| **n == *pod.namespace) {
                namespaces.push(pod.namespace.as_str().into());
            }
        }
    }
    out
}

/// "10.0.0.1 has no targetRef, ...; 10.0.0.2 is Pod ..." for the first `max` refusals, then how
/// many more.
pub(super) fn describe(refusals: &[Refusal], max: usize) -> String {
    let mut out = String::new();
    for (i, r) in refusals.iter().take(max).enumerate() {
        let _ = write!(out, "{}{} {}", if i > 0 { "; " } else { "" }, r.ip, r.why);
    }
    if refusals.len() > max {
        let _ = write!(out, "; and {} more", refusals.len() - max);
    }
    out
}

#[cfg(test)]
#[path = "owned_tests.rs"]
mod tests;
