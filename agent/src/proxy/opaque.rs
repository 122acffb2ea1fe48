//! TLS and unknown bytes, the sibling of the [`http`](super::http) path: no key can be read, so
//! the connection goes where a keyless request would (a baseline endpoint of a known service,
//! else the original destination) and its bytes are copied both ways.
use std::time::Instant;

use tokio::net::TcpStream;

use super::{ConnInfo, Exit, ProxyShared, relay};
use crate::routes::{Decision, DecisionReason};

/// Routes and relays one opaque connection until both sides close.
pub async fn serve(shared: &ProxyShared, client: TcpStream, info: ConnInfo) {
    let started = Instant::now();
    let decision = shared.decide(&mut info.route(), None, false);
    if decision.drops_connection() {
        // No endpoint on this node under `internalTrafficPolicy: Local`: closed unanswered.
        shared.record(&info, decision, Exit::default());
        return;
    }
    let decision = Decision {
        reason: DecisionReason::OpaqueProtocol,
        ..decision
    };
    let upstream = decision.upstream.unwrap_or(info.original_dst.0);
    shared.record(&info, decision, Exit::default());
    let up = match shared.upstreams.connect(info.source, upstream).await {
        Ok(u) => u,
        Err(e) => {
            shared.metrics.upstream_connect_error();
            tracing::debug!(client = %info.client, %upstream, error = %e, "upstream connect failed");
            return;
        }
    };
    // Opaque streams have no request boundary to drain at: on shutdown they get the grace
    // period, then are closed. An idle one is closed after --opaque-idle-timeout, so idle
    // connections cannot hold the proxy's slots forever.
    let (mut client, mut up) = (client, up);
    match relay::relay(&mut client, &mut up, shared.limits.opaque_idle_timeout).await {
        Ok((a, b)) => {
            tracing::trace!(%upstream, up = a, down = b, elapsed = ?started.elapsed(), "opaque relay done")
        }
        Err(relay::RelayError::Idle(after)) => {
            shared.metrics.opaque_idle_closed();
            tracing::debug!(client = %info.client, %upstream, ?after, "opaque connection idle: closed");
        }
        Err(e) => {
            tracing::debug!(%upstream, error = %super::upstream::error_chain(&e), "opaque relay ended with an error")
        }
    }
}
