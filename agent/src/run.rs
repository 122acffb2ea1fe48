//! `shunt run`: wires capture, route sync, the node proxy, the watchdog and the admin API.
use std::{
    collections::BTreeMap,
    os::fd::AsFd as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, signal::unix::SignalKind};
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{self, AdminState},
    capture::{self, Capture, CaptureConfig},
    cli::RunArgs,
    kube::{KubeOptions, KubeSource},
    metrics::Metrics,
    proxy::{
        self, OrigDstLookup, ProxyShared,
        decision_log::DecisionLog,
        key::{KeyExtractor, KeySources},
        upstream::Upstreams,
    },
    routes::{ClusterState, RouteStatus, RouteTable},
    steering::Steering,
    sync::file_source::RoutesFileWatcher,
    watchdog::Watchdog,
};

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    // One worker: a current-thread runtime, so every task (proxy connections, route sync, admin)
    // runs on this thread with no cross-thread wake-ups or work-stealing bookkeeping per request.
    let mut rt = if args.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if args.worker_threads > 0 {
            b.worker_threads(args.worker_threads);
        }
        b
    };
    rt.enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run_async(args))
}

/// Recomputes and applies a route table on the blocking pool: a large table takes milliseconds,
/// and the proxy may share this runtime's only thread.
async fn apply_off_runtime<F>(apply: &F, state: Arc<ClusterState>)
where
    F: Fn(&ClusterState) -> Vec<RouteStatus> + Clone + Send + 'static,
{
    let apply = apply.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || apply(&state)).await {
        tracing::error!(error = %e, "route table recompute panicked");
    }
}

async fn bind(addr: std::net::SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {flag} {addr}"))
}

async fn run_async(args: RunArgs) -> anyhow::Result<()> {
    let key_headers = args
        .key_header
        .iter()
        .map(|h| {
            hyper::header::HeaderName::from_bytes(h.as_bytes())
                .with_context(|| format!("--key-header {h:?}: not a valid header name"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Load the routes before touching the kernel: a bad file is a startup error, with its line.
    let routes_watch = match &args.routes {
        Some(path) => Some(RoutesFileWatcher::new(path, args.routes_poll_interval).spawn()?),
        None => None,
    };
    // Likewise a bad kubeconfig; an unreachable API server is not an error (watches retry).
    let kube_source = if args.kube {
        Some(
            KubeSource::new(KubeOptions {
                kubeconfig: args.kubeconfig.clone(),
                identity: args
                    .node_name
                    .clone()
                    .unwrap_or_else(crate::kube::default_identity),
                lease_namespace: args.lease_namespace.clone(),
                lease_duration: args.lease_duration,
                debounce: args.kube_debounce,
            })
            .await?,
        )
    } else {
        None
    };

    // Listen before capturing, so a redirected connection never meets a closed port.
    let listener4 = bind(args.proxy_addr, "--proxy-addr").await?;
    let listener6 = match args.proxy_addr6 {
        Some(a) => Some(bind(a, "--proxy-addr6").await?),
        None => None,
    };
    let admin_listener = bind(args.admin_addr, "--admin-addr").await?;

    let cfg = CaptureConfig {
        cgroup: args.cgroup.clone(),
        bpffs_dir: args.bpffs_dir.clone(),
        // In a cluster the node's bpffs is mounted into the pod; never mount one of our own.
        mount_bpffs: !args.kube,
        proxy4: Some(args.proxy_addr),
        proxy6: args.proxy_addr6,
        agent_cgroup: capture::own_cgroup_dir()?,
        agent_mark: args.agent_mark,
        steered_max_entries: args.steered_max_entries,
        orig_max_entries: args.orig_max_entries,
        flows_max_entries: args.flows_max_entries,
    };
    let capture::CaptureParts {
        guard: mut attach_guard,
        steered,
        orig_dst,
        stats,
        flows,
    } = Capture::attach(&cfg)?.into_parts();
    attach_guard.forward_logs();

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry, Some(Arc::new(stats)));
    let table = Arc::new(ArcSwap::from_pointee(RouteTable::default()));
    let log = Arc::new(DecisionLog::new(args.decision_log_size));
    let admin_state = AdminState::new(registry, table.clone(), log.clone(), Some(flows));
    let steering = Arc::new(Steering::new(steered));

    // --steer destinations are steered whatever the routes say (service id 0).
    let extra: BTreeMap<_, _> = args.steer.iter().map(|d| (*d, 0u32)).collect();
    let apply = {
        let (table, steering, metrics, extra) = (
            table.clone(),
            steering.clone(),
            metrics.clone(),
            extra.clone(),
        );
        move |state: &ClusterState| -> Vec<RouteStatus> {
            let (new, statuses) = RouteTable::compute(state, jiff::Timestamp::now());
            for s in statuses.iter().filter(|s| !s.ready) {
                tracing::warn!(route = %format!("{}/{}", s.namespace, s.name),
                    reason = s.reason.as_str(), message = %s.message, "route not ready");
            }
            let mut desired = new.steered().clone();
            desired.extend(extra.iter().map(|(k, v)| (*k, *v)));
            // The proxy learns the routes before capture sends it the traffic.
            table.store(Arc::new(new));
            if let Some(r) = steering.apply(desired, &metrics) {
                tracing::info!(
                    added = r.added,
                    removed = r.removed,
                    unchanged = r.unchanged,
                    failed = r.failed.len(),
                    "route table applied"
                );
            }
            metrics.table_reloaded();
            statuses
        }
    };
    // A restarted agent finds its previous entries pinned: the first apply makes the map exactly
    // the desired set.
    // With --kube that first apply waits for the first complete sync (until then the pinned
    // entries stay, and the proxy sends what it gets to the original destinations).
    let initial = routes_watch
        .as_ref()
        .map(|w| w.states.borrow().clone())
        .unwrap_or_default();
    if kube_source.is_none() {
        apply(&initial);
    }

    let shutdown = CancellationToken::new();
    let lookup: Arc<dyn OrigDstLookup> = Arc::new(orig_dst);
    let heartbeat = Arc::new(AtomicU64::new(0));
    let shared = Arc::new(ProxyShared {
        cfg: proxy::ProxyConfig {
            connect_timeout: args.connect_timeout,
            header_read_timeout: args.header_read_timeout,
            idle_timeout: args.idle_timeout,
            detect_timeout: args.detect_timeout,
            max_connections: args.max_connections,
            max_header_bytes: args.max_header_bytes,
            max_headers: args.max_headers,
        },
        keys: KeyExtractor::new(KeySources::with_headers(key_headers)),
        table: table.clone(),
        upstreams: Upstreams::new(args.connect_timeout, args.idle_timeout),
        log,
        metrics: metrics.clone(),
        lookup,
        shutdown: shutdown.clone(),
        heartbeat: heartbeat.clone(),
    });

    let (watchdog_stop, watchdog_stop_rx) = std::sync::mpsc::channel::<()>();
    let listener_fds = std::iter::once(&listener4)
        .chain(listener6.as_ref())
        .map(|l| l.as_fd().try_clone_to_owned())
        .collect::<Result<Vec<_>, _>>()
        .context("duplicating the proxy listeners for the watchdog")?;
    let watchdog = Watchdog {
        listeners: listener_fds,
        heartbeat,
        interval: args.watchdog_interval,
        steering: steering.clone(),
        metrics: metrics.clone(),
        stop: watchdog_stop_rx,
    }
    .spawn()
    .context("starting the watchdog")?;

    let mut tasks = tokio::task::JoinSet::new();
    for l in std::iter::once(listener4).chain(listener6) {
        tasks.spawn(proxy::serve(l, shared.clone(), args.shutdown_grace));
    }
    let kube_sync = kube_source.map(|k| k.spawn(apply.clone()));
    let route_sync = routes_watch.map(|mut w| {
        let (metrics, table) = (metrics.clone(), table.clone());
        tokio::spawn(async move {
            let mut rejected = w.stats.rejected();
            loop {
                // Expiry needs no file change: recompute when the next route expires.
                let expiry = table.load().next_expiry().map(|t| {
                    let now = jiff::Timestamp::now();
                    Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO)
                });
                tokio::select! {
                    changed = w.states.changed() => {
                        if changed.is_err() { return; }
                        let state = w.states.borrow_and_update().clone();
                        apply_off_runtime(&apply, state).await;
                    }
                    _ = tokio::time::sleep(expiry.unwrap_or(Duration::MAX).min(Duration::from_millis(200))) => {
                        if expiry.is_some_and(|e| e.is_zero()) {
                            let state = w.states.borrow().clone();
                            apply_off_runtime(&apply, state).await;
                        }
                    }
                }
                // Count rejected versions of the file as they happen.
                let now = w.stats.rejected();
                for _ in rejected..now {
                    metrics.table_reload_error();
                }
                rejected = now;
            }
        })
    });
    let admin_shutdown = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin_state.clone(),
        admin_shutdown.clone(),
    ));
    admin_state.ready.store(true, Ordering::Relaxed);
    tracing::info!(cgroup = %args.cgroup.display(), proxy = %args.proxy_addr, "shunt running");

    let mut term =
        tokio::signal::unix::signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: failing open, then draining"),
        _ = int.recv() => tracing::info!("SIGINT: failing open, then draining"),
    }
    // Fail open first: new connections go direct while in-flight ones drain. The watchdog stops
    // first so it cannot restore steering behind our back.
    admin_state.ready.store(false, Ordering::Relaxed);
    drop(watchdog_stop);
    let _ = tokio::task::spawn_blocking(move || watchdog.join()).await;
    if let Some(t) = route_sync {
        t.abort();
    }
    if let Some(k) = kube_sync {
        k.shutdown().await;
    }
    let cleared = steering.suspend();
    tracing::info!(cleared, "cleared STEERED");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    drop(attach_guard);
    admin_shutdown.cancel();
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}
