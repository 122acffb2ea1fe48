//! Leader election over a `coordination.k8s.io/v1` Lease, so exactly one agent writes
//! SandboxRoute status and deletes expired routes.
//!
//! The algorithm is client-go's `leaderelection` with a Lease lock, using only get, create and
//! update (replace) with resourceVersion preconditions:
//! - no Lease: create it holding it (a 409 means another agent won the race);
//! - held by us: renew (`renewTime`) every `duration / 4`;
//! - held by another: take it over only once its record (holder, renewTime, resourceVersion) has
//!   not changed for a whole `leaseDurationSeconds` as measured on *our* clock since we first saw
//!   that record, so clock skew between nodes does not matter;
//! - empty holder (released on shutdown): take it at once.
//!
//! Every write carries the resourceVersion it read, so two agents can never both succeed. A
//! leader that cannot renew for `2/3 × duration` steps down before its Lease can lapse, so a new
//! leader never overlaps with an old one that is still writing (unless clocks run at very
//! different rates).
use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{Api, Client, api::PostParams};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

/// Name of the Lease in `--lease-namespace`.
pub const LEASE_NAME: &str = "shunt-status-writer";

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This agent's holder identity (the node name).
    pub identity: String,
    pub duration: Duration,
}

/// The record a candidate watches for change.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: String,
    renew: Option<jiff::Timestamp>,
    resource_version: Option<String>,
}

struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// The last record seen and when (our clock).
    observed: Option<(Record, Instant)>,
}

/// What one round decided.
#[derive(Debug, PartialEq, Eq)]
enum Round {
    Leader,
    Follower,
}

fn now_micro() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

impl Elector {
    fn is_conflict(e: &kube::Error) -> bool {
        matches!(e, kube::Error::Api(s) if s.code == 409)
    }

    async fn round(&mut self) -> Result<Round, kube::Error> {
        let me = self.cfg.identity.clone();
        let lease = match self.api.get_opt(&self.cfg.name).await? {
            None => {
                let now = now_micro();
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(me),
                        lease_duration_seconds: Some(secs(self.cfg.duration)),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(Round::Leader),
                    Err(e) if Self::is_conflict(&e) => Ok(Round::Follower),
                    Err(e) => Err(e),
                };
            }
            Some(lease) => lease,
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = Record {
            holder: holder.clone(),
            renew: spec.renew_time.as_ref().map(|t| t.0),
            resource_version: lease.metadata.resource_version.clone(),
        };
        let now = Instant::now();
        let seen_at = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                self.observed = Some((record, now));
                now
            }
        };
        let held_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.cfg.duration, Duration::from_secs);
        let free = holder.is_empty() || now.duration_since(seen_at) > held_for;
        if holder != me && !free {
            return Ok(Round::Follower);
        }
        let mut new = lease;
        let s = new.spec.get_or_insert_with(Default::default);
        let now = now_micro();
        if holder != me {
            s.acquire_time = Some(now.clone());
            s.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        s.holder_identity = Some(self.cfg.identity.clone());
        s.lease_duration_seconds = Some(secs(self.cfg.duration));
        s.renew_time = Some(now);
        // `new` carries the resourceVersion read above: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &new)
            .await
        {
            Ok(_) => Ok(Round::Leader),
            Err(e) if Self::is_conflict(&e) => Ok(Round::Follower),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (empty holder) if we hold it, so another agent takes over at once.
    async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(());
        };
        let Some(s) = lease.spec.as_mut() else {
            return Ok(());
        };
        if s.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        s.holder_identity = None;
        s.renew_time = Some(now_micro());
        self.api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}

/// Runs the election until `stop`, publishing whether we lead. On `stop` a leader releases the
/// Lease (best effort, one second at most) and publishes `false`.
pub async fn run(
    client: Client,
    cfg: LeaseConfig,
    leader: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut e = Elector {
        api: Api::namespaced(client, &cfg.namespace),
        cfg: cfg.clone(),
        observed: None,
    };
    let retry = (cfg.duration / 4).max(Duration::from_millis(100));
    let renew_deadline = cfg.duration * 2 / 3;
    let mut last_renew: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => break,
            r = tokio::time::timeout(renew_deadline.max(Duration::from_millis(200)), e.round()) => r,
        };
        let failure = match outcome {
            Ok(Ok(Round::Leader)) => {
                last_renew = Some(Instant::now());
                None
            }
            Ok(Ok(Round::Follower)) => {
                last_renew = None;
                None
            }
            Ok(Err(err)) => Some(err.to_string()),
            Err(_) => Some("timed out".to_string()),
        };
        let leading = match failure {
            None => {
                last_error = None;
                last_renew.is_some()
            }
            Some(msg) => {
                if last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(lease = %format!("{}/{}", cfg.namespace, cfg.name),
                        error = %msg, "status lease: get/renew failed");
                    last_error = Some(msg);
                }
                // Keep leading only while the last renewal is recent enough.
                last_renew.is_some_and(|t| t.elapsed() < renew_deadline)
            }
        };
        if !leading {
            last_renew = None;
        }
        leader.send_if_modified(|l| {
            if *l == leading {
                return false;
            }
            *l = leading;
            if leading {
                tracing::info!(identity = %cfg.identity, "acquired the status lease: writing SandboxRoute status");
            } else {
                tracing::info!(identity = %cfg.identity, "not holding the status lease");
            }
            true
        });
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(retry) => {}
        }
    }
    if *leader.borrow() {
        leader.send_replace(false);
        match tokio::time::timeout(Duration::from_secs(1), e.release()).await {
            Ok(Ok(())) => tracing::info!("released the status lease"),
            Ok(Err(err)) => tracing::warn!(error = %err, "releasing the status lease"),
            Err(_) => tracing::warn!("releasing the status lease timed out"),
        }
    }
}
