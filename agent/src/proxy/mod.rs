//! The node proxy: accepts connections redirected by capture, resolves where each was going, and
//! forwards it.
pub mod orig_dst;
pub mod relay;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
pub use orig_dst::{OrigDstAddr, OrigDstLookup, ServiceId};

/// Limits and timeouts of the proxy.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub connect_timeout: Duration,
    pub max_connections: usize,
}

/// Serves one listener until `shutdown` is cancelled, then stops accepting and waits for
/// in-flight connections for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    lookup: Arc<dyn OrigDstLookup>,
    cfg: ProxyConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let permits = Arc::new(Semaphore::new(cfg.max_connections));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (client, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        metrics.accepted();
        let lookup = lookup.clone();
        let cfg = cfg.clone();
        let metrics = metrics.clone();
        conns.spawn(async move {
            handle(client, peer, &*lookup, &cfg, &metrics).await;
            drop(permit);
        });
        // Reap finished tasks so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    if tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::info!(
            remaining = conns.len(),
            "grace period over, closing connections"
        );
        conns.abort_all();
    }
}

async fn handle(
    client: tokio::net::TcpStream,
    peer: SocketAddr,
    lookup: &dyn OrigDstLookup,
    cfg: &ProxyConfig,
    metrics: &Metrics,
) {
    let Some((OrigDstAddr(dst), _service)) = lookup.lookup(peer) else {
        // Never guess: an evicted entry means we do not know where this was going.
        metrics.orig_dst_miss();
        tracing::warn!(%peer, "no original destination for this connection (evicted?); closing it");
        return;
    };
    let _ = client.set_nodelay(true);
    let upstream = match relay::connect(dst, cfg.connect_timeout).await {
        Ok(u) => u,
        Err(e) => {
            metrics.upstream_connect_error();
            tracing::debug!(%peer, %dst, error = %e, "upstream connect failed");
            return;
        }
    };
    match relay::relay(client, upstream).await {
        Ok((up, down)) => tracing::trace!(%peer, %dst, up, down, "relay done"),
        Err(e) => tracing::debug!(%peer, %dst, error = %e, "relay ended with an error"),
    }
}
