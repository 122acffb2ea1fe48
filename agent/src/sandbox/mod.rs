//! `shunt sandbox create|list|delete`: fork a Deployment into a sandbox and route a key to it.
//!
//! `create` clones the Deployment under `NAME-KEY` with the new image and env, relabelled so no
//! baseline Service selects it (see [`clone`]), creates the SandboxRoute forking the Services
//! that select the baseline pods to the clone's pods, then the clone with an ownerReference to
//! the route (so deleting the route garbage-collects it, and the agents' deletion of an expired
//! route removes the whole sandbox), and waits until the agents report the route Ready.
//!
//! Runs with the user's kubeconfig; the permissions it needs are in the README ("For coding
//! agents"). The agent daemon needs none of them.
pub mod clone;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Service},
};
use kube::{
    Api, Client, Config, ResourceExt as _,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::{
    cli::parse_duration,
    kube::crd::{self, SandboxRoute},
    routes::SANDBOX_LABEL,
};

/// A client from `--kubeconfig` (else KUBECONFIG / ~/.kube/config / in-cluster) and the
/// context's default namespace.
pub async fn kube_client(kubeconfig: Option<&Path>) -> anyhow::Result<(Client, String)> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => Config::infer()
            .await
            .context("no Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster); fix: pass --kubeconfig")?,
    };
    let ns = config.default_namespace.clone();
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    Ok((client, ns))
}

#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    #[command(subcommand)]
    pub command: SandboxCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SandboxCommand {
    /// Fork a Deployment with a new image/env and route a key to it.
    Create(CreateArgs),
    /// List the sandboxes (SandboxRoutes and their forked Deployments).
    List(ListArgs),
    /// Delete a sandbox: its Deployment and its SandboxRoute.
    Delete(DeleteArgs),
}

#[derive(Debug, Clone, Args)]
pub struct KubeFlags {
    /// Namespace (default: the kubeconfig context's).
    #[arg(long, short = 'n', value_name = "NS")]
    pub namespace: Option<String>,
    /// Kubeconfig (default: KUBECONFIG or ~/.kube/config, else in-cluster).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// The Deployment to fork: `deployment/NAME`.
    #[arg(long, value_name = "deployment/NAME")]
    pub fork: String,
    /// The sandbox's image (of the first container, or of --container).
    #[arg(long, value_name = "IMAGE")]
    pub image: String,
    /// Set an environment variable in that container (repeatable).
    #[arg(long, value_name = "K=V")]
    pub env: Vec<String>,
    /// The routing key (default: `sbx-` and 6 random hex digits).
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Delete the sandbox after this long (e.g. 2h): sets the route's expiresAt.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// The container whose image is replaced (default: the first).
    #[arg(long, value_name = "NAME")]
    pub container: Option<String>,
    /// Replicas of the sandbox.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub replicas: i32,
    /// Keyed requests get a 503 instead of the baseline while no sandbox pod is ready.
    #[arg(long)]
    pub reject_when_unready: bool,
    /// How long to wait for the sandbox to be Ready.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Do not wait for Ready.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub kube: KubeFlags,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Every namespace.
    #[arg(long, short = 'A')]
    pub all_namespaces: bool,
    #[command(flatten)]
    pub kube: KubeFlags,
}

#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    /// The sandbox's routing key.
    pub key: String,
    #[command(flatten)]
    pub kube: KubeFlags,
}

/// `shunt sandbox ...`.
pub fn run(args: SandboxArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match args.command {
            SandboxCommand::Create(a) => create(a).await,
            SandboxCommand::List(a) => list(a).await,
            SandboxCommand::Delete(a) => delete(a).await,
        }
    })
}

async fn connect(k: &KubeFlags) -> anyhow::Result<(Client, String)> {
    let (client, ns) = kube_client(k.kubeconfig.as_deref()).await?;
    Ok((client, k.namespace.clone().unwrap_or(ns)))
}

fn random_key() -> String {
    let mut b = [0u8; 3];
    // SAFETY: a valid buffer of the given length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id();
        b = [(t >> 16) as u8, (t >> 8) as u8, t as u8];
    }
    format!("sbx-{:02x}{:02x}{:02x}", b[0], b[1], b[2])
}

fn api_err(what: &str, e: kube::Error) -> anyhow::Error {
    match &e {
        kube::Error::Api(s) if s.code == 403 => anyhow::anyhow!(
            "{what}: forbidden ({}); fix: your user needs the permissions listed in the README (\"For coding agents\")",
            s.message
        ),
        kube::Error::Api(s) if s.code == 404 && s.message.contains("sandboxroutes") => {
            anyhow::anyhow!(
                "{what}: the SandboxRoute CRD is not installed; fix: `shunt crd | kubectl apply -f -` (or deploy/)"
            )
        }
        _ => anyhow::anyhow!("{what}: {e}"),
    }
}

async fn create(a: CreateArgs) -> anyhow::Result<()> {
    let name = match a.fork.split_once('/') {
        Some(("deployment" | "deployments" | "deploy" | "deployments.apps", n))
            if !n.is_empty() =>
        {
            n.to_string()
        }
        _ => bail!(
            "--fork {:?}: expected deployment/NAME; fix: e.g. --fork deployment/reviews",
            a.fork
        ),
    };
    let key = a.key.clone().unwrap_or_else(random_key);
    clone::check_key(&key).map_err(|e| anyhow::anyhow!(e))?;
    let mut env = Vec::new();
    for kv in &a.env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => env.push((k.to_string(), v.to_string())),
            _ => bail!("--env {kv:?}: expected NAME=VALUE; fix: e.g. --env LOG_LEVEL=debug"),
        }
    }
    let (client, ns) = connect(&a.kube).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let routes: Api<SandboxRoute> = Api::namespaced(client.clone(), &ns);

    let Some(baseline) = deployments
        .get_opt(&name)
        .await
        .map_err(|e| api_err(&format!("reading deployment/{name}"), e))?
    else {
        let names: Vec<String> = deployments
            .list(&ListParams::default())
            .await
            .map(|l| l.items.iter().map(|d| d.name_any()).collect())
            .unwrap_or_default();
        bail!(
            "deployment/{name} not found in namespace {ns} (deployments there: {}); fix: check the name with `kubectl get deployments -n {ns}` or pass --namespace",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    };
    if baseline.labels().contains_key(SANDBOX_LABEL) {
        bail!(
            "deployment/{name} is itself a sandbox; fix: fork the baseline Deployment ({})",
            baseline
                .annotations()
                .get(clone::FORKED_FROM)
                .cloned()
                .unwrap_or_else(|| "the original".into())
        );
    }
    let existing = routes
        .list(&ListParams::default())
        .await
        .map_err(|e| api_err("listing SandboxRoutes", e))?;
    if let Some(r) = existing.items.iter().find(|r| r.spec.routing_key == key) {
        bail!(
            "key {key} is already used by SandboxRoute {ns}/{}; fix: pick another --key, or remove that sandbox with `shunt sandbox delete {key} -n {ns}`",
            r.name_any()
        );
    }
    let clone_name = clone::clone_name(&name, &key);
    if deployments
        .get_opt(&clone_name)
        .await
        .map_err(|e| api_err("reading deployments", e))?
        .is_some()
    {
        bail!(
            "deployment/{clone_name} already exists; fix: `shunt sandbox delete {key} -n {ns}` first, or pick another --key"
        );
    }
    let services = Api::<Service>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| api_err("listing Services", e))?;
    let expires_at = match a.ttl {
        None => None,
        Some(ttl) => Some(
            jiff::Timestamp::now()
                .round(jiff::Unit::Second)
                .unwrap_or_else(|_| jiff::Timestamp::now())
                .checked_add(jiff::SignedDuration::try_from(ttl)?)
                .context("--ttl is too long")?,
        ),
    };
    let mut plan = clone::plan(
        &baseline,
        &services.items,
        &clone::CloneOptions {
            key: &key,
            image: &a.image,
            env: &env,
            container: a.container.as_deref(),
            replicas: a.replicas,
            fallback: if a.reject_when_unready {
                crd::Fallback::Reject
            } else {
                crd::Fallback::Baseline
            },
            expires_at,
        },
    )
    .map_err(|e| anyhow::anyhow!(e))?;

    progress(&format!(
        "creating SandboxRoute {ns}/{} (key {key}, forks {})",
        plan.route_name,
        plan.services.join(", ")
    ));
    let route = SandboxRoute {
        metadata: ObjectMeta {
            name: Some(plan.route_name.clone()),
            namespace: Some(ns.clone()),
            labels: Some([(SANDBOX_LABEL.to_string(), key.clone())].into()),
            annotations: Some(
                [(clone::FORKED_FROM.to_string(), format!("deployment/{name}"))].into(),
            ),
            ..ObjectMeta::default()
        },
        spec: plan.route_spec.clone(),
        status: None,
    };
    let route = match routes.create(&PostParams::default(), &route).await {
        Ok(r) => r,
        Err(kube::Error::Api(s)) if s.code == 409 => bail!(
            "SandboxRoute {ns}/{} already exists; fix: `shunt sandbox delete {key} -n {ns}` or pick another --key",
            plan.route_name
        ),
        Err(e) => return Err(api_err("creating the SandboxRoute", e)),
    };
    let uid = route
        .uid()
        .context("the API server gave the route no uid")?;
    clone::set_owner(&mut plan.deployment, &plan.route_name, &uid);
    progress(&format!(
        "creating deployment/{clone_name} (image {} in container {}, pods labelled {})",
        a.image,
        plan.container,
        clone::fmt_labels(&plan.pod_labels)
    ));
    if let Err(e) = deployments
        .create(&PostParams::default(), &plan.deployment)
        .await
    {
        let _ = routes
            .delete(&plan.route_name, &DeleteParams::default())
            .await;
        return Err(api_err(
            &format!("creating deployment/{clone_name} (the route was removed again)"),
            e,
        ));
    }

    let curl = curl_line(&client, &ns, &plan.services, &key).await;
    if a.no_wait {
        println!("sandbox {key} created (not waiting for Ready: see `shunt sandbox list -n {ns}`)");
    } else {
        wait_ready(&client, &ns, &plan, &key, &a.image, a.timeout).await?;
        println!(
            "sandbox {key} is ready: deployment/{clone_name} serves requests keyed {key} for service {}",
            plan.services.join(", ")
        );
    }
    println!("key: {key}");
    if let Some(at) = expires_at {
        println!("expires: {at}");
    }
    println!("{curl}");
    Ok(())
}

async fn curl_line(client: &Client, ns: &str, services: &[String], key: &str) -> String {
    let svc = services.first().cloned().unwrap_or_default();
    let port = Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(&svc)
        .await
        .ok()
        .flatten()
        .and_then(|s| s.spec?.ports?.first().map(|p| p.port))
        .unwrap_or(80);
    format!(
        "curl -H 'baggage: sd-routing-key={key}' http://{svc}.{ns}.svc.cluster.local:{port}/   # from any pod in the cluster"
    )
}

fn progress(msg: &str) {
    eprintln!("==> {msg}");
}

/// Container states that will not fix themselves.
pub(crate) const IMAGE_ERRORS: [&str; 3] = ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"];
pub(crate) const START_ERRORS: [&str; 3] = [
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "RunContainerError",
];

/// The waiting containers (init containers too) of a pod: `(reason, "reason: message")`, the
/// message on one line.
pub(crate) fn waiting_containers(
    status: &k8s_openapi::api::core::v1::PodStatus,
) -> Vec<(String, String)> {
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .filter_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            let reason = w.reason.clone().unwrap_or_default();
            let detail = match w.message.as_deref() {
                Some(m) if !m.is_empty() => format!("{reason}: {}", m.replace('\n', " ")),
                _ => reason.clone(),
            };
            Some((reason, detail))
        })
        .collect()
}

async fn wait_ready(
    client: &Client,
    ns: &str,
    plan: &clone::ClonePlan,
    key: &str,
    image: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let routes: Api<SandboxRoute> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = clone::fmt_labels(&plan.match_labels);
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let route = routes
            .get(&plan.route_name)
            .await
            .map_err(|e| api_err("reading the SandboxRoute", e))?;
        let cond = route
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == crd::READY).cloned());
        if cond.as_ref().is_some_and(|c| c.status == "True") {
            return Ok(());
        }
        let pod_list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| api_err("listing the sandbox pods", e))?;
        let mut ready = 0;
        for p in &pod_list.items {
            let Some(status) = &p.status else { continue };
            if status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
            {
                ready += 1;
            }
            for (reason, detail) in waiting_containers(status) {
                if IMAGE_ERRORS.contains(&reason.as_str()) {
                    remove(client, ns, &plan.route_name, key).await;
                    bail!(
                        "image {image} cannot be pulled ({detail}); removed the sandbox; fix: check the image name and tag (and the cluster's access to its registry), then run `shunt sandbox create` again"
                    );
                }
                if START_ERRORS.contains(&reason.as_str()) {
                    bail!(
                        "the sandbox pod {} does not start ({detail}); fix: check `kubectl logs -n {ns} {}` and your image/env, then `shunt sandbox delete {key} -n {ns}` and create again",
                        p.name_any(),
                        p.name_any()
                    );
                }
            }
        }
        let state = format!(
            "waiting for sandbox {key}: {}/{} pod(s) ready, route {}",
            ready,
            plan.deployment
                .spec
                .as_ref()
                .and_then(|s| s.replicas)
                .unwrap_or(1),
            match &cond {
                Some(c) => format!("{} ({})", c.reason, c.message),
                None => "has no status yet (the agents write it)".into(),
            }
        );
        if state != last {
            progress(&state);
            last = state;
        }
        if Instant::now() > deadline {
            bail!(
                "sandbox {key} not ready after {timeout:?} ({}); it is left in place; fix: check `kubectl get pods -n {ns} -l {selector}`, or remove it with `shunt sandbox delete {key} -n {ns}`",
                last.trim_start_matches("waiting for sandbox ")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Deletes a sandbox: the Deployments it owns (garbage collection would, but explicitly is
/// immediate and works where there is none), then its route. Best effort.
async fn remove(client: &Client, ns: &str, route_name: &str, key: &str) -> Vec<String> {
    let mut done = Vec::new();
    let routes: Api<SandboxRoute> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let uid = routes
        .get_opt(route_name)
        .await
        .ok()
        .flatten()
        .and_then(|r| r.uid());
    if let Ok(list) = deployments
        .list(&ListParams::default().labels(&format!("{SANDBOX_LABEL}={key}")))
        .await
    {
        for d in list.items {
            let owned = d
                .owner_references()
                .iter()
                .any(|o| o.kind == "SandboxRoute" && Some(&o.uid) == uid.as_ref())
                || d.annotations().contains_key(clone::FORKED_FROM);
            if owned
                && deployments
                    .delete(&d.name_any(), &DeleteParams::background())
                    .await
                    .is_ok()
            {
                done.push(format!("deployment {ns}/{}", d.name_any()));
            }
        }
    }
    if routes
        .delete(route_name, &DeleteParams::background())
        .await
        .is_ok()
    {
        done.push(format!("sandboxroute {ns}/{route_name}"));
    }
    done
}

async fn list(a: ListArgs) -> anyhow::Result<()> {
    let (client, ns) = connect(&a.kube).await?;
    let (routes, deployments): (Api<SandboxRoute>, Api<Deployment>) = if a.all_namespaces {
        (Api::all(client.clone()), Api::all(client.clone()))
    } else {
        (
            Api::namespaced(client.clone(), &ns),
            Api::namespaced(client.clone(), &ns),
        )
    };
    let routes = routes
        .list(&ListParams::default())
        .await
        .map_err(|e| api_err("listing SandboxRoutes", e))?;
    let deps = deployments
        .list(&ListParams::default().labels(SANDBOX_LABEL))
        .await
        .map_err(|e| api_err("listing Deployments", e))?;
    if routes.items.is_empty() {
        println!(
            "no sandboxes{}",
            if a.all_namespaces {
                String::new()
            } else {
                format!(" in namespace {ns}")
            }
        );
        return Ok(());
    }
    let mut rows = vec![[
        "KEY".to_string(),
        "NAMESPACE".into(),
        "FORKS".into(),
        "DEPLOYMENT".into(),
        "READY".into(),
        "REASON".into(),
        "EXPIRES".into(),
    ]];
    for r in &routes.items {
        let uid = r.uid();
        let rns = r.namespace().unwrap_or_default();
        let dep: Vec<String> = deps
            .items
            .iter()
            .filter(|d| {
                d.namespace().as_deref() == Some(rns.as_str())
                    && d.owner_references()
                        .iter()
                        .any(|o| Some(&o.uid) == uid.as_ref())
            })
            .map(|d| d.name_any())
            .collect();
        let cond = r
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == crd::READY));
        rows.push([
            r.spec.routing_key.clone(),
            rns,
            r.spec
                .forks
                .iter()
                .map(|f| f.service.clone())
                .collect::<Vec<_>>()
                .join(","),
            if dep.is_empty() {
                "-".into()
            } else {
                dep.join(",")
            },
            cond.map_or("Unknown".into(), |c| c.status.clone()),
            cond.map_or("-".into(), |c| c.reason.clone()),
            r.spec.expires_at.map_or("-".into(), |t| t.to_string()),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(())
}

async fn delete(a: DeleteArgs) -> anyhow::Result<()> {
    let (client, ns) = connect(&a.kube).await?;
    let routes: Api<SandboxRoute> = Api::namespaced(client.clone(), &ns);
    let list = routes
        .list(&ListParams::default())
        .await
        .map_err(|e| api_err("listing SandboxRoutes", e))?;
    let Some(route) = list.items.iter().find(|r| r.spec.routing_key == a.key) else {
        let keys: Vec<String> = list
            .items
            .iter()
            .map(|r| r.spec.routing_key.clone())
            .collect();
        bail!(
            "no sandbox with key {} in namespace {ns} (keys there: {}); fix: check `shunt sandbox list -A`",
            a.key,
            if keys.is_empty() {
                "none".to_string()
            } else {
                keys.join(", ")
            }
        );
    };
    let done = remove(&client, &ns, &route.name_any(), &a.key).await;
    if done.is_empty() {
        bail!("could not delete sandbox {}: nothing was removed", a.key);
    }
    println!("deleted sandbox {}: {}", a.key, done.join(", "));
    Ok(())
}
