//! `shunt run`: wires capture, the node proxy and the admin API together.
use std::{collections::BTreeMap, sync::Arc, sync::atomic::Ordering};

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, signal::unix::SignalKind};
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{self, AdminState},
    capture::{self, Capture, CaptureConfig},
    cli::RunArgs,
    metrics::Metrics,
    proxy::{self, OrigDstLookup},
};

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run_async(args))
}

async fn run_async(args: RunArgs) -> anyhow::Result<()> {
    // Listen before capturing, so a redirected connection never meets a closed port.
    let listener4 = TcpListener::bind(args.proxy_addr)
        .await
        .with_context(|| format!("binding the proxy on --proxy-addr {}", args.proxy_addr))?;
    let listener6 = match args.proxy_addr6 {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("binding the proxy on --proxy-addr6 {a}"))?,
        ),
        None => None,
    };
    let admin_listener = admin::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the admin API on --admin-addr {}", args.admin_addr))?;

    let cfg = CaptureConfig {
        cgroup: args.cgroup.clone(),
        bpffs_dir: args.bpffs_dir.clone(),
        mount_bpffs: true,
        proxy4: Some(args.proxy_addr),
        proxy6: args.proxy_addr6,
        agent_cgroup: capture::own_cgroup_dir()?,
        agent_mark: args.agent_mark,
        steered_max_entries: args.steered_max_entries,
        orig_max_entries: args.orig_max_entries,
    };
    let (mut attach_guard, mut steered, orig_dst, stats) = Capture::attach(&cfg)?.into_parts();
    attach_guard.forward_logs();

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry, Some(Arc::new(stats)));
    let admin_state = AdminState::new(registry);

    // A restarted agent finds its previous entries pinned: make the map exactly the desired set.
    let desired: BTreeMap<_, _> = args.steer.iter().map(|d| (*d, 0u32)).collect();
    let report = steered.sync(&desired);
    for (dst, err) in &report.failed {
        tracing::error!(%dst, error = %err, "could not steer destination; it stays direct");
    }
    metrics.steer_insert_failed(report.failed.len() as u64);
    tracing::info!(
        added = report.added,
        removed = report.removed,
        unchanged = report.unchanged,
        cgroup = %args.cgroup.display(),
        proxy = %args.proxy_addr,
        "capture attached"
    );

    let shutdown = CancellationToken::new();
    let lookup: Arc<dyn OrigDstLookup> = Arc::new(orig_dst);
    let pcfg = proxy::ProxyConfig {
        connect_timeout: args.connect_timeout,
        max_connections: args.max_connections,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for l in std::iter::once(listener4).chain(listener6) {
        tasks.spawn(proxy::serve(
            l,
            lookup.clone(),
            pcfg.clone(),
            metrics.clone(),
            shutdown.clone(),
            args.shutdown_grace,
        ));
    }
    let admin_shutdown = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin_state.clone(),
        admin_shutdown.clone(),
    ));
    admin_state.ready.store(true, Ordering::Relaxed);

    let mut term =
        tokio::signal::unix::signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: failing open, then draining"),
        _ = int.recv() => tracing::info!("SIGINT: failing open, then draining"),
    }
    // Fail open first: new connections go direct while in-flight ones drain.
    admin_state.ready.store(false, Ordering::Relaxed);
    let cleared = steered.clear();
    tracing::info!(cleared, "cleared STEERED");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    drop(attach_guard);
    admin_shutdown.cancel();
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}
