//! `shunt run`: wires capture, route sync, the node proxy, the watchdog and the admin API.
use std::{
    os::fd::AsFd as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tokio::signal::unix::SignalKind;
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{self, DebugState, DebugToken, HealthState, listener::ListenerLimits},
    capture::{self, Capture, CaptureConfig},
    config::{RunConfig, UpstreamSourceMode},
    handover::{self, SuccessorMark},
    kube::{KubeOptions, KubeSource},
    metrics::Metrics,
    netns::{NodeSockets, PodNetns, SourceSockets},
    proxy::{
        self, CapturedOrigDst, OrigDstLookup, ProxyShared,
        buffer_budget::ByteBudget,
        decision_log::DecisionLog,
        key::{KeyExtractor, KeySources},
        key_strip::StripKeysFrom,
        listen,
        self_probe::{ProbeAwareLookup, SelfProbe},
        upstream::Upstreams,
    },
    routes::RouteTable,
    sync::{
        Cgroupfs, DEFAULT_RECONCILE_INTERVAL, Marking, RouteSync, RouteSyncConfig, SourceFeed,
        Steering, file_source::RoutesFileWatcher,
    },
    watchdog::Watchdog,
};

pub fn run(args: RunConfig) -> anyhow::Result<()> {
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

/// The debug API's token. Without one the debug API may listen on loopback only: off it, every
/// pod of the node could read everyone's decisions.
fn debug_token(args: &RunConfig) -> anyhow::Result<Option<DebugToken>> {
    match &args.debug_token_file {
        Some(path) => Ok(Some(DebugToken::from_file(path)?)),
        None if args.debug_addr.ip().is_loopback() => Ok(None),
        None => anyhow::bail!(
            "--debug-addr {} is not a loopback address: set --debug-token-file, so only the \
             holders of the token (the traffic API) can read decisions and topology",
            args.debug_addr
        ),
    }
}

async fn run_async(args: RunConfig) -> anyhow::Result<()> {
    let key_headers = args
        .key_header
        .iter()
        .map(|h| {
            hyper::header::HeaderName::from_bytes(h.as_bytes())
                .with_context(|| format!("--key-header {h:?}: not a valid header name"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry, None);
    // Load the routes before touching the kernel: a bad file is a startup error, with its line.
    let routes_watch = match &args.routes {
        Some(path) => Some(
            RoutesFileWatcher::new(path, args.routes_poll_interval)
                .with_metrics(metrics.clone())
                .spawn()?,
        ),
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
            })
            .await?,
        )
    } else {
        None
    };

    // Listen before capturing, so a redirected connection never meets a closed port. Every port
    // is shared with SO_REUSEPORT, so a successor binds beside a running agent (see handover).
    let bind = |addr, flag| listen::bind(addr, args.listen_backlog, flag);
    let listener4 = bind(args.proxy_addr, "--proxy-addr")?;
    let listener6 = args
        .proxy_addr6
        .map(|a| bind(a, "--proxy-addr6"))
        .transpose()?;
    let admin_listener = bind(args.admin_addr, "--admin-addr")?;
    let debug_token = debug_token(&args)?;
    let debug_listener = bind(args.debug_addr, "--debug-addr")?;
    match handover::enable_queued_migration() {
        Ok(true) => tracing::info!(
            "net.ipv4.tcp_migrate_req set to 1: queued connections move to a successor"
        ),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot set net.ipv4.tcp_migrate_req: connections queued on this agent's listener when it hands over are reset (clients retry)")
        }
    }

    // On a node: the pods' cgroup, never the root (host processes keep their own traffic).
    let captured_cgroup = capture::resolve_cgroup(&args.cgroup_selector(), &args.cgroup_root)?;
    let cfg = CaptureConfig {
        cgroup: captured_cgroup.clone(),
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
        marked_max_entries: args.marked_max_entries,
        count_flows: args.count_flows,
    };
    let capture::CaptureParts {
        guard: mut attach_guard,
        steered,
        orig_dst,
        stats,
        flows,
        marked,
    } = Capture::attach(&cfg)?.into_parts();
    attach_guard.forward_logs();

    crate::metrics::register_capture(&mut registry, Arc::new(stats));
    let table = Arc::new(ArcSwap::from_pointee(RouteTable::default()));
    let log = Arc::new(DecisionLog::new(args.decision_log_bytes));
    // The liveness self-probe: through the proxy's own listeners to an in-process responder.
    let proxy_addrs = std::iter::once(&listener4)
        .chain(listener6.as_ref())
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()
        .context("reading the proxy listeners' addresses")?;
    let self_probe = SelfProbe::start(&proxy_addrs).context("starting the self-probe responder")?;
    let health = HealthState::new(registry, Some(self_probe.clone()));
    let marking = Arc::new(Marking::new(marked, Cgroupfs));
    let sources = marking.applied();
    let debug_state = Arc::new(DebugState {
        table: table.clone(),
        log: log.clone(),
        flows: Some(flows),
        token: debug_token,
        sources: sources.clone(),
    });
    let steering = Arc::new(Steering::new(steered).with_marking(marking));
    let (route_sync, sync_out) = RouteSync::new(RouteSyncConfig {
        table: table.clone(),
        steering: steering.clone(),
        metrics: metrics.clone(),
        always_steered: args.steer.clone(),
        debounce: args.kube_debounce,
        reconcile_interval: DEFAULT_RECONCILE_INTERVAL,
    });
    // Each source publishes its view; route sync alone turns it into the table and STEERED.
    let mut idle_source = None;
    let (kube_handle, feed) = match (kube_source, routes_watch) {
        (Some(k), _) => {
            let (handle, feed) = k.spawn(
                sync_out.statuses.clone(),
                sync_out.node_failures.clone(),
                metrics.clone(),
                Arc::new(capture::KubeletPodCgroups::new(captured_cgroup.clone())),
            );
            let feed = SourceFeed {
                name: "kube",
                states: feed.states,
                relists: Some(feed.relists),
            };
            (Some(handle), feed)
        }
        (None, Some(w)) => {
            let mut states = w.states;
            // The file as loaded at start is the first view to apply.
            states.mark_changed();
            let feed = SourceFeed {
                name: "routes file",
                states,
                relists: None,
            };
            (None, feed)
        }
        (None, None) => {
            // No source: only --steer destinations, applied once.
            let (tx, mut states) = tokio::sync::watch::channel(Arc::default());
            states.mark_changed();
            idle_source = Some(tx);
            let feed = SourceFeed {
                name: "no route source",
                states,
                relists: None,
            };
            (None, feed)
        }
    };
    let sync_stop = CancellationToken::new();
    // Source identity: the node's pods, from the same views route sync gets, say which network
    // namespace a client address is in (in a cluster found through the pod's cgroup).
    let source_sockets: Arc<dyn SourceSockets> = match args.upstream_source {
        UpstreamSourceMode::Pod => {
            let cgroups = args.kube.then(|| {
                Arc::new(capture::KubeletPodCgroups::new(captured_cgroup.clone()))
                    as Arc<dyn capture::PodCgroups>
            });
            let pods = Arc::new(PodNetns::new(cgroups, metrics.clone()));
            pods.set_pods(&feed.states.borrow().node_pods);
            tokio::spawn(pods.clone().follow(feed.states.clone(), sync_stop.clone()));
            pods
        }
        UpstreamSourceMode::Node => Arc::new(NodeSockets),
    };
    let sync_task = tokio::spawn(route_sync.run(feed, sync_stop.clone()));
    // Without --kube the initial table is in force before the proxy serves, as it always was;
    // with --kube the first apply waits for the first complete list (until then the pinned
    // entries stay, and the proxy sends what it gets to the original destinations).
    if kube_handle.is_none() {
        let mut applied = sync_out.applied.clone();
        let _ = applied.wait_for(|n| *n > 0).await;
    }

    let shutdown = CancellationToken::new();
    let lookup: Arc<dyn OrigDstLookup> = Arc::new(ProbeAwareLookup {
        probe: self_probe.clone(),
        inner: Arc::new(CapturedOrigDst {
            map: orig_dst,
            sources: sources.clone(),
        }),
    });
    let heartbeat = Arc::new(AtomicU64::new(0));
    let shared = Arc::new(ProxyShared {
        limits: proxy::ProxyLimits {
            connect_timeout: args.connect_timeout,
            header_read_timeout: args.header_read_timeout,
            idle_timeout: args.idle_timeout,
            detect_timeout: args.detect_timeout,
            max_connections: args.max_connections,
            max_header_bytes: args.max_header_bytes,
            max_headers: args.max_headers,
            max_client_connections: args.max_client_connections,
            opaque_idle_timeout: args.opaque_idle_timeout,
            response_header_timeout: args.response_header_timeout,
            max_concurrent_streams: args.max_concurrent_streams,
            max_request_buffer: args.max_request_buffer,
            max_connection_buffer: args.max_connection_buffer,
        },
        keys: KeyExtractor::new(
            KeySources::with_headers(key_headers).with_query(args.key_from_query),
        )
        .stripping_keys_from(
            StripKeysFrom::new(args.strip_keys_from.clone())
                .with_namespaces(args.strip_keys_from_namespace.clone(), table.clone()),
        ),
        table: table.clone(),
        upstreams: Upstreams::with_sources(args.connect_timeout, args.idle_timeout, source_sockets),
        log,
        metrics: metrics.clone(),
        lookup,
        sources,
        shutdown: shutdown.clone(),
        heartbeat: heartbeat.clone(),
        affinity: Default::default(),
        buffers: ByteBudget::new(args.max_buffered_bytes),
        self_probe: Some(self_probe.responder()),
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
        probe: self_probe,
        stop: watchdog_stop_rx,
    }
    .spawn()
    .context("starting the watchdog")?;

    let mut tasks = tokio::task::JoinSet::new();
    for l in std::iter::once(listener4).chain(listener6) {
        tasks.spawn(proxy::serve(l, shared.clone(), args.shutdown_grace));
    }
    let admin_shutdown = CancellationToken::new();
    let limits = ListenerLimits {
        max_connections: args.admin_max_connections,
        header_timeout: args.admin_header_timeout,
        ..ListenerLimits::default()
    };
    // The admin and debug listeners run on their own thread and runtime: a map walk, a page of
    // decisions or a burst of callers never takes the proxy's workers (with --worker-threads 1
    // the proxy has one), and a wedged proxy cannot silence `/healthz`.
    let admin_thread = spawn_admin(AdminParts {
        health_listener: admin_listener.into_std()?,
        debug_listener: debug_listener.into_std()?,
        limits,
        health: health.clone(),
        debug: debug_state,
        shutdown: admin_shutdown.clone(),
    })
    .context("starting the admin thread")?;
    health.ready.store(true, Ordering::Relaxed);
    // Ready: an older agent on this node may now hand over to us instead of failing open.
    let mark = SuccessorMark::mark(&args.bpffs_dir)
        .inspect_err(|e| tracing::warn!(error = %e, "cannot mark this agent as a successor: an older agent's SIGTERM will fail open"))
        .ok();
    tracing::info!(cgroup = %captured_cgroup.display(), proxy = %args.proxy_addr, "shunt running");

    let mut term =
        tokio::signal::unix::signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    let handing_over = mark.is_some_and(SuccessorMark::successor_ready);
    health.ready.store(false, Ordering::Relaxed);
    if handing_over {
        // The successor answers the health and debug ports from now on (they are shared).
        tracing::info!(
            "a ready successor shares our ports: handing over (STEERED kept), then draining"
        );
        admin_shutdown.cancel();
    } else {
        tracing::info!("no successor: failing open, then draining");
    }
    // The watchdog stops first so it cannot restore (or clear) steering behind our back; route
    // sync stops so that from here on only the successor writes STEERED.
    drop(watchdog_stop);
    let _ = tokio::task::spawn_blocking(move || watchdog.join()).await;
    sync_stop.cancel();
    let _ = sync_task.await;
    drop(idle_source);
    if let Some(k) = kube_handle {
        k.shutdown().await;
    }
    if !handing_over {
        // Fail open first: new connections go direct while in-flight ones drain.
        let cleared = steering.suspend();
        tracing::info!(cleared, "cleared STEERED");
    }
    // Closing the listeners (when serve returns from accepting) moves their queued connections to
    // the successor's listener; in-flight connections drain here.
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    drop(attach_guard);
    admin_shutdown.cancel();
    let _ = tokio::task::spawn_blocking(move || admin_thread.join()).await;
    tracing::info!("stopped");
    Ok(())
}

/// What the admin thread serves.
struct AdminParts {
    health_listener: std::net::TcpListener,
    debug_listener: std::net::TcpListener,
    limits: ListenerLimits,
    health: Arc<HealthState>,
    debug: Arc<DebugState>,
    shutdown: CancellationToken,
}

/// Runs the admin and debug listeners on a thread of their own, with a one-thread runtime (and
/// its own blocking pool), until `shutdown`.
fn spawn_admin(parts: AdminParts) -> std::io::Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("shunt-admin-blocking")
        .build()?;
    std::thread::Builder::new()
        .name("shunt-admin".into())
        .spawn(move || {
            rt.block_on(async move {
                let (health, debug) = match (
                    tokio::net::TcpListener::from_std(parts.health_listener),
                    tokio::net::TcpListener::from_std(parts.debug_listener),
                ) {
                    (Ok(h), Ok(d)) => (h, d),
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::error!(error = %e, "admin listeners: no runtime registration");
                        return;
                    }
                };
                tokio::join!(
                    admin::health::serve(
                        health,
                        parts.limits,
                        parts.health,
                        parts.shutdown.clone()
                    ),
                    admin::debug::serve(debug, parts.limits, parts.debug, parts.shutdown),
                );
            });
        })
}
